//! The HTTP server: one port for the Open Inference Protocol v2, KServe V1, `/predict`, model
//! control (Triton's repository extension, [`crate::repository`]), health and `/metrics`.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{
        MatchedPath, Path, Query, Request, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use tracing::Instrument;

use crate::{
    engine::Engine,
    error::{ApiError, ErrorCode},
    metrics::Metrics,
    protocol::{Limits, v1, v2},
    registry::{Registry, Served},
    tensor::Tensor,
};

/// Everything the handlers share.
pub struct AppState {
    /// The served models, by name and version.
    pub models: Registry,
    pub shutting_down: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Longest wait for a request body (KINFER_BODY_TIMEOUT_MS).
    pub body_timeout: Duration,
    /// Auth, rate and concurrency limits.
    pub access: crate::access::Access,
    /// The request/response log, when on.
    pub log: Option<Arc<crate::requestlog::RequestLog>>,
    /// The prediction cache, when on.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// The canary this stable runtime routes to (KINFER_CANARY_URL), set before serving.
    pub canary: OnceLock<Arc<crate::canary::Canary>>,
}

/// What the request middleware and `infer` share about the request being served.
pub(crate) struct RequestCtx {
    /// Inputs and outputs of a sampled request, for the request log.
    pub(crate) logged: LoggedIo,
}

/// Inputs and outputs of a sampled request, handed from `infer` to the request middleware.
pub(crate) type LoggedIo = Arc<std::sync::Mutex<Option<(Vec<Tensor>, Vec<Tensor>)>>>;

/// How an inference request ended, for its request-log record.
pub(crate) struct RequestOutcome<'a> {
    pub id: &'a str,
    /// The model and version that served it ("unknown" when none did).
    pub model: &'a str,
    pub version: &'a str,
    pub protocol: &'static str,
    pub status: u16,
    pub elapsed: std::time::Duration,
    pub failed: bool,
    pub error: Option<String>,
}

/// Submits the request-log record of one inference request (both servers): every request whose
/// inputs and outputs were captured (the sampled ones), and a sample of the failed ones.
pub(crate) fn log_request(st: &AppState, logged: &LoggedIo, outcome: RequestOutcome<'_>) {
    let Some(log) = &st.log else { return };
    let io = logged.lock().ok().and_then(|mut s| s.take());
    if io.is_none() && !(outcome.failed && log.sampled()) {
        return;
    }
    let (inputs, outputs) = match io {
        Some((i, o)) => (Some(i.into_iter().map(Into::into).collect()), Some(o.into_iter().map(Into::into).collect())),
        None => (None, None),
    };
    let _enqueue = crate::telemetry::stage("request_log.enqueue").entered();
    log.submit(crate::requestlog::Record {
        request_id: outcome.id.to_string(),
        time: time::OffsetDateTime::now_utc(),
        model: outcome.model.to_string(),
        version: outcome.version.to_string(),
        protocol: outcome.protocol,
        status: outcome.status,
        latency_ms: outcome.elapsed.as_secs_f64() * 1000.0,
        inputs,
        outputs,
        error: outcome.error,
    });
}

tokio::task_local! {
    pub(crate) static REQUEST: RequestCtx;
}

impl AppState {
    /// The served model `name` (`version`, or the highest loaded one), held by the request for as
    /// long as it runs: a replacement or unload meanwhile does not cut it off.
    pub(crate) fn engine(&self, name: &str, version: Option<&str>) -> Result<Arc<Served>, ApiError> {
        self.models.get(name, version)
    }

    /// Ready when every listed model is loaded and warmed up, until shutdown starts.
    pub(crate) fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.models.all_ready()
    }
}

/// The id of the request being served (from `x-request-id`, or generated).
#[derive(Clone)]
pub struct RequestId(pub Arc<str>);

