//! OpenTelemetry traces for the kinfer runtime and operator, configured only by the standard
//! `OTEL_*` variables.
//!
//! - [`Settings::from_env`] reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
//!   `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` (`grpc`, `http/protobuf`), `OTEL_TRACES_SAMPLER` /
//!   `OTEL_TRACES_SAMPLER_ARG` and `OTEL_SDK_DISABLED`. No endpoint (or `OTEL_SDK_DISABLED=true`)
//!   means tracing is off: no layer is installed and [`enabled`] is false, so callers skip all span
//!   work. `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` and the `OTEL_BSP_*` batch settings are
//!   read by the SDK.
//! - [`Tracing::init`] builds the OTLP exporter and a batch span processor behind a bounded queue
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`): a span that does not fit is dropped and counted in
//!   `kinfer_trace_spans_dropped_total{reason="queue_full"}`, a batch the collector did not take in
//!   `{reason="export_failed"}`. Export runs on the SDK's own thread; it never blocks a caller.
//! - Spans are `tracing` spans with target [`TARGET`], turned into OpenTelemetry spans by
//!   tracing-opentelemetry ([`Tracing::layer`]); the log output never sees them.
//! - [`extract`] / [`inject`] carry the W3C `traceparent` / `tracestate` headers.

use std::{
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::filter_fn, registry::LookupSpan};

/// The `tracing` target of every span meant for OpenTelemetry. The log layer filters it out; the
/// OpenTelemetry layer takes only it (and warnings and errors, as span events).
pub const TARGET: &str = "kinfer::otel";

/// Spans the exporter lost, by reason (`queue_full`, `export_failed`). Register it in the process's
/// Prometheus registry ([`register_metrics`]).
pub static SPANS_DROPPED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "kinfer_trace_spans_dropped_total",
            "Trace spans not exported: the export queue was full (queue_full) or the collector refused or did not answer (export_failed)",
        ),
        &["reason"],
    )
    .expect("static metric definition is valid")
});

/// Registers [`SPANS_DROPPED`] (with both reasons at 0) in `registry`.
pub fn register_metrics(registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
    for reason in ["queue_full", "export_failed"] {
        SPANS_DROPPED.with_label_values(&[reason]);
    }
    registry.register(Box::new(SPANS_DROPPED.clone()))
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether traces are exported. When false, callers create no spans at all.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The tracer, for spans with explicit start and end times (work timed on other threads).
pub fn tracer() -> Option<&'static SdkTracer> {
    if enabled() { TRACER.get() } else { None }
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// What the `OTEL_*` variables ask for when tracing is on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL spans are sent to (for HTTP, `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    pub sampler: Sampler,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048).
    pub max_queue_size: usize,
}

fn var(lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl Settings {
    /// Reads the process environment. `Ok(None)`: tracing is off.
    pub fn from_env() -> Result<Option<Settings>, String> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`. Invalid values are errors naming the variable.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
        if var(lookup, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol = match var(lookup, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| var(lookup, "OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v)))
        {
            None => Protocol::HttpProtobuf,
            Some((_, v)) if v == "grpc" => Protocol::Grpc,
            Some((_, v)) if v == "http/protobuf" => Protocol::HttpProtobuf,
            Some((name, v)) => {
                return Err(format!("{name}={v:?} is not supported; use \"grpc\" or \"http/protobuf\""));
            }
        };
        let (name, endpoint) = match var(lookup, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
            None => match var(lookup, "OTEL_EXPORTER_OTLP_ENDPOINT") {
                // The generic endpoint is the collector's base URL: HTTP appends the signal path.
                Some(e) if protocol == Protocol::HttpProtobuf => {
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", e.trim_end_matches('/')))
                }
                Some(e) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
                None => return Ok(None),
            },
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("{name}={endpoint:?} is not a URL: {e}"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(_)) => {}
            (Some("https"), Some(_)) if protocol == Protocol::HttpProtobuf => {}
            (Some("https"), Some(_)) => {
                return Err(format!(
                    "{name}={endpoint:?}: OTLP over gRPC with TLS is not built in; use an http:// endpoint or OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
                ));
            }
            _ => return Err(format!("{name}={endpoint:?} must be an http:// or https:// URL with a host")),
        }
        let sampler = sampler(lookup)?;
        let max_queue_size = match var(lookup, "OTEL_BSP_MAX_QUEUE_SIZE") {
            None => 2048,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("OTEL_BSP_MAX_QUEUE_SIZE={v:?} must be a positive integer"))?,
        };
        Ok(Some(Settings { endpoint, protocol, sampler, max_queue_size }))
    }
}

/// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
fn sampler(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        match var(lookup, "OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG={v:?} must be a ratio between 0 and 1")),
        }
    };
    let name = var(lookup, "OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?))),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported; use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ));
        }
    })
}

/// The running trace pipeline. [`Tracing::shutdown`] exports what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracing {
    /// Builds the exporter and the tracer provider and turns [`enabled`] on. Must run inside a
    /// Tokio runtime (the gRPC exporter's channel lives on it). `default_service_name` is used
    /// unless `OTEL_SERVICE_NAME` or `service.name` in `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
    pub fn init(settings: &Settings, default_service_name: &str, version: &str) -> Result<Tracing, String> {
        let exporter = match settings.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .build(),
        }
        .map_err(|e| format!("cannot build the OTLP exporter for {}: {e}", settings.endpoint))?;
        let pending = Arc::new(AtomicUsize::new(0));
        // The other OTEL_BSP_* settings (delay, batch size, export timeout) come from the env.
        let batch = BatchConfigBuilder::default().with_max_queue_size(settings.max_queue_size).build();
        let processor = BatchSpanProcessor::new(Counted { inner: exporter, pending: pending.clone() }, batch);
        let processor = Bounded { inner: processor, pending, max: settings.max_queue_size };

        let mut resource = Resource::builder().with_attribute(KeyValue::new("service.version", version.to_string()));
        let named_in_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
                .is_ok_and(|v| v.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
        if !named_in_env {
            resource = resource.with_service_name(default_service_name.to_string());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.clone())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("kinfer");
        let _ = TRACER.set(tracer.clone());
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Tracing { provider, tracer })
    }

    /// The `tracing` layer that turns [`TARGET`] spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        layer(self.tracer.clone())
    }

    /// Exports the queued spans (waits for the exporter, up to its timeout) and stops. Call it from
    /// a thread where blocking is allowed.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// The `tracing` layer for `tracer`: [`TARGET`] spans become OpenTelemetry spans (without the
