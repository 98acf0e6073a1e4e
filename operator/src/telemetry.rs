//! OpenTelemetry traces of the reconciler (the `kinfer-telemetry` crate reads the standard
//! `OTEL_*` variables and exports over OTLP; with no endpoint no layer is installed and these
//! spans cost a disabled callsite check).
//!
//! One span per reconcile (`reconcile InferenceService`, with the object's namespace, name and
//! generation) and a child per server-side apply (`apply Deployment`, `apply Service`, …,
//! `apply InferenceService/status`). A failed reconcile or apply marks its span as an error.

use opentelemetry::trace::Status;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use kinfer_telemetry::TARGET;

/// The span of one reconcile of `namespace/name`.
pub fn reconcile(namespace: &str, name: &str, generation: Option<i64>) -> Span {
    tracing::info_span!(
        target: TARGET,
        "reconcile",
        otel.name = "reconcile InferenceService",
        k8s.namespace.name = namespace,
        kinfer.inferenceservice.name = name,
        kinfer.inferenceservice.generation = generation.unwrap_or(0),
    )
}

/// The span of one server-side apply to the API server (a client call).
pub fn apply(kind: &str, namespace: &str, name: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "apply",
        otel.name = format!("apply {kind}"),
        otel.kind = "client",
        k8s.namespace.name = namespace,
        k8s.object.kind = kind,
        k8s.object.name = name,
    )
}

/// Marks `span` failed with `error`'s message.
pub fn fail(span: &Span, error: &impl std::fmt::Display) {
    if !span.is_disabled() {
        span.set_status(Status::error(error.to_string()));
    }
}