pub fn router(state: Arc<AppState>, cors: Option<tower_http::cors::CorsLayer>) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/", get(root))
        .route("/health", get(health_alias))
        .route("/ready", get(ready_alias))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(v2_model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(v2_model_metadata))
        .route("/v2/models/{model}/ready", get(v2_model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(v2_model_ready))
        .route("/v2/models/{model}/infer", post(v2_infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(v2_infer))
        .route("/v1/models", get(v1_list))
        .route("/v1/models/{target}", get(v1_model).post(v1_predict))
        .route("/predict", post(predict))
        .route("/v2/repository/index", post(crate::repository::index))
        .route("/v2/repository/models/{model}/load", post(crate::repository::load))
        .route("/v2/repository/models/{model}/unload", post(crate::repository::unload))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/docs/openapi.json", crate::openapi::document()))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        // Canary routing after the access guard (auth, limits and the body are done).
        .layer(tower::util::option_layer(
            state.canary.get().map(|_| middleware::from_fn_with_state(state.clone(), crate::canary::rest)),
        ))
        .layer(middleware::from_fn_with_state(state.clone(), crate::access::guard))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .layer(tower::util::option_layer(cors))
        .with_state(state)
}

/// A JSON response with `body`.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    json(status, body)
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The server's name and protocol extensions in its metadata (REST `/v2` and `/`, gRPC
/// ServerMetadata).
pub(crate) const SERVER_NAME: &str = "kinfer-runtime";
pub(crate) const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository"];

fn json_value(v: serde_json::Value) -> Response {
    json(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default())
}

#[utoipa::path(get, path = "/v2", tag = "v2", responses((status = 200, description = "Server metadata", body = crate::openapi::ServerMetadata)))]
pub(crate) async fn server_metadata() -> Response {
    json_value(serde_json::json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

#[utoipa::path(get, path = "/", tag = "health", responses((status = 200, description = "Server name and version, the served models, and links to the docs and each model's endpoints", body = crate::openapi::ServerIndex)))]
pub(crate) async fn root(State(st): State<Arc<AppState>>) -> Response {
    let rows = st.models.index(false);
    let models: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let m = &r.name;
            // The version in the links only where the name has several.
            let base = if rows.iter().filter(|o| &o.name == m).count() > 1 {
                format!("/v2/models/{m}/versions/{}", r.version)
            } else {
                format!("/v2/models/{m}")
            };
            serde_json::json!({
                "name": m,
                "version": r.version,
                "state": r.state,
                "metadata": base,
                "ready": format!("{base}/ready"),
                "infer": format!("{base}/infer"),
                "predict": format!("/v1/models/{m}:predict"),
            })
        })
        .collect();
    json_value(serde_json::json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "ready": st.is_ready(),
        "docs": "/docs",
        "openapi": "/openapi.json",
        "metrics": "/metrics",
        "models": models,
    }))
}

/// `GET /health`: the liveness probe some KServe / MLServer-era clients call.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, description = "The process serves (alias of /v2/health/live)")))]
pub(crate) async fn health_alias() -> Response {
    live().await
}

/// `GET /ready`: readiness under the short name.
#[utoipa::path(get, path = "/ready", tag = "health", responses((status = 200, description = "Model loaded and warmed up (alias of /v2/health/ready)"), (status = 503, description = "Loading or shutting down", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn ready_alias(st: State<Arc<AppState>>) -> Result<Response, ApiError> {
    ready(st).await
}

#[utoipa::path(get, path = "/v2/health/live", tag = "health", responses((status = 200, description = "The process serves")))]
pub(crate) async fn live() -> Response {
    json_value(serde_json::json!({ "live": true }))
}

