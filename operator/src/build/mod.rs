//! Step 2 of the pipeline: pure builders from a [`ValidatedService`] to child objects.
//! No client, no I/O: everything here is unit-tested from YAML fixtures.

mod canary;
mod deployment;
mod hpa;
mod pdb;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{EnvVar, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

pub use canary::{CANARY_ENV, CanaryChildren, TRACK_LABEL, build_canary, canary_url, routing_env};
pub use deployment::{
    AUTH_DIR, CACHE_DIR, CONTAINER_NAME, GRPC_PORT, HTTP_PORT, LABELS_DIR, build_deployment, build_deployment_with,
    pod_template_hash,
};
pub use hpa::build_hpa;
pub use pdb::build_pdb;
pub use service::{SERVICE_PORT, build_service};

use crate::validate::{Track, ValidatedService};

/// Label with the InferenceService's name, on every child and pod.
pub const ISVC_LABEL: &str = "serving.kinfer.dev/inferenceservice";
/// Pod template label holding a hash of the rest of the template: pods carrying the current
/// value belong to the newest rollout.
pub const TEMPLATE_HASH_LABEL: &str = "serving.kinfer.dev/template-hash";
/// `app.kubernetes.io/name` of runtime pods.
pub const APP_NAME: &str = "kinfer-runtime";
/// `app.kubernetes.io/managed-by` of every child (also the watch selector of `.owns()`).
pub const MANAGED_BY: &str = "kinfer-operator";

/// Everything the operator wants to exist for one InferenceService.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The runtime pods.
    pub deployment: Deployment,
    /// The stable in-cluster address.
    pub service: Service,
    /// Present only with `spec.autoscaling`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Present only when more than one pod always runs.
    pub pdb: Option<PodDisruptionBudget>,
}

/// Builds every child of the stable runtime; `routing` is the canary routing environment of
/// the stable pods (empty without a canary, or while the canary is not ready).
pub fn build(isvc: &ValidatedService, routing: Vec<EnvVar>) -> Children {
    Children {
        deployment: build_deployment_with(isvc, routing),
        service: build_service(isvc),
        hpa: build_hpa(isvc),
        pdb: build_pdb(isvc),
    }
}

/// Labels that select the runtime pods of one InferenceService (immutable on a Deployment:
/// never change them).
pub fn selector_labels(isvc: &ValidatedService) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), isvc.name.clone()),
    ])
}

/// The standard `app.kubernetes.io/*` labels plus [`ISVC_LABEL`] (the InferenceService's
/// name, also on the canary's children and pods) and, on the canary's, [`TRACK_LABEL`].
pub fn labels(isvc: &ValidatedService) -> BTreeMap<String, String> {
    let mut l = selector_labels(isvc);
    l.insert("app.kubernetes.io/component".into(), "predictor".into());
    l.insert("app.kubernetes.io/part-of".into(), "kinfer".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert(ISVC_LABEL.into(), isvc.owner.name.clone());
    if isvc.track == Track::Canary {
        l.insert(TRACK_LABEL.into(), "canary".into());
    }
    l
}

/// Metadata shared by all children: same name and namespace as the InferenceService, labels,
/// and a controller owner reference so that deleting it garbage-collects them.
fn child_meta(isvc: &ValidatedService) -> ObjectMeta {
    ObjectMeta {
        name: Some(isvc.name.clone()),
        namespace: Some(isvc.namespace.clone()),
        labels: Some(labels(isvc)),
        owner_references: Some(vec![isvc.owner.clone()]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests;
