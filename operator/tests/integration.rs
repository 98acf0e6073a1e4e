//! Integration tests against a real API server. They need only a control plane
//! (kube-apiserver + kube-controller-manager; no nodes, no scheduler) and run when
//! `KINFER_TEST_KUBECONFIG` names its kubeconfig; otherwise each test prints why it is
//! skipped and passes.
//!
//! Nothing runs the pods, so a test plays the kubelet: it marks the runtime pods Ready
//! through their status subresource (with nodes, as on kind, real kubelets would overwrite
//! that; the kind-based e2e suite covers real pods).
//!
//! Each test installs crds/, starts the operator in-process for its own namespace
//! (`kinfer-it-<random>`, labelled `kinfer.dev/test=integration`) and deletes that namespace
//! afterwards, also when the test fails. Left-overs of a killed run:
//! `kubectl delete ns -l kinfer.dev/test=integration`.

use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Namespace, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::Timestamp,
};
use kinfer_operator::{InferenceService, OperatorConfig, controller, metrics::Metrics};
use kube::{
    Client, Config, Resource, ResourceExt,
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        events::Reporter,
        wait::{await_condition, conditions},
    },
};
use serde_json::json;

const CRD_YAML: &str = include_str!("../../crds/inferenceservices.serving.kinfer.dev.yaml");
const TEST_LABEL: &str = "kinfer.dev/test";
const WAIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> InferenceService {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut isvc: InferenceService = serde_yaml::from_str(&yaml).unwrap();
    isvc.metadata.namespace = None;
    isvc
}

/// The client for `KINFER_TEST_KUBECONFIG`, or `None` (with the reason printed).
async fn test_client(test: &str) -> Option<Client> {
    let Some(path) = std::env::var_os("KINFER_TEST_KUBECONFIG").map(PathBuf::from) else {
        eprintln!(
            "skipping {test}: KINFER_TEST_KUBECONFIG is not set (`make test` sets it when the local \
             Kubernetes kit ../shared/k8s is beside the repository; or point it at the kubeconfig of \
             a control plane with kube-apiserver and kube-controller-manager)"
        );
        return None;
    };
    let kubeconfig =
        Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("KINFER_TEST_KUBECONFIG={}: {e}", path.display()));
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig is usable");
    Some(Client::try_from(config).expect("client"))
}

async fn install_crd(client: &Client) {
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD_YAML).unwrap();
    let name = crd.name_any();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(&name, &PatchParams::apply("kinfer-integration-test").force(), &Patch::Apply(&crd))
        .await
        .expect("CRD applied");
    tokio::time::timeout(WAIT, await_condition(crds, &name, conditions::is_crd_established()))
        .await
        .expect("CRD established in time")
        .expect("CRD watch");
}

/// Runs `body` in a fresh labelled namespace with the operator running for it, then deletes
/// the namespace (also when `body` panics).
async fn with_operator<F, Fut>(client: Client, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    install_crd(&client).await;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    let ns = format!("kinfer-it-{:x}{:x}", std::process::id() & 0xfff, nanos);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns, "labels": {TEST_LABEL: "integration"}}
    }))
    .unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.expect("namespace created");

    let operator = tokio::spawn(controller::run(
        client.clone(),
        OperatorConfig { runtime_image: "kinfer-runtime:integration-test".into(), ..OperatorConfig::default() },
        vec![ns.clone()],
        Arc::new(Metrics::new()),
        Reporter { controller: "kinfer-operator".into(), instance: Some("integration-test".into()) },
    ));
    let outcome = tokio::spawn(body(client.clone(), ns.clone())).await;
    operator.abort();
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`WAIT`].
async fn wait_for<T, Fut>(what: &str, mut f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition(isvc: &InferenceService, type_: &str) -> Option<(String, String, String)> {
    isvc.condition(type_).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cel_refusals.rs"));

#[tokio::test]
async fn invalid_manifests_are_refused_by_the_api_server_with_the_rule_message() {
    let Some(client) = test_client("invalid_manifests_are_refused").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let api: Api<InferenceService> = Api::namespaced(client, &ns);
        // The schema's own pattern, then every CEL rule.
        let refusals = [("invalid-sha256.yaml", "spec.model.sha256")];
        for &(file, expected) in refusals.iter().chain(CEL_REFUSALS) {
            let err = api.create(&PostParams::default(), &fixture(file)).await.expect_err(file);
            let kube::Error::Api(status) = err else { panic!("{file}: unexpected error {err}") };
            assert_eq!(status.code, 422, "{file}: {status:?}");
            assert!(status.message.contains(expected), "{file}: {:?} does not contain {expected:?}", status.message);
        }
        // spec.cache: maxEntries 0 is below the schema's minimum; maxBytes takes an integer or a
        // quantity (dry run: nothing is stored).
        let dry = PostParams { dry_run: true, ..Default::default() };
        let mut zero = fixture("minimal.yaml");
        zero.spec.cache = Some(kinfer_operator::crd::CacheSpec { max_entries: Some(0), ..Default::default() });
        let err = api.create(&dry, &zero).await.expect_err("maxEntries 0");
        let kube::Error::Api(status) = err else { panic!("unexpected error {err}") };
        assert_eq!(status.code, 422, "{status:?}");
        assert!(status.message.contains("spec.cache.maxEntries"), "{}", status.message);
        for bytes in ["256Mi", "1000000"] {
            let mut ok = fixture("minimal.yaml");
            ok.spec.cache = Some(kinfer_operator::crd::CacheSpec {
                max_bytes: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(bytes.into())),
                ttl_seconds: Some(60),
                ..Default::default()
            });
            api.create(&dry, &ok).await.unwrap_or_else(|e| panic!("cache.maxBytes {bytes} refused: {e}"));
        }
    })
    .await;
}

