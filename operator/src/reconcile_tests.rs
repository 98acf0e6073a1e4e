//! Reconcile tests against the fake API server of `fixtures` (tower-test mock): the whole
//! pipeline runs, and the assertions are on the objects and status the "API server" ends up
//! with, plus the events and the calls it received.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Method;
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service, policy::v1::PodDisruptionBudget,
};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use crate::{
    build::TEMPLATE_HASH_LABEL,
    controller::{Context, error_policy, reconcile},
    crd::InferenceService,
    error::Error,
    fixtures::{FakeState, fixture, paths},
    status::{PROGRESSING, READY},
};

struct Harness {
    ctx: Arc<Context>,
    state: Arc<Mutex<FakeState>>,
    server: tokio::task::JoinHandle<()>,
    name: String,
}

impl Harness {
    fn new(fixture_name: &str) -> Self {
        let isvc = fixture(fixture_name);
        let (ctx, verifier) = Context::test();
        let state = verifier.state.clone();
        let name = isvc.metadata.name.clone().unwrap();
        state.lock().unwrap().objects.insert(paths::isvc(&name), serde_json::to_value(&isvc).unwrap());
        Self { ctx, state, server: verifier.run(), name }
    }

    fn isvc(&self) -> InferenceService {
        self.state.lock().unwrap().get(&paths::isvc(&self.name)).unwrap()
    }

    async fn reconcile(&self) -> Result<Action, Error> {
        let isvc = Arc::new(self.isvc());
        let res = tokio::time::timeout(Duration::from_secs(5), reconcile(isvc, self.ctx.clone()))
            .await
            .expect("reconcile finished in time");
        if let Err(e) = &res {
            error_policy(Arc::new(self.isvc()), e, self.ctx.clone());
        }
        res
    }

    /// Changes the spec as `kubectl apply` would (generation moves).
    fn update_spec(&self, f: impl FnOnce(&mut InferenceService)) {
        let mut isvc = self.isvc();
        f(&mut isvc);
        isvc.metadata.generation = Some(isvc.metadata.generation.unwrap_or(1) + 1);
        self.state.lock().unwrap().objects.insert(paths::isvc(&self.name), serde_json::to_value(&isvc).unwrap());
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        self.state.lock().unwrap().get(path)
    }

    fn deployment(&self) -> Deployment {
        self.get(&paths::deployment(&self.name)).expect("deployment exists")
    }

    /// Sets the Deployment's status as the deployment controller would.
    fn set_deployment_status(&self, status: Value) {
        let mut st = self.state.lock().unwrap();
        let obj = st.objects.get_mut(&paths::deployment(&self.name)).unwrap();
        obj["status"] = status;
    }

    /// The Deployment's current template fully rolled out and ready.
    fn roll_out(&self) {
        let d = self.deployment();
        let n = d.spec.unwrap().replicas.unwrap_or(1);
        self.set_deployment_status(json!({
            "observedGeneration": d.metadata.generation,
            "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
        }));
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let isvc = self.isvc();
        let c = isvc.condition(type_).unwrap_or_else(|| panic!("no {type_} condition"));
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn env(&self, name: &str) -> Option<String> {
        let d = self.deployment();
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn calls(&self, method: Method, needle: &str) -> usize {
        self.state.lock().unwrap().calls_to(&method, needle).len()
    }

    fn events(&self) -> Vec<String> {
        self.state.lock().unwrap().event_reasons()
    }

    /// Notes of the Event objects created with this reason, in order.
    fn event_notes(&self, reason: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .calls_to(&Method::POST, "/events")
            .iter()
            .filter_map(|c| c.body.as_ref())
            .filter(|b| b["reason"] == reason)
            .filter_map(|b| b["note"].as_str().map(String::from))
            .collect()
    }

    /// Write requests (anything but GET) so far.
    fn writes(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.method != Method::GET)
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }

    async fn finish(self) {
        drop(self.ctx);
        tokio::time::timeout(Duration::from_secs(1), self.server)
            .await
            .expect("fake API server stopped")
            .expect("fake API server did not panic");
    }
}

#[tokio::test]
async fn create_applies_four_children_with_owner_references_and_reports_progressing() {
    let h = Harness::new("autoscaling.yaml");
    let action = h.reconcile().await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(600)), "watches, not a timer, follow the rollout");

    let d = h.deployment();
    let s: Service = h.get(&paths::service("churn")).expect("service");
    let hpa: HorizontalPodAutoscaler = h.get(&paths::hpa("churn")).expect("hpa");
    let pdb: PodDisruptionBudget = h.get(&paths::pdb("churn")).expect("pdb");
    for owners in [
        &d.metadata.owner_references,
        &s.metadata.owner_references,
        &hpa.metadata.owner_references,
        &pdb.metadata.owner_references,
    ] {
        let o = &owners.as_ref().unwrap()[0];
        assert_eq!((o.kind.as_str(), o.controller), ("InferenceService", Some(true)));
    }
    // server-side apply, forced, one field manager
    let applies: Vec<_> = {
        let st = h.state.lock().unwrap();
        st.calls.iter().filter(|c| c.method == Method::PATCH).cloned().collect()
    };
    assert_eq!(applies.len(), 5, "4 children + status");
    for c in applies {
        assert!(c.query.contains("fieldManager=kinfer-operator"), "{}", c.query);
        assert!(c.query.contains("force=true"), "{}", c.query);
    }

    let (status, reason, _) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Progressing"));
    assert_eq!(h.condition(PROGRESSING).0, "True");
    let st = h.isvc().status.unwrap();
    assert_eq!(st.url.as_deref(), Some("http://churn.ml.svc.cluster.local"));
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.model_uri, None, "nothing serves yet");
    assert_eq!(h.events(), vec!["Created"]);
    h.finish().await;
}

