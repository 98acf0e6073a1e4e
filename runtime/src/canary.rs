//! Canary routing on the stable runtime: which version answers an inference request, forwarding
//! to the candidate, and falling back to stable when the candidate fails.
//!
//! The operator runs the candidate as its own Deployment and Service and sets `KINFER_CANARY_*` on
//! the stable pods (README.md, "Canary"). In **split** mode a share of inference requests (all
//! protocols: v2 REST with the binary extension, V1, `/predict` and gRPC `ModelInfer`) is
//! forwarded to the candidate and answered from it:
//!
//! - `x-kinfer-route: stable|canary` forces a side (for testing); any other value → 400;
//! - else, with `KINFER_CANARY_STICKY_HEADER`, the header's value picks the side by a stable hash
//!   (FNV-1a 64 of the bytes → bucket 0..10000, canary when bucket < percent × 100): the same value
//!   lands on the same version on every pod and across restarts, and raising the percent only moves
//!   keys from stable to canary;
//! - else a uniform draw.
//!
//! A forwarded REST request goes as it came (method, path, query, body and the headers in
//! [`FORWARDED_HEADERS`]) through one pooled HTTP client; gRPC `ModelInfer` goes through one tonic
//! channel to `KINFER_CANARY_GRPC_URL` with the same metadata. Auth, rate, body and concurrency
//! limits have already been applied on stable (this hook runs after the access guard).
//!
//! **Fallback**: when the candidate cannot be reached, does not answer within
//! `KINFER_CANARY_TIMEOUT_MS` (never longer than the request's own deadline), answers 5xx (503:
//! not ready) or gRPC UNAVAILABLE / INTERNAL / UNKNOWN / DEADLINE_EXCEEDED, stable serves the
//! request itself and counts it in `kinfer_canary_fallbacks_total{reason}`; a candidate 4xx (the
//! client's fault) is returned as is. Every inference response names the version that answered in
//! `x-kinfer-model-version` (REST header, gRPC metadata).
//!
//! In **shadow** mode stable answers everything and [`crate::shadow`] copies requests to the
//! candidate in the background.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus::{IntCounterVec, Opts};
use tonic::{Code, transport::Channel};

use crate::{
    config::Config,
    error::ApiError,
    protocol::grpc::pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
    server::{AppState, RequestId},
};

/// Request header that forces a side: `stable` or `canary`.
pub const ROUTE_HEADER: &str = "x-kinfer-route";
/// Response header (REST) and metadata key (gRPC) naming the model version that answered.
pub const VERSION_HEADER: &str = "x-kinfer-model-version";

/// Request headers (and gRPC metadata keys) a forwarded request keeps.
pub const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "inference-header-content-length",
    "authorization",
    "x-api-key",
    "traceparent",
    "tracestate",
];

/// Response headers a forwarded answer keeps.
const RETURNED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "inference-header-content-length",
    VERSION_HEADER,
    "retry-after",
    "www-authenticate",
];

/// Buckets of the split: percent × 100, so two decimals of a percent count.
const BUCKETS: u32 = 10_000;

/// How the candidate gets traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// `percent_bp` of 10 000 buckets are answered by the candidate.
    Split { percent_bp: u32, sticky: Option<HeaderName> },
    /// Stable answers; `sample_rate` of requests are copied to the candidate (at most `queue`
    /// waiting).
    Shadow { sample_rate: f64, queue: usize },
}

/// The validated `KINFER_CANARY_*` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// REST base URL without a trailing slash, e.g. `http://10.96.0.12:8080`.
    pub rest_url: String,
    pub grpc_url: Option<String>,
    pub mode: Mode,
    pub version: String,
    pub timeout: Duration,
}

