//! The reconciler: validate → build (pure) → apply (server-side apply, force, one field
//! manager; children no longer wanted are deleted) → status (computed from what the children
//! report, patched only when it changed).
//!
//! Children carry a controller owner reference, so deleting an InferenceService
//! garbage-collects them; no finalizer is needed because nothing lives outside Kubernetes.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Debug,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    jiff::Timestamp,
};
use kube::{
    Client, Resource, ResourceExt,
    api::{Api, DeleteParams, GetParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{
        Controller,
        controller::{self, Action},
        events::{EventType, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{Instrument, Level, debug, info, warn};

use crate::{
    build::{
        CanaryChildren, Children, HTTP_PORT, ISVC_LABEL, MANAGED_BY, TEMPLATE_HASH_LABEL, build, build_canary,
        canary_url, routing_env, selector_labels,
    },
    canary::{self, CANARY, Observed, may_retire, should_route},
    config::{FIELD_MANAGER, OperatorConfig},
    crd::{InferenceService, InferenceServiceStatus},
    error::{Error, Result, is_rejection},
    events::{Event, EventRecorder},
    metrics::Metrics,
    status::{READY, Rollout, compute_status, invalid_status, is_rolled_out, rollout, same_ignoring_time},
    validate::{CANARY_SUFFIX, Scaling, ValidatedService, validate},
};

/// Triggers for one InferenceService within this long make one reconcile (creating it causes a
/// burst: its children, their status updates by the controller-manager, its pods, its status).
const DEBOUNCE: Duration = Duration::from_millis(1000);
/// Transient errors back off from this...
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// ...up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `(InferenceService key, "<child kind>/<child name>")` → (hash of the applied object,
/// resourceVersion).
type AppliedMap = HashMap<(String, String), (u64, String)>;

/// What every reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: EventRecorder,
    /// Operator settings.
    pub config: OperatorConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive transient failures per `namespace/name`, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per child (`namespace/name` of the InferenceService, kind): the hash of what was last
    /// applied and the resourceVersion the API server answered with. A child whose live
    /// resourceVersion is still that one, and whose wanted state has the same hash, is not
    /// applied again: a resync of a settled resource writes nothing.
    applied: Mutex<AppliedMap>,
}

impl Context {
    /// Creates a context.
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>, reporter: Reporter) -> Self {
        Self {
            recorder: EventRecorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            failures: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
        }
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, AppliedMap> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what was applied for InferenceServices that are gone.
    fn retain_applied(&self, present: &BTreeSet<String>) {
        self.applied().retain(|(isvc, _), _| present.contains(isvc));
    }

    fn failure_count(&self, key: &str, bump: bool) -> u32 {
        let Ok(mut f) = self.failures.lock() else {
            return 0;
        };
        if bump {
            let n = f.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            f.remove(key);
            0
        }
    }

    async fn publish(&self, isvc: &InferenceService, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event { type_, reason: reason.into(), action: action.into(), note };
        if let Err(e) = self.recorder.publish(event, &isvc.object_ref(&())).await {
            warn!(error = %e, "failed to publish event");
        }
    }
}

fn key(isvc: &InferenceService) -> String {
    format!("{}/{}", isvc.namespace().unwrap_or_default(), isvc.name_any())
}

/// Reconciles one InferenceService.
pub async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let span = crate::telemetry::reconcile(
        isvc.namespace().as_deref().unwrap_or_default(),
        &isvc.name_any(),
        isvc.metadata.generation,
    );
    let result = reconcile_inner(&isvc, &ctx).instrument(span.clone()).await;
    if let Err(e) = &result {
        crate::telemetry::fail(&span, e);
    }
    if result.is_ok() {
        ctx.failure_count(&key(&isvc), false);
    }
    result
}

async fn reconcile_inner(isvc: &InferenceService, ctx: &Context) -> Result<Action> {
    let ns = isvc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    let isvcs: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &ns);

    let valid = match validate(isvc, &ctx.config) {
        Ok(v) => v,
        Err(message) => {
            refuse(isvc, &isvcs, ctx, &message).await?;
            return Err(Error::InvalidSpec(message));
        }
    };

    let old = isvc.status.clone().unwrap_or_default();
    let (mut applied, canary_deployment) = match apply_all(ctx, &valid).await {
        Ok(a) => a,
        Err(Error::InvalidSpec(message)) => {
            refuse(isvc, &isvcs, ctx, &message).await?;
            return Err(Error::InvalidSpec(message));
        }
        Err(e @ Error::Rejected { .. }) => {
            refuse(isvc, &isvcs, ctx, &e.to_string()).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };

    let min_available = valid.min_available();
    let stable_rolled_out = is_rolled_out(&applied.deployment, min_available);
    let rollout = if stable_rolled_out {
        rollout(&applied.deployment, &[], min_available)
    } else {
        let pods = current_pods(&ctx.client, &valid, &applied.deployment).await?;
        rollout(&applied.deployment, &pods, min_available)
    };

    // The canary: its rollout while spec.canary is set; else retire a canary still running once
    // the stable rollout is complete.
    let canary_rollout = match (&valid.canary, &canary_deployment) {
        (Some(c), Some(d)) => Some(canary_rollout(ctx, &c.service, d).await?),
        _ => None,
    };
    let retiring =
        if valid.canary.is_none() && (old.canary.is_some() || old.observed_generation != isvc.metadata.generation) {
            retire_canary(ctx, &valid, stable_rolled_out, &mut applied).await?
        } else {
            None
        };
    let observed = match (&valid.canary, &canary_deployment, &canary_rollout, &retiring) {
        (Some(canary), Some(deployment), Some(rollout), _) => Observed::Active { canary, deployment, rollout },
        (None, _, _, Some(deployment)) => Observed::Retiring { deployment },
        _ => Observed::Absent,
    };

    let now = Timestamp::now();
    let mut status = compute_status(isvc, &valid, &ctx.config, &applied.deployment, &rollout, now);
    canary::set_status(&mut status, &old, &observed, &applied.deployment, stable_rolled_out, now);
    patch_status_if_changed(&isvcs, isvc, &old, &status).await?;

    // Events: applied children for a new generation, deletions, and transitions of Ready.
    if old.observed_generation != isvc.metadata.generation {
        let reason = if old.observed_generation.is_none() { "Created" } else { "Updated" };
        ctx.publish(
            isvc,
            EventType::Normal,
            reason,
            "Apply",
            format!(
                "applied {}{} for generation {}",
                applied.kinds.join(", "),
                if applied.canary_kinds.is_empty() || valid.canary.is_none() {
                    String::new()
                } else {
                    format!(" and the canary's {}", applied.canary_kinds.join(", "))
                },
                isvc.metadata.generation.unwrap_or(0)
            ),
        )
        .await;
    }
    for (kind, name) in &applied.deleted {
        ctx.publish(isvc, EventType::Normal, "Deleted", "Delete", format!("deleted {kind} {name} (no longer wanted)"))
            .await;
    }
    let old_ready = old.conditions.iter().find(|c| c.type_ == READY);
    let new_ready = status.conditions.iter().find(|c| c.type_ == READY);
    if let Some(new) = new_ready {
        let changed = old_ready.is_none_or(|o| o.status != new.status || o.reason != new.reason);
        if changed {
            match &rollout {
                Rollout::Failed { reason, .. } => {
                    ctx.publish(isvc, EventType::Warning, reason, "Rollout", new.message.clone()).await;
                }
                Rollout::Complete => {
                    ctx.publish(isvc, EventType::Normal, "Ready", "Rollout", new.message.clone()).await;
                }
                _ => {}
            }
        }
    }
    canary_events(ctx, isvc, &old, &status).await;

    ctx.metrics.set_managed(&key(isvc), Some([applied.kinds.clone(), applied.canary_kinds.clone()].concat()));
    debug!(isvc = %key(isvc), ?rollout, "reconciled");
    // No shorter requeue while a rollout is under way: the watches on the Deployments and on
    // the runtime pods trigger a reconcile on every change of either.
    Ok(Action::requeue(ctx.config.resync))
}

/// Records an unservable spec in the status (and an event when that is news).
async fn refuse(isvc: &InferenceService, isvcs: &Api<InferenceService>, ctx: &Context, message: &str) -> Result<()> {
    let old = isvc.status.clone().unwrap_or_default();
    let status = invalid_status(isvc, message, Timestamp::now());
    if patch_status_if_changed(isvcs, isvc, &old, &status).await? {
        ctx.publish(isvc, EventType::Warning, "InvalidSpec", "Validate", message.to_string()).await;
    }
    Ok(())
}

/// Patches the status subresource (server-side apply) unless nothing but timestamps changed.
/// Returns whether a patch was sent.
async fn patch_status_if_changed(
    isvcs: &Api<InferenceService>,
    isvc: &InferenceService,
    old: &InferenceServiceStatus,
    new: &InferenceServiceStatus,
) -> Result<bool> {
    if isvc.status.is_some() && same_ignoring_time(old, new) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": InferenceService::api_version(&()),
        "kind": InferenceService::kind(&()),
        "status": new,
    });
    let name = isvc.name_any();
    let span =
        crate::telemetry::apply("InferenceService/status", isvc.namespace().as_deref().unwrap_or_default(), &name);
    isvcs
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .instrument(span.clone())
        .await
        .map_err(|e| {
            crate::telemetry::fail(&span, &e);
            Error::Status(e)
        })?;
    Ok(true)
}