#[tokio::test]
async fn valid_resource_gets_four_owned_children_and_they_are_garbage_collected() {
    let Some(client) = test_client("valid_resource_gets_four_owned_children").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let created =
            isvcs.create(&PostParams::default(), &fixture("autoscaling.yaml")).await.expect("valid manifest accepted");
        let uid = created.uid().unwrap();
        let name = created.name_any();

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);

        let owners = wait_for("the four children", || async {
            let d = deployments.get_opt(&name).await.ok()??;
            let s = services.get_opt(&name).await.ok()??;
            let h = hpas.get_opt(&name).await.ok()??;
            let p = pdbs.get_opt(&name).await.ok()??;
            Some(vec![
                d.meta().owner_references.clone(),
                s.meta().owner_references.clone(),
                h.meta().owner_references.clone(),
                p.meta().owner_references.clone(),
            ])
        })
        .await;
        for o in owners {
            let o = &o.expect("owner references")[0];
            assert_eq!(o.uid, uid);
            assert_eq!(o.kind, "InferenceService");
            assert_eq!(o.controller, Some(true));
        }

        let isvc = wait_for("a Progressing status", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Progressing")?.0 == "True").then_some(i)
        })
        .await;
        let (status, reason, _) = condition(&isvc, "Ready").unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Progressing"));
        assert_eq!(isvc.status.unwrap().url.unwrap(), format!("http://{name}.{ns}.svc.cluster.local"));

        isvcs.delete(&name, &DeleteParams::background()).await.expect("deleted");
        wait_for("the children to be garbage-collected", || async {
            let gone = deployments.get_opt(&name).await.ok()?.is_none()
                && services.get_opt(&name).await.ok()?.is_none()
                && hpas.get_opt(&name).await.ok()?.is_none()
                && pdbs.get_opt(&name).await.ok()?.is_none();
            gone.then_some(())
        })
        .await;
    })
    .await;
}

/// What a kubelet would cause: the runtime pods report Ready (so the ReplicaSet and
/// Deployment controllers compute a ready status), and the Deployment's status says so.
/// Repeated until the InferenceService shows it, because the Deployment controller may
/// recompute the Deployment's status in between.
async fn mark_deployment_ready(client: &Client, ns: &str, name: &str) {
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), ns);
    mark_ready_until(client, ns, name, "Ready=True", || async {
        let i = isvcs.get(name).await.ok()?;
        (condition(&i, "Ready")?.0 == "True").then_some(())
    })
    .await;
}