impl Settings {
    /// The canary settings, `None` when `KINFER_CANARY_URL` is unset; errors name the variable.
    pub fn from_config(cfg: &Config) -> Result<Option<Settings>, String> {
        let set = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let grpc = set(&cfg.canary_grpc_url);
        let Some(url) = set(&cfg.canary_url) else {
            if grpc.is_some() {
                return Err(
                    "KINFER_CANARY_GRPC_URL is set but KINFER_CANARY_URL is not: the canary needs its REST URL".into(),
                );
            }
            return Ok(None);
        };
        let rest_url = base_url("KINFER_CANARY_URL", &url)?;
        let grpc_url = grpc.map(|g| base_url("KINFER_CANARY_GRPC_URL", &g)).transpose()?;
        let percent = cfg.canary_percent.unwrap_or(0.0);
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(format!("KINFER_CANARY_PERCENT must be between 0 and 100, got {percent}"));
        }
        let sample_rate = cfg.canary_sample_rate.unwrap_or(1.0);
        if !sample_rate.is_finite() || !(0.0..=1.0).contains(&sample_rate) {
            return Err(format!("KINFER_CANARY_SAMPLE_RATE must be between 0 and 1, got {sample_rate}"));
        }
        if cfg.canary_timeout_ms == 0 {
            return Err("KINFER_CANARY_TIMEOUT_MS must be at least 1".into());
        }
        if cfg.canary_shadow_queue == 0 {
            return Err("KINFER_CANARY_SHADOW_QUEUE must be at least 1".into());
        }
        let sticky = match set(&cfg.canary_sticky_header) {
            Some(h) => Some(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("KINFER_CANARY_STICKY_HEADER must be an HTTP header name, got {h:?}"))?,
            ),
            None => None,
        };
        let mode = match set(&cfg.canary_mode).as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("split") => {
                if cfg.canary_sample_rate.is_some() {
                    tracing::warn!("KINFER_CANARY_SAMPLE_RATE applies to shadow mode only; ignored in split mode");
                }
                Mode::Split { percent_bp: (percent * 100.0).round() as u32, sticky }
            }
            Some("shadow") => {
                if percent > 0.0 {
                    return Err(format!(
                        "KINFER_CANARY_PERCENT is {percent} but KINFER_CANARY_MODE is shadow: shadow answers every \
                         request from stable (use KINFER_CANARY_SAMPLE_RATE for the share copied), or set mode split"
                    ));
                }
                if sticky.is_some() {
                    tracing::warn!("KINFER_CANARY_STICKY_HEADER applies to split mode only; ignored in shadow mode");
                }
                Mode::Shadow { sample_rate, queue: cfg.canary_shadow_queue }
            }
            Some(other) => return Err(format!("KINFER_CANARY_MODE must be split or shadow, got {other:?}")),
        };
        let version = set(&cfg.canary_version).unwrap_or_else(|| "canary".into());
        if HeaderValue::from_str(&version).is_err() {
            return Err(format!("KINFER_CANARY_VERSION must be printable ASCII, got {version:?}"));
        }
        Ok(Some(Settings { rest_url, grpc_url, mode, version, timeout: Duration::from_millis(cfg.canary_timeout_ms) }))
    }
}

/// Checks an `http(s)://host[:port]` base URL; returns it without a trailing slash.
fn base_url(var: &str, url: &str) -> Result<String, String> {
    let bad =
        |why: &str| format!("{var} must be an http(s) base URL such as http://10.96.0.12:8080 ({why}), got {url:?}");
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("scheme is not http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The side that answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Stable,
    Canary,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Stable => "stable",
            Route::Canary => "canary",
        }
    }
}

/// Why a request the candidate was meant to answer was served by stable (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No connection, or the connection broke.
    Unreachable,
    /// No answer within `KINFER_CANARY_TIMEOUT_MS` (or the request's deadline).
    Timeout,
    /// 503 / gRPC UNAVAILABLE from the candidate server.
    NotReady,
    /// Another 5xx, or gRPC INTERNAL / UNKNOWN / DEADLINE_EXCEEDED.
    ServerError,
}

