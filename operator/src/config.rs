//! Operator configuration that the reconciler needs (the rest of the flags live in `main.rs`).

/// Field manager of every server-side apply the operator makes (children and status).
pub const FIELD_MANAGER: &str = "kinfer-operator";

/// Default runtime image: the runtime released together with this operator.
pub const DEFAULT_RUNTIME_IMAGE: &str = concat!("ghcr.io/kinfer/kinfer-runtime:", env!("CARGO_PKG_VERSION"));

/// Settings that shape the children the operator builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Runtime image used when an InferenceService does not set `spec.runtime.image`.
    pub runtime_image: String,
    /// Cluster DNS domain used in `status.url`.
    pub cluster_domain: String,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self { runtime_image: DEFAULT_RUNTIME_IMAGE.to_string(), cluster_domain: "cluster.local".to_string() }
    }
}