#[tokio::test]
async fn ready_once_the_deployment_has_all_replicas_updated_and_ready() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    // half-way: one old replica still around
    let gen_ = h.deployment().metadata.generation;
    h.set_deployment_status(json!({"observedGeneration": gen_, "replicas": 2,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}));
    h.reconcile().await.unwrap();
    assert_eq!(h.condition(READY).1, "Progressing");

    h.roll_out();
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    let (status, reason, message) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Available"));
    assert!(message.contains("1/1"), "{message}");
    assert_eq!(h.condition(PROGRESSING).0, "False");
    let st = h.isvc().status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas, st.updated_replicas), (Some(1), Some(1), Some(1)));
    assert_eq!(st.model_uri.as_deref(), Some("s3://models/iris/1/model.onnx"));
    assert!(h.events().contains(&"Ready".to_string()));
    h.finish().await;
}

#[tokio::test]
async fn model_uri_update_rolls_the_deployment_while_old_pods_keep_serving() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    h.roll_out();
    h.reconcile().await.unwrap();
    let ready_since = h.isvc().condition(READY).unwrap().last_transition_time.clone();
    let old_hash = h.deployment().spec.unwrap().template.metadata.unwrap().labels.unwrap()[TEMPLATE_HASH_LABEL].clone();

    h.update_spec(|i| i.spec.model.as_mut().unwrap().uri = "s3://models/iris/2/model.onnx".into());
    h.reconcile().await.unwrap();
    let d = h.deployment();
    assert_eq!(d.metadata.generation, Some(2), "pod template changed");
    assert_eq!(h.env("KINFER_MODEL_URI").as_deref(), Some("s3://models/iris/2/model.onnx"));
    let new_hash = d.spec.unwrap().template.metadata.unwrap().labels.unwrap()[TEMPLATE_HASH_LABEL].clone();
    assert_ne!(old_hash, new_hash);
    // still serving the old model: Ready stays True (same transition time), reason Progressing
    let (status, reason, _) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Progressing"));
    assert_eq!(h.isvc().condition(READY).unwrap().last_transition_time, ready_since);
    assert_eq!(h.condition(PROGRESSING).0, "True");
    let st = h.isvc().status.unwrap();
    assert_eq!(st.model_uri.as_deref(), Some("s3://models/iris/1/model.onnx"));
    assert_eq!(st.observed_generation, Some(2));

    h.roll_out();
    h.reconcile().await.unwrap();
    assert_eq!(h.condition(READY).1, "Available");
    assert_eq!(h.isvc().status.unwrap().model_uri.as_deref(), Some("s3://models/iris/2/model.onnx"));
    h.finish().await;
}

#[tokio::test]
async fn autoscaling_added_then_removed_applies_then_deletes_the_hpa() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    assert!(h.get::<HorizontalPodAutoscaler>(&paths::hpa("iris")).is_none());
    assert_eq!(h.deployment().spec.unwrap().replicas, Some(1));

    // the API server records that the operator's apply owns spec.replicas
    h.state.lock().unwrap().objects.get_mut(&paths::deployment("iris")).unwrap()["metadata"]["managedFields"] = json!([{"manager": "kinfer-operator", "operation": "Apply",
            "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}]);
    h.update_spec(|i| {
        i.spec.autoscaling = Some(serde_json::from_value(json!({"maxReplicas": 4})).unwrap());
        i.spec.resources = Some(serde_json::from_value(json!({"requests": {"cpu": "250m"}})).unwrap());
    });
    h.reconcile().await.unwrap();
    let hpa: HorizontalPodAutoscaler = h.get(&paths::hpa("iris")).expect("hpa applied");
    assert_eq!(hpa.spec.unwrap().max_replicas, 4);
    let last_apply = h
        .state
        .lock()
        .unwrap()
        .calls_to(&Method::PATCH, "/deployments/iris")
        .last()
        .and_then(|c| c.body.clone())
        .unwrap();
    assert!(last_apply["spec"].get("replicas").is_none(), "with autoscaling the apply leaves replicas to the HPA");
    // ...after handing the current count to a second field manager, so it is not reset
    let handover: Vec<_> = h
        .state
        .lock()
        .unwrap()
        .calls_to(&Method::PATCH, "/deployments/iris")
        .into_iter()
        .filter(|c| c.query.contains("fieldManager=kinfer-operator-replicas-handover"))
        .map(|c| c.body.clone().unwrap())
        .collect();
    assert_eq!(handover.len(), 1);
    assert_eq!(handover[0]["spec"], json!({"replicas": 1}));

    h.update_spec(|i| i.spec.autoscaling = None);
    h.reconcile().await.unwrap();
    assert!(h.get::<HorizontalPodAutoscaler>(&paths::hpa("iris")).is_none());
    assert_eq!(h.calls(Method::DELETE, "/horizontalpodautoscalers/iris"), 1);
    assert_eq!(h.deployment().spec.unwrap().replicas, Some(1));
    let events = h.events();
    assert!(events.contains(&"Deleted".to_string()), "{events:?}");
    assert!(events.contains(&"Updated".to_string()), "{events:?}");
    h.finish().await;
}

#[tokio::test]
async fn pdb_is_deleted_when_replicas_drop_to_one() {
    let h = Harness::new("full.yaml");
    h.reconcile().await.unwrap();
    assert!(h.get::<PodDisruptionBudget>(&paths::pdb("fraud")).is_some());
    h.update_spec(|i| i.spec.replicas = Some(1));
    h.reconcile().await.unwrap();
    assert!(h.get::<PodDisruptionBudget>(&paths::pdb("fraud")).is_none());
    assert_eq!(h.calls(Method::DELETE, "/poddisruptionbudgets/fraud"), 1);
    h.finish().await;
}

#[tokio::test]
async fn children_not_controlled_by_the_resource_are_left_alone() {
    let h = Harness::new("minimal.yaml");
    h.state.lock().unwrap().objects.insert(
        paths::hpa("iris"),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "iris", "namespace": "ml", "uid": "someone-else"},
               "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2}}),
    );
    h.reconcile().await.unwrap();
    assert!(h.get::<HorizontalPodAutoscaler>(&paths::hpa("iris")).is_some());
    assert_eq!(h.calls(Method::DELETE, "/horizontalpodautoscalers"), 0);
    h.finish().await;
}

#[tokio::test]
async fn failed_model_sets_the_condition_with_the_termination_message() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    let d = h.deployment();
    let hash = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
        [TEMPLATE_HASH_LABEL]
        .clone();
    h.state.lock().unwrap().objects.insert(
        paths::pod("iris-abc"),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "iris-abc", "namespace": "ml", "labels": {
                "serving.kinfer.dev/inferenceservice": "iris", TEMPLATE_HASH_LABEL: hash}},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "runtime", "ready": false, "restartCount": 3, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                    "message": format!("model sha256 mismatch: expected 9f86d0, got 1b4f0e\n{}", "stack ".repeat(400))}}}]}}),
    );
    h.set_deployment_status(json!({"observedGeneration": d.metadata.generation,
        "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0, "availableReplicas": 0}));
    let action = h.reconcile().await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));

    let (status, reason, message) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ModelFailed"));
    assert!(message.contains("model sha256 mismatch"), "{message}");
    assert!(message.contains("exited with code 2"), "{message}");
    let (status, reason, _) = h.condition(PROGRESSING);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ModelFailed"));
    assert!(h.events().contains(&"ModelFailed".to_string()));
    let notes: Vec<usize> = h
        .state
        .lock()
        .unwrap()
        .calls_to(&Method::POST, "/events")
        .iter()
        .filter_map(|c| c.body.as_ref()?["note"].as_str().map(str::len))
        .collect();
    assert!(notes.iter().all(|n| *n <= 1024), "{notes:?}");
    let pod_lists = h.calls(Method::GET, "/pods");
    assert_eq!(pod_lists, 2, "pods are read only while the rollout is not complete");
    h.finish().await;
}

