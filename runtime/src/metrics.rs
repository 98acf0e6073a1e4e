//! Prometheus metrics of the runtime (`GET /metrics`, text format).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 50 µs to 10 s: the hot path is tens of microseconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub inference_duration: HistogramVec,
    pub queue_duration: HistogramVec,
    pub batch_size: HistogramVec,
    pub in_flight: IntGauge,
    pub model_load_duration: GaugeVec,
    pub model_ready: GaugeVec,
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_shed: IntCounterVec,
    pub requests_rejected: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "kinfer_requests_total",
                "Inference requests by model, the version that answered, protocol and HTTP status code",
            ),
            &["model", "version", "protocol", "code"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new("kinfer_request_duration_seconds", "Inference request latency, body read to response")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version", "protocol"],
        )?;
        let inference_duration = HistogramVec::new(
            HistogramOpts::new("kinfer_inference_duration_seconds", "ONNX Runtime session run time per batch")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version"],
        )?;
        let queue_duration = HistogramVec::new(
            HistogramOpts::new(
                "kinfer_queue_duration_seconds",
                "Time a request waited for an inference thread (includes the batching delay)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new("kinfer_batch_size", "Rows per session run (dynamic batching merges requests)")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            &["model", "version"],
        )?;
        let in_flight = IntGauge::new("kinfer_requests_in_flight", "Inference requests being served")?;
        let model_load_duration = GaugeVec::new(
            Opts::new("kinfer_model_load_duration_seconds", "Time to fetch, load and warm up each model version"),
            &["model", "version"],
        )?;
        let model_ready = GaugeVec::new(
            Opts::new("kinfer_model_ready", "1 when the model is loaded and warmed up"),
            &["model", "version"],
        )?;
        let connections_open = IntGauge::new("kinfer_connections_open", "Client connections open")?;
        let connections_accepted = IntCounter::new("kinfer_connections_accepted_total", "Client connections accepted")?;
        let connections_shed = IntCounterVec::new(
            Opts::new(
                "kinfer_connections_shed_total",
                "Connections the server closed on its own, by reason: header_timeout, body_timeout, \
                 idle_timeout, max_connections (refused over the limit)",
            ),
            &["reason"],
        )?;
        let requests_rejected = IntCounterVec::new(
            Opts::new(
                "kinfer_requests_rejected_total",
                "Requests refused by a limit: max_concurrency, queue_capacity, rate_limit, max_body_bytes, \
                 max_connections (a non-GET request on a reserve connection)",
            ),
            &["limit"],
        )?;
        for reason in ["header_timeout", "body_timeout", "idle_timeout", "max_connections"] {
            connections_shed.with_label_values(&[reason]);
        }
        for limit in ["max_concurrency", "queue_capacity", "rate_limit", "max_body_bytes", "max_connections"] {
            requests_rejected.with_label_values(&[limit]);
        }
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_accepted.clone()))?;
        registry.register(Box::new(connections_shed.clone()))?;
        // kinfer_trace_spans_dropped_total (0 while tracing is off).
        kinfer_telemetry::register_metrics(&registry)?;
        registry.register(Box::new(requests_rejected.clone()))?;
        registry.register(Box::new(crate::accesslog::dropped_counter()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(inference_duration.clone()))?;
        registry.register(Box::new(queue_duration.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(model_load_duration.clone()))?;
        registry.register(Box::new(model_ready.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            inference_duration,
            queue_duration,
            batch_size,
            in_flight,
            model_load_duration,
            model_ready,
            connections_open,
            connections_accepted,
            connections_shed,
            requests_rejected,
        })
    }

    /// Registers an extra collector (the request log adds its own).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A histogram handle resolved once for the served model and version (label lookups are off the
/// hot path).
#[derive(Clone)]
pub struct ModelHistograms {
    pub inference: Histogram,
    pub queue: Histogram,
    pub batch: Histogram,
}

impl ModelHistograms {
    pub fn new(m: &Metrics, model: &str, version: &str) -> ModelHistograms {
        ModelHistograms {
            inference: m.inference_duration.with_label_values(&[model, version]),
            queue: m.queue_duration.with_label_values(&[model, version]),
            batch: m.batch_size.with_label_values(&[model, version]),
        }
    }
}
