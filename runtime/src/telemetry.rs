//! OpenTelemetry traces of the runtime's requests (see the `kinfer-telemetry` crate for the
//! `OTEL_*` settings and the exporter).
//!
//! Each HTTP and gRPC request gets a server span named as the semantic conventions say
//! (`POST /v2/models/{model}/infer`, `inference.GRPCInferenceService/ModelInfer`) that continues
//! the caller's W3C `traceparent`, with children `decode`, `queue_wait`, `inference` (with the batch
//! size), `encode` and `request_log.enqueue`. Queue wait and inference are timed on the inference
//! threads; the engine hands the timestamps back with the result and [`record_engine`] turns them
//! into spans with those start and end times, so the inference threads do no span work.
//!
//! When tracing is off every function here returns at once ([`kinfer_telemetry::enabled`]):
//! no span is created and nothing is allocated.
//!
//! [`inject`] puts the current request's trace context on an outgoing request's headers (canary
//! and shadow forwarding call it).

use std::time::{Instant, SystemTime};

use axum::extract::Request;
use kinfer_telemetry::{TARGET, enabled};
use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, Status, Tracer as _},
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use kinfer_telemetry::{inject, inject_span};

/// Puts the current span's `traceparent` / `tracestate` in place of the caller's in `headers`
/// (name/value pairs kept for a copy sent later from another task, e.g. a shadow request), so
/// the called service continues this request's trace. Unchanged when tracing is off.
pub fn inject_pairs(headers: &mut Vec<(axum::http::HeaderName, axum::http::HeaderValue)>) {
    if !enabled() {
        return;
    }
    let mut own = axum::http::HeaderMap::new();
    inject(&mut own);
    if own.is_empty() {
        return;
    }
    headers.retain(|(n, _)| n != "traceparent" && n != "tracestate");
    headers.extend(own.into_iter().filter_map(|(n, v)| Some((n?, v))));
}

/// When the engine ran one request: from the queue to a session run, and the run.
#[derive(Debug, Clone, Copy)]
pub struct RunTiming {
    pub enqueued: Instant,
    pub started: Instant,
    pub finished: Instant,
    /// Rows of the session run (more than the request's when batched with others).
    pub batch_size: usize,
}

/// The span of one request (a disabled span when tracing is off).
pub struct RequestTrace {
    span: Span,
}

/// Requests that are not traced: probes and scrapes, many a minute and of no interest.
fn untraced(path: &str) -> bool {
    matches!(path, "/metrics" | "/health" | "/ready" | "/v2/health/live" | "/v2/health/ready")
        || path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.")
}

fn server_port(req: &Request) -> Option<i64> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok()))?;
    authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).map(i64::from)
}

impl RequestTrace {
    /// An HTTP server span, `{method} {route}` (the matched route template, or the method alone
    /// for unmatched paths, as the conventions ask).
    pub fn http(req: &Request, route: Option<&str>) -> RequestTrace {
        let path = req.uri().path();
        if !enabled() || untraced(path) {
            return RequestTrace { span: Span::none() };
        }
        let method = req.method().as_str();
        let name = match route {
            Some(r) => format!("{method} {r}"),
            None => method.to_string(),
        };
        let span = tracing::info_span!(target: TARGET, "request", otel.name = name, otel.kind = "server");
        kinfer_telemetry::continue_from(&span, req.headers());
        span.set_attribute("http.request.method", method.to_string());
        span.set_attribute("url.path", path.to_string());
        span.set_attribute("url.scheme", "http");
        if let Some(r) = route {
            span.set_attribute("http.route", r.to_string());
        }
        if let Some(port) = server_port(req) {
            span.set_attribute("server.port", port);
        }
        RequestTrace { span }
    }

    /// A gRPC server span named `{service}/{method}` from the request path.
    pub fn grpc(req: &Request) -> RequestTrace {
        let path = req.uri().path();
        if !enabled() || untraced(path) {
            return RequestTrace { span: Span::none() };
        }
        let full = path.trim_start_matches('/');
        let (service, method) = full.split_once('/').unwrap_or((full, ""));
        let span = tracing::info_span!(target: TARGET, "request", otel.name = full.to_string(), otel.kind = "server");
        kinfer_telemetry::continue_from(&span, req.headers());
        span.set_attribute("rpc.system", "grpc");
        span.set_attribute("rpc.service", service.to_string());
        span.set_attribute("rpc.method", method.to_string());
        if let Some(port) = server_port(req) {
            span.set_attribute("server.port", port);
        }
        RequestTrace { span }
    }

    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The trace id for the access log (None when tracing is off or the request is not traced).
    pub fn trace_id(&self) -> Option<String> {
        if self.span.is_disabled() { None } else { kinfer_telemetry::trace_id(&self.span) }
    }

