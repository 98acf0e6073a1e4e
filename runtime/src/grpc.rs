//! The gRPC server (`KINFER_GRPC_PORT`, default 8081): the Open Inference Protocol's
//! `inference.GRPCInferenceService` (ServerLive, ServerReady, ModelReady, ServerMetadata,
//! ModelMetadata, ModelInfer), `grpc.health.v1.Health` (SERVING only while the model is ready, so
//! Kubernetes' gRPC probe works) and server reflection (v1 and v1alpha).
//!
//! A request goes decode ([`crate::protocol::grpc`]) → infer (the same engine, batching, deadline
//! and request log as REST) → encode. [`call_context`] gives every call what REST's middleware
//! gives every request: the request id (`x-request-id` metadata, else the request's `id`, else a
//! new one, returned in `x-request-id`), bearer auth on the model RPCs (metadata `authorization`),
//! the rate and concurrency limits, the deadline (`grpc-timeout`), metrics with protocol `grpc`,
//! the access log line and the request log. Errors are `ApiError`s mapped to gRPC codes in one
//! place ([`crate::error::ErrorCode::grpc_code`]). Unknown methods and services (Triton's other
//! RPCs) answer UNIMPLEMENTED.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue},
    middleware::{self, Next},
    response::Response,
};
use futures::Stream;
use tokio::net::TcpListener;
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus, health_server::HealthServer,
};
use tracing::Instrument;

use crate::{
    error::{ApiError, ErrorCode},
    protocol::grpc::{
        self as codec,
        pb::{
            self,
            grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer},
        },
    },
    server::{AppState, REQUEST, RequestCtx},
};

/// The service's full name, as health checks and reflection list it.
pub const SERVICE: &str = "inference.GRPCInferenceService";
const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Serves gRPC on `listener` until `shutdown` completes, then lets calls in flight finish.
///
/// The tonic services run as an axum router on the same hyper stack as REST (HTTP/2 with prior
/// knowledge), not on tonic's own transport server: that one enforces `grpc-timeout` itself and
/// answers CANCELLED, where the deadline here is the request's (DEADLINE_EXCEEDED, counted and
/// logged like REST's 504), and it keeps one accept loop to replace for both ports.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    limits: crate::listener::ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Watch streams never end by themselves: they end when draining starts, so the graceful
    // shutdown does not wait for them forever.
    let (drain_tx, drained) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = drain_tx.send(true);
    };
    let metrics = state.metrics.clone();
    let app = router(state, drained);
    // The same accept loop as the REST port: connection limit, header and idle deadlines.
    crate::listener::serve(listener, app, limits, metrics, shutdown).await
}

/// The gRPC services behind the per-call middleware.
/// `drained` turns true when the server starts draining.
pub fn router(state: Arc<AppState>, drained: tokio::sync::watch::Receiver<bool>) -> axum::Router {
    let inference = GrpcInferenceServiceServer::new(Inference { st: state.clone() })
        .max_decoding_message_size(state.max_body_bytes);
    let health = HealthServer::new(Health { st: state.clone(), drained });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = tonic::service::Routes::new(health).add_service(inference);
    match reflection().build_v1() {
        Ok(v1) => routes = routes.add_service(v1),
        Err(e) => tracing::warn!(error = %e, "gRPC reflection v1 is off"),
    }
    match reflection().build_v1alpha() {
        Ok(v1alpha) => routes = routes.add_service(v1alpha),
        Err(e) => tracing::warn!(error = %e, "gRPC reflection v1alpha is off"),
    }
    routes.into_axum_router().layer(middleware::from_fn_with_state(state, call_context))
}

/// `grpc.health.v1.Health` for the server (`""`) and [`SERVICE`]: SERVING exactly when the
/// model is loaded and warmed up and no SIGTERM has come (what `/v2/health/ready` says), so
/// Kubernetes' gRPC probe can be the readiness probe.
#[derive(Clone)]
struct Health {
    st: Arc<AppState>,
    drained: tokio::sync::watch::Receiver<bool>,
}

impl Health {
    fn status(&self, service: &str) -> Option<ServingStatus> {
        match service {
            "" | SERVICE => Some(if self.st.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing }),
            _ => None,
        }
    }
}

