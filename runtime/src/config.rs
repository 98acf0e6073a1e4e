//! Command-line flags with environment fallbacks: the operator↔runtime contract of DESIGN.md.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// kinfer-runtime: serves one ONNX model over the Open Inference Protocol v2, KServe V1 and /predict.
#[derive(Debug, Clone, Parser)]
#[command(name = "kinfer-runtime", version, about)]
pub struct Config {
    /// Model location: s3://bucket/key, file:///path, a plain path, or http(s)://... (the
    /// one-model case; `KINFER_MODELS` / `--models-file` list several instead).
    #[arg(long, env = "KINFER_MODEL_URI")]
    pub model_uri: Option<String>,

    /// Several models: a JSON array of `{"name", "uri", "version", "sha256"}` (only `uri` is
    /// required). Replaces the `KINFER_MODEL_*` settings of the one-model case.
    #[arg(long, env = "KINFER_MODELS")]
    pub models: Option<String>,

    /// Several models: a JSON or YAML file with the same list as `KINFER_MODELS`.
    #[arg(long, env = "KINFER_MODELS_FILE")]
    pub models_file: Option<PathBuf>,

    /// Model control (Triton's model repository extension): `none` serves the listed models as
    /// they are; `explicit` turns on `POST /v2/repository/models/{m}/load` and `…/unload`.
    #[arg(long, env = "KINFER_MODEL_CONTROL", value_enum, default_value_t = ModelControl::None)]
    pub model_control: ModelControl,

    /// Name the model is served under (default: the file stem of the URI).
    #[arg(long, env = "KINFER_MODEL_NAME")]
    pub model_name: Option<String>,

    /// Model version label.
    #[arg(long, env = "KINFER_MODEL_VERSION", default_value = "1")]
    pub model_version: String,

    /// Expected sha256 (hex) of the model file; the download is refused when it differs.
    #[arg(long, env = "KINFER_MODEL_SHA256")]
    pub model_sha256: Option<String>,

    /// Address to bind.
    #[arg(long, env = "KINFER_HTTP_HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// HTTP port for every protocol, health and metrics.
    #[arg(long, env = "KINFER_HTTP_PORT", default_value_t = 8080)]
    pub port: u16,

    /// gRPC port: the Open Inference Protocol's `inference.GRPCInferenceService` (KServe / Triton
    /// clients), `grpc.health.v1.Health` and server reflection; 0 turns gRPC off.
    #[arg(long, env = "KINFER_GRPC_PORT", default_value_t = 8081)]
    pub grpc_port: u16,

    /// ONNX Runtime intra-op threads per session (default: see --sessions; sessions × threads =
    /// the CPUs this process may use).
    #[arg(long, env = "KINFER_THREADS")]
    pub threads: Option<usize>,

    /// Number of ONNX Runtime sessions (each on its own inference thread) serving requests
    /// concurrently. Default: one per CPU with one intra-op thread each for models under 50 MB,
    /// else one session using every CPU.
    #[arg(long, env = "KINFER_SESSIONS")]
    pub sessions: Option<usize>,

    /// Dynamic batching: merge concurrent requests into one run of up to this many rows (1 = off).
    #[arg(long, env = "KINFER_MAX_BATCH_SIZE", default_value_t = 1)]
    pub max_batch_size: usize,

    /// Dynamic batching: longest extra wait for more requests once one is queued, in microseconds.
    #[arg(long, env = "KINFER_MAX_BATCH_DELAY_US", default_value_t = 0)]
    pub max_batch_delay_us: u64,

    /// Request/response log destination (s3://bucket/prefix/); off when unset.
    #[arg(long, env = "KINFER_LOG_URI")]
    pub log_uri: Option<String>,

    /// Fraction of requests written to the request log (0.0–1.0).
    #[arg(long, env = "KINFER_LOG_SAMPLE_RATE", default_value_t = 1.0)]
    pub log_sample_rate: f64,

