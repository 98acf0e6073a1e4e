//! Operator configuration that the reconciler needs (the rest of the flags live in `main.rs`).

use std::time::Duration;

/// Field manager of every server-side apply the operator makes (children and status).
pub const FIELD_MANAGER: &str = "kinfer-operator";

/// Default runtime image: the runtime released together with this operator.
pub const DEFAULT_RUNTIME_IMAGE: &str = concat!("ghcr.io/kinfer/kinfer-runtime:", env!("CARGO_PKG_VERSION"));

/// Default number of InferenceServices reconciled at the same time.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Default interval of the periodic resync of a settled InferenceService.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(600);

/// Settings that shape the children the operator builds, and how it reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Runtime image used when an InferenceService does not set `spec.runtime.image`.
    pub runtime_image: String,
    /// Cluster DNS domain used in `status.url`.
    pub cluster_domain: String,
    /// InferenceServices reconciled at the same time (0: no limit).
    pub concurrency: u16,
    /// Every InferenceService is reconciled again after this long without a change.
    pub resync: Duration,
    /// Trace settings given to runtime pods whose `spec.tracing` leaves them unset.
    pub tracing: TracingDefaults,
}

/// The `OTEL_*` variables of the operator's own environment that runtime pods inherit (the
/// collector endpoint, protocol and sampler), as `(name, value)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TracingDefaults {
    pub vars: Vec<(String, String)>,
}

impl TracingDefaults {
    /// The variables runtime pods inherit.
    pub const INHERITED: [&str; 6] = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ];

    /// Reads [`Self::INHERITED`] through `lookup` (empty values are unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let vars = Self::INHERITED
            .iter()
            .filter_map(|name| lookup(name).filter(|v| !v.trim().is_empty()).map(|v| (name.to_string(), v)))
            .collect();
        Self { vars }
    }

    /// From the operator's environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            runtime_image: DEFAULT_RUNTIME_IMAGE.to_string(),
            cluster_domain: "cluster.local".to_string(),
            concurrency: DEFAULT_CONCURRENCY,
            resync: DEFAULT_RESYNC,
            tracing: TracingDefaults::default(),
        }
    }
}