/// Marks the pods of Deployment `deployment` ready (and its status) until `done` holds.
async fn mark_ready_until<Fut>(client: &Client, ns: &str, deployment: &str, what: &str, done: impl Fn() -> Fut)
where
    Fut: Future<Output = Option<()>>,
{
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = Timestamp::now().to_string();
    wait_for(what, || async {
        let selector = format!("app.kubernetes.io/instance={deployment}");
        for pod in pods.list(&ListParams::default().labels(&selector)).await.map(|l| l.items).unwrap_or_default() {
            let ready = json!({"status": {
                "phase": "Running",
                "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": [{"name": "runtime", "ready": true, "started": true,
                    "restartCount": 0, "image": "kinfer-runtime:integration-test", "imageID": "",
                    "state": {"running": {"startedAt": now}}}],
            }});
            let _ = pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&ready)).await;
        }
        let d = deployments.get(deployment).await.ok()?;
        let n = d.spec.as_ref()?.replicas.unwrap_or(1);
        let status = json!({"status": {"observedGeneration": d.metadata.generation,
            "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}});
        let _ = deployments.patch_status(deployment, &PatchParams::default(), &Patch::Merge(&status)).await;
        done().await
    })
    .await;
}

#[tokio::test]
async fn ready_deployment_makes_the_resource_ready_and_a_spec_change_rolls_it() {
    let Some(client) = test_client("ready_deployment_makes_the_resource_ready").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let created = isvcs.create(&PostParams::default(), &fixture("minimal.yaml")).await.expect("created");
        let name = created.name_any();
        wait_for("the Deployment", || async { deployments.get_opt(&name).await.ok()? }).await;

        mark_deployment_ready(&client, &ns, &name).await;
        let st = isvcs.get(&name).await.unwrap().status.unwrap();
        assert_eq!(st.ready_replicas, Some(1));
        assert_eq!(st.updated_replicas, Some(1));
        assert_eq!(st.replicas, Some(1));
        assert_eq!(st.url.as_deref(), Some(format!("http://{name}.{ns}.svc.cluster.local").as_str()));
        assert_eq!(st.model_uri.as_deref(), Some("s3://models/iris/1/model.onnx"));
        let generation_before = deployments.get(&name).await.unwrap().metadata.generation;

        let new_uri = "s3://models/iris/2/model.onnx";
        isvcs
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": {"uri": new_uri}}})))
            .await
            .expect("spec patched");
        let d = wait_for("the Deployment to roll", || async {
            let d = deployments.get(&name).await.ok()?;
            let env = d.spec.as_ref()?.template.spec.as_ref()?.containers[0].env.clone().unwrap_or_default();
            env.iter().any(|e| e.name == "KINFER_MODEL_URI" && e.value.as_deref() == Some(new_uri)).then_some(d)
        })
        .await;
        assert!(d.metadata.generation > generation_before);
        let i = wait_for("Ready with reason Progressing", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Ready")?.1 == "Progressing").then_some(i)
        })
        .await;
        assert_eq!(
            i.status.unwrap().model_uri.as_deref(),
            Some("s3://models/iris/1/model.onnx"),
            "the old model is still the one served"
        );
    })
    .await;
}

#[tokio::test]
async fn several_models_are_one_deployment_with_kinfer_models_and_a_status_each() {
    let Some(client) = test_client("several_models_are_one_deployment").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let created = isvcs.create(&PostParams::default(), &fixture("two-models.yaml")).await.expect("created");
        let name = created.name_any();
        let d = wait_for("the Deployment", || async { deployments.get_opt(&name).await.ok()? }).await;
        let env = d.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap_or_default();
        let models =
            env.iter().find(|e| e.name == "KINFER_MODELS").and_then(|e| e.value.clone()).expect("KINFER_MODELS");
        let models: serde_json::Value = serde_json::from_str(&models).unwrap();
        assert_eq!(models[0]["name"], "iris");
        assert_eq!((models[1]["name"].as_str(), models[1]["version"].as_str()), (Some("fraud"), Some("3")));
        assert!(!env.iter().any(|e| e.name == "KINFER_MODEL_URI"));

        mark_deployment_ready(&client, &ns, &name).await;
        let st = isvcs.get(&name).await.unwrap().status.unwrap();
        let got: Vec<(&str, &str, bool)> =
            st.models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.ready)).collect();
        assert_eq!(got, [("iris", "1", true), ("fraud", "3", true)]);
    })
    .await;
}

/// Plays the kubelet for a runtime container that exits (the model cannot be loaded).
async fn crash_pods(client: &Client, ns: &str, name: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={name}");
    let now = Timestamp::now().to_string();
    let list = pods.list(&ListParams::default().labels(&selector)).await.map(|l| l.items).unwrap_or_default();
    for pod in &list {
        let crashed = json!({"status": {
            "phase": "Running",
            "containerStatuses": [{"name": "runtime", "ready": false, "started": false,
                "restartCount": 1, "image": "kinfer-runtime:integration-test", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": now, "finishedAt": now,
                    "message": "cannot load model: sha256 mismatch"}}}],
        }});
        pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&crashed)).await.expect("pod status");
    }
    list.len()
}