#[utoipa::path(get, path = "/v2/health/ready", tag = "health", responses((status = 200, description = "Model loaded and warmed up"), (status = 503, description = "Loading or shutting down", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn ready(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if st.is_ready() {
        Ok(json_value(serde_json::json!({ "ready": true })))
    } else if st.shutting_down.load(Ordering::Acquire) {
        Err(ApiError::not_ready("the server is shutting down"))
    } else {
        let loading = st.models.loading();
        if loading.is_empty() {
            Err(ApiError::not_ready("no model is loaded"))
        } else {
            Err(ApiError::not_ready(format!("still loading: {}", loading.join(", "))))
        }
    }
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2", params(("model" = String, Path, description = "Served model name")), responses((status = 200, description = "Inputs and outputs", body = crate::openapi::ModelMetadata), (status = 404, description = "No such model", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn v2_model_metadata(
    State(st): State<Arc<AppState>>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let engine = st.engine(p.get("model").map_or("", String::as_str), p.get("version").map(String::as_str))?;
    Ok(json_value(v2::model_metadata(&engine.info)))
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "v2", params(("model" = String, Path, description = "Served model name")), responses((status = 200, description = "Ready"), (status = 503, description = "Not ready", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn v2_model_ready(
    State(st): State<Arc<AppState>>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name = p.get("model").map_or("", String::as_str);
    let served = st.engine(name, p.get("version").map(String::as_str))?;
    if st.shutting_down.load(Ordering::Acquire) {
        return Err(ApiError::not_ready("the server is shutting down"));
    }
    Ok(json_value(serde_json::json!({ "name": name, "version": served.spec.version, "ready": true })))
}

/// `/v2/models/{model}[/versions/{version}]/…`.
#[derive(serde::Deserialize)]
pub(crate) struct ModelPath {
    model: String,
    version: Option<String>,
}

/// Maps a body rejection (size limit included) to the JSON error.
fn body_bytes(body: Result<Bytes, BytesRejection>, max: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body exceeds the limit of {max} bytes (KINFER_MAX_BODY_BYTES)"),
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {rej}"))
        }
    })
}

/// What [`infer`] answers: the outputs, and how the prediction cache answered (when it is on).
pub(crate) struct Inferred {
    pub outputs: Arc<Vec<Tensor>>,
    pub cache: Option<crate::cache::Status>,
}

/// Runs inference under the request's deadline (client `timeout_ms`, capped by the server's),
/// through the prediction cache when it is on (`cache` says what the request asked for).
pub(crate) async fn infer(
    st: &AppState,
    engine: &Engine,
    inputs: Vec<Tensor>,
    timeout_ms: Option<u64>,
    cache: crate::cache::Use<'_>,
) -> Result<Inferred, ApiError> {
    let deadline = match timeout_ms {
        Some(ms) => Duration::from_millis(ms).min(st.request_timeout),
        None => st.request_timeout,
    };
    // Sampled requests keep a copy of their inputs for the request log.
    let log_inputs = st.log.as_ref().filter(|l| l.sampled()).map(|_| inputs.clone());
    // Shadow copies are taken of every request, hits included: a hit's outputs are stable's.
    let shadow = st.canary.get().and_then(|c| c.shadow.as_ref());
    let shadow_copy = shadow.and_then(|s| s.take(&inputs, log_inputs.is_some()));
    let run = async {
        match &st.cache {
            Some(c) => {
                let (info, run) = (&engine.info, |inputs| engine.infer(inputs));
                let (outputs, status) = c.get_or_run(&info.name, &info.version, inputs, cache, run).await;
                outputs.map(|outputs| Inferred { outputs, cache: Some(status) })
            }
            None => engine.infer(inputs).await.map(|o| Inferred { outputs: Arc::new(o), cache: None }),
        }
    };
    let result = match tokio::time::timeout(deadline, run).await {
        Ok(Err(e)) if e.code == ErrorCode::RateLimited => {
            st.metrics.requests_rejected.with_label_values(&["queue_capacity"]).inc();
            Err(e)
        }
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            ErrorCode::InferenceTimeout,
            format!("inference did not finish within {} ms", deadline.as_millis()),
        )),
    };
    if let (Some(s), Some(copy), Ok(done)) = (shadow, shadow_copy, &result) {
        s.submit(copy, &done.outputs, st.log.as_ref(), &engine.info.name);
    }
    if let (Some(inputs), Ok(done)) = (log_inputs, &result) {
        let _ = REQUEST.try_with(|ctx| {
            if let Ok(mut slot) = ctx.logged.lock() {
                *slot = Some((inputs, done.outputs.as_ref().clone()));
            }
        });
    }
    result
}

/// The outputs a request asks for, part of the prediction cache's key (not built when it is off).
fn cache_outputs(st: &AppState, outputs: impl Iterator<Item = usize>) -> Vec<usize> {
    if st.cache.is_some() { outputs.collect() } else { Vec::new() }
}