/// What the apply step leaves for the status step.
pub struct Applied {
    /// The Deployment as the API server returned it (with its current status).
    pub deployment: Deployment,
    /// Kinds of the stable children that exist now.
    pub kinds: Vec<&'static str>,
    /// Kinds of the canary's children that exist now (`<name>-canary`).
    pub canary_kinds: Vec<&'static str>,
    /// Kind and name of the children deleted because they are no longer wanted.
    pub deleted: Vec<(&'static str, String)>,
}

/// Applies the canary's children first (when `spec.canary` is set: the stable pods' routing
/// needs the canary Service's ClusterIP), then the stable ones with that routing once the
/// canary can serve ([`should_route`]). Returns the stable children and the canary Deployment.
async fn apply_all(ctx: &Context, isvc: &ValidatedService) -> Result<(Applied, Option<Deployment>)> {
    let (canary_deployment, routing) = match (&isvc.canary, build_canary(isvc)) {
        (Some(canary), Some(children)) => {
            let (deployment, cluster_ip) = apply_canary(ctx, isvc, children).await?;
            let routing = match cluster_ip {
                Some(ip) => {
                    let live =
                        get_cached(&Api::<Deployment>::namespaced(ctx.client.clone(), &isvc.namespace), &isvc.name)
                            .await
                            .map_err(|source| Error::Read { what: "Deployment", source })?;
                    if should_route(&deployment, live.as_ref(), &canary_url(&ip, HTTP_PORT)) {
                        routing_env(canary, &ip)
                    } else {
                        Vec::new()
                    }
                }
                // No address allocated (yet): nothing to route to.
                None => Vec::new(),
            };
            (Some(deployment), routing)
        }
        _ => (None, Vec::new()),
    };
    let mut applied = apply(ctx, isvc, build(isvc, routing)).await?;
    if canary_deployment.is_some() {
        applied.canary_kinds.extend(["Service", "Deployment"]);
    }
    Ok((applied, canary_deployment))
}

/// Applies the canary's Service and Deployment; returns the Deployment and the Service's
/// ClusterIP as the API server allocated it.
async fn apply_canary(
    ctx: &Context,
    isvc: &ValidatedService,
    children: CanaryChildren,
) -> Result<(Deployment, Option<String>)> {
    let CanaryChildren { deployment, service } = children;
    let ns = &isvc.namespace;
    let owner = format!("{ns}/{}", isvc.name);
    let services = Api::<Service>::namespaced(ctx.client.clone(), ns);
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), ns);
    refuse_foreign(&services, &service, isvc).await?;
    refuse_foreign(&deployments, &deployment, isvc).await?;
    let (service, deployment) = futures::try_join!(
        ensure_applied(ctx, &owner, &services, &service),
        ensure_applied(ctx, &owner, &deployments, &deployment)
    )?;
    let ip = service.spec.and_then(|s| s.cluster_ip).filter(|ip| !ip.is_empty() && ip != "None");
    Ok((deployment, ip))
}

