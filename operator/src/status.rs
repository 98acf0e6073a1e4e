//! Step 4 of the pipeline: the status, computed from what the children report. Pure.
//!
//! `Ready` is True only when the Deployment has observed the current template and has the
//! wanted number of updated, ready replicas and no old ones. While a rollout is under way
//! `Ready` keeps its previous status with reason `Progressing`; a failed rollout (pods of the
//! new template crash-looping or unable to start, or the progress deadline exceeded) sets
//! `Ready=False` with reason `ModelFailed`/`RolloutFailed` and the runtime's termination
//! message, while the old pods keep serving (the rollout never removes a ready pod first).

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;

use crate::{
    config::OperatorConfig,
    crd::{InferenceService, InferenceServiceStatus, ModelStatus},
    validate::ValidatedService,
};

/// Condition type: the current spec is fully rolled out and serving.
pub const READY: &str = "Ready";
/// Condition type: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";

/// Reason: every wanted replica of the current spec is ready.
pub const REASON_AVAILABLE: &str = "Available";
/// Reason: a rollout is under way.
pub const REASON_PROGRESSING: &str = "Progressing";
/// Reason: the rollout finished.
pub const REASON_ROLLOUT_COMPLETE: &str = "RolloutComplete";
/// Reason: the runtime of the new template exits (model failed to download or load).
pub const REASON_MODEL_FAILED: &str = "ModelFailed";
/// Reason: pods of the new template cannot start, or the progress deadline passed.
pub const REASON_ROLLOUT_FAILED: &str = "RolloutFailed";
/// Reason: the spec cannot be served.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Reason: `spec.replicas` is 0.
pub const REASON_SCALED_TO_ZERO: &str = "ScaledToZero";

/// Container waiting reasons that mean the new pods will not start by themselves.
const FAILED_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Longest message copied from a pod into a condition.
const MAX_MESSAGE: usize = 1024;

/// Where the rollout of the current template stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Every wanted replica runs the current template and is ready.
    Complete,
    /// Complete with zero replicas wanted.
    ScaledToZero,
    /// Under way.
    InProgress(String),
    /// Will not finish by itself; `reason` is one of the `REASON_*` failure constants.
    Failed {
        /// `ModelFailed` or `RolloutFailed`.
        reason: &'static str,
        /// What went wrong, with the runtime's termination message when there is one.
        message: String,
    },
}

impl Rollout {
    /// Whether the rollout still needs watching (pods can fail without the Deployment
    /// changing, so the reconciler requeues while this holds).
    pub fn in_progress(&self) -> bool {
        matches!(self, Rollout::InProgress(_))
    }
}

/// Whether the Deployment reports the current template fully rolled out: every replica it
/// wants is updated and ready, none of an old template is left, and at least `min_available`
/// replicas are available (`spec.replicas`, or `autoscaling.minReplicas`: until the
/// HorizontalPodAutoscaler has scaled the Deployment up to its minimum, the resource is not
/// Ready).
pub fn is_rolled_out(deployment: &Deployment, min_available: i32) -> bool {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let wanted = deployment_replicas(deployment);
    let st = deployment.status.clone().unwrap_or_default();
    st.observed_generation.unwrap_or(0) >= generation
        && st.updated_replicas.unwrap_or(0) == wanted
        && st.ready_replicas.unwrap_or(0) == wanted
        && st.replicas.unwrap_or(0) == wanted
        && st.available_replicas.unwrap_or(0) >= min_available
}