/// Sets `x-kinfer-cache` (hit, miss or bypass) when the prediction cache is on.
fn mark_cache(resp: &mut Response, status: Option<crate::cache::Status>) {
    if let Some(s) = status {
        resp.headers_mut().insert(crate::cache::HEADER, HeaderValue::from_static(s.as_str()));
    }
}

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2", params(("model" = String, Path, description = "Served model name")), request_body = crate::openapi::InferenceRequest, responses((status = 200, description = "Outputs (with the binary tensor extension: JSON header, then raw tensors; see Inference-Header-Content-Length)", body = crate::openapi::InferenceResponse), (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse), (status = 401, description = "Missing or wrong bearer token", body = crate::openapi::ErrorResponse), (status = 404, description = "No such model or version", body = crate::openapi::ErrorResponse), (status = 413, description = "Body too large", body = crate::openapi::ErrorResponse), (status = 429, description = "Over the concurrency or rate limit", body = crate::openapi::ErrorResponse), (status = 503, description = "Model not ready", body = crate::openapi::ErrorResponse), (status = 504, description = "Deadline passed", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn v2_infer(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match st.engine(&p.model, p.version.as_deref()) {
        Ok(engine) => served_by(engine.clone(), v2_infer_with(&st, &engine, &headers, body).await),
        Err(e) => e.into_response(),
    }
}

async fn v2_infer_with(
    st: &AppState,
    engine: &Served,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, st.max_body_bytes)?;
    let header_len = match headers.get(v2::HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| ApiError::invalid("Inference-Header-Content-Length must be a non-negative integer"))?,
        ),
        None => None,
    };
    let req = crate::image::decode_v2(Some(&engine.image), body, header_len, &engine.info, st.limits)
        .instrument(crate::telemetry::stage("decode"))
        .await?;
    let selected = cache_outputs(st, req.outputs.iter().map(|(i, _)| *i));
    let cache = crate::cache::Use { outputs: &selected, enabled: req.cache };
    let done = infer(st, engine, req.inputs, req.timeout_ms, cache).await?;
    let enc = crate::telemetry::stage("encode")
        .in_scope(|| v2::encode(&engine.info, req.id.as_deref(), &done.outputs, &req.outputs));
    let mut resp = match enc.header_len {
        None => json(StatusCode::OK, enc.body),
        Some(n) => {
            let mut r = (StatusCode::OK, enc.body).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            r.headers_mut().insert(v2::HEADER_LENGTH, HeaderValue::from(n));
            r
        }
    };
    mark_cache(&mut resp, done.cache);
    Ok(resp)
}