/// Fails (as a refused spec) when an object named like a canary child exists and is not
/// controlled by this InferenceService, e.g. the Deployment of another InferenceService called
/// `<name>-canary`: the operator's forced apply would take it over.
async fn refuse_foreign<K>(api: &Api<K>, wanted: &K, isvc: &ValidatedService) -> Result<()>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let kind = kind_name::<K>();
    let name = wanted.meta().name.clone().unwrap_or_default();
    let Some(existing) = get_cached(api, &name).await.map_err(|source| Error::Read { what: kind, source })? else {
        return Ok(());
    };
    let ours = existing.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == isvc.owner.uid);
    if ours {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "the canary needs {kind} {name}, which exists and does not belong to this InferenceService: \
         rename one of them"
    )))
}

/// How the canary's rollout stands (its current pods are read only while it is incomplete).
async fn canary_rollout(ctx: &Context, canary: &ValidatedService, deployment: &Deployment) -> Result<Rollout> {
    let min_available = canary.min_available();
    if is_rolled_out(deployment, min_available) {
        return Ok(rollout(deployment, &[], min_available));
    }
    let pods = current_pods(&ctx.client, canary, deployment).await?;
    Ok(rollout(deployment, &pods, min_available))
}

/// Without `spec.canary`: deletes a canary still running once [`may_retire`] allows it
/// (recorded in `applied.deleted`), else returns its Deployment (it keeps serving the old
/// stable pods' share).
async fn retire_canary(
    ctx: &Context,
    isvc: &ValidatedService,
    stable_rolled_out: bool,
    applied: &mut Applied,
) -> Result<Option<Deployment>> {
    let ns = &isvc.namespace;
    let owner = format!("{ns}/{}", isvc.name);
    let name = format!("{}{CANARY_SUFFIX}", isvc.name);
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), ns);
    let services = Api::<Service>::namespaced(ctx.client.clone(), ns);
    let read = |what| move |source| Error::Read { what, source };
    let owned = |o: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        o.iter().any(|o| o.controller == Some(true) && o.uid == isvc.owner.uid)
    };
    let deployment =
        get_cached(&deployments, &name).await.map_err(read("Deployment"))?.filter(|d| owned(d.owner_references()));
    let service = get_cached(&services, &name).await.map_err(read("Service"))?.filter(|s| owned(s.owner_references()));
    if deployment.is_none() && service.is_none() {
        return Ok(None);
    }
    let stable_pods = if stable_rolled_out && deployment.is_some() {
        let selector = selector_labels(isvc).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default().labels(&selector).match_any())
            .await
            .map_err(read("pods"))?
            .items
    } else {
        Vec::new()
    };
    // A Service left without its Deployment has no pod behind it: nothing to wait for.
    if deployment.is_some() && !may_retire(stable_rolled_out, &stable_pods) {
        if service.is_some() {
            applied.canary_kinds.push("Service");
        }
        if deployment.is_some() {
            applied.canary_kinds.push("Deployment");
        }
        return Ok(deployment);
    }
    if delete_owned(ctx, &owner, &deployments, isvc, &name).await? {
        applied.deleted.push(("Deployment", name.clone()));
    }
    if delete_owned(ctx, &owner, &services, isvc, &name).await? {
        applied.deleted.push(("Service", name.clone()));
    }
    Ok(None)
}

