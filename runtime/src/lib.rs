//! kinfer-runtime: serves ONNX models (one, or a list of them) over the Open Inference Protocol
//! v2, KServe V1 and `/predict`, with health, readiness, model control and Prometheus metrics on
//! one port, and the protocol's gRPC service (with gRPC health and reflection) on a second one.

pub mod access;
pub mod accesslog;
pub mod cache;
pub mod canary;
pub mod classes;
pub mod config;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod grpc;
pub mod image;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod onnx_labels;
pub mod openapi;
pub mod protocol;
pub mod registry;
pub mod repository;
pub mod requestlog;
pub mod server;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod tensor;

use std::{sync::Arc, time::Duration};

use config::Config;
use metrics::Metrics;
use server::AppState;

/// A start-up failure that ends the process, with the message users see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Loads every listed model (each becomes ready on its own; the server once all are). Any
/// error is fatal at start-up; later loads go through model control.
pub async fn load_models(
    cfg: &Config,
    state: &Arc<AppState>,
    env: Arc<ort::environment::Environment>,
) -> Result<(), Fatal> {
    state.models.set_loader(registry::Loader::new(cfg.clone(), env, state.metrics.clone()));
    state.models.load_all().await.map_err(Fatal)
}

/// Rows of the second warm-up timing, for the per-row cost of [`engine::InlinePolicy`].
const INLINE_PROBE_ROWS: usize = 64;

/// Times warm-up runs of one row and of [`INLINE_PROBE_ROWS`] rows (models with a dynamic batch
/// dimension) to decide which requests run inline; off when the budget is zero or timing fails.
pub(crate) fn inline_policy(
    session: &mut ort::session::Session,
    info: &model::ModelInfo,
    warm: &[tensor::Tensor],
    budget: Duration,
) -> engine::InlinePolicy {
    if budget.is_zero() {
        return engine::InlinePolicy::OFF;
    }
    let Ok(one) = engine::time_runs(session, info, warm, 5) else { return engine::InlinePolicy::OFF };
    let larger = info.has_dynamic_batch().then(|| {
        let big: Vec<tensor::Tensor> = warm
            .iter()
            .map(|t| {
                let mut shape = t.shape.clone();
                shape[0] = INLINE_PROBE_ROWS as i64;
                let n = tensor::element_count(&shape).unwrap_or(0);
                tensor::Tensor { name: t.name.clone(), shape, data: tensor::TensorData::zeros(t.datatype(), n) }
            })
            .collect();
        engine::time_runs(session, info, &big, 3).ok().map(|t| (INLINE_PROBE_ROWS, t))
    });
    engine::InlinePolicy::from_warmup(budget, one, larger.flatten())
}

/// Writes the fatal message where Kubernetes reads it (when that file exists).
pub fn write_termination_log(cfg: &Config, message: &str) {
    let path = &cfg.termination_log;
    if path.exists() {
        let _ = std::fs::write(path, message);
    }
}

/// Creates the prediction cache when `KINFER_CACHE_MAX_ENTRIES` or `KINFER_CACHE_MAX_BYTES` is
/// set, and starts its TTL sweep.
pub fn start_cache(cfg: &Config, metrics: &Metrics) -> Result<Option<Arc<cache::Cache>>, Fatal> {
    let Some(settings) = cache::Settings::new(cfg.cache_max_entries, cfg.cache_max_bytes, cfg.cache_ttl_seconds) else {
        if cfg.cache_ttl_seconds.is_some() {
            tracing::warn!(
                "KINFER_CACHE_TTL_SECONDS is set but neither KINFER_CACHE_MAX_ENTRIES nor KINFER_CACHE_MAX_BYTES: the prediction cache is off"
            );
        }
        return Ok(None);
    };
    let cache = cache::Cache::new(settings, metrics, &cfg.served_name(), &cfg.model_version)
        .map_err(|e| Fatal(format!("cannot create the prediction cache's metrics: {e}")))?;
    let cache = Arc::new(cache);
    cache.spawn_sweeper();
    tracing::info!(
        max_entries = ?settings.max_entries, max_bytes = ?settings.max_bytes, ttl_s = ?settings.ttl.map(|t| t.as_secs()),
        "prediction cache on"
    );
    Ok(Some(cache))
}

/// Starts the request log when `KINFER_LOG_URI` is set.
pub async fn start_request_log(cfg: &Config, metrics: &Metrics) -> Result<Option<Arc<requestlog::RequestLog>>, Fatal> {
    let Some(uri) = cfg.log_uri.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
    let (bucket, prefix) = requestlog::LogConfig::parse_uri(uri).map_err(Fatal)?;
    if !(0.0..=1.0).contains(&cfg.log_sample_rate) {
        return Err(Fatal(format!("KINFER_LOG_SAMPLE_RATE must be between 0 and 1, got {}", cfg.log_sample_rate)));
    }
    let lm = requestlog::LogMetrics::new(metrics).map_err(|e| Fatal(format!("cannot register log metrics: {e}")))?;
    let pod = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "local".into());
    let lc = requestlog::LogConfig {
        bucket,
        prefix,
        sample_rate: cfg.log_sample_rate,
        max_object_bytes: cfg.log_max_object_bytes.max(1),
        flush_interval: Duration::from_millis(cfg.log_flush_interval_ms.max(10)),
        queue_capacity: cfg.log_queue_capacity.max(1),
        pod,
        model: log_partition(cfg),
        path_style: store::path_style_from_env(),
    };
    tracing::info!(uri, sample_rate = cfg.log_sample_rate, "request log on");
    Ok(Some(requestlog::RequestLog::start(lc, lm).await))
}

/// The request log's `model=` partition: the model's name, or with several models their names
/// joined by `+` (each record names its own model).
fn log_partition(cfg: &Config) -> String {
    let mut names: Vec<String> = cfg.model_specs().unwrap_or_default().into_iter().map(|s| s.name).collect();
    names.dedup();
    if names.is_empty() { cfg.served_name() } else { names.join("+") }
}

pub fn new_metrics() -> Result<Arc<Metrics>, Fatal> {
    Metrics::new().map(Arc::new).map_err(|e| Fatal(format!("cannot create metrics: {e}")))
}
