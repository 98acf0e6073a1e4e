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
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            runtime_image: DEFAULT_RUNTIME_IMAGE.to_string(),
            cluster_domain: "cluster.local".to_string(),
            concurrency: DEFAULT_CONCURRENCY,
            resync: DEFAULT_RESYNC,
        }
    }
}