/// Events about the canary: the split in effect changed; the canary failed.
async fn canary_events(
    ctx: &Context,
    isvc: &InferenceService,
    old: &InferenceServiceStatus,
    new: &InferenceServiceStatus,
) {
    let traffic = |s: &InferenceServiceStatus| s.canary.as_ref().and_then(|c| c.traffic.clone());
    let before = traffic(old).unwrap_or_else(|| "none".into());
    if let Some(c) = &new.canary
        && let Some(now) = traffic(new)
        && now != before
    {
        let note = format!("canary version {}: traffic {before} → {now}", c.version.as_deref().unwrap_or("?"),);
        ctx.publish(isvc, EventType::Normal, "CanaryTraffic", "Route", note).await;
    }
    let cond = |s: &InferenceServiceStatus| s.conditions.iter().find(|c| c.type_ == CANARY).cloned();
    if let Some(c) = cond(new)
        && c.status == "False"
        && [canary::REASON_LOAD_FAILED, canary::REASON_ROLLOUT_FAILED].contains(&c.reason.as_str())
        && cond(old).is_none_or(|o| o.reason != c.reason)
    {
        ctx.publish(isvc, EventType::Warning, &c.reason, "Rollout", c.message.clone()).await;
    }
}

/// Applies every wanted child and deletes the unwanted ones. The four children are
/// independent (an HPA may exist before the Deployment it targets; it waits for it), so their
/// API calls run concurrently.
pub async fn apply(ctx: &Context, isvc: &ValidatedService, children: Children) -> Result<Applied> {
    // Destructured without `..`: a new child kind that is not applied fails to compile.
    let Children { deployment, service, hpa, pdb } = children;
    let client = &ctx.client;
    let ns = &isvc.namespace;
    let owner = format!("{ns}/{}", isvc.name);

    let service = async {
        ensure_applied(ctx, &owner, &Api::<Service>::namespaced(client.clone(), ns), &service).await?;
        Ok::<_, Error>(())
    };
    let deployment = async {
        let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
        let mut deployment = deployment;
        if let Scaling::Auto(a) = &isvc.scaling {
            let exists = hand_over_replicas(&deployments, &isvc.name, a.min_replicas, a.max_replicas).await?;
            if !exists {
                // First creation under autoscaling: start at minReplicas rather than the API
                // server's default of one pod. The next reconcile hands the field to the HPA.
                if let Some(spec) = deployment.spec.as_mut() {
                    spec.replicas = Some(a.min_replicas);
                }
            }
        }
        ensure_applied(ctx, &owner, &deployments, &deployment).await
    };
    let hpa = async {
        let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns);
        match hpa {
            Some(h) => ensure_applied(ctx, &owner, &hpas, &h).await.map(|_| (true, false)),
            None => delete_owned(ctx, &owner, &hpas, isvc, &isvc.name).await.map(|deleted| (false, deleted)),
        }
    };
    let pdb = async {
        let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
        match pdb {
            Some(p) => ensure_applied(ctx, &owner, &pdbs, &p).await.map(|_| (true, false)),
            None => delete_owned(ctx, &owner, &pdbs, isvc, &isvc.name).await.map(|deleted| (false, deleted)),
        }
    };
    let ((), deployment, (hpa_exists, hpa_deleted), (pdb_exists, pdb_deleted)) =
        futures::try_join!(service, deployment, hpa, pdb)?;

    let mut kinds = vec!["Service", "Deployment"];
    let mut deleted = Vec::new();
    if hpa_exists {
        kinds.push("HorizontalPodAutoscaler");
    }
    if hpa_deleted {
        deleted.push(("HorizontalPodAutoscaler", isvc.name.clone()));
    }
    if pdb_exists {
        kinds.push("PodDisruptionBudget");
    }
    if pdb_deleted {
        deleted.push(("PodDisruptionBudget", isvc.name.clone()));
    }
    Ok(Applied { deployment, kinds, canary_kinds: Vec::new(), deleted })
}