#[utoipa::path(get, path = "/v1/models", tag = "v1", responses((status = 200, description = "Served models")))]
pub(crate) async fn v1_list(State(st): State<Arc<AppState>>) -> Response {
    json_value(serde_json::json!({ "models": st.models.names() }))
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "v1", params(("model" = String, Path, description = "Served model name")), responses((status = 200, description = "Ready"), (status = 503, description = "Not ready", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn v1_model(
    State(st): State<Arc<AppState>>,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
    st.engine(&target, None)?;
    if st.shutting_down.load(Ordering::Acquire) {
        return Err(ApiError::not_ready("the server is shutting down"));
    }
    Ok(json_value(serde_json::json!({ "name": target, "ready": true })))
}

/// Query parameters of V1 and /predict.
#[derive(serde::Deserialize, Default)]
pub(crate) struct PredictQuery {
    timeout_ms: Option<u64>,
    threshold: Option<f64>,
    /// `/predict` on a server with several models: which one.
    model: Option<String>,
    /// `/predict`: the model's version (default: the highest loaded).
    version: Option<String>,
    /// `false` bypasses the prediction cache (parsed by [`crate::cache::parse_query_flag`]).
    cache: Option<String>,
}

#[utoipa::path(post, path = "/v1/models/{model}:predict", tag = "v1", params(("model" = String, Path, description = "Served model name"), ("timeout_ms" = Option<u64>, Query, description = "Deadline for this request"), ("cache" = Option<bool>, Query, description = "false bypasses the prediction cache")), request_body = crate::openapi::InstancesRequest, responses((status = 200, description = "One prediction per row", body = crate::openapi::V1Response), (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse), (status = 401, description = "Missing or wrong bearer token", body = crate::openapi::ErrorResponse), (status = 404, description = "No such model or version", body = crate::openapi::ErrorResponse), (status = 413, description = "Body too large", body = crate::openapi::ErrorResponse), (status = 429, description = "Over the concurrency or rate limit", body = crate::openapi::ErrorResponse), (status = 503, description = "Model not ready", body = crate::openapi::ErrorResponse), (status = 504, description = "Deadline passed", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn v1_predict(
    State(st): State<Arc<AppState>>,
    Path(target): Path<String>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some((model, verb)) = target.rsplit_once(':') else {
        return ApiError::not_found(format!(
            "POST /v1/models/{target} is not an endpoint; use /v1/models/{target}:predict"
        ))
        .into_response();
    };
    if verb != "predict" {
        return ApiError::not_found(format!("':{verb}' is not supported; use /v1/models/{model}:predict"))
            .into_response();
    }
    match st.engine(model, None) {
        Ok(engine) => served_by(engine.clone(), v1_predict_with(&st, &engine, query, body).await),
        Err(e) => e.into_response(),
    }
}

async fn v1_predict_with(
    st: &AppState,
    engine: &Served,
    query: Result<Query<PredictQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, st.max_body_bytes)?;
    let inputs = crate::telemetry::stage("decode").in_scope(|| v1::decode(&body, &engine.info, st.limits))?;
    let n = rows_of(&inputs);
    let q = query_params(query)?;
    let all = cache_outputs(st, 0..engine.info.outputs.len());
    let cache = crate::cache::Use { outputs: &all, enabled: crate::cache::parse_query_flag(q.cache.as_deref())? };
    let done = infer(st, engine, inputs, q.timeout_ms, cache).await?;
    let mut resp = json(StatusCode::OK, crate::telemetry::stage("encode").in_scope(|| v1::encode_v1(&done.outputs, n)));
    mark_cache(&mut resp, done.cache);
    Ok(resp)
}

#[utoipa::path(post, path = "/predict", tag = "predict", params(("model" = Option<String>, Query, description = "The model, when the server serves several (required then)"), ("version" = Option<String>, Query, description = "The model's version (default: the highest loaded)"), ("threshold" = Option<f64>, Query, description = "Binary classifiers: decision = score >= threshold"), ("timeout_ms" = Option<u64>, Query, description = "Deadline for this request"), ("cache" = Option<bool>, Query, description = "false bypasses the prediction cache")), request_body(content((crate::openapi::InstancesRequest = "application/json"), (String = "multipart/form-data")), description = "Rows as JSON, or JPEG/PNG files as multipart for image models"), responses((status = 200, description = "Predictions in request order", body = crate::openapi::PredictResponse), (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse), (status = 401, description = "Missing or wrong bearer token", body = crate::openapi::ErrorResponse), (status = 404, description = "No such model or version", body = crate::openapi::ErrorResponse), (status = 413, description = "Body too large", body = crate::openapi::ErrorResponse), (status = 429, description = "Over the concurrency or rate limit", body = crate::openapi::ErrorResponse), (status = 503, description = "Model not ready", body = crate::openapi::ErrorResponse), (status = 504, description = "Deadline passed", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn predict(
    State(st): State<Arc<AppState>>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let q = match query_params(query) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    match st.models.pick(q.model.as_deref()).and_then(|name| st.engine(&name, q.version.as_deref())) {
        Ok(engine) => served_by(engine.clone(), predict_with(&st, &engine, q, &headers, body).await),
        Err(e) => e.into_response(),
    }
}

async fn predict_with(
    st: &AppState,
    engine: &Served,
    q: PredictQuery,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, st.max_body_bytes)?;
    if let Some(t) = q.threshold
        && !(0.0..=1.0).contains(&t)
    {
        return Err(ApiError::invalid(format!("threshold must be between 0 and 1, got {t}")));
    }
    // multipart/form-data: JPEG/PNG uploads for image models (one file = one row).
    let decode = async {
        Ok::<_, ApiError>(match crate::image::multipart_boundary(headers) {
            Some(boundary) => {
                let (inputs, files) =
                    crate::image::predict_inputs(Some(&engine.image), &engine.info, body, &boundary?, st.limits)
                        .await?;
                (inputs, Some(files))
            }
            None => (v1::decode(&body, &engine.info, st.limits)?, None),
        })
    };
    let (inputs, files) = decode.instrument(crate::telemetry::stage("decode")).await?;
    let n = rows_of(&inputs);
    let all = cache_outputs(st, 0..engine.info.outputs.len());
    let cache = crate::cache::Use { outputs: &all, enabled: crate::cache::parse_query_flag(q.cache.as_deref())? };
    let done = infer(st, engine, inputs, q.timeout_ms, cache).await?;
    let outputs = done.outputs.as_slice();
    let _encode = crate::telemetry::stage("encode").entered();
    let image_body = match q.threshold {
        None => crate::image::encode_predict(Some(&engine.image), &engine.info, outputs, n, files.as_deref()),
        Some(_) => None,
    };
    let mut body = image_body
        .unwrap_or_else(|| v1::encode_predict(&engine.info, outputs, n, v1::PredictOptions { threshold: q.threshold }));
    crate::cache::mark_json_object(&mut body, done.cache);
    let mut resp = json(StatusCode::OK, body);
    mark_cache(&mut resp, done.cache);
    Ok(resp)
}

