//! Helpers of the kinfer end-to-end suite (`e2e/tests/`).
//!
//! The suite runs against the cluster of the current kubeconfig and only when `KINFER_E2E=1`;
//! otherwise every test prints why it is skipped and passes. Everything cluster-specific comes
//! from environment variables whose defaults fit `e2e/kind.sh`, so the same suite also runs
//! against a cluster a platform team already has:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KINFER_E2E` | unset | `1` runs the suite |
//! | `KINFER_E2E_RUNTIME_IMAGE` | `kinfer/kinfer-runtime:dev` | runtime image set in each test's `spec.runtime.image` |
//! | `KINFER_E2E_OPERATOR` | `external` | `external`: an operator already runs (the chart's); `in-process`: the suite runs the operator itself, watching only its test namespaces, and applies `crds/` |
//! | `KINFER_E2E_S3_ENDPOINT` | `http://s3.kinfer-s3.svc.cluster.local:9000` | S3-compatible endpoint as the pods see it (kind.sh passes the Service's cluster IP, so no cluster DNS is needed) |
//! | `KINFER_E2E_S3_ACCESS_KEY` / `KINFER_E2E_S3_SECRET_KEY` | the demo store's keys | credentials, put into a Secret in each test namespace |
//! | `KINFER_E2E_S3_REGION` | `us-east-1` | region |
//! | `KINFER_E2E_MODEL_BUCKET` | `models` | bucket holding `iris/1/`, `iris/2/`, `iris/broken/`, `tabular/1/`, `tabular/2/`, `mlp/1/` (`model.onnx` each), as `examples/kind/upload-models-job.yaml` makes it |
//! | `KINFER_E2E_LOG_BUCKET` | `inference-logs` | bucket for request logging |
//! | `KINFER_E2E_READY_TIMEOUT` | `300` | seconds an InferenceService may take to become Ready |
//! | `KINFER_E2E_POD_SECURITY` | `restricted` | Pod Security Standard enforced on the test namespaces |
//! | `KINFER_E2E_KEEP` | unset | `1` keeps the namespaces of failed tests for inspection |

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, Secret},
        discovery::v1::EndpointSlice,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kinfer_operator::InferenceService;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Field manager of everything the suite applies.
pub const FIELD_MANAGER: &str = "kinfer-e2e";
/// Label on every namespace the suite creates.
pub const NS_LABEL: &str = "kinfer.dev/e2e";
/// Name of the S3 credentials Secret in each test namespace.
pub const S3_SECRET: &str = "s3-credentials";
/// Response header naming the model version that answered (set by the runtime).
pub const VERSION_HEADER: &str = "x-kinfer-model-version";
/// Port of the runtime container and of the Service the operator makes.
pub const POD_PORT: u16 = 8080;
pub const SERVICE_PORT: u16 = 80;

/// Settings of one run, from the environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub runtime_image: String,
    pub in_process_operator: bool,
    pub s3_endpoint: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub s3_region: String,
    pub model_bucket: String,
    pub log_bucket: String,
    pub ready_timeout: Duration,
    pub pod_security: String,
    pub keep_failed: bool,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