fn hash_of<K: Serialize>(obj: &K) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(obj).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Applies `obj` unless the live object is exactly what this operator last applied with the
/// same wanted state (same resourceVersion: nobody changed it since). Returns the live object.
async fn ensure_applied<K>(ctx: &Context, owner: &str, api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let kind = kind_name::<K>();
    let name = obj.meta().name.clone().unwrap_or_default();
    let key = (owner.to_string(), format!("{kind}/{name}"));
    let hash = hash_of(obj);
    let last = ctx.applied().get(&key).cloned();
    if let Some((last_hash, last_version)) = last
        && last_hash == hash
    {
        let live = get_cached(api, &name).await.map_err(|source| Error::Read { what: kind, source })?;
        if let Some(live) = live
            && live.meta().resource_version.as_deref() == Some(last_version.as_str())
        {
            return Ok(live);
        }
    }
    let applied = apply_one(api, obj).await?;
    match applied.meta().resource_version.clone() {
        Some(version) => ctx.applied().insert(key, (hash, version)),
        None => ctx.applied().remove(&key),
    };
    Ok(applied)
}

async fn apply_one<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let span = crate::telemetry::apply(kind_name::<K>(), obj.meta().namespace.as_deref().unwrap_or_default(), &name);
    let (params, patch) = (PatchParams::apply(FIELD_MANAGER).force(), Patch::Apply(obj));
    api.patch(&name, &params, &patch).instrument(span.clone()).await.map_err(|source| {
        crate::telemetry::fail(&span, &source);
        let kind = kind_name::<K>();
        if is_rejection(&source) { Error::Rejected { kind, name, source } } else { Error::Apply { kind, name, source } }
    })
}

