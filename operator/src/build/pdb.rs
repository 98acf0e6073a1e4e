//! The PodDisruptionBudget, present only when more than one pod always runs (with one pod a
//! budget would block node drains forever).

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{child_meta, selector_labels};
use crate::validate::ValidatedService;

/// Builds the budget: at most one runtime pod voluntarily disrupted at a time.
pub fn build_pdb(isvc: &ValidatedService) -> Option<PodDisruptionBudget> {
    if !isvc.wants_pdb() {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: child_meta(isvc),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(isvc)), ..LabelSelector::default() }),
            // A crash-looping pod must not block a node drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}