    /// Request log: cut an object once this many uncompressed bytes are queued in it.
    #[arg(long, env = "KINFER_LOG_MAX_OBJECT_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub log_max_object_bytes: usize,

    /// Request log: cut an object once its first record is this old, in milliseconds.
    #[arg(long, env = "KINFER_LOG_FLUSH_INTERVAL_MS", default_value_t = 60_000)]
    pub log_flush_interval_ms: u64,

    /// Request log: records held in memory while S3 is slow; beyond it they are dropped and counted.
    #[arg(long, env = "KINFER_LOG_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub log_queue_capacity: usize,

    /// Request log: longest wait for the final upload at shutdown, in seconds.
    #[arg(long, env = "KINFER_LOG_FLUSH_TIMEOUT_SECONDS", default_value_t = 20)]
    pub log_flush_timeout_seconds: u64,

    /// Directory where downloaded models are cached.
    #[arg(long, env = "KINFER_CACHE_DIR", default_value = "/tmp/kinfer-cache")]
    pub cache_dir: PathBuf,

    /// Prediction cache: most entries kept (least recently used evicted first). The cache is on
    /// when this or --cache-max-bytes is set. Not related to --cache-dir (downloaded models).
    #[arg(long, env = "KINFER_CACHE_MAX_ENTRIES", value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_max_entries: Option<u64>,

    /// Prediction cache: most bytes its entries may count (keys, output tensors, overhead).
    #[arg(long, env = "KINFER_CACHE_MAX_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_max_bytes: Option<u64>,

    /// Prediction cache: seconds an entry may be served after it was stored (default: until
    /// evicted).
    #[arg(long, env = "KINFER_CACHE_TTL_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_ttl_seconds: Option<u64>,

    /// Largest request body accepted, in bytes (larger → 413 PAYLOAD_TOO_LARGE).
    #[arg(long, env = "KINFER_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most rows accepted in one request on any protocol (larger → 400 naming the limit).
    #[arg(long = "max-batch-rows", env = "KINFER_MAX_BATCH_ROWS", default_value_t = 1000)]
    pub max_rows: usize,

    /// Server-side deadline for one inference request, in milliseconds (a client's `timeout_ms`
    /// may only shorten it); past it → 504 INFERENCE_TIMEOUT.
    #[arg(long, env = "KINFER_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Requests that may wait for an inference thread; beyond it → 429 RATE_LIMITED at once.
    #[arg(long, env = "KINFER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,

    /// Attempts for a model download before giving up on transient errors.
    #[arg(long, env = "KINFER_DOWNLOAD_ATTEMPTS", default_value_t = 5)]
    pub download_attempts: u32,

    /// Path written with the fatal error message at start-up failure (Kubernetes shows it).
    #[arg(long, env = "KINFER_TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,

    /// Seconds to keep serving after SIGTERM (readiness already false) before draining.
    #[arg(long, env = "KINFER_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,

    /// Image inputs (JPEG/PNG on /predict multipart and v2 base64 BYTES) and their preprocessing,
    /// as `key=value` pairs, e.g. `resize=224x224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225`
    /// (keys: input, resize, crop, scale, mean, std, layout, channels, filter, max_megapixels;
    /// `auto` = all defaults). Off when unset. See docs/images.md.
    #[arg(long, env = "KINFER_IMAGE_PREPROCESS")]
    pub image_preprocess: Option<String>,

    /// Class names, one per line in class-index order, for /predict's labels and top-k.
    #[arg(long, env = "KINFER_LABELS_FILE")]
    pub labels_file: Option<PathBuf>,

    /// Classes listed per row in /predict's `top_k` (default 5 when labels or images are on;
    /// 0 = the model's raw outputs instead, for image models that are not classifiers).
    #[arg(long, env = "KINFER_TOP_K")]
    pub top_k: Option<usize>,