impl Config {
    pub fn from_env() -> Result<Self> {
        let operator = env_or("KINFER_E2E_OPERATOR", "external");
        let in_process_operator = match operator.as_str() {
            "external" | "chart" => false,
            "in-process" => true,
            other => bail!("KINFER_E2E_OPERATOR={other:?}: use `external` or `in-process`"),
        };
        let secs = env_or("KINFER_E2E_READY_TIMEOUT", "300");
        Ok(Self {
            runtime_image: env_or("KINFER_E2E_RUNTIME_IMAGE", "kinfer/kinfer-runtime:dev"),
            in_process_operator,
            s3_endpoint: env_or("KINFER_E2E_S3_ENDPOINT", "http://s3.kinfer-s3.svc.cluster.local:9000"),
            s3_access_key: env_or("KINFER_E2E_S3_ACCESS_KEY", "kinfer-demo"),
            s3_secret_key: env_or("KINFER_E2E_S3_SECRET_KEY", "kinfer-demo-secret"),
            s3_region: env_or("KINFER_E2E_S3_REGION", "us-east-1"),
            model_bucket: env_or("KINFER_E2E_MODEL_BUCKET", "models"),
            log_bucket: env_or("KINFER_E2E_LOG_BUCKET", "inference-logs"),
            ready_timeout: Duration::from_secs(
                secs.parse().with_context(|| format!("KINFER_E2E_READY_TIMEOUT={secs:?}"))?,
            ),
            pod_security: env_or("KINFER_E2E_POD_SECURITY", "restricted"),
            keep_failed: env_or("KINFER_E2E_KEEP", "0") == "1",
        })
    }

    /// `s3://<model bucket>/<path>`.
    pub fn model_uri(&self, path: &str) -> String {
        format!("s3://{}/{}", self.model_bucket, path)
    }

    /// The `spec.model.storage` block for the test store.
    pub fn storage(&self) -> Value {
        json!({
            "endpoint": self.s3_endpoint,
            "region": self.s3_region,
            "pathStyle": true,
            "secretRef": { "name": S3_SECRET },
        })
    }
}

/// Whether the suite was asked for. When not, prints why the test is skipped.
pub fn enabled(test: &str) -> bool {
    if std::env::var("KINFER_E2E").as_deref() == Ok("1") {
        true
    } else {
        eprintln!(
            "skipping {test}: the kinfer e2e suite needs a cluster; set KINFER_E2E=1 \
             (e2e/kind.sh does, after making a kind cluster)"
        );
        false
    }
}

/// Root of the repository (for examples/ and crds/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// `examples/models/<model>/expected.json`.
pub fn expected(model: &str) -> Result<Value> {
    let path = repo_root().join("examples/models").join(model).join("expected.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The Open Inference Protocol request made of an expected.json's inputs.
pub fn infer_request(expected: &Value, id: &str) -> Value {
    json!({ "id": id, "inputs": expected["inputs"] })
}

/// Compares an infer response with the expected outputs: same names, shapes and datatypes;
/// floats within a relative 1e-4, integers and strings exactly.
pub fn check_outputs(expected: &Value, got: &Value) -> Result<()> {
    let outputs = got["outputs"].as_array().ok_or_else(|| anyhow!("no outputs in {got}"))?;
    for want in expected["outputs"].as_array().into_iter().flatten() {
        let name = want["name"].as_str().unwrap_or_default();
        let out = outputs
            .iter()
            .find(|o| o["name"] == want["name"])
            .ok_or_else(|| anyhow!("output {name} missing from {got}"))?;
        if out["shape"] != want["shape"] {
            bail!("output {name}: shape {} != expected {}", out["shape"], want["shape"]);
        }
        if out["datatype"] != want["datatype"] {
            bail!("output {name}: datatype {} != expected {}", out["datatype"], want["datatype"]);
        }
        let flat = |v: &Value| -> Vec<Value> {
            fn walk(v: &Value, out: &mut Vec<Value>) {
                match v {
                    Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                    x => out.push(x.clone()),
                }
            }
            let mut out = Vec::new();
            walk(v, &mut out);
            out
        };
        let (a, b) = (flat(&out["data"]), flat(&want["data"]));
        if a.len() != b.len() {
            bail!("output {name}: {} values != expected {}", a.len(), b.len());
        }
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let same = match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) if want["datatype"] == "FP32" || want["datatype"] == "FP64" => {
                    (x - y).abs() <= 1e-5 + 1e-4 * y.abs()
                }
                _ => x == y,
            };
            if !same {
                bail!("output {name}[{i}]: {x} != expected {y}");
            }
        }
    }
    Ok(())
}

