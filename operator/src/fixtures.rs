//! Test support: a fake API server behind `tower_test::mock`, and InferenceServices from the
//! YAML fixtures in `tests/fixtures/`.
//!
//! The fake keeps objects in memory and answers the calls the reconciler makes (server-side
//! apply, get, delete, list pods, status patch, event create) roughly as the API server does:
//! `metadata.generation` moves when `spec` changes, `status` survives an apply. It also serves
//! list and watch on collections, so a whole `Controller` (with its `.owns()` watches) can run
//! against it. Tests then assert on the resulting state and on the recorded calls, rather than
//! on exact URL strings.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Response body of the fake: one chunk, or a watch stream.
pub type FakeBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Collections the fake serves (the last path segment of a list or watch).
const COLLECTIONS: &[&str] = &[
    "inferenceservices",
    "deployments",
    "services",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "pods",
    "events",
    "leases",
];

struct Watcher {
    collection: String,
    selector: String,
    tx: mpsc::UnboundedSender<Bytes>,
}

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
    /// Content type of the body (tells server-side apply from merge patches).
    pub content_type: String,
}

/// In-memory state of the fake API server.
#[derive(Default, Debug)]
pub struct FakeState {
    /// Objects by path (`/apis/apps/v1/namespaces/ml/deployments/x`).
    pub objects: BTreeMap<String, Value>,
    /// Every request, in order.
    pub calls: Vec<Call>,
    uid_counter: u64,
    resource_version: u64,
    watchers: Vec<Watcher>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watcher({}?{})", self.collection, self.selector)
    }
}

impl FakeState {
    /// Stores an object as a write through the API would: new resourceVersion, watchers told.
    /// A write that changes nothing is a no-op, as on the API server.
    pub fn put(&mut self, path: &str, mut obj: Value) {
        if let Some(existing) = self.objects.get(path) {
            obj["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
            if *existing == obj {
                return;
            }
        }
        let kind = if self.objects.contains_key(path) { "MODIFIED" } else { "ADDED" };
        self.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.objects.insert(path.to_string(), obj.clone());
        self.notify(path, kind, &obj);
    }

    /// Changes a stored object in place (e.g. the status a kube controller would write).
    pub fn update(&mut self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut obj = self.objects.get(path).cloned().expect("object to update exists");
        f(&mut obj);
        self.put(path, obj);
    }

    fn remove(&mut self, path: &str) -> Option<Value> {
        let obj = self.objects.remove(path)?;
        self.resource_version += 1;
        self.notify(path, "DELETED", &obj);
        Some(obj)
    }

    fn notify(&mut self, path: &str, kind: &str, obj: &Value) {
        let collection = path.rsplit_once('/').map(|(c, _)| c).unwrap_or_default();
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
        self.watchers.retain(|w| {
            if w.collection != collection || !matches_selector(obj, &w.selector) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }

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
    handle: tower_test::mock::Handle<Request<Body>, Response<FakeBody>>,
    /// Shared state, readable (and writable) by the test while the fake runs.
    pub state: Arc<Mutex<FakeState>>,
}

impl ApiServerVerifier {
    /// A client and the fake it talks to.
    pub fn new() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
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
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                };
                let watch = call.method == Method::GET
                    && is_collection(&call.path)
                    && query_param(&call.query, "watch").is_some_and(|w| w == "true" || w == "1");
                let body: FakeBody = if watch {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let mut state = self.state.lock().expect("fake state");
                    state.calls.push(call.clone());
                    state.watchers.push(Watcher {
                        collection: call.path.clone(),
                        selector: query_param(&call.query, "labelSelector").unwrap_or_default(),
                        tx,
                    });
                    let stream = futures::stream::unfold(rx, |mut rx| async move {
                        let chunk = rx.recv().await?;
                        Some((Ok(Frame::data(chunk)), rx))
                    });
                    StreamBody::new(stream.boxed())
                } else {
                    let (_, reply) = {
                        let mut state = self.state.lock().expect("fake state");
                        state.calls.push(call.clone());
                        let (code, reply) = answer(&mut state, &call);
                        (code, (code, reply))
                    };
                    let bytes = Bytes::from(serde_json::to_vec(&reply.1).expect("reply"));
                    let code = reply.0;
                    let body = StreamBody::new(futures::stream::once(async move { Ok(Frame::data(bytes)) }).boxed());
                    send.send_response(
                        Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(body)
                            .expect("response"),
                    );
                    continue;
                };
                send.send_response(
                    Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(body)
                        .expect("response"),
                );
            }
        })
    }
}

fn is_collection(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|last| COLLECTIONS.contains(&last))
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
        Method::GET if is_collection(&path) => {
            let selector = query_param(&call.query, "labelSelector").unwrap_or_default();
            let prefix = format!("{path}/");
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                .map(|(_, v)| v.clone())
                .filter(|o| matches_selector(o, &selector))
                .collect();
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List",
                       "metadata": {"resourceVersion": state.resource_version.to_string()},
                       "items": items}),
            )
        }
        Method::GET => match state.objects.get(&path) {
            Some(o) => (StatusCode::OK, o.clone()),
            None => not_found(&path),
        },
        Method::DELETE => match state.remove(&path) {
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
            state.put(&object_path, obj);
            (StatusCode::OK, state.objects[&object_path].clone())
        }
        Method::POST if is_collection(&path) => {
            let mut obj = call.body.clone().unwrap_or(Value::Null);
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let object_path = format!("{path}/{name}");
            if state.objects.contains_key(&object_path) {
                return (
                    StatusCode::CONFLICT,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "reason": "AlreadyExists", "code": 409, "message": "already exists"}),
                );
            }
            state.uid_counter += 1;
            obj["metadata"]["uid"] = json!(format!("uid-{}", state.uid_counter));
            state.put(&object_path, obj);
            (StatusCode::CREATED, state.objects[&object_path].clone())
        }
        Method::PATCH if !call.content_type.starts_with("application/apply-patch") => {
            let Some(mut obj) = state.objects.get(&path).cloned() else {
                return not_found(&path);
            };
            merge(&mut obj, call.body.as_ref().unwrap_or(&Value::Null));
            state.put(&path, obj);
            (StatusCode::OK, state.objects[&path].clone())
        }
        Method::PATCH => {
            let mut obj = call.body.clone().unwrap_or(Value::Null);
            let existing = state.objects.get(&path).cloned();
            if path.contains("/services/") {
                // The API server allocates a ClusterIP once and keeps it across applies.
                let ip = existing
                    .as_ref()
                    .and_then(|e| e["spec"].get("clusterIP").cloned())
                    .unwrap_or_else(|| json!(format!("10.96.0.{}", 10 + state.uid_counter % 200)));
                obj["spec"]["clusterIP"] = ip;
            }
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
            if let Some(rv) = existing.as_ref().map(|e| e["metadata"]["resourceVersion"].clone()) {
                obj["metadata"]["resourceVersion"] = rv;
            }
            state.put(&path, obj);
            let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            (code, state.objects[&path].clone())
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, json!({"kind": "Status", "code": 405, "message": "fake: unsupported"})),
    }
}

/// JSON merge patch (RFC 7386): objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
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