    /// Model, request id; called once the response is known.
    fn common(&self, model: &str, version: &str, request_id: &str) {
        self.span.set_attribute("kinfer.model.name", model.to_string());
        self.span.set_attribute("kinfer.model.version", version.to_string());
        self.span.set_attribute("kinfer.request.id", request_id.to_string());
    }

    /// Ends an HTTP request: the status code (5xx marks the span as an error).
    pub fn finish_http(&self, status: u16, model: &str, version: &str, request_id: &str) {
        if self.span.is_disabled() {
            return;
        }
        self.common(model, version, request_id);
        self.span.set_attribute("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.span.set_attribute("error.type", status.to_string());
            self.span.set_status(Status::error(""));
        }
    }

    /// Ends a gRPC call: `rpc.grpc.status_code`; the codes the conventions count as server errors
    /// mark the span as an error.
    pub fn finish_grpc(&self, code: tonic::Code, model: &str, version: &str, request_id: &str) {
        if self.span.is_disabled() {
            return;
        }
        self.common(model, version, request_id);
        self.span.set_attribute("rpc.grpc.status_code", code as i64);
        use tonic::Code::*;
        if matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss) {
            self.span.set_attribute("error.type", format!("{code:?}"));
            self.span.set_status(Status::error(""));
        }
    }
}

/// A child span of the current request for one stage (`decode`, `encode`, `request_log.enqueue`);
/// disabled when tracing is off. Use `.in_scope(..)` for synchronous work, `.instrument(..)` for
/// a future.
#[inline]
pub fn stage(name: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, "stage", otel.name = name)
}

/// Records the engine's `queue_wait` and `inference` spans as children of the current span, with
/// the times measured on the inference thread.
pub fn record_engine(t: &RunTiming) {
    let Some(tracer) = kinfer_telemetry::tracer() else { return };
    let parent = Span::current().context();
    if !opentelemetry::trace::TraceContextExt::span(&parent).span_context().is_sampled() {
        return;
    }
    // Instants to wall-clock times, through one pair of readings.
    let (now_sys, now) = (SystemTime::now(), Instant::now());
    let wall = |i: Instant| now_sys - now.saturating_duration_since(i);
    let mut queue = tracer
        .span_builder("queue_wait")
        .with_kind(SpanKind::Internal)
        .with_start_time(wall(t.enqueued))
        .start_with_context(tracer, &parent);
    queue.end_with_timestamp(wall(t.started));
    let mut run = tracer
        .span_builder("inference")
        .with_kind(SpanKind::Internal)
        .with_start_time(wall(t.started))
        .with_attributes([KeyValue::new("kinfer.batch_size", t.batch_size as i64)])
        .start_with_context(tracer, &parent);
    run.end_with_timestamp(wall(t.finished));
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().method("POST").uri(uri);
        if let Some(h) = host {
            b = b.header(axum::http::header::HOST, h);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn probes_scrapes_health_and_reflection_are_not_traced() {
        for p in
            ["/metrics", "/health", "/ready", "/v2/health/live", "/v2/health/ready", "/grpc.health.v1.Health/Check"]
        {
            assert!(untraced(p), "{p}");
        }
        assert!(untraced("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        for p in ["/v2/models/m/infer", "/predict", "/inference.GRPCInferenceService/ModelInfer", "/v2"] {
            assert!(!untraced(p), "{p}");
        }
    }

    #[test]
    fn server_port_from_the_authority_or_the_host_header() {
        assert_eq!(server_port(&req("http://10.0.0.1:8081/x", None)), Some(8081));
        assert_eq!(server_port(&req("/x", Some("svc.ns:8080"))), Some(8080));
        assert_eq!(server_port(&req("/x", Some("[::1]:9000"))), Some(9000));
        assert_eq!(server_port(&req("/x", Some("svc.ns"))), None);
        assert_eq!(server_port(&req("/x", None)), None);
    }

    #[test]
    fn off_means_disabled_spans_and_no_trace_id() {
        // No Tracing::init in unit tests: tracing is off.
        let t = RequestTrace::http(&req("/v2/models/m/infer", None), Some("/v2/models/{model}/infer"));
        assert!(t.span().is_disabled());
        assert_eq!(t.trace_id(), None);
        assert!(stage("decode").is_disabled());
        let mut h = HeaderMap::new();
        inject(&mut h);
        assert!(h.is_empty());
    }
}
