//! Test support: a fake API server behind `tower_test::mock`, and InferenceServices from the
//! YAML fixtures in `tests/fixtures/`.
//!
//! The fake keeps objects in memory and answers the calls the reconciler makes (server-side
//! apply, get, delete, list pods, status patch, event create) roughly as the API server does:
//! `metadata.generation` moves when `spec` changes, `status` survives an apply. Tests then
//! assert on the resulting state and on the recorded calls, rather than on exact URL strings.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};

use crate::crd::InferenceService;

/// Namespace of every fixture.
pub const NS: &str = "ml";

/// Loads a fixture as an InferenceService as the API server would return it (uid,
/// generation 1).
pub fn isvc_from_yaml(yaml: &str) -> InferenceService {
    let mut isvc: InferenceService = serde_yaml::from_str(yaml).expect("fixture parses");
    isvc.metadata.namespace.get_or_insert_with(|| NS.to_string());
    isvc.metadata.uid.get_or_insert_with(|| "0000-uid-isvc".to_string());
    isvc.metadata.generation.get_or_insert(1);
    isvc
}

/// Reads `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> InferenceService {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    isvc_from_yaml(&yaml)
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

/// In-memory state of the fake API server.
#[derive(Default, Debug)]
pub struct FakeState {
    /// Objects by path (`/apis/apps/v1/namespaces/ml/deployments/x`).
    pub objects: BTreeMap<String, Value>,
    /// Every request, in order.
    pub calls: Vec<Call>,
    uid_counter: u64,
}

impl FakeState {
    /// The object at a path, deserialized.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        self.objects.get(path).map(|v| serde_json::from_value(v.clone()).expect("stored object deserializes"))
    }

    /// Calls with this method whose path contains `needle`.
    pub fn calls_to(&self, method: &Method, needle: &str) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.method == *method && c.path.contains(needle)).collect()
    }

    /// Reasons of the events created so far.
    pub fn event_reasons(&self) -> Vec<String> {
        self.calls_to(&Method::POST, "/events")
            .iter()
            .filter_map(|c| c.body.as_ref()?.get("reason")?.as_str().map(String::from))
            .collect()
    }
}

/// Path helpers for objects in the fixture namespace.
pub mod paths {
    /// Deployment path.
    pub fn deployment(name: &str) -> String {
        format!("/apis/apps/v1/namespaces/{}/deployments/{name}", super::NS)
    }
    /// Service path.
    pub fn service(name: &str) -> String {
        format!("/api/v1/namespaces/{}/services/{name}", super::NS)
    }
    /// HPA path.
    pub fn hpa(name: &str) -> String {
        format!("/apis/autoscaling/v2/namespaces/{}/horizontalpodautoscalers/{name}", super::NS)
    }
    /// PDB path.
    pub fn pdb(name: &str) -> String {
        format!("/apis/policy/v1/namespaces/{}/poddisruptionbudgets/{name}", super::NS)
    }
    /// InferenceService path.
    pub fn isvc(name: &str) -> String {
        format!("/apis/serving.kinfer.dev/v1alpha1/namespaces/{}/inferenceservices/{name}", super::NS)
    }
    /// Pod path.
    pub fn pod(name: &str) -> String {
        format!("/api/v1/namespaces/{}/pods/{name}", super::NS)
    }
}

/// The fake API server; `Context::test()` hands one out with the client wired to it.
pub struct ApiServerVerifier {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    /// Shared state, readable (and writable) by the test while the fake runs.
    pub state: Arc<Mutex<FakeState>>,
}

impl ApiServerVerifier {
    /// A client and the fake it talks to.
    pub fn new() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NS);
        (client, Self { handle, state: Arc::default() })
    }

    /// Serves requests until every client clone is dropped.
    pub fn run(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some((request, send)) = self.handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let body: Option<Value> = if bytes.is_empty() {
                    None
                } else {
                    Some(serde_json::from_slice(&bytes).expect("request body is JSON"))
                };
                let call = Call {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body,
                };
                let (code, reply) = {
                    let mut state = self.state.lock().expect("fake state");
                    state.calls.push(call.clone());
                    answer(&mut state, &call)
                };
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                        .expect("response"),
                );
            }
        })
    }
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}

fn answer(state: &mut FakeState, call: &Call) -> (StatusCode, Value) {
    let path = call.path.clone();
    match call.method {
        Method::POST if path.ends_with("/events") => (StatusCode::CREATED, call.body.clone().unwrap_or(Value::Null)),
        Method::GET if path.ends_with("/pods") => {
            let selector = query_param(&call.query, "labelSelector").unwrap_or_default();
            let prefix = format!("{path}/");
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| v.clone())
                .filter(|pod| matches_selector(pod, &selector))
                .collect();
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        Method::GET => match state.objects.get(&path) {
            Some(o) => (StatusCode::OK, o.clone()),
            None => not_found(&path),
        },
        Method::DELETE => match state.objects.remove(&path) {
            Some(_) => {
                (StatusCode::OK, json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}))
            }
            None => not_found(&path),
        },
        Method::PATCH if path.ends_with("/status") => {
            let object_path = path.trim_end_matches("/status").to_string();
            let Some(mut obj) = state.objects.get(&object_path).cloned() else {
                return not_found(&object_path);
            };
            let status = call.body.as_ref().and_then(|b| b.get("status")).cloned().unwrap_or(Value::Null);
            obj["status"] = status;
            state.objects.insert(object_path, obj.clone());
            (StatusCode::OK, obj)
        }
        Method::PATCH => {
            let mut obj = call.body.clone().unwrap_or(Value::Null);
            let existing = state.objects.get(&path).cloned();
            let (uid, generation, status) = match &existing {
                Some(e) => {
                    let generation = e["metadata"]["generation"].as_i64().unwrap_or(1);
                    let spec_changed = e.get("spec") != obj.get("spec");
                    (e["metadata"]["uid"].clone(), generation + i64::from(spec_changed), e.get("status").cloned())
                }
                None => {
                    state.uid_counter += 1;
                    (json!(format!("uid-{}", state.uid_counter)), 1, None)
                }
            };
            obj["metadata"]["uid"] = uid;
            obj["metadata"]["generation"] = json!(generation);
            if let Some(s) = status {
                obj["status"] = s;
            }
            state.objects.insert(path, obj.clone());
            let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            (code, obj)
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, json!({"kind": "Status", "code": 405, "message": "fake: unsupported"})),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let Some((k, v)) = term.split_once('=') else {
            return false;
        };
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}