impl Fallback {
    pub const ALL: [Fallback; 4] =
        [Fallback::Unreachable, Fallback::Timeout, Fallback::NotReady, Fallback::ServerError];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Unreachable => "unreachable",
            Fallback::Timeout => "timeout",
            Fallback::NotReady => "not_ready",
            Fallback::ServerError => "server_error",
        }
    }
}

/// FNV-1a (64-bit) of `value`, reduced to a split bucket in `0..10000`. Deterministic across
/// processes and builds (unlike std's randomised `DefaultHasher`).
pub fn bucket(value: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(BUCKETS)) as u32
}

/// Metrics of the routing side (stable pods).
#[derive(Clone)]
pub struct CanaryMetrics {
    pub requests: IntCounterVec,
    pub fallbacks: IntCounterVec,
}

impl CanaryMetrics {
    /// `model`: the served model, a constant label (as on the other per-model series).
    fn new(m: &crate::metrics::Metrics, model: &str) -> Result<CanaryMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "kinfer_canary_requests_total",
                "Inference requests by the side the split sent them to (stable pods): stable or canary",
            )
            .const_label("model", model),
            &["route"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "kinfer_canary_fallbacks_total",
                "Requests routed to the canary but served by stable: unreachable, timeout, not_ready, server_error",
            )
            .const_label("model", model),
            &["reason"],
        )?;
        for r in [Route::Stable, Route::Canary] {
            requests.with_label_values(&[r.as_str()]);
        }
        for f in Fallback::ALL {
            fallbacks.with_label_values(&[f.as_str()]);
        }
        m.register(Box::new(requests.clone()))?;
        m.register(Box::new(fallbacks.clone()))?;
        Ok(CanaryMetrics { requests, fallbacks })
    }
}

/// The canary of this stable runtime: settings, clients and metrics.
pub struct Canary {
    pub settings: Settings,
    http: reqwest::Client,
    grpc: Option<GrpcInferenceServiceClient<Channel>>,
    pub metrics: CanaryMetrics,
    /// The shadow copier (shadow mode only).
    pub shadow: Option<crate::shadow::Shadow>,
    /// Seconds since start of the last fallback warning (one line per second at most).
    last_warning: AtomicU64,
    started: Instant,
}

/// Marks a response the candidate answered (the stable side does not count it as its own).
#[derive(Clone, Copy, Debug)]
pub struct AnsweredByCanary;