fn query_params(q: Result<Query<PredictQuery>, QueryRejection>) -> Result<PredictQuery, ApiError> {
    q.map(|q| q.0).map_err(|e| ApiError::invalid(format!("invalid query parameters: {}", e.body_text())))
}

fn rows_of(inputs: &[Tensor]) -> usize {
    inputs.first().and_then(|t| t.shape.first()).map_or(0, |d| (*d).max(0) as usize)
}

async fn openapi_json() -> Response {
    json(StatusCode::OK, crate::openapi::document().to_json().unwrap_or_default().into_bytes())
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut resp = st.metrics.render().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint {method} {}", uri.path()))
}

pub(crate) fn protocol_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/v2/models/") && path.ends_with("/infer") {
        Some("v2")
    } else if path.starts_with("/v1/models/{") {
        Some("v1")
    } else if path == "/predict" {
        Some("predict")
    } else {
        None
    }
}

fn request_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()))
}

/// The model a handler served a request with, in the response's extensions: the request's
/// metrics and access line are labelled with it (without looking the model up again).
#[derive(Clone)]
pub(crate) struct ServedBy(pub Arc<Served>);

/// The handler's response (or error) with the model that served it recorded.
fn served_by(served: Arc<Served>, r: Result<Response, ApiError>) -> Response {
    let mut resp = r.into_response();
    resp.extensions_mut().insert(ServedBy(served));
    resp
}