/// Field manager that briefly holds `spec.replicas` while the HPA takes it over.
pub const REPLICAS_HANDOVER_MANAGER: &str = "kinfer-operator-replicas-handover";

/// Under autoscaling the HPA owns `spec.replicas`, so the operator's apply leaves it out. If the
/// operator still owns the field (it applied a fixed count before, or created the Deployment
/// with `minReplicas`), leaving it out would reset the Deployment to one replica until the HPA
/// reacts. So the current value, brought within `[min, max]`, is first applied by a second
/// field manager, which keeps it until the HPA's next update takes it over (the hand-over the
/// server-side apply documentation describes for HPAs). Returns whether the Deployment exists.
async fn hand_over_replicas(deployments: &Api<Deployment>, name: &str, min: i32, max: i32) -> Result<bool> {
    let read = |source| Error::Read { what: "Deployment", source };
    let live = match get_cached(deployments, name).await.map_err(read)? {
        Some(d) => Some(d),
        // Not in the cache: confirm from etcd before creating it with minReplicas, so that a
        // lagging cache never resets a count the HPA already set.
        None => deployments.get_opt(name).await.map_err(read)?,
    };
    let Some(live) = live else {
        return Ok(false);
    };
    let owned_by_us = live.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.fields_v1.as_ref().is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    });
    if !owned_by_us {
        return Ok(true);
    }
    let replicas = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).clamp(min, max.max(min));
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    deployments
        .patch(name, &PatchParams::apply(REPLICAS_HANDOVER_MANAGER), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Apply { kind: "Deployment", name: name.to_string(), source })?;
    Ok(true)
}

/// Deletes the child `name` if (and only if) it is controlled by the InferenceService.
async fn delete_owned<K>(ctx: &Context, owner: &str, api: &Api<K>, isvc: &ValidatedService, name: &str) -> Result<bool>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let kind = kind_name::<K>();
    ctx.applied().remove(&(owner.to_string(), format!("{kind}/{name}")));
    let Some(existing) = get_cached(api, name).await.map_err(|source| Error::Read { what: kind, source })? else {
        return Ok(false);
    };
    let ours = existing.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == isvc.owner.uid);
    if !ours {
        return Ok(false);
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: existing.uid(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(source) => Err(Error::Delete { kind, name: name.to_string(), source }),
    }
}

/// Reads an object from the API server's watch cache (`resourceVersion=0`) rather than from
/// etcd: much cheaper for the API server. It may be a little behind; every later change comes
/// as a watch event that reconciles again.
async fn get_cached<K>(api: &Api<K>, name: &str) -> kube::Result<Option<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    match api.get_with(name, &GetParams::any()).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        _ => "object",
    }
}

/// Pods of the Deployment's current template (found by the template-hash label).
async fn current_pods(client: &Client, isvc: &ValidatedService, deployment: &Deployment) -> Result<Vec<Pod>> {
    let hash = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
        .cloned()
        .unwrap_or_default();
    let selector = format!("{ISVC_LABEL}={},{TEMPLATE_HASH_LABEL}={hash}", isvc.owner.name);
    let pods = Api::<Pod>::namespaced(client.clone(), &isvc.namespace)
        .list(&ListParams::default().labels(&selector).match_any())
        .await
        .map_err(|source| Error::Read { what: "pods", source })?;
    Ok(pods.items)
}