impl Canary {
    /// Builds the clients (connections are made on first use) and registers the metrics; in
    /// shadow mode starts the copier. Must run inside the Tokio runtime.
    pub fn start(settings: Settings, metrics: &crate::metrics::Metrics, model: &str) -> Result<Arc<Canary>, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| format!("cannot build the canary HTTP client: {e}"))?;
        let grpc = match &settings.grpc_url {
            Some(url) => {
                let endpoint = Channel::from_shared(url.clone())
                    .map_err(|e| format!("KINFER_CANARY_GRPC_URL {url:?} is not a valid endpoint: {e}"))?
                    .connect_timeout(settings.timeout)
                    .tcp_nodelay(true);
                Some(GrpcInferenceServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(usize::MAX))
            }
            None => None,
        };
        let cm = CanaryMetrics::new(metrics, model).map_err(|e| format!("cannot register canary metrics: {e}"))?;
        let shadow = match settings.mode {
            Mode::Shadow { sample_rate, queue } => Some(crate::shadow::Shadow::start(
                crate::shadow::ShadowConfig {
                    infer_url: format!("{}/v2/models/{model}/infer", settings.rest_url),
                    version: settings.version.clone(),
                    sample_rate,
                    queue,
                    timeout: settings.timeout,
                },
                http.clone(),
                metrics,
                model,
            )?),
            Mode::Split { .. } => None,
        };
        tracing::info!(
            url = %settings.rest_url, grpc_url = settings.grpc_url.as_deref().unwrap_or("-"),
            mode = ?settings.mode, version = %settings.version, timeout_ms = settings.timeout.as_millis() as u64,
            "canary on");
        Ok(Arc::new(Canary {
            settings,
            http,
            grpc,
            metrics: cm,
            shadow,
            last_warning: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// The side for a request whose headers (or gRPC metadata) `get` reads. A request that names
    /// a model version (v2 `/versions/{v}/`, gRPC `model_version`) goes to the side serving it:
    /// the candidate's version to the candidate, any other to stable (which serves or 404s it).
    pub fn route<'a>(&self, version: Option<&str>, get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Route, ApiError> {
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            return Ok(if v == self.settings.version { Route::Canary } else { Route::Stable });
        }
        if let Some(v) = get(ROUTE_HEADER) {
            return if v.eq_ignore_ascii_case(b"stable") {
                Ok(Route::Stable)
            } else if v.eq_ignore_ascii_case(b"canary") {
                Ok(Route::Canary)
            } else {
                Err(ApiError::invalid(format!(
                    "header {ROUTE_HEADER} must be 'stable' or 'canary', got {:?}",
                    String::from_utf8_lossy(v)
                )))
            };
        }
        let Mode::Split { percent_bp, sticky } = &self.settings.mode else { return Ok(Route::Stable) };
        let b = match *percent_bp {
            0 => return Ok(Route::Stable),
            p if p >= BUCKETS => return Ok(Route::Canary),
            _ => match sticky.as_ref().and_then(|h| get(h.as_str())) {
                Some(v) => bucket(v),
                None => fastrand::u32(0..BUCKETS),
            },
        };
        Ok(if b < *percent_bp { Route::Canary } else { Route::Stable })
    }

    /// Counts a fallback and logs it (at most one warning a second; the counter has them all).
    fn fell_back(&self, reason: Fallback, id: &str, detail: &str) {
        self.metrics.fallbacks.with_label_values(&[reason.as_str()]).inc();
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now > last && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(request_id = %id, reason = reason.as_str(), error = %detail, url = %self.settings.rest_url,
                "canary failed; stable served the request (kinfer_canary_fallbacks_total counts every one)");
        } else {
            tracing::debug!(request_id = %id, reason = reason.as_str(), error = %detail, "canary failed; stable served the request");
        }
    }

    /// How long to wait for the candidate: its timeout, never past the request's deadline.
    fn wait(&self, deadline: Duration) -> Duration {
        self.settings.timeout.min(deadline)
    }

    /// Forwards a REST request; `Err` when stable must serve it instead.
    async fn forward_rest(
        &self,
        parts: &axum::http::request::Parts,
        body: bytes::Bytes,
        id: &str,
        deadline: Duration,
    ) -> Result<Response, (Fallback, String)> {
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut forwarded = HeaderMap::new();
        for name in FORWARDED_HEADERS {
            for v in parts.headers.get_all(*name) {
                forwarded.append(*name, v.clone());
            }
        }
        // With tracing on, the canary's span is a child of this request's (not of the caller's).
        crate::telemetry::inject(&mut forwarded);
        let mut rb = self.http.request(parts.method.clone(), format!("{}{pq}", self.settings.rest_url)).body(body);
        rb = rb.headers(forwarded).header("x-request-id", id);
        let exchange = async {
            let r = rb.send().await?;
            let status = r.status();
            let headers = r.headers().clone();
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let wait = self.wait(deadline);
        let (status, headers, body) = match tokio::time::timeout(wait, exchange).await {
            Err(_) => return Err((Fallback::Timeout, format!("no answer within {} ms", wait.as_millis()))),
            Ok(Err(e)) if e.is_timeout() => return Err((Fallback::Timeout, e.to_string())),
            Ok(Err(e)) => return Err((Fallback::Unreachable, error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Err((Fallback::NotReady, format!("canary answered {status}")));
        }
        if status.is_server_error() {
            return Err((Fallback::ServerError, format!("canary answered {status}")));
        }
        let mut resp = (status, body).into_response();
        for name in RETURNED_HEADERS {
            if let Some(v) = headers.get(*name) {
                resp.headers_mut().insert(*name, v.clone());
            }
        }
        if !resp.headers().contains_key(VERSION_HEADER)
            && let Ok(v) = HeaderValue::from_str(&self.settings.version)
        {
            resp.headers_mut().insert(VERSION_HEADER, v);
        }
        resp.extensions_mut().insert(AnsweredByCanary);
        Ok(resp)
    }

    /// gRPC `ModelInfer`: `Ok(Some)` when the candidate answered (or refused the request as the
    /// client's fault: `Err` then carries its status), `Ok(None)` when stable serves it.
    pub async fn model_infer(
        &self,
        req: &tonic::Request<pb::ModelInferRequest>,
        id: &str,
        deadline: Duration,
    ) -> Result<Option<tonic::Response<pb::ModelInferResponse>>, CanaryStatus> {
        let Some(client) = &self.grpc else { return Ok(None) };
        let md = req.metadata();
        let version = Some(req.get_ref().model_version.as_str());
        let route = self.route(version, |k| md.get(k).map(|v| v.as_bytes())).map_err(CanaryStatus::Refused)?;
        self.metrics.requests.with_label_values(&[route.as_str()]).inc();
        if route == Route::Stable {
            return Ok(None);
        }
        let wait = self.wait(deadline);
        let mut fwd = tonic::Request::new(req.get_ref().clone());
        for name in FORWARDED_HEADERS {
            if let Some(v) = md.get(*name) {
                fwd.metadata_mut().insert(*name, v.clone());
            }
        }
        if let Ok(v) = id.parse() {
            fwd.metadata_mut().insert("x-request-id", v);
        }
        // With tracing on, the canary's span is a child of this call's (not of the caller's).
        let mut trace = HeaderMap::new();
        crate::telemetry::inject(&mut trace);
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = trace.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
                fwd.metadata_mut().insert(name, v);
            }
        }
        fwd.set_timeout(wait);
        let mut client = client.clone();
        let result: Result<(), (Fallback, String)> = match tokio::time::timeout(wait, client.model_infer(fwd)).await {
            Err(_) => Err((Fallback::Timeout, format!("no answer within {} ms", wait.as_millis()))),
            Ok(Ok(answer)) => {
                // Only the message and the version go back (the call's own middleware sets the
                // request id and transport headers).
                let version =
                    answer.metadata().get(VERSION_HEADER).cloned().or_else(|| self.settings.version.parse().ok());
                let mut resp = tonic::Response::new(answer.into_inner());
                if let Some(v) = version {
                    resp.metadata_mut().insert(VERSION_HEADER, v);
                }
                return Ok(Some(resp));
            }
            Ok(Err(s)) => match s.code() {
                Code::Unavailable if is_transport_error(&s) => Err((Fallback::Unreachable, s.message().to_string())),
                Code::Unavailable => Err((Fallback::NotReady, s.message().to_string())),
                Code::DeadlineExceeded => Err((Fallback::Timeout, s.message().to_string())),
                Code::Internal | Code::Unknown => Err((Fallback::ServerError, s.message().to_string())),
                _ => return Err(CanaryStatus::Answered(Box::new(s))),
            },
        };
        if let Err((reason, detail)) = result {
            self.fell_back(reason, id, &detail);
        }
        Ok(None)
    }
}