/// code location, thread and busy/idle attributes); warnings and errors inside them become span
/// events.
pub fn layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(|m| m.target() == TARGET || (m.is_event() && *m.level() <= tracing::Level::WARN)))
}

/// Counts the spans each export takes off the queue, and those the collector did not accept.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(n, Ordering::Relaxed);
        if result.is_err() {
            SPANS_DROPPED.with_label_values(&["export_failed"]).inc_by(n as u64);
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor behind a counted bound: at most `max` spans wait for export; the next
/// one is dropped (and counted) at once, never waited for.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    max: usize,
}

impl opentelemetry_sdk::trace::SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            SPANS_DROPPED.with_label_values(&["queue_full"]).inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The caller's trace context from W3C `traceparent` / `tracestate` (HTTP headers or gRPC
/// metadata); an empty context when there is none or it is malformed.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Sets `traceparent` (and `tracestate`) on outgoing `headers` for `span`, so the called service
/// continues the trace. Does nothing when tracing is off or the span is not traced.
pub fn inject_span(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// [`inject_span`] for the current span.
pub fn inject(headers: &mut http::HeaderMap) {
    inject_span(&tracing::Span::current(), headers);
}

/// Makes `span` a child of the caller's context in `headers`, if there is one.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` (32 hex digits), when tracing is on.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(&|name| map.get(name).cloned())
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(settings(&[]).unwrap().is_none());
        assert!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap().is_none());
        assert!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "TRUE")])
                .unwrap()
                .is_none()
        );
        // Only "true" disables, as the specification says.
        assert!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "false")])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn endpoints_follow_the_otlp_exporter_rules() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap().unwrap();
        assert_eq!((s.protocol, s.endpoint.as_str()), (Protocol::HttpProtobuf, "http://c:4318/v1/traces"));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://wrong:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://c:4318/custom");
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .unwrap()
            .unwrap();
        assert_eq!((s.protocol, s.endpoint.as_str()), (Protocol::Grpc, "http://c:4317"));
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
    }

    #[test]
    fn bad_values_are_errors_that_name_the_variable() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
            .unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("http/json"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .unwrap_err();
        assert!(e.contains("TLS"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER", "jaeger_remote")])
            .unwrap_err();
        assert!(e.contains("OTEL_TRACES_SAMPLER") && e.contains("jaeger_remote"), "{e}");
        let e = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ])
        .unwrap_err();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).unwrap_err();
        assert!(e.contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{e}");
    }

    #[test]
    fn samplers_by_name() {
        let s = |name: &str, arg: Option<&str>| {
            let mut v = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_SAMPLER", name)];
            if let Some(a) = arg {
                v.push(("OTEL_TRACES_SAMPLER_ARG", a));
            }
            format!("{:?}", settings(&v).unwrap().unwrap().sampler)
        };
        assert_eq!(s("always_on", None), "AlwaysOn");
        assert_eq!(s("always_off", None), "AlwaysOff");
        assert_eq!(s("traceidratio", Some("0.25")), "TraceIdRatioBased(0.25)");
        assert_eq!(s("parentbased_traceidratio", Some("0.5")), "ParentBased(TraceIdRatioBased(0.5))");
        assert_eq!(s("parentbased_always_off", None), "ParentBased(AlwaysOff)");
        let default = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")]).unwrap().unwrap();
        assert_eq!(format!("{:?}", default.sampler), "ParentBased(AlwaysOn)");
    }

    #[test]
    fn traceparent_round_trips() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        headers.insert("tracestate", "vendor=x".parse().unwrap());
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        let mut out = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent"), headers.get("traceparent"));
        assert_eq!(out.get("tracestate").unwrap(), "vendor=x");
        // Malformed: no parent.
        headers.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert!(!extract(&headers).span().span_context().is_valid());
    }
}
