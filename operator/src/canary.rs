//! Canary, A/B and shadow (`spec.canary`): the decisions of the reconciler about the canary,
//! all pure.
//!
//! - **Routing.** The stable pods get the routing variables (`KINFER_CANARY_*`, built by
//!   `build::routing_env`) once the canary has an available pod, so a canary that never loads
//!   never receives a request. Once the stable Deployment routes to a canary Service it keeps
//!   routing while that canary's pods restart (no rolling of the stable pods back and forth).
//! - **Retiring.** Without `spec.canary` (a promotion or a rollback) the canary's Deployment and
//!   Service stay until the stable Deployment's rollout has completed (observed, updated,
//!   available, no old pod left, none terminating): until then old stable pods may still
//!   forward requests to it.
//! - **Status.** `status.canary` (version, pods, the split the stable pods apply now) and the
//!   `Canary` condition: True (`CanaryServing`) once the canary serves its share; False with
//!   `CanaryNotReady`, `CanaryLoadFailed` (the runtime's termination message),
//!   `CanaryRolloutFailed` or `CanaryRetiring`.

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    jiff::Timestamp,
};

use crate::{
    build::CONTAINER_NAME,
    crd::{CanaryStatus, InferenceServiceStatus},
    status::{REASON_MODEL_FAILED, Rollout, condition, set_condition},
    validate::Canary,
};

/// Condition type: the canary serves its share.
pub const CANARY: &str = "Canary";
/// Reason: the stable pods route to the canary as the spec says, and it has ready pods.
pub const REASON_SERVING: &str = "CanaryServing";
/// Reason: the canary (or the stable pods' new split) is still rolling out.
pub const REASON_NOT_READY: &str = "CanaryNotReady";
/// Reason: the canary's runtime exits (its model failed to download or load).
pub const REASON_LOAD_FAILED: &str = "CanaryLoadFailed";
/// Reason: the canary's pods cannot start (image, Secret, progress deadline).
pub const REASON_ROLLOUT_FAILED: &str = "CanaryRolloutFailed";
/// Reason: `spec.canary` was removed; the canary goes once the stable rollout completes.
pub const REASON_RETIRING: &str = "CanaryRetiring";

/// The split a Deployment's runtime container is configured with (its `KINFER_CANARY_*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// `KINFER_CANARY_URL`.
    pub url: String,
    /// `split` or `shadow`.
    pub mode: String,
    /// Percent answered by the canary (split mode).
    pub percent: Option<i32>,
    /// Fraction copied to the canary (shadow mode).
    pub sample_rate: Option<f64>,
    /// Sticky header.
    pub sticky_header: Option<String>,
}

impl Split {
    /// In words, for `kubectl get kisvc`: `10% split`, `10% split (sticky x-user-id)`,
    /// `shadow 100%`.
    pub fn describe(&self) -> String {
        let sticky = self.sticky_header.as_ref().map(|h| format!(" (sticky {h})")).unwrap_or_default();
        if self.mode == "shadow" {
            let rate = self.sample_rate.unwrap_or(1.0) * 100.0;
            format!("shadow {}%{sticky}", trim_float(rate))
        } else {
            format!("{}% split{sticky}", self.percent.unwrap_or(0))
        }
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The routing a Deployment's pods are configured with, if any.
pub fn split_of(deployment: &Deployment) -> Option<Split> {
    let container =
        deployment.spec.as_ref()?.template.spec.as_ref()?.containers.iter().find(|c| c.name == CONTAINER_NAME)?;
    let env = container.env.as_deref().unwrap_or_default();
    let get = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
    Some(Split {
        url: get("KINFER_CANARY_URL").filter(|u| !u.is_empty())?,
        mode: get("KINFER_CANARY_MODE").unwrap_or_else(|| "split".into()),
        percent: get("KINFER_CANARY_PERCENT").and_then(|p| p.parse().ok()),
        sample_rate: get("KINFER_CANARY_SAMPLE_RATE").and_then(|p| p.parse().ok()),
        sticky_header: get("KINFER_CANARY_STICKY_HEADER"),
    })
}

/// Whether the stable pods should get the routing variables now: the canary has an available
/// pod, or the stable Deployment already routes to this canary Service (`canary_url`).
pub fn should_route(canary: &Deployment, live_stable: Option<&Deployment>, canary_url: &str) -> bool {
    let available = canary.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) > 0;
    available || live_stable.and_then(split_of).is_some_and(|s| s.url == canary_url)
}

/// Whether the canary of a resource without `spec.canary` may be deleted: the stable rollout
/// is complete (`stable_rolled_out`, see `status::is_rolled_out`) and no stable pod is still
/// terminating (a draining pod may still forward to the canary).
pub fn may_retire(stable_rolled_out: bool, stable_pods: &[Pod]) -> bool {
    stable_rolled_out && stable_pods.iter().all(|p| p.metadata.deletion_timestamp.is_none())
}

/// What the reconciler knows about the canary this time.
pub enum Observed<'a> {
    /// No `spec.canary` and no canary left.
    Absent,
    /// `spec.canary` is set: its Deployment as applied and how its rollout stands.
    Active {
        /// The validated `spec.canary`.
        canary: &'a Canary,
        /// The canary Deployment as the API server returned it.
        deployment: &'a Deployment,
        /// Its rollout, from the pods of its current template.
        rollout: &'a Rollout,
    },
    /// `spec.canary` was removed; its Deployment still runs until the stable rollout completes.
    Retiring {
        /// The canary Deployment.
        deployment: &'a Deployment,
    },
}