/// A gRPC answer that ends the call without stable serving it.
#[derive(Debug)]
pub enum CanaryStatus {
    /// The route header was invalid.
    Refused(ApiError),
    /// The candidate refused the request as the client's fault (returned as is).
    Answered(Box<tonic::Status>),
}

/// Whether tonic made this status from a transport failure (no connection) rather than the
/// candidate's answer.
fn is_transport_error(s: &tonic::Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The request's own deadline on REST: the server's limit, shortened by the client's
/// `timeout_ms` (query parameter on V1 and `/predict`, request `parameters` on v2).
fn rest_deadline(st: &AppState, parts: &axum::http::request::Parts, body: &[u8], protocol: &str) -> Duration {
    #[derive(serde::Deserialize)]
    struct Q {
        timeout_ms: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct V2 {
        #[serde(default)]
        parameters: Option<Q>,
    }
    let client = match protocol {
        "v2" => {
            let json = match parts.headers.get(crate::protocol::v2::HEADER_LENGTH) {
                Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).and_then(|n| body.get(..n)),
                None => Some(body),
            };
            json.and_then(|j| serde_json::from_slice::<V2>(j).ok()).and_then(|r| r.parameters?.timeout_ms)
        }
        _ => parts.uri.query().and_then(query_timeout).map(|q: Q| q.timeout_ms).unwrap_or(None),
    };
    match client {
        Some(ms) => Duration::from_millis(ms).min(st.request_timeout),
        None => st.request_timeout,
    }
}

/// `timeout_ms` from a query string.
fn query_timeout<T: serde::de::DeserializeOwned>(q: &str) -> Option<T> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{q}").parse().ok()?).ok().map(|q| q.0)
}