/// A namespace for one test, labelled so leftovers are easy to find
/// (`kubectl get ns -l kinfer.dev/e2e`), holding the S3 credentials Secret.
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
    pub config: Config,
    operator: Option<JoinHandle<()>>,
}

impl TestNamespace {
    pub async fn create(test: &str) -> Result<Self> {
        let config = Config::from_env()?;
        let client = Client::try_default().await.context("no Kubernetes client: set KUBECONFIG or run in a cluster")?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let name = format!("kinfer-e2e-{}-{:05x}", test.replace('_', "-"), nanos & 0xfffff);
        let name = name.chars().take(63).collect::<String>();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (NS_LABEL.to_string(), "true".to_string()),
                    ("kinfer.dev/e2e-test".to_string(), test.replace('_', "-")),
                    ("pod-security.kubernetes.io/enforce".to_string(), config.pod_security.clone()),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": S3_SECRET },
            "type": "Opaque",
            "stringData": {
                "AWS_ACCESS_KEY_ID": config.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": config.s3_secret_key,
            }
        }))?;
        Api::<Secret>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the S3 Secret")?;
        let mut me = Self { client, name, config, operator: None };
        if me.config.in_process_operator {
            me.start_operator().await?;
        }
        eprintln!("[{test}] namespace {}", me.name);
        Ok(me)
    }

    /// Applies crds/ and runs the operator in this process, watching only this namespace.
    async fn start_operator(&mut self) -> Result<()> {
        let path = repo_root().join("crds/inferenceservices.serving.kinfer.dev.yaml");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        Api::<CustomResourceDefinition>::all(self.client.clone())
            .patch(&crd.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .context("applying crds/")?;
        // On a fresh cluster the InferenceService API is served only once the CRD is Established;
        // a create before that is a 404 and the operator's first watch fails.
        let crds = Api::<CustomResourceDefinition>::all(self.client.clone());
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(
                crds,
                &crd.name_any(),
                kube::runtime::wait::conditions::is_crd_established(),
            ),
        )
        .await
        .context("the CRD was not Established within 60 s")?
        .context("watching the CRD")?;
        let config = kinfer_operator::OperatorConfig {
            runtime_image: self.config.runtime_image.clone(),
            ..kinfer_operator::OperatorConfig::default()
        };
        let client = self.client.clone();
        let ns = self.name.clone();
        self.operator = Some(tokio::spawn(async move {
            let metrics = Arc::new(kinfer_operator::metrics::Metrics::new());
            let reporter = kube::runtime::events::Reporter {
                controller: "kinfer-operator".into(),
                instance: Some("kinfer-e2e".into()),
            };
            if let Err(e) = kinfer_operator::controller::run(client, config, vec![ns], metrics, reporter).await {
                eprintln!("in-process operator stopped: {e:#}");
            }
        }));
        Ok(())
    }

    pub fn isvcs(&self) -> Api<InferenceService> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Server-side applies an InferenceService given as JSON (`metadata.name` + `spec`).
    pub async fn apply(&self, name: &str, spec: Value) -> Result<InferenceService> {
        let obj = json!({
            "apiVersion": "serving.kinfer.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": { "name": name, "labels": { "app.kubernetes.io/part-of": "kinfer-e2e" } },
            "spec": spec,
        });
        self.isvcs()
            .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
            .await
            .map_err(|e| anyhow!("applying InferenceService {name}: {e}"))
    }

    /// Merge-patches the spec of an InferenceService (as a user's `kubectl patch` would).
    pub async fn patch_spec(&self, name: &str, spec: Value) -> Result<InferenceService> {
        self.isvcs()
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
            .await
            .with_context(|| format!("patching InferenceService {name}"))
    }

    /// Waits until `Ready=True` (reason `Available`, not a rollout still in progress) for the
    /// current generation with every wanted pod updated and ready. Returns the resource.
    pub async fn wait_ready(&self, name: &str) -> Result<InferenceService> {
        let deadline = Instant::now() + self.config.ready_timeout;
        loop {
            let isvc = self.isvcs().get(name).await?;
            let generation = isvc.metadata.generation;
            if let (Some(status), Some(ready)) = (&isvc.status, isvc.condition("Ready"))
                && ready.status == "True"
                && ready.reason == "Available"
                && ready.observed_generation == generation
                && status.observed_generation == generation
                && status.updated_replicas == status.ready_replicas
                && status.replicas == status.ready_replicas
                && status.ready_replicas.unwrap_or(0) > 0
            {
                // Ready pods are in the Service only once the endpoints controller has published
                // them (a moment later on a busy cluster): wait for that too.
                self.wait_endpoints(name, deadline).await?;
                return Ok(isvc);
            }
            if Instant::now() > deadline {
                bail!(
                    "InferenceService {name} not Ready within {:?}; status: {}\n{}",
                    self.config.ready_timeout,
                    serde_json::to_string_pretty(&isvc.status).unwrap_or_default(),
                    self.describe_pods().await
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Waits until the Service `name` has at least one ready endpoint (EndpointSlices).
    pub async fn wait_endpoints(&self, name: &str, deadline: Instant) -> Result<()> {
        let slices = self.api::<EndpointSlice>();
        let selector = format!("kubernetes.io/service-name={name}");
        loop {
            let ready = slices
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .iter()
                .any(|s| s.endpoints.iter().any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false)));
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Service {name} has no ready endpoint\n{}", self.describe_pods().await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until a condition of the resource satisfies `pred`; returns the resource.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&InferenceService) -> bool,
    ) -> Result<InferenceService> {
        let deadline = Instant::now() + timeout;
        loop {
            let isvc = self.isvcs().get(name).await?;
            if pred(&isvc) {
                return Ok(isvc);
            }
            if Instant::now() > deadline {
                bail!(
                    "InferenceService {name}: {what} not seen within {timeout:?}; status: {}\n{}",
                    serde_json::to_string_pretty(&isvc.status).unwrap_or_default(),
                    self.describe_pods().await
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// The runtime pods of an InferenceService (by the Deployment's selector).
    pub async fn pods(&self, name: &str) -> Result<Vec<Pod>> {
        let deploy = self.api::<k8s_openapi::api::apps::v1::Deployment>().get(name).await?;
        let selector = deploy
            .spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(self.api::<Pod>().list(&ListParams::default().labels(&selector)).await?.items)
    }

    /// Ready runtime pods of an InferenceService.
    pub async fn ready_pods(&self, name: &str) -> Result<Vec<Pod>> {
        Ok(self
            .pods(name)
            .await?
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect())
    }

    /// POSTs an infer request to one pod through the API server's pod proxy.
    pub async fn infer_pod(&self, pod: &str, model: &str, body: &Value) -> Result<Value> {
        let path = format!("/api/v1/namespaces/{}/pods/{pod}:{POD_PORT}/proxy/v2/models/{model}/infer", self.name);
        post_json(&self.client, &path, body).await
    }

    /// POSTs an infer request to the Service (so to whichever ready pod its endpoints name)
    /// through the API server's service proxy. A Service whose endpoints are not published yet
    /// answers 503 ("no endpoints available") or 404 through the proxy: such answers are retried
    /// for up to 30 s, after waiting for a ready endpoint. (The load client of
    /// [`TestNamespace::start_load`] never retries: every failure there counts.)
    pub async fn infer_service(&self, service: &str, model: &str, body: &Value) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match infer_service(&self.client, &self.name, service, model, body).await {
                Err(e) if Instant::now() < deadline && not_routed_yet(&e) => {
                    eprintln!("{service}: not routed yet ({e:#}); waiting for its endpoints");
                    self.wait_endpoints(service, deadline).await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// POSTs an infer request to the Service through the API server's service proxy, with extra
    /// request headers, and returns the answer with the model version that produced it (the
    /// runtime's `x-kinfer-model-version` response header, which the proxy passes through).
    /// Never retried: any failure is returned.
    pub async fn infer_service_version(
        &self,
        service: &str,
        model: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<(Value, String)> {
        let path =
            format!("/api/v1/namespaces/{}/services/{service}:{SERVICE_PORT}/proxy/v2/models/{model}/infer", self.name);
        let mut req = http::Request::post(&path).header(http::header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(kube::client::Body::from(serde_json::to_vec(body)?))?;
        let resp = self.client.send(req).await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let version =
            resp.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok()).map(String::from).unwrap_or_default();
        let bytes = resp.into_body().collect_bytes().await.with_context(|| format!("reading POST {path}"))?;
        if !status.is_success() {
            bail!("POST {path}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        if version.is_empty() {
            bail!("POST {path}: no {VERSION_HEADER} header in the answer");
        }
        Ok((serde_json::from_slice(&bytes).with_context(|| format!("POST {path}: answer is not JSON"))?, version))
    }

    /// Starts a client that sends predictions to the Service in a loop until stopped.
    pub fn start_load(&self, service: &str, model: &str, body: Value) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (client, ns, service, model) =
            (self.client.clone(), self.name.clone(), service.to_string(), model.to_string());
        let handle = {
            let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            tokio::spawn(async move {
                // Bounded: at most 15 minutes or 100k requests.
                let deadline = Instant::now() + Duration::from_secs(900);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 100_000 {
                    n += 1;
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        infer_service(&client, &ns, &service, &model, &body),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{e:#}"));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push("timed out after 10s".into());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Load { stop, ok, failed, errors, handle }
    }

    /// Pods, their states and recent events, for failure messages.
    pub async fn describe_pods(&self) -> String {
        let mut out = String::new();
        if let Ok(pods) = self.api::<Pod>().list(&ListParams::default()).await {
            for p in pods {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                out.push_str(&format!("pod {} {phase}", p.name_any()));
                for cs in p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default() {
                    out.push_str(&format!(
                        " [{} ready={} restarts={} state={}]",
                        cs.name,
                        cs.ready,
                        cs.restart_count,
                        serde_json::to_string(&cs.state).unwrap_or_default()
                    ));
                }
                out.push('\n');
            }
        }
        out
    }

    /// Deletes the namespace (unless the test failed and KINFER_E2E_KEEP=1) and stops an
    /// in-process operator.
    pub async fn finish<T>(self, result: Result<T>) -> Result<T> {
        if let Some(op) = &self.operator {
            op.abort();
        }
        if result.is_err() && self.config.keep_failed {
            eprintln!("keeping namespace {} (KINFER_E2E_KEEP=1)", self.name);
            return result;
        }
        if let Err(e) = Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::background()).await
        {
            eprintln!("could not delete namespace {}: {e}", self.name);
        }
        result
    }
}

/// Whether an error from the API server's service proxy means "no endpoint to send it to yet".
fn not_routed_yet(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => s.code == 503 || (s.code == 404 && !s.message.contains("model")),
        _ => false,
    })
}

async fn post_json(client: &Client, path: &str, body: &Value) -> Result<Value> {
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body)?)?;
    client.request::<Value>(req).await.with_context(|| format!("POST {path}"))
}

async fn infer_service(client: &Client, ns: &str, service: &str, model: &str, body: &Value) -> Result<Value> {
    let path = format!("/api/v1/namespaces/{ns}/services/{service}:{SERVICE_PORT}/proxy/v2/models/{model}/infer");
    post_json(client, &path, body).await
}

/// A client looping over predictions; see [`TestNamespace::start_load`].
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    handle: JoinHandle<()>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

impl Load {
    pub fn ok_so_far(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
        let errors = self.errors.lock().unwrap().clone();
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors: errors.into_iter().take(10).collect(),
        }
    }
}

/// Waits until `probe` returns true (polling every second) or fails with `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