fn deployment_replicas(deployment: &Deployment) -> i32 {
    deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Replicas wanted: the Deployment's, and never fewer than `min_available`.
fn wanted_replicas(deployment: &Deployment, min_available: i32) -> i32 {
    deployment_replicas(deployment).max(min_available)
}

/// Classifies the rollout from the Deployment and the pods of its current template;
/// `min_available` as for [`is_rolled_out`].
pub fn rollout(deployment: &Deployment, new_pods: &[Pod], min_available: i32) -> Rollout {
    let wanted = wanted_replicas(deployment, min_available);
    if is_rolled_out(deployment, min_available) {
        return if wanted == 0 { Rollout::ScaledToZero } else { Rollout::Complete };
    }
    let st = deployment.status.clone().unwrap_or_default();
    if let Some((reason, message)) = new_pods.iter().find_map(pod_failure) {
        return Rollout::Failed { reason, message };
    }
    let deadline = st.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = deadline {
        return Rollout::Failed {
            reason: REASON_ROLLOUT_FAILED,
            message: c.message.clone().unwrap_or_else(|| "the rollout exceeded its progress deadline".into()),
        };
    }
    Rollout::InProgress(format!(
        "rolling out: {}/{} updated replicas, {} ready",
        st.updated_replicas.unwrap_or(0),
        wanted,
        st.ready_replicas.unwrap_or(0)
    ))
}

/// Why a pod of the new template will not become ready, if it will not.
fn pod_failure(pod: &Pod) -> Option<(&'static str, String)> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    // A container that crashed once but is ready now is not a failure.
    for cs in status.container_statuses.iter().flatten().filter(|cs| !cs.ready) {
        let terminated = cs
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
            .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).filter(|t| t.exit_code != 0));
        let waiting = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .filter(|w| w.reason.as_deref().is_some_and(|r| FAILED_WAITING_REASONS.contains(&r)));
        if let Some(t) = terminated {
            let detail = t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .unwrap_or_else(|| t.reason.clone().unwrap_or_else(|| "no message".into()));
            return Some((
                REASON_MODEL_FAILED,
                truncate(format!("pod {name}: container {} exited with code {}: {detail}", cs.name, t.exit_code)),
            ));
        }
        if let Some(w) = waiting {
            let reason = w.reason.clone().unwrap_or_default();
            let detail = w.message.clone().unwrap_or_default();
            return Some((
                REASON_ROLLOUT_FAILED,
                truncate(format!("pod {name}: container {}: {reason}: {detail}", cs.name)),
            ));
        }
    }
    None
}

pub(crate) fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The status of a valid InferenceService whose children were applied.
pub fn compute_status(
    isvc: &InferenceService,
    valid: &ValidatedService,
    config: &OperatorConfig,
    deployment: &Deployment,
    rollout: &Rollout,
    now: Timestamp,
) -> InferenceServiceStatus {
    let old = isvc.status.clone().unwrap_or_default();
    let generation = isvc.metadata.generation;
    let st = deployment.status.clone().unwrap_or_default();
    let wanted = deployment_replicas(deployment);
    let ready = st.ready_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let uri = &valid.models.iter().map(|m| m.uri.as_str()).collect::<Vec<_>>().join(",");

    let mut conditions = old.conditions.clone();
    let mut model_uri = old.model_uri.clone();
    let (ready_status, ready_reason, ready_message, prog_status, prog_reason, prog_message) = match rollout {
        Rollout::Complete => {
            model_uri = Some(uri.clone());
            let msg = format!("{ready}/{wanted} replicas ready, serving {uri}");
            ("True", REASON_AVAILABLE, msg.clone(), "False", REASON_ROLLOUT_COMPLETE, msg)
        }
        Rollout::ScaledToZero => {
            model_uri = None;
            (
                "False",
                REASON_SCALED_TO_ZERO,
                "spec.replicas is 0: no pods serve".to_string(),
                "False",
                REASON_ROLLOUT_COMPLETE,
                "scaled to zero".to_string(),
            )
        }
        Rollout::InProgress(msg) => {
            let previous =
                old.conditions.iter().find(|c| c.type_ == READY).map(|c| c.status.as_str()).unwrap_or("False");
            let status = if available == 0 { "False" } else { previous };
            (status, REASON_PROGRESSING, msg.clone(), "True", REASON_PROGRESSING, msg.clone())
        }
        Rollout::Failed { reason, message } => {
            let msg = if available > 0 {
                format!("{message} ({available} ready replicas of the previous version keep serving)")
            } else {
                message.clone()
            };
            ("False", *reason, msg.clone(), "False", *reason, msg)
        }
    };
    set_condition(&mut conditions, condition(READY, ready_status, ready_reason, &ready_message, generation, now));
    set_condition(&mut conditions, condition(PROGRESSING, prog_status, prog_reason, &prog_message, generation, now));

    let models = model_statuses(valid, &old.models, rollout);
    InferenceServiceStatus {
        conditions,
        url: Some(service_url(&valid.name, &valid.namespace, config)),
        model_uri,
        models,
        replicas: Some(st.replicas.unwrap_or(0)),
        ready_replicas: Some(ready),
        updated_replicas: Some(st.updated_replicas.unwrap_or(0)),
        observed_generation: generation,
        // set by `canary::set_status`
        canary: old.canary,
    }
}