#[tokio::test]
async fn invalid_spec_creates_no_children_and_the_condition_says_why() {
    let h = Harness::new("invalid-autoscaling-without-cpu.yaml");
    let err = h.reconcile().await.unwrap_err();
    assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
    assert_eq!(error_policy(Arc::new(h.isvc()), &err, h.ctx.clone()), Action::await_change());
    let calls = h.state.lock().unwrap().calls.clone();
    let child_calls = calls.iter().filter(|c| !c.path.ends_with("/status") && !c.path.ends_with("/events")).count();
    assert_eq!(child_calls, 0, "no child touched: {calls:?}");
    let (status, reason, message) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("resources.requests.cpu"), "{message}");
    assert_eq!(h.events(), vec!["InvalidSpec"]);

    // the same invalid spec again: no new status patch, no new event
    h.reconcile().await.unwrap_err();
    assert_eq!(h.calls(Method::PATCH, "/status"), 1);
    assert_eq!(h.events().len(), 1);
    h.finish().await;
}

#[tokio::test]
async fn several_models_get_a_status_each_and_the_one_that_fails_gets_the_runtime_message() {
    let h = Harness::new("two-models.yaml");
    h.reconcile().await.unwrap();
    assert!(h.env("KINFER_MODELS").is_some_and(|m| m.contains(r#""name":"fraud""#)));
    assert_eq!(h.env("KINFER_MODEL_URI"), None);
    let models = h.isvc().status.unwrap().models;
    assert_eq!(
        models.iter().map(|m| (m.name.as_str(), m.ready)).collect::<Vec<_>>(),
        [("iris", false), ("fraud", false)]
    );

    h.roll_out();
    h.reconcile().await.unwrap();
    let st = h.isvc().status.unwrap();
    assert_eq!(h.condition(READY).1, "Available");
    assert_eq!(st.model_uri.as_deref(), Some("s3://models/iris/1/model.onnx,s3://models/tabular/1/model.onnx"));
    assert!(st.models.iter().all(|m| m.ready && m.message.is_none()), "{:?}", st.models);
    assert_eq!((st.models[1].name.as_str(), st.models[1].version.as_str()), ("fraud", "3"));

    // fraud moves to a broken file; the new pod's runtime exits naming it.
    h.update_spec(|i| {
        let fraud = &mut i.spec.models.as_mut().unwrap()[1];
        fraud.uri = "s3://models/iris/broken/model.onnx".into();
        fraud.sha256 = None;
    });
    h.reconcile().await.unwrap();
    let labels = h.deployment().spec.unwrap().template.metadata.unwrap().labels.unwrap();
    let message =
        "model 'fraud' version '3': s3://models/iris/broken/model.onnx is not a valid ONNX model: bad protobuf";
    h.state.lock().unwrap().put(
        &paths::pod("tabular-pack-new"),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "tabular-pack-new", "namespace": crate::fixtures::NS, "labels": labels},
            "status": {"phase": "Running", "containerStatuses": [{"name": "runtime", "ready": false,
                "restartCount": 2, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}}]}}),
    );
    let gen_ = h.deployment().metadata.generation;
    h.set_deployment_status(json!({"observedGeneration": gen_, "replicas": 2,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}));
    h.reconcile().await.unwrap();
    assert_eq!(h.condition(READY).1, "ModelFailed");
    let models = h.isvc().status.unwrap().models;
    // iris is unchanged and still served by the old pod; fraud's new version is not, and says why.
    assert!(models[0].ready && models[0].message.is_none(), "{models:?}");
    assert!(!models[1].ready, "{models:?}");
    assert!(models[1].message.as_deref().is_some_and(|m| m.contains("is not a valid ONNX model")), "{models:?}");
    h.finish().await;
}