#[tokio::test]
async fn a_crashing_runtime_pod_is_reported_within_seconds_and_so_is_its_recovery() {
    let Some(client) = test_client("a_crashing_runtime_pod_is_reported_within_seconds").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let name = isvcs.create(&PostParams::default(), &fixture("minimal.yaml")).await.expect("created").name_any();
        let selector = format!("app.kubernetes.io/instance={name}");
        wait_for("a runtime pod", || async {
            let n = pods.list(&ListParams::default().labels(&selector)).await.ok()?.items.len();
            (n > 0).then_some(())
        })
        .await;
        wait_for("Progressing, with the Deployment's pod counted", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Ready")?.1 == "Progressing" && i.status?.replicas == Some(1)).then_some(())
        })
        .await;
        // Let the Deployment controller's status updates (each one a reconcile) die down, so
        // that only the pod's change can make the operator notice the crash.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The bound is 3 s; polled with room for a loaded machine, and well below any
        // periodic requeue (there is none during a rollout now; it was 15 s).
        let bound = Duration::from_secs(8);
        assert!(crash_pods(&client, &ns, &name).await > 0);
        let started = tokio::time::Instant::now();
        let failed = loop {
            let i = isvcs.get(&name).await.expect("get");
            if let Some(c) = condition(&i, "Ready").filter(|c| c.1 == "ModelFailed") {
                break c;
            }
            assert!(started.elapsed() < bound, "no ModelFailed {bound:?} after the pod crashed: {:?}", i.status);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("ModelFailed {:?} after the pod crashed", started.elapsed());
        assert_eq!(failed.0, "False");
        assert!(failed.2.contains("sha256 mismatch"), "{}", failed.2);

        let started = tokio::time::Instant::now();
        mark_deployment_ready(&client, &ns, &name).await;
        eprintln!("Ready {:?} after the pod recovered", started.elapsed());
        let i = isvcs.get(&name).await.unwrap();
        assert_eq!(condition(&i, "Ready").unwrap().1, "Available");
    })
    .await;
}

#[tokio::test]
async fn autoscaling_starts_at_min_replicas_and_keeps_them_through_the_hand_over() {
    let Some(client) = test_client("autoscaling_starts_at_min_replicas").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let name =
            isvcs.create(&PostParams::default(), &fixture("autoscaling.yaml")).await.expect("created").name_any();
        let first = wait_for("the Deployment", || async { deployments.get_opt(&name).await.ok()? }).await;
        assert_eq!(first.spec.unwrap().replicas, Some(2), "created with minReplicas");
        // After the hand-over the operator's own apply no longer sets replicas, and they stay 2.
        let d = wait_for("the hand-over of spec.replicas", || async {
            let d = deployments.get(&name).await.ok()?;
            let ours = d.metadata.managed_fields.iter().flatten().any(|m| {
                m.manager.as_deref() == Some("kinfer-operator")
                    && m.fields_v1.as_ref().is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
            });
            (!ours).then_some(d)
        })
        .await;
        assert_eq!(d.spec.unwrap().replicas, Some(2));
        mark_deployment_ready(&client, &ns, &name).await;
        let st = isvcs.get(&name).await.unwrap().status.unwrap();
        assert_eq!(st.ready_replicas, Some(2));
    })
    .await;
}

#[tokio::test]
async fn a_ready_event_names_the_model_served_now() {
    use k8s_openapi::api::events::v1::Event;
    let Some(client) = test_client("a_ready_event_names_the_model_served_now").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let name = isvcs.create(&PostParams::default(), &fixture("minimal.yaml")).await.expect("created").name_any();
        wait_for("the Deployment", || async { deployments.get_opt(&name).await.ok()? }).await;
        mark_deployment_ready(&client, &ns, &name).await;
        let new_uri = "s3://models/iris/2/model.onnx";
        isvcs
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": {"uri": new_uri}}})))
            .await
            .expect("spec patched");
        wait_for("Ready with reason Progressing", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Ready")?.1 == "Progressing").then_some(())
        })
        .await;
        mark_deployment_ready(&client, &ns, &name).await;
        let notes = wait_for("a Ready event about iris/2", || async {
            let notes: Vec<String> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("Ready"))
                .filter_map(|e| e.note)
                .collect();
            notes.iter().any(|n| n.contains(new_uri)).then_some(notes)
        })
        .await;
        assert!(notes.iter().any(|n| n.contains("s3://models/iris/1/model.onnx")), "{notes:?}");
    })
    .await;
}

