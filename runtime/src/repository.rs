//! Model control, as Triton's model repository extension defines it: `POST /v2/repository/index`
//! lists every model with its state; `POST /v2/repository/models/{m}/load` (optionally with a new
//! `uri`, `version` and `sha256` in `parameters`) and `…/unload` change what is served.
//!
//! Load and unload are off unless `KINFER_MODEL_CONTROL=explicit`, so a pod serves what its
//! manifest says; the index always answers. All three sit behind the bearer tokens when auth is on.
//! The loading itself (prepare and warm up, then swap; a failure keeps the old version) is
//! [`crate::registry::Registry::load`]. The gRPC port has the same three as Triton's
//! RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload ([`crate::grpc`]).

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    response::Response,
};
use serde::Deserialize;

use crate::{error::ApiError, registry::LoadRequest, server::AppState};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    /// Only the models ready for inference.
    #[serde(default)]
    ready: bool,
}

/// A load's or an unload's body: `{"parameters": {...}}`, all optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ControlRequest {
    #[serde(default)]
    parameters: HashMap<String, serde_json::Value>,
}

/// An optional JSON body (Triton's clients send none, `{}`, or the documented fields).
fn parse_body<T: Default + serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid {what} request body: {e}")))
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))
}

/// A string parameter (numbers are taken for `version`).
fn text_param(key: &str, v: &serde_json::Value) -> Result<String, ApiError> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        serde_json::Value::Number(n) if key == "version" => Ok(n.to_string()),
        _ => Err(ApiError::invalid(format!("parameter '{key}' must be a non-empty string"))),
    }
}

/// A load's `parameters` (REST JSON, or gRPC parameters as JSON values).
pub(crate) fn load_request(params: HashMap<String, serde_json::Value>) -> Result<LoadRequest, ApiError> {
    let mut req = LoadRequest::default();
    for (key, value) in &params {
        let slot = match key.as_str() {
            "uri" => &mut req.uri,
            "version" => &mut req.version,
            "sha256" => &mut req.sha256,
            other => {
                return Err(ApiError::invalid(format!(
                    "load parameter '{other}' is not supported; kinfer takes 'uri', 'version' and 'sha256' \
                     (a model is one ONNX file: there is no config or file override)"
                )));
            }
        };
        *slot = Some(text_param(key, value)?);
    }
    Ok(req)
}

fn json(v: &impl serde::Serialize) -> Response {
    crate::server::json_response(axum::http::StatusCode::OK, serde_json::to_vec(v).unwrap_or_default())
}

/// `POST /v2/repository/index`.
#[utoipa::path(post, path = "/v2/repository/index", tag = "repository", request_body(content = String, description = "Optional: {\"ready\": true} lists only ready models"), responses((status = 200, description = "Every model: name, version, state (READY, LOADING, UNAVAILABLE) and reason"), (status = 400, description = "Invalid body", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn index(
    State(st): State<Arc<AppState>>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: IndexRequest = parse_body(&body(b)?, "repository index")?;
    Ok(json(&st.models.index(req.ready)))
}

/// `POST /v2/repository/models/{model}/load`.
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "repository", params(("model" = String, Path, description = "Model name")), request_body(content = String, description = "Optional: {\"parameters\": {\"uri\": \"s3://…\", \"version\": \"2\", \"sha256\": \"…\"}}"), responses((status = 200, description = "Loaded, warmed up and serving"), (status = 400, description = "Model control off, bad parameters, or the load failed (the previous version keeps serving); the message is the loader's", body = crate::openapi::ErrorResponse), (status = 404, description = "No such model and no uri given", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn load(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ControlRequest = parse_body(&body(b)?, "model load")?;
    let rows = st.models.load(&model, load_request(req.parameters)?).await?;
    Ok(json(&serde_json::json!({ "name": model, "loaded": rows })))
}

/// `POST /v2/repository/models/{model}/unload`.
#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "repository", params(("model" = String, Path, description = "Model name")), responses((status = 200, description = "Unloaded; requests in flight finish"), (status = 400, description = "Model control off", body = crate::openapi::ErrorResponse), (status = 404, description = "No such model", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn unload(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ControlRequest = parse_body(&body(b)?, "model unload")?;
    check_unload_parameters(req.parameters.keys())?;
    st.models.unload(&model).await?;
    Ok(json(&serde_json::json!({ "name": model, "unloaded": true })))
}

/// Triton's `unload_dependents` has nothing to act on here: kinfer models have no dependents.
pub(crate) fn check_unload_parameters<'a>(mut keys: impl Iterator<Item = &'a String>) -> Result<(), ApiError> {
    match keys.find(|k| k.as_str() != "unload_dependents") {
        Some(key) => Err(ApiError::invalid(format!("unload parameter '{key}' is not supported"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_parameters_are_named_when_wrong() {
        let p = |v: serde_json::Value| load_request(serde_json::from_value(v).unwrap());
        let ok = p(serde_json::json!({"uri": "s3://b/iris/2/model.onnx", "version": 2})).unwrap();
        assert_eq!((ok.uri.as_deref(), ok.version.as_deref()), (Some("s3://b/iris/2/model.onnx"), Some("2")));
        assert!(p(serde_json::json!({"config": "{}"})).unwrap_err().message.contains("'config' is not supported"));
        assert!(p(serde_json::json!({"uri": 3})).unwrap_err().message.contains("'uri' must be"));
        assert!(parse_body::<ControlRequest>(b"{\"params\":{}}", "model load").is_err());
        assert!(parse_body::<IndexRequest>(b"  ", "repository index").is_ok_and(|r| !r.ready));
    }
}