#[tokio::test]
async fn an_unchanged_status_is_not_patched_again() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    h.reconcile().await.unwrap();
    h.reconcile().await.unwrap();
    assert_eq!(h.calls(Method::PATCH, "/inferenceservices/iris/status"), 1);
    assert_eq!(h.events(), vec!["Created"], "no repeated events");
    h.finish().await;
}

#[tokio::test]
async fn each_event_says_what_happened_this_time() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    h.roll_out();
    h.reconcile().await.unwrap();
    h.update_spec(|i| i.spec.model.as_mut().unwrap().uri = "s3://models/iris/2/model.onnx".into());
    h.reconcile().await.unwrap();
    h.roll_out();
    h.reconcile().await.unwrap();
    let ready = h.event_notes("Ready");
    assert_eq!(ready.len(), 2, "a new message is a new event, not a repeat of the first: {ready:?}");
    assert!(ready[0].contains("iris/1"), "{ready:?}");
    assert!(ready[1].contains("iris/2"), "{ready:?}");

    // The very same message again (the pod restarted, then became ready) continues the series.
    h.set_deployment_status(json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": 0, "availableReplicas": 0}));
    h.reconcile().await.unwrap();
    h.roll_out();
    h.reconcile().await.unwrap();
    assert_eq!(h.event_notes("Ready").len(), 2);
    let series: Vec<Value> =
        h.state.lock().unwrap().calls_to(&Method::PATCH, "/events/").iter().filter_map(|c| c.body.clone()).collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["series"]["count"], 2);
    h.finish().await;
}

#[tokio::test]
async fn each_deletion_has_its_own_event() {
    let h = Harness::new("autoscaling.yaml");
    h.reconcile().await.unwrap();
    h.update_spec(|i| {
        i.spec.autoscaling = None;
        i.spec.replicas = Some(1);
    });
    h.reconcile().await.unwrap();
    let mut deleted = h.event_notes("Deleted");
    deleted.sort();
    assert_eq!(
        deleted,
        [
            "deleted HorizontalPodAutoscaler churn (no longer wanted)",
            "deleted PodDisruptionBudget churn (no longer wanted)"
        ]
    );
    h.finish().await;
}

