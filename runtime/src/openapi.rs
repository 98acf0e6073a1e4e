//! The OpenAPI document (`/openapi.json`) and Swagger UI (`/docs`, served from assets compiled
//! into the binary: nothing is fetched at build or run time). Paths come from the `#[utoipa::path]`
//! attributes on the handlers in `server.rs`; the schemas below describe the wire formats.

#![allow(dead_code)] // schema-only types: read by utoipa, never constructed

use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

/// A tensor in an Open Inference Protocol v2 request.
#[derive(Serialize, ToSchema)]
pub struct RequestInput {
    /// Input name, as in the model metadata.
    #[schema(example = "input")]
    name: String,
    /// Dimensions; the product must equal the number of elements.
    #[schema(example = json!([1, 4]))]
    shape: Vec<i64>,
    /// BOOL, UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64, FP32, FP64 or BYTES.
    #[schema(example = "FP32")]
    datatype: String,
    /// Elements, flat or nested (row-major). Omitted when `parameters.binary_data_size` is given.
    #[schema(value_type = Object, example = json!([5.1, 3.5, 1.4, 0.2]))]
    data: Option<serde_json::Value>,
    /// `binary_data_size`: bytes of this tensor in the binary section (binary tensor extension).
    #[schema(value_type = Object)]
    parameters: Option<serde_json::Value>,
}

/// An output the client asks for.
#[derive(Serialize, ToSchema)]
pub struct RequestOutput {
    #[schema(example = "probabilities")]
    name: String,
    /// `binary_data: true` returns this output in the binary section.
    #[schema(value_type = Object)]
    parameters: Option<serde_json::Value>,
}

/// `POST /v2/models/{model}/infer` body (or its JSON header, with the binary tensor extension).
#[derive(Serialize, ToSchema)]
pub struct InferenceRequest {
    /// Echoed in the response.
    id: Option<String>,
    inputs: Vec<RequestInput>,
    /// Subset of outputs to return (all when omitted).
    outputs: Option<Vec<RequestOutput>>,
    /// `timeout_ms`: deadline for this request; `binary_data_output`: all outputs binary;
    /// `cache`: `false` bypasses the prediction cache (when it is on).
    #[schema(value_type = Object)]
    parameters: Option<serde_json::Value>,
}

/// A tensor in a v2 response.
#[derive(Serialize, ToSchema)]
pub struct ResponseOutput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[schema(value_type = Object)]
    data: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    parameters: Option<serde_json::Value>,
}

/// `POST /v2/models/{model}/infer` response.
#[derive(Serialize, ToSchema)]
pub struct InferenceResponse {
    model_name: String,
    model_version: String,
    id: Option<String>,
    outputs: Vec<ResponseOutput>,
}

/// Tensor metadata.
#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    name: String,
    datatype: String,
    /// -1 where the dimension is dynamic.
    shape: Vec<i64>,
}

/// `GET /v2/models/{model}`.
#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    #[schema(example = "onnxruntime_onnx")]
    platform: String,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

/// KServe V1 and `/predict` request: one entry per row.
#[derive(Serialize, ToSchema)]
pub struct InstancesRequest {
    /// Rows: arrays for a single-input model, or objects `{input_name: value}`.
    #[schema(value_type = Vec<Object>, example = json!([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))]
    instances: Vec<serde_json::Value>,
}

/// KServe V1 response: one prediction per row, in request order.
#[derive(Serialize, ToSchema)]
pub struct V1Response {
    #[schema(value_type = Vec<Object>)]
    predictions: Vec<serde_json::Value>,
}

/// `/predict` response. Classifiers: `{"label", "probabilities": {class: p}}` per row (plus
/// `score` and `decision` with `?threshold=`); other models: `{output: value}` per row.
#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    model_name: String,
    model_version: String,
    #[schema(value_type = Vec<Object>, example = json!([{"label": 0, "probabilities": {"0": 0.98, "1": 0.02, "2": 0.0}}]))]
    predictions: Vec<serde_json::Value>,
    /// Present when the prediction cache is on: whether the answer came from it.
    cached: Option<bool>,
}

/// Every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong, naming the field and what was expected.
    #[schema(example = "input 'input' has shape [1, 3], expected [-1, 4] (-1 = any size)")]
    error: String,
    /// INVALID_REQUEST, UNAUTHORIZED, MODEL_NOT_FOUND, REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE, RATE_LIMITED,
    /// MODEL_NOT_READY, INFERENCE_TIMEOUT or INTERNAL.
    #[schema(example = "INVALID_REQUEST")]
    code: String,
    /// The `x-request-id` of the request.
    request_id: String,
}

/// Server metadata (`GET /v2`).
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    name: String,
    version: String,
    extensions: Vec<String>,
}

/// A served model and its endpoints, in `GET /`.
#[derive(Serialize, ToSchema)]
pub struct ModelLinks {
    name: String,
    version: String,
    /// READY, LOADING or UNAVAILABLE (as in `POST /v2/repository/index`).
    #[schema(example = "READY")]
    state: String,
    /// With several versions of one name, the links name the version.
    #[schema(example = "/v2/models/iris")]
    metadata: String,
    #[schema(example = "/v2/models/iris/ready")]
    ready: String,
    #[schema(example = "/v2/models/iris/infer")]
    infer: String,
    #[schema(example = "/v1/models/iris:predict")]
    predict: String,
}

/// `GET /`: what this server is and where to go next.
#[derive(Serialize, ToSchema)]
pub struct ServerIndex {
    #[schema(example = "kinfer-runtime")]
    name: String,
    version: String,
    ready: bool,
    #[schema(example = "/docs")]
    docs: String,
    #[schema(example = "/openapi.json")]
    openapi: String,
    #[schema(example = "/metrics")]
    metrics: String,
    models: Vec<ModelLinks>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kinfer-runtime",
        description = "Serves ONNX models over the Open Inference Protocol v2 (KServe / Triton / MLServer), KServe V1 and a plain /predict, with Triton's model repository extension for model control. Errors are JSON {error, code, request_id}; every response carries x-request-id. When bearer auth is on, /v2/models/**, /v2/repository/**, /v1/models/** and /predict need `Authorization: Bearer <token>`."
    ),
    paths(
        crate::server::root,
        crate::server::health_alias,
        crate::server::ready_alias,
        crate::server::server_metadata,
        crate::server::live,
        crate::server::ready,
        crate::server::v2_model_metadata,
        crate::server::v2_model_ready,
        crate::server::v2_infer,
        crate::server::v1_list,
        crate::server::v1_model,
        crate::server::v1_predict,
        crate::server::predict,
        crate::repository::index,
        crate::repository::load,
        crate::repository::unload,
        crate::server::metrics,
    ),
    components(schemas(
        InferenceRequest, InferenceResponse, RequestInput, RequestOutput, ResponseOutput, ModelMetadata,
        TensorMetadata, InstancesRequest, V1Response, PredictResponse, ErrorResponse, ServerMetadata,
        ServerIndex, ModelLinks
    )),
    tags(
        (name = "v2", description = "Open Inference Protocol v2"),
        (name = "v1", description = "KServe V1"),
        (name = "predict", description = "The simple case: rows in, predictions out (`model` query parameter when several models are served)"),
        (name = "repository", description = "Triton's model repository extension: index, load, unload (load/unload need KINFER_MODEL_CONTROL=explicit)"),
        (name = "health", description = "Probes and metrics (never need a token)")
    )
)]
pub struct ApiDoc;

/// The document, served at /openapi.json.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