/// Each model of the current spec: ready once the rollout is complete; while one is under way or
/// failed, ready when the pods still serving had it (same name, version and uri); a failed one
/// gets the runtime's load error when the message names it (or it is the only model).
fn model_statuses(valid: &ValidatedService, old: &[ModelStatus], rollout: &Rollout) -> Vec<ModelStatus> {
    let one = valid.models.len() == 1;
    valid
        .models
        .iter()
        .map(|m| {
            let was_ready = old.iter().any(|o| o.name == m.name && o.version == m.version && o.uri == m.uri && o.ready);
            let (ready, message) = match rollout {
                Rollout::Complete => (true, None),
                Rollout::ScaledToZero => (false, None),
                Rollout::InProgress(_) => (was_ready, None),
                Rollout::Failed { reason, message } => {
                    let named = message.contains(&format!("model '{}' version '{}'", m.name, m.version));
                    let blamed = named || (one && *reason == REASON_MODEL_FAILED);
                    (was_ready, blamed.then(|| message.clone()))
                }
            };
            ModelStatus { name: m.name.clone(), version: m.version.clone(), uri: m.uri.clone(), ready, message }
        })
        .collect()
}

/// The status of an InferenceService whose spec cannot be served: children untouched,
/// conditions say why.
pub fn invalid_status(isvc: &InferenceService, message: &str, now: Timestamp) -> InferenceServiceStatus {
    let mut status = isvc.status.clone().unwrap_or_default();
    let generation = isvc.metadata.generation;
    let message = format!("invalid spec: {message}");
    for type_ in [READY, PROGRESSING] {
        set_condition(
            &mut status.conditions,
            condition(type_, "False", REASON_INVALID_SPEC, &message, generation, now),
        );
    }
    status.observed_generation = generation;
    status
}

/// `http://<name>.<namespace>.svc.<cluster domain>`.
pub fn service_url(name: &str, namespace: &str, config: &OperatorConfig) -> String {
    format!("http://{name}.{namespace}.svc.{}", config.cluster_domain)
}