#[tokio::test]
async fn autoscaling_starts_at_min_replicas_and_is_ready_only_with_them() {
    let h = Harness::new("autoscaling.yaml");
    h.reconcile().await.unwrap();
    let created = h.state.lock().unwrap().calls_to(&Method::PATCH, "/deployments/churn")[0].body.clone().unwrap();
    assert_eq!(created["spec"]["replicas"], 2, "created with minReplicas, not the API server's default of 1");

    // One pod ready (the Deployment at one replica, the HPA not acting yet): not Ready.
    h.state.lock().unwrap().objects.get_mut(&paths::deployment("churn")).unwrap()["spec"]["replicas"] = json!(1);
    h.set_deployment_status(json!({"observedGeneration": h.deployment().metadata.generation, "replicas": 1,
        "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}));
    h.reconcile().await.unwrap();
    let (status, reason, message) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Progressing"), "{message}");
    assert!(message.contains("1/2"), "{message}");
    assert!(!h.events().contains(&"Ready".to_string()));

    // The HPA scales up to minReplicas: Ready.
    h.state.lock().unwrap().objects.get_mut(&paths::deployment("churn")).unwrap()["spec"]["replicas"] = json!(2);
    h.roll_out();
    h.reconcile().await.unwrap();
    let (status, reason, message) = h.condition(READY);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Available"), "{message}");
    assert!(message.contains("2/2"), "{message}");
    h.finish().await;
}

#[tokio::test]
async fn a_resync_of_a_settled_resource_writes_nothing() {
    for fixture_name in ["minimal.yaml", "autoscaling.yaml", "full.yaml"] {
        let h = Harness::new(fixture_name);
        h.reconcile().await.unwrap();
        h.reconcile().await.unwrap();
        if fixture_name == "autoscaling.yaml" {
            // The HPA's scale. (The fake's apply replaces the whole object, so it has dropped
            // the replicas that the hand-over field manager keeps on a real API server.)
            h.state.lock().unwrap().objects.get_mut(&paths::deployment(&h.name)).unwrap()["spec"]["replicas"] =
                json!(2);
        }
        h.roll_out();
        h.reconcile().await.unwrap();
        assert_eq!(h.condition(READY).0, "True", "{fixture_name}");
        let before = h.writes();
        h.reconcile().await.unwrap();
        h.reconcile().await.unwrap();
        let after = h.writes();
        assert_eq!(after[before.len()..], [] as [String; 0], "{fixture_name}: a resync wrote");
        h.finish().await;
    }
}

#[tokio::test]
async fn a_child_changed_by_someone_else_is_applied_again() {
    let h = Harness::new("minimal.yaml");
    h.reconcile().await.unwrap();
    h.state.lock().unwrap().update(&paths::service("iris"), |s| s["spec"]["ports"] = json!([]));
    h.reconcile().await.unwrap();
    let s: Service = h.get(&paths::service("iris")).unwrap();
    assert!(!s.spec.unwrap().ports.unwrap_or_default().is_empty(), "the operator's apply restored the ports");
    h.finish().await;
}

#[test]
fn object_not_found_in_the_store_is_logged_at_debug() {
    use crate::controller::controller_error_level;
    use kube::runtime::{controller::Error as CtrlError, reflector::ObjectRef, watcher};
    let gone = ObjectRef::<InferenceService>::new("iris").within("ml").erase();
    let e: CtrlError<Error, watcher::Error> = CtrlError::ObjectNotFound(Box::new(gone));
    assert_eq!(controller_error_level(&e), tracing::Level::DEBUG);
    let e: CtrlError<Error, watcher::Error> = CtrlError::QueueError(watcher::Error::NoResourceVersion);
    assert_eq!(controller_error_level(&e), tracing::Level::WARN);
}

#[tokio::test]
async fn transient_errors_requeue_with_growing_backoff() {
    let (ctx, _verifier) = Context::test();
    let isvc = Arc::new(fixture("minimal.yaml"));
    let err = Error::Apply {
        kind: "Deployment",
        name: "iris".into(),
        source: kube::Error::Api(kube::core::Status::failure("etcd timeout", "InternalError").with_code(500).boxed()),
    };
    let delays: Vec<Action> = (0..4).map(|_| error_policy(isvc.clone(), &err, ctx.clone())).collect();
    assert_eq!(delays, [5, 10, 20, 40].map(|s| Action::requeue(Duration::from_secs(s))));
    assert!(ctx.metrics.render().contains("kinfer_operator_reconcile_errors_total{category=\"apply\"} 4"));
}

/// The whole `Controller` (CRD check, watches, `.owns()` triggers) against the fake's list and
/// watch: a new resource gets its children, and a change of the Deployment's status (as the
/// deployment controller would write it) triggers the reconcile that makes it Ready.
#[tokio::test]
async fn the_controller_reconciles_new_resources_and_child_status_changes() {
    use crate::{
        config::OperatorConfig,
        controller::run,
        fixtures::{ApiServerVerifier, NS},
        metrics::Metrics,
    };
    use kube::runtime::events::Reporter;

    let (client, verifier) = ApiServerVerifier::new();
    let state = verifier.state.clone();
    state.lock().unwrap().put(&paths::isvc("iris"), serde_json::to_value(fixture("minimal.yaml")).unwrap());
    let server = verifier.run();
    let operator = tokio::spawn(run(
        client,
        OperatorConfig::default(),
        vec![NS.to_string()],
        Arc::new(Metrics::new()),
        Reporter { controller: "kinfer-operator".into(), instance: Some("test".into()) },
    ));

    let isvc_condition = |st: &FakeState, type_: &str| -> Option<(String, String)> {
        let i: InferenceService = st.get(&paths::isvc("iris"))?;
        let c = i.condition(type_)?;
        Some((c.status.clone(), c.reason.clone()))
    };
    wait_state(&state, "the Deployment and the Service", |st| {
        st.objects.contains_key(&paths::deployment("iris")) && st.objects.contains_key(&paths::service("iris"))
    })
    .await;
    wait_state(&state, "Progressing", |st| {
        isvc_condition(st, PROGRESSING) == Some(("True".into(), "Progressing".into()))
    })
    .await;
    state.lock().unwrap().update(&paths::deployment("iris"), |d| {
        d["status"] = json!({"observedGeneration": d["metadata"]["generation"], "replicas": 1,
            "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    });
    wait_state(&state, "Ready", |st| isvc_condition(st, READY) == Some(("True".into(), "Available".into()))).await;
    // settled: no reconcile loop feeding on its own writes
    let applies = || state.lock().unwrap().calls_to(&Method::PATCH, "/deployments/iris").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = applies();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(applies(), settled, "reconciles keep going without any change");
    assert!(settled <= 6, "{settled} applies for three changes");
    operator.abort();
    server.abort();
}

/// The runtime pods are watched: a pod of the new template that crashes makes the resource
/// `ModelFailed` at once (not at a later requeue), and when it runs again the failure clears.
#[tokio::test]
async fn a_failing_runtime_pod_is_reported_at_once_and_its_recovery_too() {
    use crate::{
        config::OperatorConfig,
        controller::run,
        fixtures::{ApiServerVerifier, NS},
        metrics::Metrics,
    };
    use kube::runtime::events::Reporter;

    let (client, verifier) = ApiServerVerifier::new();
    let state = verifier.state.clone();
    state.lock().unwrap().put(&paths::isvc("iris"), serde_json::to_value(fixture("minimal.yaml")).unwrap());
    let server = verifier.run();
    let operator = tokio::spawn(run(
        client,
        OperatorConfig::default(),
        vec![NS.to_string()],
        Arc::new(Metrics::new()),
        Reporter { controller: "kinfer-operator".into(), instance: Some("test".into()) },
    ));
    let ready = |st: &FakeState| -> Option<(String, String)> {
        let i: InferenceService = st.get(&paths::isvc("iris"))?;
        let c = i.condition(READY)?;
        Some((c.reason.clone(), c.message.clone()))
    };
    wait_state(&state, "Progressing", |st| ready(st).is_some_and(|(r, _)| r == "Progressing")).await;
    let (labels, generation) = {
        let st = state.lock().unwrap();
        let d: Deployment = st.get(&paths::deployment("iris")).unwrap();
        (d.spec.unwrap().template.metadata.unwrap().labels.unwrap(), d.metadata.generation)
    };
    state.lock().unwrap().update(&paths::deployment("iris"), |d| {
        d["status"] = json!({"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 0, "availableReplicas": 0});
    });
    let pod = |container: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "iris-abc", "namespace": NS, "labels": labels},
            "status": {"phase": "Running", "containerStatuses": [container]}})
    };
    state.lock().unwrap().put(
        &paths::pod("iris-abc"),
        pod(json!({"name": "runtime", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"running": {}}})),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready(&state.lock().unwrap()).unwrap().0, "Progressing");

    // The container exits: nothing else changes (the Deployment's status stays the same).
    state.lock().unwrap().put(
        &paths::pod("iris-abc"),
        pod(json!({"name": "runtime", "ready": false, "restartCount": 1, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                "message": "cannot load model: sha256 mismatch"}}})),
    );
    wait_state(&state, "ModelFailed from the pod", |st| {
        ready(st).is_some_and(|(r, m)| r == "ModelFailed" && m.contains("sha256 mismatch"))
    })
    .await;

    // It runs again (e.g. the model store came back): no longer a failure.
    state.lock().unwrap().put(
        &paths::pod("iris-abc"),
        pod(json!({"name": "runtime", "ready": false, "restartCount": 1, "image": "x", "imageID": "",
            "state": {"running": {}}})),
    );
    wait_state(&state, "the failure to clear", |st| ready(st).is_some_and(|(r, _)| r == "Progressing")).await;
    operator.abort();
    server.abort();
}

async fn wait_state(state: &Arc<Mutex<FakeState>>, what: &str, f: impl Fn(&FakeState) -> bool) {
    for _ in 0..500 {
        let done = f(&state.lock().unwrap());
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}: {:#?}", state.lock().unwrap().calls);
}

/// Spans exported by the reconciles of a test, collected in memory.
#[derive(Debug, Clone, Default)]
struct Spans(Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for Spans {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

#[tokio::test]
async fn a_reconcile_is_one_span_with_a_child_per_apply() {
    use opentelemetry::trace::{Status, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;

    let spans = Spans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
    let subscriber = tracing_subscriber::registry().with(kinfer_telemetry::layer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let h = Harness::new("autoscaling.yaml");
    h.reconcile().await.expect("reconcile");
    h.finish().await;
    let got = spans.0.lock().unwrap().clone();
    let reconciles: Vec<_> = got.iter().filter(|s| s.name == "reconcile InferenceService").collect();
    assert_eq!(reconciles.len(), 1, "{got:?}");
    let root = reconciles[0];
    assert_eq!(attr(root, "k8s.namespace.name").as_deref(), Some("ml"));
    assert_eq!(attr(root, "kinfer.inferenceservice.name").as_deref(), Some("churn"));
    assert_eq!(attr(root, "kinfer.inferenceservice.generation").as_deref(), Some("1"));
    assert_eq!(root.status, Status::Unset);
    let mut applies: Vec<_> = got
        .iter()
        .filter(|s| s.parent_span_id == root.span_context.span_id())
        .map(|s| {
            assert_eq!(s.span_context.trace_id(), root.span_context.trace_id());
            assert_eq!(s.span_kind, opentelemetry::trace::SpanKind::Client);
            assert_eq!(attr(s, "k8s.object.name").as_deref(), Some("churn"));
            s.name.to_string()
        })
        .collect();
    applies.sort();
    assert_eq!(
        applies,
        [
            "apply Deployment",
            "apply HorizontalPodAutoscaler",
            "apply InferenceService/status",
            "apply PodDisruptionBudget",
            "apply Service"
        ]
    );

    // A refused spec: the reconcile span is an error naming the problem.
    spans.0.lock().unwrap().clear();
    let h = Harness::new("invalid-autoscaling-without-cpu.yaml");
    h.reconcile().await.unwrap_err();
    h.finish().await;
    let got = spans.0.lock().unwrap().clone();
    let root = got.iter().find(|s| s.name == "reconcile InferenceService").expect("reconcile span");
    assert!(matches!(&root.status, Status::Error { description } if !description.is_empty()), "{:?}", root.status);
}

mod canary {
    //! `spec.canary`: the canary's children, the stable pods' routing, status and retirement.

    use super::*;
    use crate::{
        build::{ISVC_LABEL, TRACK_LABEL},
        canary::CANARY,
        crd::CanarySpec,
    };

    const CANARY_NAME: &str = "fraud-canary";

    impl Harness {
        fn canary_deployment(&self) -> Option<Deployment> {
            self.get(&paths::deployment(CANARY_NAME))
        }

        /// Sets the canary Deployment's status: `available` of its `replicas` pods available.
        fn set_canary_available(&self, available: i32) {
            let mut st = self.state.lock().unwrap();
            let obj = st.objects.get_mut(&paths::deployment(CANARY_NAME)).unwrap();
            obj["status"] = json!({"observedGeneration": obj["metadata"]["generation"], "replicas": 1,
                "updatedReplicas": 1, "readyReplicas": available, "availableReplicas": available});
        }

        fn canary_status(&self) -> crate::crd::CanaryStatus {
            self.isvc().status.unwrap().canary.expect("status.canary")
        }

        /// Creates the resource, makes the canary available and the stable pods roll out with
        /// the routing: the canary serves its share.
        async fn serving(&self) {
            self.reconcile().await.unwrap();
            self.set_canary_available(1);
            self.reconcile().await.unwrap();
            self.roll_out();
            self.reconcile().await.unwrap();
            assert_eq!(self.condition(CANARY).0, "True");
        }
    }

    fn env_of(d: &Deployment, name: &str) -> Option<String> {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[tokio::test]
    async fn the_canary_runs_beside_the_stable_model_and_gets_traffic_once_it_can_serve() {
        let h = Harness::new("canary.yaml");
        h.reconcile().await.unwrap();

        let canary = h.canary_deployment().expect("canary Deployment");
        let stable = h.deployment();
        assert_eq!(canary.spec.as_ref().unwrap().replicas, Some(1), "canary.replicas defaults to 1");
        assert_eq!(env_of(&canary, "KINFER_MODEL_URI").as_deref(), Some("s3://models/fraud/4/model.onnx"));
        assert_eq!(env_of(&canary, "KINFER_MODEL_VERSION").as_deref(), Some("4"));
        assert_eq!(env_of(&canary, "KINFER_MODEL_NAME").as_deref(), Some("fraud"), "served under the same name");
        assert_eq!(env_of(&canary, "KINFER_MAX_BATCH_ROWS").as_deref(), Some("64"), "same settings as stable");
        assert_eq!(env_of(&canary, "KINFER_CANARY_URL"), None, "the canary never forwards");
        let (sc, cc) = (
            &stable.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0],
            &canary.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0],
        );
        assert_eq!(sc.resources, cc.resources);
        assert_eq!(sc.security_context, cc.security_context);
        assert_eq!((&sc.readiness_probe, &sc.startup_probe), (&cc.readiness_probe, &cc.startup_probe));
        let owner = &canary.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.name.as_str(), owner.controller), ("fraud", Some(true)));

        // Neither the stable Deployment nor the user-facing Service selects the canary's pods.
        let canary_pod_labels =
            canary.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(canary_pod_labels[ISVC_LABEL], "fraud");
        assert_eq!(canary_pod_labels[TRACK_LABEL], "canary");
        let stable_service: Service = h.get(&paths::service("fraud")).unwrap();
        let canary_service: Service = h.get(&paths::service(CANARY_NAME)).expect("canary Service");
        let selects = |selector: &std::collections::BTreeMap<String, String>| {
            selector.iter().all(|(k, v)| canary_pod_labels.get(k) == Some(v))
        };
        assert!(!selects(stable_service.spec.as_ref().unwrap().selector.as_ref().unwrap()));
        assert!(!selects(stable.spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap()));
        assert!(selects(canary_service.spec.as_ref().unwrap().selector.as_ref().unwrap()));
        let ports: Vec<i32> = canary_service.spec.as_ref().unwrap().ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [8080, 8081]);

        // Not available yet: no routing, status says so.
        assert_eq!(h.env("KINFER_CANARY_URL"), None, "no request goes to a canary that has not loaded");
        assert_eq!(
            h.event_notes("Created"),
            ["applied Service, Deployment, PodDisruptionBudget and the canary's Service, Deployment for generation 1"]
        );
        let managed = h.ctx.metrics.render();
        assert!(managed.contains("kinfer_operator_managed_resources{kind=\"Deployment\"} 2"), "{managed}");
        let (status, reason, message) = h.condition(CANARY);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "CanaryNotReady"), "{message}");
        let c = h.canary_status();
        assert_eq!((c.version.as_deref(), c.traffic.as_deref()), (Some("4"), Some("none")));

        // Available: the stable pods get the routing, with the ClusterIP the API server gave.
        h.set_canary_available(1);
        h.reconcile().await.unwrap();
        let ip = canary_service.spec.unwrap().cluster_ip.unwrap();
        assert_eq!(h.env("KINFER_CANARY_URL"), Some(format!("http://{ip}:8080")));
        assert_eq!(h.env("KINFER_CANARY_GRPC_URL"), Some(format!("http://{ip}:8081")));
        assert_eq!(h.env("KINFER_CANARY_MODE").as_deref(), Some("split"));
        assert_eq!(h.env("KINFER_CANARY_PERCENT").as_deref(), Some("10"));
        assert_eq!(h.env("KINFER_CANARY_STICKY_HEADER").as_deref(), Some("x-user-id"));
        assert_eq!(h.env("KINFER_CANARY_VERSION").as_deref(), Some("4"));
        assert_eq!(h.env("KINFER_CANARY_SAMPLE_RATE"), None);
        assert_eq!(h.condition(CANARY).1, "CanaryNotReady", "the stable pods still roll out");

        h.roll_out();
        h.reconcile().await.unwrap();
        let (status, reason, message) = h.condition(CANARY);
        assert_eq!((status.as_str(), reason.as_str()), ("True", "CanaryServing"), "{message}");
        assert!(message.contains("10% split (sticky x-user-id)"), "{message}");
        let c = h.canary_status();
        assert_eq!((c.traffic_percent, c.mode.as_deref(), c.ready_replicas), (Some(10), Some("split"), Some(1)));
        assert_eq!(h.condition(READY).0, "True", "the stable model is Ready");
        let notes = h.event_notes("CanaryTraffic");
        assert_eq!(notes, ["canary version 4: traffic none → 10% split (sticky x-user-id)"], "one event per change");

        // The canary's pods restart: the stable pods keep their routing (no rollout back and forth).
        let stable_generation = h.deployment().metadata.generation;
        h.set_canary_available(0);
        h.reconcile().await.unwrap();
        assert_eq!(h.env("KINFER_CANARY_PERCENT").as_deref(), Some("10"));
        assert_eq!(h.deployment().metadata.generation, stable_generation);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_new_split_rolls_the_stable_pods_and_is_reported_once_they_run_it() {
        let h = Harness::new("canary.yaml");
        h.serving().await;
        h.update_spec(|i| i.spec.canary.as_mut().unwrap().traffic_percent = Some(50));
        h.reconcile().await.unwrap();
        assert_eq!(h.env("KINFER_CANARY_PERCENT").as_deref(), Some("50"));
        assert_eq!(h.canary_status().traffic_percent, Some(10), "old pods still apply 10% during the rollout");
        h.roll_out();
        h.reconcile().await.unwrap();
        assert_eq!(h.canary_status().traffic_percent, Some(50));
        assert!(
            h.event_notes("CanaryTraffic")
                .iter()
                .any(|n| n.ends_with("10% split (sticky x-user-id) → 50% split (sticky x-user-id)"))
        );

        // Shadow: every answer from stable, a sample copied.
        h.update_spec(|i| {
            let c = i.spec.canary.as_mut().unwrap();
            c.mode = crate::crd::CanaryMode::Shadow;
            c.traffic_percent = None;
            c.sticky_header = None;
            c.sample_rate = Some(0.25);
        });
        h.reconcile().await.unwrap();
        assert_eq!(h.env("KINFER_CANARY_MODE").as_deref(), Some("shadow"));
        assert_eq!(h.env("KINFER_CANARY_SAMPLE_RATE").as_deref(), Some("0.25"));
        assert_eq!(h.env("KINFER_CANARY_PERCENT"), None);
        h.roll_out();
        h.reconcile().await.unwrap();
        let c = h.canary_status();
        assert_eq!((c.traffic.as_deref(), c.traffic_percent), (Some("shadow 25%"), Some(0)));
        h.finish().await;
    }

    #[tokio::test]
    async fn promotion_keeps_the_canary_until_the_stable_rollout_has_completed() {
        let h = Harness::new("canary.yaml");
        h.serving().await;
        h.update_spec(|i| {
            i.spec.model = i.spec.canary.take().unwrap().model;
        });
        h.reconcile().await.unwrap();
        assert_eq!(h.env("KINFER_MODEL_URI").as_deref(), Some("s3://models/fraud/4/model.onnx"));
        assert_eq!(h.env("KINFER_CANARY_URL"), None, "the new stable pods do not route");
        assert!(h.canary_deployment().is_some(), "old stable pods still forward to the canary");
        assert!(h.get::<Service>(&paths::service(CANARY_NAME)).is_some());
        assert_eq!(h.condition(CANARY).1, "CanaryRetiring");
        assert_eq!(h.calls(Method::DELETE, CANARY_NAME), 0);

        // Rolled out, but an old stable pod is still terminating (draining; it may forward).
        let selector = h.deployment().spec.unwrap().selector.match_labels.unwrap();
        h.state.lock().unwrap().put(
            &paths::pod("fraud-old"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fraud-old", "namespace": "ml",
                "labels": selector, "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        h.roll_out();
        h.reconcile().await.unwrap();
        assert!(h.canary_deployment().is_some(), "kept while a stable pod terminates");

        h.state.lock().unwrap().objects.remove(&paths::pod("fraud-old"));
        h.reconcile().await.unwrap();
        assert!(h.canary_deployment().is_none(), "deleted once the stable rollout has completed");
        assert!(h.get::<Service>(&paths::service(CANARY_NAME)).is_none());
        let mut deleted = h.event_notes("Deleted");
        deleted.sort();
        assert_eq!(
            deleted,
            ["deleted Deployment fraud-canary (no longer wanted)", "deleted Service fraud-canary (no longer wanted)"]
        );
        let st = h.isvc().status.unwrap();
        assert!(st.canary.is_none(), "{:?}", st.canary);
        assert!(h.isvc().condition(CANARY).is_none());
        assert_eq!(st.model_uri.as_deref(), Some("s3://models/fraud/4/model.onnx"));

        // Settled: further resyncs do not look for a canary any more.
        let gets = h.calls(Method::GET, CANARY_NAME);
        h.reconcile().await.unwrap();
        assert_eq!(h.calls(Method::GET, CANARY_NAME), gets);
        h.finish().await;
    }

    #[tokio::test]
    async fn a_canary_that_fails_to_load_is_reported_with_the_runtime_message_and_gets_no_traffic() {
        let h = Harness::new("canary.yaml");
        h.reconcile().await.unwrap();
        h.roll_out();
        let canary = h.canary_deployment().unwrap();
        let labels = canary.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        h.state.lock().unwrap().put(
            &paths::pod("fraud-canary-abc"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "fraud-canary-abc", "namespace": "ml", "labels": labels},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "runtime", "ready": false, "restartCount": 2, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                    "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                        "message": "cannot load model s3://models/fraud/4/model.onnx: not an ONNX model"}}}]}}),
        );
        h.set_canary_available(0);
        h.reconcile().await.unwrap();

        let (status, reason, message) = h.condition(CANARY);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "CanaryLoadFailed"));
        assert!(message.contains("not an ONNX model"), "{message}");
        assert!(message.contains("the stable model answers every request"), "{message}");
        assert!(h.canary_status().message.unwrap().contains("not an ONNX model"));
        assert_eq!(h.env("KINFER_CANARY_URL"), None);
        assert_eq!(h.condition(READY).0, "True", "a broken canary does not make the service unready");
        assert!(h.events().contains(&"CanaryLoadFailed".to_string()));

        // Rollback: spec.canary removed; the stable Deployment is rolled out: deleted at once.
        h.update_spec(|i| i.spec.canary = None);
        h.reconcile().await.unwrap();
        assert!(h.canary_deployment().is_none());
        assert!(h.isvc().status.unwrap().canary.is_none());
        h.finish().await;
    }

    #[tokio::test]
    async fn a_canary_service_left_without_its_deployment_goes_at_once() {
        let h = Harness::new("canary.yaml");
        h.serving().await;
        h.state.lock().unwrap().objects.remove(&paths::deployment(CANARY_NAME));
        h.update_spec(|i| i.spec.canary = None);
        h.reconcile().await.unwrap();
        assert!(h.get::<Service>(&paths::service(CANARY_NAME)).is_none(), "nothing behind it to wait for");
        assert_eq!(h.event_notes("Deleted"), ["deleted Service fraud-canary (no longer wanted)"]);
        assert!(h.isvc().status.unwrap().canary.is_none());
        h.finish().await;
    }

    #[tokio::test]
    async fn an_object_of_someone_else_named_like_the_canary_is_not_taken_over() {
        let h = Harness::new("canary.yaml");
        h.state.lock().unwrap().objects.insert(
            paths::deployment(CANARY_NAME),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": CANARY_NAME, "namespace": "ml", "uid": "another-isvc-deployment",
                       "ownerReferences": [{"apiVersion": "serving.kinfer.dev/v1alpha1", "kind": "InferenceService",
                           "name": "fraud-canary", "uid": "other", "controller": true}]},
                   "spec": {"selector": {}, "template": {}}}),
        );
        let err = h.reconcile().await.unwrap_err();
        assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
        let (status, reason, message) = h.condition(READY);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
        assert!(message.contains("Deployment fraud-canary"), "{message}");
        let d: Deployment = h.get(&paths::deployment(CANARY_NAME)).unwrap();
        assert_eq!(d.metadata.uid.as_deref(), Some("another-isvc-deployment"), "untouched");
        h.finish().await;
    }

    #[test]
    fn canary_spec_round_trips_with_defaults() {
        let c: CanarySpec =
            serde_json::from_value(json!({"model": {"uri": "s3://m/a/b.onnx"}, "trafficPercent": 5})).unwrap();
        assert_eq!(c.mode, crate::crd::CanaryMode::Split);
        assert_eq!(c.model.unwrap().version, "1");
    }
}