type HealthStream = std::pin::Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        let service = &req.get_ref().service;
        let status = self.status(service).ok_or_else(|| Status::not_found(format!("unknown service {service:?}")))?;
        Ok(tonic::Response::new(HealthCheckResponse { status: status as i32 }))
    }

    type WatchStream = HealthStream;

    /// The current status at once, then every change (readiness is checked every 100 ms), until
    /// the server drains.
    async fn watch(&self, req: tonic::Request<HealthCheckRequest>) -> Result<tonic::Response<HealthStream>, Status> {
        let service = req.into_inner().service;
        let stream = futures::stream::unfold((self.clone(), service, None), |(mut h, service, last)| async move {
            loop {
                let now = h.status(&service).unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(now) {
                    let item = Ok(HealthCheckResponse { status: now as i32 });
                    return Some((item, (h, service, Some(now))));
                }
                if *h.drained.borrow() {
                    return None;
                }
                if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(100), h.drained.changed()).await {
                    return None; // the server is gone
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// What the middleware and the handler share about one call.
struct Call {
    id: Arc<str>,
    /// True when the id came from `x-request-id` (the request's `id` then does not replace it).
    id_from_header: bool,
    /// The client's deadline (`grpc-timeout`), from the moment the call arrived.
    deadline: Option<Instant>,
    /// The error the handler answered with (for the access and request logs).
    error: Option<ApiError>,
    /// The canary answered (its own pods count the call).
    by_canary: bool,
    /// The model and version that served the call (metrics, access and request logs).
    model: Option<(String, String)>,
}

type SharedCall = Arc<Mutex<Call>>;

/// The `inference.GRPCInferenceService` implementation.
struct Inference {
    st: Arc<AppState>,
}

/// Records the handler's error for the logs and turns it into the gRPC status.
fn fail(call: Option<&SharedCall>, e: ApiError) -> Status {
    let status = Status::from(&e);
    if let Some(c) = call
        && let Ok(mut c) = c.lock()
    {
        c.error = Some(e);
    }
    status
}

/// The `ModelInfer` answer: the response with `x-kinfer-cache` metadata when the prediction cache
/// is on (as the header on REST; the response also carries it as its `cache` parameter), or the
/// error's status.
fn answer(
    result: Result<(pb::ModelInferResponse, Option<crate::cache::Status>), ApiError>,
    call: Option<&SharedCall>,
) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
    let (resp, cache) = result.map_err(|e| fail(call, e))?;
    let mut resp = tonic::Response::new(resp);
    if let Some(status) = cache {
        resp.metadata_mut().insert(crate::cache::HEADER, tonic::metadata::MetadataValue::from_static(status.as_str()));
    }
    Ok(resp)
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: tonic::Request<pb::ServerLiveRequest>,
    ) -> Result<tonic::Response<pb::ServerLiveResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: tonic::Request<pb::ServerReadyRequest>,
    ) -> Result<tonic::Response<pb::ServerReadyResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerReadyResponse { ready: self.st.is_ready() }))
    }

    async fn model_ready(
        &self,
        req: tonic::Request<pb::ModelReadyRequest>,
    ) -> Result<tonic::Response<pb::ModelReadyResponse>, Status> {
        let call = Self::call(&req);
        let m = req.get_ref();
        let ready = match self.st.engine(&m.name, version(&m.version)) {
            Ok(_) => !self.st.shutting_down.load(std::sync::atomic::Ordering::Acquire),
            Err(e) if e.code == ErrorCode::ModelNotReady => false,
            Err(e) => return Err(fail(call.as_ref(), e)),
        };
        Ok(tonic::Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: tonic::Request<pb::ServerMetadataRequest>,
    ) -> Result<tonic::Response<pb::ServerMetadataResponse>, Status> {
        Ok(tonic::Response::new(pb::ServerMetadataResponse {
            name: crate::server::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::server::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: tonic::Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, Status> {
        let call = Self::call(&req);
        let m = req.get_ref();
        let engine = self.st.engine(&m.name, version(&m.version)).map_err(|e| fail(call.as_ref(), e))?;
        Ok(tonic::Response::new(codec::model_metadata(&engine.info)))
    }

    async fn model_infer(
        &self,
        req: tonic::Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
        let call = Self::call(&req);
        if let Some(canary) = self.st.canary.get() {
            return self.with_canary(canary, call, req).await;
        }
        let result = self.infer(call.as_ref(), req.into_inner()).await;
        answer(result, call.as_ref())
    }

    async fn repository_index(
        &self,
        req: tonic::Request<pb::RepositoryIndexRequest>,
    ) -> Result<tonic::Response<pb::RepositoryIndexResponse>, Status> {
        let models = self
            .st
            .models
            .index(req.get_ref().ready)
            .into_iter()
            .map(|r| pb::repository_index_response::ModelIndex {
                name: r.name,
                version: r.version,
                state: r.state.into(),
                reason: r.reason,
            })
            .collect();
        Ok(tonic::Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: tonic::Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<tonic::Response<pb::RepositoryModelLoadResponse>, Status> {
        let call = Self::call(&req);
        let msg = req.into_inner();
        let load = async {
            let params = msg
                .parameters
                .into_iter()
                .map(|(k, v)| repository_parameter(&k, v).map(|v| (k, v)))
                .collect::<Result<_, _>>()?;
            let load = crate::repository::load_request(params)?;
            self.st.models.load(&msg.model_name, load).await
        };
        load.await.map_err(|e| fail(call.as_ref(), e))?;
        Ok(tonic::Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: tonic::Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<tonic::Response<pb::RepositoryModelUnloadResponse>, Status> {
        let call = Self::call(&req);
        let msg = req.into_inner();
        let unload = async {
            crate::repository::check_unload_parameters(msg.parameters.keys())?;
            self.st.models.unload(&msg.model_name).await
        };
        unload.await.map_err(|e| fail(call.as_ref(), e))?;
        Ok(tonic::Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// A load parameter as the REST body would carry it (Triton's `file:` contents are bytes: refused
/// by name, as a model here is one ONNX file at a uri).
fn repository_parameter(key: &str, p: pb::ModelRepositoryParameter) -> Result<serde_json::Value, ApiError> {
    use pb::model_repository_parameter::ParameterChoice;
    match p.parameter_choice {
        Some(ParameterChoice::StringParam(s)) => Ok(s.into()),
        Some(ParameterChoice::Int64Param(n)) => Ok(n.into()),
        Some(ParameterChoice::BoolParam(b)) => Ok(b.into()),
        Some(ParameterChoice::BytesParam(_)) | None => Err(ApiError::invalid(format!(
            "load parameter '{key}' must be a string (kinfer takes 'uri', 'version' and 'sha256')"
        ))),
    }
}

impl Inference {
    /// The canary's split (forward, fall back to [`Self::infer`]) and the shadow context.
    async fn with_canary(
        &self,
        canary: &crate::canary::Canary,
        call: Option<SharedCall>,
        req: tonic::Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, Status> {
        let msg = req.get_ref();
        let (mut id, mut left) = (Arc::<str>::from(""), self.st.request_timeout);
        if let Some(c) = &call
            && let Ok(c) = c.lock()
        {
            id = if !c.id_from_header && !msg.id.is_empty() && msg.id.len() <= 200 {
                Arc::from(msg.id.as_str())
            } else {
                c.id.clone()
            };
            if let Some(d) = c.deadline {
                left = left.min(d.saturating_duration_since(Instant::now()));
            }
        }
        if let Ok(Some(ms)) = codec::timeout_ms(&msg.parameters) {
            left = left.min(Duration::from_millis(ms));
        }
        let by_canary = |call: &Option<SharedCall>| {
            if let Some(c) = call
                && let Ok(mut c) = c.lock()
            {
                c.by_canary = true;
            }
        };
        match canary.model_infer(&req, &id, left).await {
            Ok(Some(resp)) => {
                by_canary(&call);
                return Ok(resp);
            }
            Ok(None) => {}
            Err(crate::canary::CanaryStatus::Refused(e)) => return Err(fail(call.as_ref(), e)),
            Err(crate::canary::CanaryStatus::Answered(status)) => {
                by_canary(&call);
                return Err(*status);
            }
        }
        let headers = canary
            .shadow
            .as_ref()
            .map(|_| crate::shadow::ShadowCtx::headers(|k| req.metadata().get(k).map(|v| v.as_bytes())));
        let fut = self.infer(call.as_ref(), req.into_inner());
        let result = match headers {
            None => fut.await,
            Some(headers) => {
                let c = call.clone();
                let id = move || {
                    c.as_ref().and_then(|c| c.lock().ok().map(|c| c.id.clone())).unwrap_or_else(|| Arc::from(""))
                };
                crate::shadow::CTX.scope(crate::shadow::ShadowCtx { id: Box::new(id), headers }, fut).await
            }
        };
        answer(result, call.as_ref())
    }

    /// The call's shared context, put there by [`call_context`].
    fn call<T>(req: &tonic::Request<T>) -> Option<SharedCall> {
        req.extensions().get::<SharedCall>().cloned()
    }

    /// decode → infer → encode; also says how the prediction cache answered (when it is on).
    async fn infer(
        &self,
        call: Option<&SharedCall>,
        msg: pb::ModelInferRequest,
    ) -> Result<(pb::ModelInferResponse, Option<crate::cache::Status>), ApiError> {
        let st = &self.st;
        let engine = st.engine(&msg.model_name, version(&msg.model_version))?;
        let mut deadline = None;
        if let Some(c) = call
            && let Ok(mut c) = c.lock()
        {
            c.model = Some((engine.spec.name.clone(), engine.spec.version.clone()));
            if !c.id_from_header && !msg.id.is_empty() && msg.id.len() <= 200 {
                c.id = Arc::from(msg.id.as_str());
            }
            deadline = c.deadline;
        }
        let pipeline = engine.image.pipeline.clone();
        let decode = async {
            match pipeline {
                None => codec::decode(msg, &engine.info, st.limits, None),
                Some(p) => {
                    // Image decoding is CPU work: off the async workers, as on REST.
                    let (info, limits) = (engine.info.clone(), st.limits);
                    tokio::task::spawn_blocking(move || codec::decode(msg, &info, limits, Some(&p)))
                        .await
                        .map_err(|_| ApiError::internal("the image decoding task failed"))?
                }
            }
        };
        let req = decode.instrument(crate::telemetry::stage("decode")).await?;
        // The shortest of grpc-timeout (what is left of it), the request's parameters and the
        // server's limit (applied by `infer`).
        let left_ms = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64);
        let timeout_ms = match (left_ms, req.timeout_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Sampled for the request log: `infer` hands inputs and outputs to `call_context`.
        let cache = crate::cache::Use { outputs: &req.outputs, enabled: req.cache };
        let done = crate::server::infer(st, &engine, req.inputs, timeout_ms, cache).await?;
        let mut resp = crate::telemetry::stage("encode")
            .in_scope(|| codec::encode(&engine.info, req.id, &done.outputs, &req.outputs, req.raw));
        if let Some(status) = done.cache {
            let value = pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(status.as_str().into())),
            };
            resp.parameters.insert("cache".into(), value);
        }
        Ok((resp, done.cache))
    }
}

/// Parses `grpc-timeout` (1–8 digits and a unit: H, M, S, m, u, n).
fn grpc_timeout(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(v) = headers.get("grpc-timeout") else { return Ok(None) };
    let bad = || ApiError::invalid(format!("grpc-timeout {v:?} is not 1-8 digits followed by H, M, S, m, u or n"));
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

/// The model RPCs need a token when auth is on (as `/v2/models/**` do on REST); liveness,
/// readiness, server metadata, health and reflection stay open.
fn protected(path: &str) -> bool {
    path.strip_prefix("/inference.GRPCInferenceService/")
        .is_some_and(|m| m.starts_with("Model") || m.starts_with("Repository"))
}

/// An error answered by the middleware itself, with the request id.
fn refuse(e: &ApiError, id: &str) -> Response {
    let mut resp = Status::from(e).into_http::<axum::body::Body>();
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The HTTP status that stands for a gRPC code in metrics and logs (`kinfer_requests_total`'s
/// `code` label and the request log's `status` mean the same on both ports).
fn http_equivalent(code: Code, error: Option<&ApiError>) -> u16 {
    if let Some(e) = error {
        return e.code.status().as_u16();
    }
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

/// Counts an inference call once, also when the client goes away before the answer (the future
/// is dropped): then it is 504 when its deadline had passed, else 499 (client closed).
struct InFlight {
    st: Arc<AppState>,
    /// The model that served the call, once known.
    model: Option<(String, String)>,
    start: Instant,
    deadline: Option<Instant>,
    done: bool,
}

impl InFlight {
    fn new(st: Arc<AppState>, deadline: Option<Instant>) -> InFlight {
        st.metrics.in_flight.inc();
        InFlight { st, model: None, start: Instant::now(), deadline, done: false }
    }

    fn finish(&mut self, status: u16) {
        if self.done {
            return;
        }
        self.done = true;
        let m = &self.st.metrics;
        m.in_flight.dec();
        let (model, version) = match &self.model {
            Some((name, version)) if status != 404 => (name.as_str(), version.as_str()),
            _ => ("unknown", "unknown"),
        };
        m.requests.with_label_values(&[model, version, "grpc", &status.to_string()]).inc();
        m.request_duration.with_label_values(&[model, version, "grpc"]).observe(self.start.elapsed().as_secs_f64());
    }

    /// The canary answered: in flight here, counted by the canary's pods.
    fn forwarded(&mut self) {
        if !self.done {
            self.done = true;
            self.st.metrics.in_flight.dec();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            let late = self.deadline.is_some_and(|d| Instant::now() >= d);
            self.finish(if late { 504 } else { 499 });
        }
    }
}

/// Request id, auth and limits, deadline, metrics, access log and request log for every call.
/// A request message over `KINFER_MAX_BODY_BYTES`.
fn message_too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request message exceeds the limit of {max} bytes (KINFER_MAX_BODY_BYTES)"),
    )
}

async fn call_context(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let header_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .map(Arc::<str>::from);
    let id_from_header = header_id.is_some();
    let id = header_id.unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
    let is_infer = path == INFER_PATH;
    let trace = crate::telemetry::RequestTrace::grpc(&req);

    let timeout = grpc_timeout(req.headers());
    let deadline = timeout.as_ref().ok().copied().flatten().map(|d| start + d);
    let mut in_flight = is_infer.then(|| InFlight::new(st.clone(), deadline));
    let call: SharedCall = Arc::new(Mutex::new(Call {
        id: id.clone(),
        id_from_header,
        deadline,
        error: None,
        by_canary: false,
        model: None,
    }));
    let logged: crate::server::LoggedIo = Arc::new(Mutex::new(None));

    // Auth and the rate limit, then (inference) the whole message within the body deadline, and
    // only then an inference slot: a stalled upload never holds one.
    let admitted = match timeout {
        Err(e) => Err(e),
        Ok(_) if protected(&path) => {
            let token = req.headers().get("authorization").and_then(|v| crate::access::bearer_token(v.as_bytes()));
            let api_key = req.headers().get("x-api-key").map(HeaderValue::as_bytes);
            match st.access.check(token, api_key) {
                Err(refusal) => {
                    refusal.count(&st.metrics);
                    Err(refusal.error)
                }
                Ok(()) if is_infer => {
                    // The 5-byte gRPC frame prefix on top of the message size limit.
                    match crate::access::read_body(req, st.max_body_bytes + 5, st.body_timeout).await {
                        Err(e) => {
                            let e = match e.code {
                                ErrorCode::RequestTimeout => {
                                    st.metrics.connections_shed.with_label_values(&["body_timeout"]).inc();
                                    e
                                }
                                ErrorCode::PayloadTooLarge => {
                                    st.metrics.requests_rejected.with_label_values(&["max_body_bytes"]).inc();
                                    message_too_large(st.max_body_bytes)
                                }
                                _ => e,
                            };
                            // The request was consumed by the read; it is answered with `e`.
                            req = Request::new(axum::body::Body::empty());
                            Err(e)
                        }
                        Ok(read) => {
                            req = read;
                            st.access.slot().map_err(|refusal| {
                                refusal.count(&st.metrics);
                                refusal.error
                            })
                        }
                    }
                }
                Ok(()) => Ok(None),
            }
        }
        Ok(_) => Ok(None),
    };
    let mut resp = match admitted {
        Err(e) => {
            if let Ok(mut c) = call.lock() {
                c.error = Some(e.clone());
            }
            refuse(&e, &id)
        }
        Ok(_permit) => {
            req.extensions_mut().insert(call.clone());
            let span = trace.span().clone();
            match (&st.log, is_infer) {
                (Some(_), true) => {
                    REQUEST.scope(RequestCtx { logged: logged.clone() }, next.run(req)).instrument(span).await
                }
                _ => next.run(req).instrument(span).await,
            }
        }
    };

    // A message over the size limit fails in tonic's decoder (OUT_OF_RANGE): answer it as REST
    // answers a body over the limit, RESOURCE_EXHAUSTED naming the setting.
    let mut status = Status::from_header_map(resp.headers());
    if let Some(s) = &status
        && s.code() == Code::OutOfRange
        && s.message().contains("message length too large")
    {
        let e = message_too_large(st.max_body_bytes);
        resp = refuse(&e, &id);
        status = Some(Status::from(&e));
        if let Ok(mut c) = call.lock() {
            c.error = Some(e);
        }
    }
    // Triton's other RPCs and unknown services: UNIMPLEMENTED, saying what is served.
    if status.as_ref().is_some_and(|s| s.code() == Code::Unimplemented && s.message().is_empty()) {
        let message = format!(
            "{path} is not served here; kinfer-runtime serves {SERVICE} (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload), grpc.health.v1.Health and server reflection"
        );
        resp = Status::unimplemented(message.clone()).into_http::<axum::body::Body>();
        status = Some(Status::unimplemented(message));
    }
    let (id, error, by_canary, served) = match call.lock() {
        Ok(mut c) => (c.id.clone(), c.error.take(), c.by_canary, c.model.take()),
        Err(_) => (id, None, false, None),
    };
    // A call refused before its message was read names no model: with one, it is that one.
    let served = served.or_else(|| st.models.only());
    let (model, version) = served.clone().unwrap_or_else(|| ("unknown".into(), String::new()));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if is_infer && !version.is_empty() {
        crate::canary::mark_version(resp.headers_mut(), &version);
    }
    let code = status.as_ref().map_or(Code::Ok, Status::code);
    let http = http_equivalent(code, error.as_ref());
    if let Some(f) = in_flight.as_mut() {
        f.model = served;
        if by_canary {
            f.forwarded();
        } else {
            f.finish(http);
        }
    }
    let elapsed = start.elapsed();
    let message =
        error.as_ref().map(|e| e.message.clone()).or_else(|| status.as_ref().map(|s| s.message().to_string()));
    trace.finish_grpc(code, &model, &version, &id);
    if is_infer {
        let _in_request = trace.span().enter();
        crate::server::log_request(
            &st,
            &logged,
            crate::server::RequestOutcome {
                id: &id,
                model: &model,
                version: &version,
                protocol: "grpc",
                status: http,
                elapsed,
                failed: code != Code::Ok,
                error: message.clone(),
            },
        );
    }
    let version = resp.headers().get(crate::canary::VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    crate::accesslog::log(crate::accesslog::Line {
        at: std::time::SystemTime::now(),
        error_level: error.as_ref().is_some_and(|e| e.code == ErrorCode::Internal) && message.is_some(),
        request_id: id,
        method: "POST".to_string(),
        path,
        model,
        version: version.to_string(),
        protocol: if is_infer { "grpc" } else { "-" },
        status: http,
        grpc_code: Some(format!("{code:?}")),
        latency_us: elapsed.as_micros() as u64,
        trace_id: trace.trace_id(),
        code: None,
        error: message,
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(grpc_timeout(&HeaderMap::new()).unwrap(), None);
        assert_eq!(grpc_timeout(&headers("50m")).unwrap(), Some(Duration::from_millis(50)));
        assert_eq!(grpc_timeout(&headers("2S")).unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&headers("1H")).unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&headers("999999u")).unwrap(), Some(Duration::from_micros(999_999)));
        for bad in ["m", "123456789m", "5x", "-5m", "5"] {
            let e = grpc_timeout(&headers(bad)).unwrap_err();
            assert!(e.message.contains("grpc-timeout"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn only_model_rpcs_need_a_token() {
        assert!(protected("/inference.GRPCInferenceService/ModelInfer"));
        assert!(protected("/inference.GRPCInferenceService/ModelMetadata"));
        assert!(protected("/inference.GRPCInferenceService/ModelReady"));
        assert!(!protected("/inference.GRPCInferenceService/ServerLive"));
        assert!(!protected("/inference.GRPCInferenceService/ServerMetadata"));
        assert!(!protected("/grpc.health.v1.Health/Check"));
        assert!(!protected("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
    }

    #[test]
    fn codes_in_metrics_match_rest() {
        assert_eq!(http_equivalent(Code::Ok, None), 200);
        assert_eq!(http_equivalent(Code::ResourceExhausted, Some(&ApiError::new(ErrorCode::PayloadTooLarge, ""))), 413);
        assert_eq!(http_equivalent(Code::DeadlineExceeded, None), 504);
        assert_eq!(http_equivalent(Code::Unimplemented, None), 501);
    }
}