fn env_value(d: &Deployment, name: &str) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// `spec.canary` against a real API server: the canary's own Deployment and Service (owned,
/// with an allocated ClusterIP), the stable pods' routing to that ClusterIP once the canary is
/// ready, the `Canary` condition, and after a promotion the canary kept until the stable
/// rollout has completed, then deleted.
#[tokio::test]
async fn a_canary_is_routed_to_once_ready_and_deleted_after_the_promotion_rolled_out() {
    let Some(client) = test_client("a_canary_is_routed_to_once_ready").await else {
        return;
    };
    with_operator(client, |client, ns| async move {
        let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let created = isvcs.create(&PostParams::default(), &fixture("canary.yaml")).await.expect("created");
        let (name, uid) = (created.name_any(), created.uid().unwrap());
        let canary = format!("{name}-canary");

        let (canary_deployment, canary_service) = wait_for("the canary Deployment and Service", || async {
            Some((deployments.get_opt(&canary).await.ok()??, services.get_opt(&canary).await.ok()??))
        })
        .await;
        for owners in [&canary_deployment.metadata.owner_references, &canary_service.metadata.owner_references] {
            let o = &owners.as_ref().expect("owner references")[0];
            assert_eq!((o.uid.as_str(), o.controller), (uid.as_str(), Some(true)));
        }
        assert_eq!(env_value(&canary_deployment, "KINFER_MODEL_VERSION").as_deref(), Some("4"));
        let ip = canary_service.spec.unwrap().cluster_ip.expect("a ClusterIP allocated");
        let stable = wait_for("the stable Deployment", || async { deployments.get_opt(&name).await.ok()? }).await;
        assert_eq!(env_value(&stable, "KINFER_CANARY_URL"), None, "no routing before the canary is ready");
        let i = wait_for("Canary=False CanaryNotReady", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Canary")?.1 == "CanaryNotReady").then_some(i)
        })
        .await;
        assert_eq!(i.status.unwrap().canary.unwrap().version.as_deref(), Some("4"));

        // The canary's pods become ready: the stable pods get the routing to its ClusterIP.
        mark_ready_until(&client, &ns, &canary, "routing on the stable Deployment", || async {
            let d = deployments.get(&name).await.ok()?;
            (env_value(&d, "KINFER_CANARY_URL")? == format!("http://{ip}:8080")).then_some(())
        })
        .await;
        let d = deployments.get(&name).await.unwrap();
        assert_eq!(env_value(&d, "KINFER_CANARY_GRPC_URL"), Some(format!("http://{ip}:8081")));
        assert_eq!(env_value(&d, "KINFER_CANARY_PERCENT").as_deref(), Some("10"));
        assert_eq!(env_value(&d, "KINFER_CANARY_MODE").as_deref(), Some("split"));
        mark_ready_until(&client, &ns, &name, "Canary=True", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Canary")?.0 == "True").then_some(())
        })
        .await;
        let st = isvcs.get(&name).await.unwrap().status.unwrap();
        assert_eq!(st.canary.as_ref().unwrap().traffic_percent, Some(10));
        assert_eq!(st.canary.unwrap().traffic.as_deref(), Some("10% split (sticky x-user-id)"));

        // Promotion: the canary's model becomes spec.model, spec.canary goes.
        let promote =
            json!({"spec": {"model": {"uri": "s3://models/fraud/4/model.onnx", "version": "4"}, "canary": null}});
        isvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&promote)).await.expect("promoted");
        let i = wait_for("Canary=False CanaryRetiring", || async {
            let i = isvcs.get(&name).await.ok()?;
            (condition(&i, "Canary")?.1 == "CanaryRetiring").then_some(i)
        })
        .await;
        assert!(i.status.unwrap().canary.is_some());
        let d = deployments.get(&name).await.unwrap();
        assert_eq!(env_value(&d, "KINFER_MODEL_VERSION").as_deref(), Some("4"));
        assert_eq!(env_value(&d, "KINFER_CANARY_URL"), None);
        assert!(deployments.get_opt(&canary).await.unwrap().is_some(), "kept during the stable rollout");
        mark_ready_until(&client, &ns, &name, "the canary deleted", || async {
            let gone =
                deployments.get_opt(&canary).await.ok()?.is_none() && services.get_opt(&canary).await.ok()?.is_none();
            gone.then_some(())
        })
        .await;
        let i = wait_for("status.canary cleared", || async {
            let i = isvcs.get(&name).await.ok()?;
            (i.status.as_ref()?.canary.is_none() && condition(&i, "Canary").is_none()).then_some(i)
        })
        .await;
        assert_eq!(condition(&i, "Ready").unwrap().0, "True");
    })
    .await;
}
