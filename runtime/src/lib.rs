//! kinfer-runtime: serves one ONNX model over the Open Inference Protocol v2, KServe V1 and
//! `/predict`, with health, readiness and Prometheus metrics on one port, and the protocol's gRPC
//! service (with gRPC health and reflection) on a second one.

pub mod access;
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
pub mod requestlog;
pub mod server;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod tensor;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use config::Config;
use metrics::Metrics;
use server::AppState;

/// A start-up failure that ends the process, with the message users see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Fetches, loads and warms up the model, then starts the inference threads and marks the
/// state ready. Any error is fatal.
pub async fn load_model(
    cfg: &Config,
    state: &Arc<AppState>,
    env: Arc<ort::environment::Environment>,
) -> Result<(), Fatal> {
    let t0 = Instant::now();
    let images = image::Prepared::from_config(cfg).map_err(Fatal)?;
    let opts = store::FetchOptions {
        cache_dir: cfg.cache_dir.clone(),
        expected_sha256: cfg.model_sha256.clone().filter(|s| !s.is_empty()),
        attempts: cfg.download_attempts,
        path_style: store::path_style_from_env(),
        initial_backoff: Duration::from_millis(500),
    };
    let path = store::fetch(&cfg.model_uri, &opts).await.map_err(|e| Fatal(e.message))?;
    tracing::info!(uri = %cfg.model_uri, path = %path.display(), elapsed_ms = t0.elapsed().as_millis() as u64, "model fetched");

    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
    let (sessions_wanted, intra) = cfg.session_layout(size);
    tracing::info!(sessions = sessions_wanted, intra_threads = intra, "session layout");
    let (name, version, uri) = (state.name.clone(), state.version.clone(), cfg.model_uri.clone());
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, Fatal> {
        let bytes =
            std::fs::read(&path).map_err(|e| Fatal(format!("cannot read model file {}: {e}", path.display())))?;
        let so = model::SessionOptions { intra_threads: intra };
        let mut sessions = Vec::with_capacity(sessions_wanted);
        for _ in 0..sessions_wanted {
            sessions.push(model::build_session(&env, &uri, &bytes, so).map_err(|e| Fatal(e.to_string()))?);
        }
        let info = model::model_info(&sessions[0], &name, &version, &bytes).map_err(|e| Fatal(e.to_string()))?;
        let warm = model::warmup_inputs(&info);
        for s in sessions.iter_mut() {
            model::run(s, &info, &warm).map_err(|e| Fatal(format!("warm-up inference failed: {e}")))?;
        }
        Ok((sessions, info))
    })
    .await
    .map_err(|e| Fatal(format!("model loading thread failed: {e}")))??;
    let (sessions, mut info) = loaded;
    let images = images.resolve(&mut info).map_err(Fatal)?;
    let _ = state.image.set(images);
    let info = Arc::new(info);
    let hist = metrics::ModelHistograms::new(&state.metrics, &info.name, &info.version);
    let batch = engine::BatchConfig {
        max_batch_size: cfg.max_batch_size.max(1),
        max_delay: Duration::from_micros(cfg.max_batch_delay_us),
    };
    let engine = engine::Engine::start(sessions, info.clone(), batch, cfg.queue_capacity(), hist)
        .map_err(|e| Fatal(format!("cannot start inference threads: {e}")))?;
    if cfg.max_batch_size > 1 && !engine.batching() {
        tracing::warn!(
            "dynamic batching requested but the model's inputs have no dynamic batch dimension; serving requests one by one"
        );
    }
    let elapsed = t0.elapsed();
    state.metrics.model_load_duration.set(elapsed.as_secs_f64());
    tracing::info!(
        model = %info.name, version = %info.version,
        inputs = ?info.inputs.iter().map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape)).collect::<Vec<_>>(),
        outputs = ?info.outputs.iter().map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape)).collect::<Vec<_>>(),
        batching = engine.batching(), load_ms = elapsed.as_millis() as u64, "model ready");
    server::set_ready(state, engine, &info);
    Ok(())
}

/// Writes the fatal message where Kubernetes reads it (when that file exists).
pub fn write_termination_log(cfg: &Config, message: &str) {
    let path = &cfg.termination_log;
    if path.exists() {
        let _ = std::fs::write(path, message);
    }
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
        model: cfg.served_name(),
        path_style: store::path_style_from_env(),
    };
    tracing::info!(uri, sample_rate = cfg.log_sample_rate, "request log on");
    Ok(Some(requestlog::RequestLog::start(lc, lm).await))
}

pub fn new_metrics() -> Result<Arc<Metrics>, Fatal> {
    Metrics::new().map(Arc::new).map_err(|e| Fatal(format!("cannot create metrics: {e}")))
}