    /// Bearer tokens accepted on the prediction endpoints, comma-separated (prefer the file or a
    /// Secret-fed env var over this flag). Auth is off when no token is configured.
    #[arg(long, env = "KINFER_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// File with one accepted bearer token per line (`#` comments), e.g. a mounted Secret.
    #[arg(long, env = "KINFER_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Requests per second allowed per API key (bearer token, else `x-api-key`) on the
    /// prediction endpoints; off when unset. Beyond it → 429 RATE_LIMITED with Retry-After.
    #[arg(long, env = "KINFER_RATE_LIMIT_RPS")]
    pub rate_limit_rps: Option<f64>,

    /// Burst size of the per-key rate limit (default: one second's worth).
    #[arg(long, env = "KINFER_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<f64>,

    /// Inference requests served at once; beyond it → 429 RATE_LIMITED at once (0 = no limit).
    #[arg(long, env = "KINFER_MAX_CONCURRENCY", default_value_t = 512)]
    pub max_concurrency: usize,

    /// Longest wait for a request's body, from its head to its last byte, in milliseconds; past
    /// it → 408 REQUEST_TIMEOUT and the connection is closed. A request takes an inference slot
    /// only once its body is complete.
    #[arg(long, env = "KINFER_BODY_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,

    /// Longest wait for a request head, in milliseconds: from accept on a new connection, from its
    /// first byte on a kept-alive one; past it the connection is closed.
    #[arg(long, env = "KINFER_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,

    /// Kept-alive connections with no request in flight and no bytes moving are closed after
    /// this many seconds.
    #[arg(long, env = "KINFER_IDLE_TIMEOUT_SECONDS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_seconds: u64,

    /// Client connections served at once (plus a small reserve that answers only GET/HEAD, for
    /// probes and metrics); beyond → 429 and closed. Lowered at start to fit the process's
    /// descriptor limit (RLIMIT_NOFILE).
    #[arg(long, env = "KINFER_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,

    /// CORS: allowed origins, `*` or a comma-separated list; off when unset.
    #[arg(long, env = "KINFER_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Canary: base URL of the candidate's REST port (e.g. `http://10.96.0.12:8080`); unset = no
    /// canary. See README.md, "Canary".
    #[arg(long, env = "KINFER_CANARY_URL")]
    pub canary_url: Option<String>,

    /// Canary: base URL of the candidate's gRPC port; unset = gRPC requests stay on stable.
    #[arg(long, env = "KINFER_CANARY_GRPC_URL")]
    pub canary_grpc_url: Option<String>,

    /// Canary: `split` (default; a share of requests is answered by the candidate) or `shadow`
    /// (stable answers; copies go to the candidate).
    #[arg(long, env = "KINFER_CANARY_MODE")]
    pub canary_mode: Option<String>,

    /// Canary split: share of inference requests answered by the candidate, 0–100 (decimals allowed).
    #[arg(long, env = "KINFER_CANARY_PERCENT", allow_negative_numbers = true)]
    pub canary_percent: Option<f64>,

    /// Canary split: request header whose value picks the side by a stable hash.
    #[arg(long, env = "KINFER_CANARY_STICKY_HEADER")]
    pub canary_sticky_header: Option<String>,

    /// Canary shadow: fraction 0–1 of requests copied to the candidate (default 1).
    #[arg(long, env = "KINFER_CANARY_SAMPLE_RATE", allow_negative_numbers = true)]
    pub canary_sample_rate: Option<f64>,

    /// Canary: the candidate's model version (metrics, logs, `x-kinfer-model-version`).
    #[arg(long, env = "KINFER_CANARY_VERSION")]
    pub canary_version: Option<String>,

    /// Canary: longest wait for the candidate before stable serves the request itself, in
    /// milliseconds (never longer than the request's own deadline).
    #[arg(long, env = "KINFER_CANARY_TIMEOUT_MS", default_value_t = 2_000)]
    pub canary_timeout_ms: u64,