/// Request id, JSON error bodies, metrics and the access log line, for every request.
async fn request_context(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = request_id(req.headers());
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let protocol = matched.and_then(protocol_of);
    let trace = crate::telemetry::RequestTrace::http(&req, matched);
    req.extensions_mut().insert(RequestId(id.clone()));
    if protocol.is_some() {
        st.metrics.in_flight.inc();
    }
    let path_for_log = req.uri().path().to_string();
    // For requests refused before a handler recorded its model (auth, limits): the path's.
    let uri = protocol.map(|_| req.uri().clone());
    let logged = Arc::new(std::sync::Mutex::new(None));
    let mut resp = match (&st.log, protocol) {
        (Some(_), Some(_)) => {
            REQUEST.scope(RequestCtx { logged: logged.clone() }, next.run(req)).instrument(trace.span().clone()).await
        }
        _ => next.run(req).instrument(trace.span().clone()).await,
    };

    let status = resp.status();
    let err = resp.extensions_mut().remove::<ApiError>().or_else(|| {
        (status == StatusCode::METHOD_NOT_ALLOWED)
            .then(|| ApiError::invalid(format!("method {method} is not allowed on {path_for_log}")))
    });
    if let Some(err) = &err {
        // 405 keeps its status (with the INVALID_REQUEST body); everything else uses the code's.
        let status = if status == StatusCode::METHOD_NOT_ALLOWED { status } else { err.code.status() };
        let mut r = json(status, err.body(&id));
        std::mem::swap(r.extensions_mut(), resp.extensions_mut());
        // Keep headers the error set (WWW-Authenticate, Retry-After, CORS), not its body's.
        for (name, value) in resp.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                r.headers_mut().insert(name.clone(), value.clone());
            }
        }
        resp = r;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // Which version answered; the canary's answers are counted by the canary's own pods.
    let by_canary = resp.extensions().get::<crate::canary::AnsweredByCanary>().is_some();
    let elapsed = start.elapsed();
    // Counted under the model that served it (the handler records it); requests refused before
    // it under the model their path names; names no served model matches stay "unknown".
    let served = resp.extensions_mut().remove::<ServedBy>();
    let unknown = || ("unknown".to_string(), "unknown".to_string());
    let (model, version) = match (served, resp.status()) {
        (_, StatusCode::NOT_FOUND) => unknown(),
        (Some(ServedBy(s)), _) => (s.spec.name.clone(), s.spec.version.clone()),
        (None, _) => uri
            .and_then(|uri| model_of_request(&st, &uri))
            .and_then(|(m, v)| st.models.label(&m, v.as_deref()))
            .unwrap_or_else(unknown),
    };
    if protocol.is_some() {
        st.metrics.in_flight.dec();
        if version != "unknown" {
            crate::canary::mark_version(resp.headers_mut(), &version);
        }
    }
    if let Some(protocol) = protocol.filter(|_| !by_canary) {
        let (model, version) = (model.as_str(), version.as_str());
        let code = resp.status();
        st.metrics.requests.with_label_values(&[model, version, protocol, code.as_str()]).inc();
        st.metrics.request_duration.with_label_values(&[model, version, protocol]).observe(elapsed.as_secs_f64());
    }
    trace.finish_http(resp.status().as_u16(), &model, &version, &id);
    if let Some(protocol) = protocol {
        let _in_request = trace.span().enter();
        log_request(
            &st,
            &logged,
            RequestOutcome {
                id: &id,
                model: &model,
                version: &version,
                protocol,
                status: resp.status().as_u16(),
                elapsed,
                failed: err.is_some(),
                error: err.as_ref().map(|e| e.message.clone()),
            },
        );
    }
    // The version that answered (a canary's, when it did).
    let answered = resp.headers().get(crate::canary::VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    crate::accesslog::log(crate::accesslog::Line {
        at: std::time::SystemTime::now(),
        error_level: err.as_ref().is_some_and(|e| e.code == ErrorCode::Internal),
        request_id: id,
        method: method.to_string(),
        path: path_for_log,
        model,
        version: answered.to_string(),
        protocol: protocol.unwrap_or("-"),
        status: resp.status().as_u16(),
        grpc_code: None,
        latency_us: elapsed.as_micros() as u64,
        trace_id: trace.trace_id(),
        code: err.as_ref().map(|e| e.code.as_str()),
        error: err.map(|e| e.message),
    });
    resp
}

/// The state for models that are about to load.
pub struct StateConfig {
    pub models: Vec<crate::registry::ModelSpec>,
    pub control: crate::config::ModelControl,
    pub limits: Limits,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// The prediction cache (off when `None`).
    pub cache: Option<Arc<crate::cache::Cache>>,
}

pub fn new_state(
    cfg: StateConfig,
    metrics: Arc<Metrics>,
    access: crate::access::Access,
    log: Option<Arc<crate::requestlog::RequestLog>>,
) -> Arc<AppState> {
    Arc::new(AppState {
        models: Registry::new(cfg.models, cfg.control, metrics.clone()),
        shutting_down: AtomicBool::new(false),
        metrics,
        limits: cfg.limits,
        request_timeout: cfg.request_timeout,
        max_body_bytes: cfg.max_body_bytes,
        body_timeout: cfg.body_timeout,
        access,
        log,
        cache: cfg.cache,
        canary: OnceLock::new(),
    })
}

/// The model (and version) an inference request names: in its path, or `/predict`'s `model` and
/// `version` query parameters (the only model when there is one).
fn model_of_request(st: &AppState, uri: &axum::http::Uri) -> Option<(String, Option<String>)> {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let mut parts = rest.split('/');
        let name = parts.next()?.to_string();
        let version = match (parts.next(), parts.next()) {
            (Some("versions"), Some(v)) => Some(v.to_string()),
            _ => None,
        };
        return Some((name, version));
    }
    if let Some(rest) = path.strip_prefix("/v1/models/") {
        return Some((rest.rsplit_once(':').map_or(rest, |(m, _)| m).to_string(), None));
    }
    let q: PredictQuery = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let name = st.models.pick(q.model.as_deref()).ok()?;
    Some((name, q.version))
}