/// Sets `status.canary` and the `Canary` condition. `stable` is the stable Deployment as
/// applied and `stable_rolled_out` whether its rollout is complete: the split in effect is the
/// one of the stable pods once they all run the same template (until then the previous one is
/// kept).
pub fn set_status(
    status: &mut InferenceServiceStatus,
    old: &InferenceServiceStatus,
    observed: &Observed<'_>,
    stable: &Deployment,
    stable_rolled_out: bool,
    now: Timestamp,
) {
    let generation = status.observed_generation;
    let (deployment, model, rollout) = match observed {
        Observed::Absent => {
            status.canary = None;
            status.conditions.retain(|c| c.type_ != CANARY);
            return;
        }
        Observed::Active { canary, deployment, rollout } => {
            (*deployment, Some((canary.model().version.clone(), canary.model().uri.clone())), Some(*rollout))
        }
        Observed::Retiring { deployment } => (*deployment, None, None),
    };
    let previous = old.canary.clone().unwrap_or_default();
    let in_effect: Option<Option<Split>> = stable_rolled_out.then(|| split_of(stable));
    let (version, model_uri) = match model {
        Some((v, u)) => (Some(v), Some(u)),
        None => (previous.version.clone(), previous.model_uri.clone()),
    };
    let st = deployment.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut canary = CanaryStatus {
        version,
        model_uri,
        replicas: Some(st.replicas.unwrap_or(0)),
        ready_replicas: Some(ready),
        ..CanaryStatus::default()
    };
    match &in_effect {
        Some(Some(split)) => {
            canary.mode = Some(split.mode.clone());
            canary.traffic_percent = Some(if split.mode == "shadow" { 0 } else { split.percent.unwrap_or(0) });
            canary.sample_rate = split.sample_rate;
            canary.sticky_header = split.sticky_header.clone();
            canary.traffic = Some(split.describe());
        }
        Some(None) => {
            canary.traffic_percent = Some(0);
            canary.traffic = Some("none".into());
        }
        None => {
            canary.mode = previous.mode.clone();
            canary.traffic_percent = previous.traffic_percent.or(Some(0));
            canary.sample_rate = previous.sample_rate;
            canary.sticky_header = previous.sticky_header.clone();
            canary.traffic = previous.traffic.clone().or_else(|| Some("none".into()));
        }
    }
    let routed = matches!(in_effect, Some(Some(_)));
    let who = format!(
        "canary version {} ({})",
        canary.version.as_deref().unwrap_or("?"),
        canary.model_uri.as_deref().unwrap_or("?")
    );
    let (cond_status, reason, message) = match rollout {
        None => (
            "False",
            REASON_RETIRING,
            format!(
                "spec.canary was removed: {who} is deleted once the stable rollout has completed \
                 (until then old stable pods may still forward requests to it)"
            ),
        ),
        Some(Rollout::Failed { reason, message }) => {
            let traffic = if routed {
                "; the stable pods keep routing to its remaining ready pods"
            } else {
                "; the stable model answers every request"
            };
            canary.message = Some(message.clone());
            let reason = if *reason == REASON_MODEL_FAILED { REASON_LOAD_FAILED } else { REASON_ROLLOUT_FAILED };
            ("False", reason, format!("{who}: {message}{traffic}"))
        }
        Some(_) if routed && ready > 0 => {
            let split = canary.traffic.clone().unwrap_or_default();
            ("True", REASON_SERVING, format!("{who} serves {split}, {ready}/{wanted} canary replicas ready"))
        }
        Some(rollout) => {
            let message = if ready > 0 {
                format!("{who}: {ready}/{wanted} replicas ready; the stable pods are rolling out with the new split")
            } else {
                let detail = match rollout {
                    Rollout::InProgress(m) => m.clone(),
                    _ => format!("{ready}/{wanted} replicas ready"),
                };
                format!("{who} is not ready yet ({detail}); the stable model answers every request")
            };
            canary.message = None;
            ("False", REASON_NOT_READY, message)
        }
    };
    status.canary = Some(canary);
    set_condition(&mut status.conditions, condition(CANARY, cond_status, reason, &message, generation, now));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(env: serde_json::Value, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "fraud", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [
                {"name": "runtime", "env": env}]}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_split_is_read_from_the_runtime_container_and_described() {
        let d = deployment(
            json!([{"name": "KINFER_CANARY_URL", "value": "http://10.96.0.7:8080"},
                   {"name": "KINFER_CANARY_MODE", "value": "split"},
                   {"name": "KINFER_CANARY_PERCENT", "value": "20"},
                   {"name": "KINFER_CANARY_STICKY_HEADER", "value": "x-user-id"}]),
            json!({}),
        );
        let s = split_of(&d).unwrap();
        assert_eq!((s.url.as_str(), s.percent), ("http://10.96.0.7:8080", Some(20)));
        assert_eq!(s.describe(), "20% split (sticky x-user-id)");
        let shadow = Split { mode: "shadow".into(), sample_rate: Some(0.25), ..Split::default() };
        assert_eq!(shadow.describe(), "shadow 25%");
        assert_eq!(Split { mode: "shadow".into(), ..Split::default() }.describe(), "shadow 100%");
        assert!(split_of(&deployment(json!([{"name": "KINFER_MODEL_URI", "value": "s3://a/b"}]), json!({}))).is_none());
    }

    #[test]
    fn routing_starts_with_an_available_canary_pod_and_does_not_flap() {
        let url = "http://10.96.0.7:8080";
        let canary_down = deployment(json!([]), json!({"availableReplicas": 0}));
        let canary_up = deployment(json!([]), json!({"availableReplicas": 1}));
        let stable_plain = deployment(json!([]), json!({}));
        let stable_routing = deployment(json!([{"name": "KINFER_CANARY_URL", "value": url}]), json!({}));
        assert!(!should_route(&canary_down, Some(&stable_plain), url), "a canary that never loaded gets nothing");
        assert!(!should_route(&canary_down, None, url));
        assert!(should_route(&canary_up, Some(&stable_plain), url));
        assert!(should_route(&canary_down, Some(&stable_routing), url), "a restarting canary keeps its share");
        assert!(!should_route(&canary_down, Some(&stable_routing), "http://10.96.0.8:8080"), "another Service");
    }

    #[test]
    fn the_canary_is_retired_only_after_the_stable_rollout_with_no_pod_terminating() {
        let running: Pod = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let terminating: Pod =
            serde_json::from_value(json!({"metadata": {"name": "b", "deletionTimestamp": "2026-01-01T00:00:00Z"}}))
                .unwrap();
        assert!(may_retire(true, std::slice::from_ref(&running)));
        assert!(!may_retire(false, std::slice::from_ref(&running)));
        assert!(!may_retire(true, &[running, terminating]));
    }
}