    /// Canary shadow: copies waiting to be sent; beyond it they are dropped and counted.
    #[arg(long, env = "KINFER_CANARY_SHADOW_QUEUE", default_value_t = 1024)]
    pub canary_shadow_queue: usize,

    /// Log format.
    #[arg(long, env = "KINFER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Whether models can be loaded and unloaded at run time (`KINFER_MODEL_CONTROL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelControl {
    /// The listed models, as started (the default: a pod serves what its manifest says).
    None,
    /// `POST /v2/repository/models/{m}/load` and `…/unload` are on.
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl Config {
    /// The served model name of the one-model case: the flag, or the file stem of the URI
    /// ("model" when it has none).
    pub fn served_name(&self) -> String {
        if let Some(n) = self.model_name.as_deref().filter(|n| !n.is_empty()) {
            return n.to_string();
        }
        crate::registry::name_from_uri(self.model_uri.as_deref().unwrap_or_default())
    }

    /// The models to serve: `KINFER_MODELS` or `--models-file`, else the one model of
    /// `KINFER_MODEL_URI` and its companions. Errors name the setting at fault.
    pub fn model_specs(&self) -> Result<Vec<crate::registry::ModelSpec>, String> {
        let list = self.models.as_deref().filter(|s| !s.trim().is_empty());
        let one = self.model_uri.as_deref().filter(|s| !s.is_empty());
        match (one, list, &self.models_file) {
            (None, None, None) => Err("no model to serve: set KINFER_MODEL_URI (--model-uri) for one model, or \
                 KINFER_MODELS (--models) / KINFER_MODELS_FILE (--models-file) for several"
                .into()),
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err("KINFER_MODEL_URI and KINFER_MODELS / \
                 KINFER_MODELS_FILE are both set: use KINFER_MODEL_URI for one model or the list for \
                 several, not both"
                .into()),
            (None, Some(_), Some(_)) => Err("KINFER_MODELS and KINFER_MODELS_FILE are both set: use one".into()),
            (Some(uri), None, None) => Ok(vec![crate::registry::ModelSpec {
                name: self.served_name(),
                uri: uri.to_string(),
                version: self.model_version.clone(),
                sha256: self.model_sha256.clone().filter(|s| !s.is_empty()),
            }]),
            (None, Some(json), None) => {
                crate::registry::parse_models(json, false).map_err(|e| format!("KINFER_MODELS: {e}"))
            }
            (None, None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("KINFER_MODELS_FILE: cannot read {}: {e}", path.display()))?;
                crate::registry::parse_models(&text, true)
                    .map_err(|e| format!("KINFER_MODELS_FILE {}: {e}", path.display()))
            }
        }
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity.max(1)
    }

    /// Sessions and intra-op threads per session for a model file of `model_bytes`.
    ///
    /// Small models (under [`SMALL_MODEL_BYTES`]) run in a few microseconds, where an intra-op
    /// pool only adds a wake-up per run: they get one single-threaded session per CPU, so
    /// concurrent requests run in parallel (1.3–1.7× the requests/s of one two-thread session in
    /// docs/benchmarks.md). Large models get one session whose intra-op pool uses every CPU (a
    /// second session would double the weights in memory). Explicit settings win; with only
    /// `threads` given, sessions fill the remaining CPUs.
    pub fn session_layout(&self, model_bytes: u64) -> (usize, usize) {
        let cpus = available_cpus();
        let threads = self.threads.filter(|t| *t > 0);
        match (self.sessions.filter(|s| *s > 0), threads) {
            (Some(s), Some(t)) => (s, t),
            (Some(s), None) => (s, (cpus / s).max(1)),
            (None, Some(t)) => ((cpus / t).max(1), t),
            (None, None) if model_bytes < SMALL_MODEL_BYTES => (cpus, 1),
            (None, None) => (1, cpus),
        }
    }
}

/// Below this size a model gets several single-threaded sessions by default.
pub const SMALL_MODEL_BYTES: u64 = 50 * 1024 * 1024;