pub(crate) fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Replaces (or adds) the condition of `new.type_`, keeping `lastTransitionTime` when the
/// status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Whether two statuses are equal apart from condition timestamps (then no patch is sent).
pub fn same_ignoring_time(a: &InferenceServiceStatus, b: &InferenceServiceStatus) -> bool {
    let strip = |s: &InferenceServiceStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fixtures::fixture, validate::validate};
    use serde_json::json;

    fn deployment(status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "iris", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(container_status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "iris-1"},
            "status": {"containerStatuses": [container_status]},
        }))
        .unwrap()
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn status_for(isvc: &InferenceService, d: &Deployment, r: &Rollout, now: Timestamp) -> InferenceServiceStatus {
        let cfg = OperatorConfig::default();
        let v = validate(isvc, &cfg).unwrap();
        compute_status(isvc, &v, &cfg, d, r, now)
    }

    fn ready(s: &InferenceServiceStatus) -> &Condition {
        s.conditions.iter().find(|c| c.type_ == READY).unwrap()
    }

    #[test]
    fn rollout_is_complete_only_with_every_replica_updated_ready_and_observed() {
        let full = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                          "readyReplicas": 2, "availableReplicas": 2});
        assert_eq!(rollout(&deployment(full.clone()), &[], 2), Rollout::Complete);
        for (field, value) in [("observedGeneration", 1), ("replicas", 3), ("updatedReplicas", 1), ("readyReplicas", 1)]
        {
            let mut s = full.clone();
            s[field] = json!(value);
            assert!(rollout(&deployment(s), &[], 2).in_progress(), "{field}={value} is not complete");
        }
    }

    #[test]
    fn fewer_available_replicas_than_the_minimum_are_not_ready() {
        // The HPA has not scaled the Deployment up to minReplicas (2) yet: its one pod is ready.
        let one: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "churn", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                       "readyReplicas": 1, "availableReplicas": 1}}))
        .unwrap();
        assert!(!is_rolled_out(&one, 2));
        assert_eq!(rollout(&one, &[], 2), Rollout::InProgress("rolling out: 1/2 updated replicas, 1 ready".into()));
        assert_eq!(rollout(&one, &[], 1), Rollout::Complete);
        // ready but not yet available (minReadySeconds) does not count either
        let mut ready_only = deployment(json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                          "readyReplicas": 2, "availableReplicas": 1}));
        assert!(rollout(&ready_only, &[], 2).in_progress());
        ready_only.status.as_mut().unwrap().available_replicas = Some(2);
        assert_eq!(rollout(&ready_only, &[], 2), Rollout::Complete);
    }

    #[test]
    fn progress_deadline_and_unstartable_pods_fail_the_rollout() {
        let d = deployment(json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"iris-x\" has timed out progressing."}]}));
        let Rollout::Failed { reason, message } = rollout(&d, &[], 2) else { panic!("not failed") };
        assert_eq!(reason, REASON_ROLLOUT_FAILED);
        assert!(message.contains("timed out"));

        let d = deployment(json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1}));
        let p = pod(json!({"name": "runtime", "ready": false, "restartCount": 0, "image": "x",
            "imageID": "", "state": {"waiting": {"reason": "CreateContainerConfigError",
            "message": "secret \"s3-creds\" not found"}}}));
        let Rollout::Failed { reason, message } = rollout(&d, &[p], 2) else { panic!("not failed") };
        assert_eq!(reason, REASON_ROLLOUT_FAILED);
        assert!(message.contains("secret \"s3-creds\" not found"), "{message}");
    }

    #[test]
    fn a_container_that_recovered_is_not_a_failure() {
        let d = deployment(json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1}));
        let p = pod(json!({"name": "runtime", "ready": true, "restartCount": 1, "image": "x",
            "imageID": "", "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}));
        assert!(rollout(&d, &[p], 2).in_progress());
    }

    #[test]
    fn failure_message_says_the_previous_version_keeps_serving() {
        let mut isvc = fixture("minimal.yaml");
        isvc.metadata.generation = Some(2);
        let d = deployment(json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2}));
        let r = Rollout::Failed {
            reason: REASON_MODEL_FAILED,
            message: "pod iris-1: container runtime exited with code 1: bad model".into(),
        };
        let s = status_for(&isvc, &d, &r, t(100));
        let c = ready(&s);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ModelFailed"));
        assert!(c.message.contains("bad model"));
        assert!(c.message.contains("2 ready replicas of the previous version keep serving"));
        assert_eq!(s.ready_replicas, Some(2));
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let mut isvc = fixture("minimal.yaml");
        let progressing = Rollout::InProgress("rolling out".into());
        let d = deployment(json!({"replicas": 0}));
        let s1 = status_for(&isvc, &d, &progressing, t(100));
        assert_eq!(ready(&s1).last_transition_time, Time(t(100)));

        isvc.status = Some(s1.clone());
        let s2 = status_for(&isvc, &d, &Rollout::InProgress("still".into()), t(200));
        assert_eq!(ready(&s2).last_transition_time, Time(t(100)), "False → False");
        assert!(!same_ignoring_time(&s1, &s2), "message changed");

        isvc.status = Some(s2);
        let s3 = status_for(&isvc, &d, &Rollout::Complete, t(300));
        assert_eq!(ready(&s3).status, "True");
        assert_eq!(ready(&s3).last_transition_time, Time(t(300)), "False → True");

        let mut s4 = s3.clone();
        s4.conditions[0].last_transition_time = Time(t(999));
        assert!(same_ignoring_time(&s3, &s4));
    }

    #[test]
    fn ready_drops_during_a_rollout_when_nothing_is_available() {
        let mut isvc = fixture("minimal.yaml");
        let d = deployment(json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2}));
        isvc.status = Some(status_for(&isvc, &d, &Rollout::Complete, t(1)));
        let d = deployment(json!({"observedGeneration": 2, "replicas": 2, "availableReplicas": 0}));
        let s = status_for(&isvc, &d, &Rollout::InProgress("x".into()), t(2));
        assert_eq!(ready(&s).status, "False");
        assert_eq!(ready(&s).reason, REASON_PROGRESSING);
    }

    #[test]
    fn zero_replicas_is_not_ready() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"generation": 1},
            "spec": {"replicas": 0, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1}}))
        .unwrap();
        assert_eq!(rollout(&d, &[], 0), Rollout::ScaledToZero);
        let s = status_for(&fixture("minimal.yaml"), &d, &Rollout::ScaledToZero, t(1));
        assert_eq!(ready(&s).reason, REASON_SCALED_TO_ZERO);
        assert_eq!(s.model_uri, None);
    }

    #[test]
    fn invalid_status_sets_both_conditions() {
        let s = invalid_status(&fixture("minimal.yaml"), "bad things", t(5));
        for c in &s.conditions {
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", REASON_INVALID_SPEC));
            assert_eq!(c.message, "invalid spec: bad things");
            assert_eq!(c.observed_generation, Some(1));
        }
        assert_eq!(s.conditions.len(), 2);
    }
}