/// Invalid specs wait for a change; transient errors requeue with exponential backoff.
pub fn error_policy(isvc: Arc<InferenceService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    let key = key(&isvc);
    if error.is_permanent() {
        info!(isvc = %key, category = error.category(), %error, "waiting for a spec change");
        return Action::await_change();
    }
    let n = ctx.failure_count(&key, true);
    let delay = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16))).min(BACKOFF_MAX);
    warn!(isvc = %key, category = error.category(), %error, ?delay, "reconcile failed, retrying");
    Action::requeue(delay)
}

/// Runs one controller per watched namespace (one for the whole cluster when `namespaces`
/// is empty) until they all stop. Fails early when the CRD is not installed.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    namespaces: Vec<String>,
    metrics: Arc<Metrics>,
    reporter: Reporter,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Context::new(client.clone(), config, metrics.clone(), reporter));
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    let children_cfg = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let mut stores: Vec<Store<InferenceService>> = Vec::new();
    let mut streams = Vec::new();
    for scope in scopes {
        let isvcs: Api<InferenceService> = api_for(&client, scope.as_deref());
        isvcs.list(&ListParams::default().limit(1)).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot list InferenceServices{} ({e}); is the CRD installed? \
                     (kubectl apply -f crds/)",
                scope.as_ref().map(|s| format!(" in {s}")).unwrap_or_default()
            )
        })?;
        let controller = Controller::new(isvcs, watcher::Config::default().any_semantic())
            .owns(api_for::<Deployment>(&client, scope.as_deref()), children_cfg.clone())
            .owns(api_for::<Service>(&client, scope.as_deref()), children_cfg.clone())
            .owns(api_for::<HorizontalPodAutoscaler>(&client, scope.as_deref()), children_cfg.clone())
            .owns(api_for::<PodDisruptionBudget>(&client, scope.as_deref()), children_cfg.clone())
            // The runtime pods (same labels as the other children): a pod that crashes, cannot
            // start or becomes ready reconciles its InferenceService at once.
            .watches(api_for::<Pod>(&client, scope.as_deref()), children_cfg.clone(), pod_owner)
            .with_config(controller::Config::default().concurrency(ctx.config.concurrency).debounce(DEBOUNCE));
        stores.push(controller.store());
        info!(namespace = scope.as_deref().unwrap_or("<all>"), "starting controller");
        streams.push(
            controller
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|res| async move {
                    match res {
                        Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                        Err(e) if controller_error_level(&e) == Level::DEBUG => debug!(error = %e, "controller"),
                        Err(e) => warn!(error = %e, "controller error"),
                    }
                })
                .boxed(),
        );
    }
    let prune: BoxFuture<'static, ()> = Box::pin(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let present: BTreeSet<String> = stores.iter().flat_map(|s| s.state()).map(|o| key(&o)).collect();
            metrics.retain_managed(&present);
            ctx.retain_applied(&present);
        }
    });
    tokio::select! {
        _ = futures::future::join_all(streams) => {}
        _ = prune => {}
    }
    Ok(())
}

/// The InferenceService a runtime pod belongs to (from its labels).
fn pod_owner(pod: Pod) -> Option<ObjectRef<InferenceService>> {
    let name = pod.labels().get(ISVC_LABEL)?;
    let namespace = pod.namespace()?;
    Some(ObjectRef::new(name).within(&namespace))
}

/// How loud an error of the controller's stream is. Reconcile failures are logged (and
/// counted) by `error_policy`; a scheduled reconcile of an object deleted meanwhile is normal
/// (every deletion causes some: the children's deletions trigger their owner).
pub fn controller_error_level<Q>(error: &controller::Error<Error, Q>) -> Level {
    match error {
        controller::Error::ObjectNotFound(_) | controller::Error::ReconcilerFailed(..) => Level::DEBUG,
        controller::Error::QueueError(_) | controller::Error::RunnerError(_) => Level::WARN,
    }
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
impl Context {
    /// A context over a fake API server (see `fixtures`).
    pub fn test() -> (Arc<Self>, crate::fixtures::ApiServerVerifier) {
        let (client, verifier) = crate::fixtures::ApiServerVerifier::new();
        let ctx = Context::new(
            client,
            OperatorConfig::default(),
            Arc::new(Metrics::new()),
            Reporter { controller: "kinfer-operator".into(), instance: Some("test".into()) },
        );
        (Arc::new(ctx), verifier)
    }
}