/// The REST hook (after the access guard): routes inference requests in split mode, forwards the
/// canary's share and falls back to stable. Installed only when a canary is configured.
pub async fn rest(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(canary) = st.canary.get() else { return next.run(req).await };
    let protocol = req.extensions().get::<MatchedPath>().and_then(|m| crate::server::protocol_of(m.as_str()));
    let (Some(protocol), &Method::POST) = (protocol, req.method()) else { return next.run(req).await };
    let version = path_version(req.uri().path());
    let route = match canary.route(version, |k| req.headers().get(k).map(HeaderValue::as_bytes)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    canary.metrics.requests.with_label_values(&[route.as_str()]).inc();
    if route == Route::Stable {
        if canary.shadow.is_none() {
            return next.run(req).await;
        }
        // Shadow mode: what `server::infer` needs to send the copy.
        let id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_else(|| Arc::from(""));
        let ctx = crate::shadow::ShadowCtx {
            id: Box::new(move || id.clone()),
            headers: crate::shadow::ShadowCtx::headers(|k| req.headers().get(k).map(HeaderValue::as_bytes)),
        };
        return crate::shadow::CTX.scope(ctx, next.run(req)).await;
    }
    let (parts, body) = req.into_parts();
    // The access guard has read the body in full: this only takes the bytes back.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::invalid(format!("cannot read the request body: {e}")).into_response(),
    };
    let id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_else(|| Arc::from(""));
    let deadline = rest_deadline(&st, &parts, &body, protocol);
    match canary.forward_rest(&parts, body.clone(), &id, deadline).await {
        Ok(resp) => resp,
        Err((reason, detail)) => {
            canary.fell_back(reason, &id, &detail);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
    }
}

/// The version a v2 path names: `/v2/models/{m}/versions/{v}/infer`.
fn path_version(path: &str) -> Option<&str> {
    let mut seg = path.strip_prefix("/v2/models/")?.split('/');
    let (_model, versions, v) = (seg.next()?, seg.next()?, seg.next()?);
    (versions == "versions").then_some(v)
}

/// Sets `x-kinfer-model-version` to stable's version when the response has none (answers stable
/// served itself; the canary's carry its own).
pub fn mark_version(headers: &mut HeaderMap, stable: &str) {
    if !headers.contains_key(VERSION_HEADER)
        && let Ok(v) = HeaderValue::from_str(stable)
    {
        headers.insert(header::HeaderName::from_static(VERSION_HEADER), v);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn settings(env: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let mut args = vec!["k".to_string(), "--model-uri".into(), "/m.onnx".into()];
        for (k, v) in env {
            args.push(format!("--{k}"));
            args.push((*v).to_string());
        }
        Settings::from_config(&Config::parse_from(args))
    }

    #[test]
    fn unset_url_means_no_canary() {
        assert!(settings(&[]).unwrap().is_none());
        assert!(settings(&[("canary-url", " ")]).unwrap().is_none());
        let e = settings(&[("canary-grpc-url", "http://1.2.3.4:8081")]).unwrap_err();
        assert!(e.contains("KINFER_CANARY_URL"), "{e}");
    }

    #[test]
    fn split_settings() {
        let s = settings(&[
            ("canary-url", "http://10.96.0.12:8080/"),
            ("canary-percent", "12.5"),
            ("canary-sticky-header", "X-User"),
            ("canary-version", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.rest_url, "http://10.96.0.12:8080");
        assert_eq!(s.mode, Mode::Split { percent_bp: 1250, sticky: Some(HeaderName::from_static("x-user")) });
        assert_eq!((s.version.as_str(), s.timeout), ("2", Duration::from_millis(2000)));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let url = ("canary-url", "http://10.0.0.1:8080");
        for (extra, var) in [
            (("canary-percent", "100.5"), "KINFER_CANARY_PERCENT"),
            (("canary-percent", "-1"), "KINFER_CANARY_PERCENT"),
            (("canary-percent", "NaN"), "KINFER_CANARY_PERCENT"),
            (("canary-mode", "mirror"), "KINFER_CANARY_MODE"),
            (("canary-sample-rate", "1.5"), "KINFER_CANARY_SAMPLE_RATE"),
            (("canary-sticky-header", "bad header"), "KINFER_CANARY_STICKY_HEADER"),
            (("canary-grpc-url", "10.0.0.1:8081"), "KINFER_CANARY_GRPC_URL"),
            (("canary-timeout-ms", "0"), "KINFER_CANARY_TIMEOUT_MS"),
            (("canary-shadow-queue", "0"), "KINFER_CANARY_SHADOW_QUEUE"),
        ] {
            let e = settings(&[url, extra]).unwrap_err();
            assert!(e.contains(var), "{extra:?}: {e}");
        }
        for bad in ["10.0.0.1:8080", "ftp://h/", "http://h:8080/?a=1", "http://"] {
            let e = settings(&[("canary-url", bad)]).unwrap_err();
            assert!(e.contains("KINFER_CANARY_URL"), "{bad}: {e}");
        }
        let e = settings(&[url, ("canary-mode", "shadow"), ("canary-percent", "10")]).unwrap_err();
        assert!(e.contains("KINFER_CANARY_PERCENT") && e.contains("shadow"), "{e}");
        let s = settings(&[url, ("canary-mode", "shadow"), ("canary-sample-rate", "0.25")]).unwrap().unwrap();
        assert_eq!(s.mode, Mode::Shadow { sample_rate: 0.25, queue: 1024 });
    }

    #[test]
    fn versions_in_the_path() {
        assert_eq!(path_version("/v2/models/iris/versions/2/infer"), Some("2"));
        assert_eq!(path_version("/v2/models/iris/infer"), None);
        assert_eq!(path_version("/v1/models/iris:predict"), None);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // FNV-1a 64 test vectors: "" and "a".
        assert_eq!(bucket(b""), (0xcbf2_9ce4_8422_2325u64 % 10_000) as u32);
        assert_eq!(bucket(b"a"), (0xaf63_dc4c_8601_ec8cu64 % 10_000) as u32);
        let below = (0..20_000).filter(|i| bucket(format!("user-{i}").as_bytes()) < 2_000).count();
        // 20% of 20 000 keys, within 5 sigma (sigma ≈ 57).
        assert!((4_000i64 - below as i64).abs() < 285, "{below}");
    }
}