/// CPUs this process may use (cgroup quota aware through std).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_come_from_exactly_one_setting() {
        let one = cfg("/tmp/iris.onnx", None).model_specs().unwrap();
        assert_eq!((one[0].name.as_str(), one[0].version.as_str()), ("iris", "1"));
        let list = r#"[{"name":"iris","uri":"/m/iris.onnx","version":"2"},{"uri":"/m/tabular.onnx"}]"#;
        let many = Config::parse_from(["k", "--models", list]).model_specs().unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!((many[1].name.as_str(), many[1].version.as_str()), ("tabular", "1"));
        let none = Config::parse_from(["k"]).model_specs().unwrap_err();
        assert!(none.contains("KINFER_MODEL_URI") && none.contains("KINFER_MODELS"), "{none}");
        let both = Config::parse_from(["k", "--model-uri", "/m.onnx", "--models", list]).model_specs().unwrap_err();
        assert!(both.contains("both set"), "{both}");
        let bad = Config::parse_from(["k", "--models", "{}"]).model_specs().unwrap_err();
        assert!(bad.starts_with("KINFER_MODELS: "), "{bad}");
    }

    fn cfg(uri: &str, name: Option<&str>) -> Config {
        let mut args = vec!["kinfer-runtime", "--model-uri", uri];
        if let Some(n) = name {
            args.extend(["--model-name", n]);
        }
        Config::parse_from(args)
    }

    #[test]
    fn served_name_defaults_to_the_file_stem() {
        assert_eq!(cfg("s3://b/fraud/3/fraud.onnx", None).served_name(), "fraud");
        assert_eq!(cfg("/tmp/iris.onnx", None).served_name(), "iris");
        assert_eq!(cfg("https://h/m/model.onnx?x=1", None).served_name(), "model");
        assert_eq!(cfg("/tmp/iris.onnx", Some("flowers")).served_name(), "flowers");
    }

    #[test]
    fn session_layout_fills_the_cpus() {
        let cpus = available_cpus();
        let c = cfg("/m.onnx", None);
        assert_eq!(c.session_layout(1_000), (cpus, 1));
        assert_eq!(c.session_layout(SMALL_MODEL_BYTES), (1, cpus));
        let t = Config::parse_from(["k", "--model-uri", "/m.onnx", "--threads", "1"]);
        assert_eq!(t.session_layout(1_000), (cpus, 1));
        let s = Config::parse_from(["k", "--model-uri", "/m.onnx", "--sessions", "1"]);
        assert_eq!(s.session_layout(1_000), (1, cpus));
        let both = Config::parse_from(["k", "--model-uri", "/m.onnx", "--sessions", "3", "--threads", "2"]);
        assert_eq!(both.session_layout(1_000), (3, 2));
    }

    #[test]
    fn contract_defaults() {
        let c = cfg("/m.onnx", None);
        assert_eq!(c.port, 8080);
        assert_eq!(c.grpc_port, 8081);
        assert_eq!(c.model_version, "1");
        assert_eq!(c.max_batch_size, 1);
        assert!(c.log_uri.is_none());
        assert_eq!((c.body_timeout_ms, c.header_timeout_ms, c.idle_timeout_seconds), (5_000, 10_000, 75));
        assert_eq!(c.max_connections, 4096);
    }

    #[test]
    fn zero_deadlines_and_limits_are_refused_naming_the_setting() {
        for flag in [
            "--body-timeout-ms",
            "--header-timeout-ms",
            "--idle-timeout-seconds",
            "--max-connections",
            "--cache-max-entries",
            "--cache-max-bytes",
            "--cache-ttl-seconds",
        ] {
            let err = Config::try_parse_from(["k", "--model-uri", "/m.onnx", flag, "0"]).unwrap_err().to_string();
            assert!(err.contains(flag) && err.contains("0"), "{flag}: {err}");
        }
    }
}
