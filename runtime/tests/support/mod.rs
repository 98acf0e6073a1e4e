//! Test harness: starts the real `kinfer-runtime` binary on 127.0.0.1 and a real S3-compatible
//! server, and talks to them over HTTP.
#![allow(dead_code)]

pub mod s3;

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const ACCESS_KEY: &str = "kinfer-test";
pub const SECRET_KEY: &str = "kinfer-test-secret";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn model_path(name: &str) -> PathBuf {
    repo().join("examples/models").join(name).join("model.onnx")
}

/// The expected inputs/outputs committed beside each example model.
pub fn expected(name: &str) -> Value {
    let p = repo().join("examples/models").join(name).join("expected.json");
    serde_json::from_slice(&std::fs::read(&p).expect("expected.json")).expect("expected.json parses")
}

/// The first row (30 features) of the MLP example's expected inputs.
pub fn mlp_row() -> Vec<f32> {
    let data = expected("mlp")["inputs"][0]["data"].as_array().expect("data").clone();
    data[..30].iter().map(|v| v.as_f64().expect("number") as f32).collect()
}

/// A gRPC `ModelInfer` request for `model` with typed contents: `rows` copies of [`mlp_row`] as
/// the `[rows, 30]` FP32 input named `input`.
pub fn mlp_grpc_request(model: &str, rows: usize) -> kinfer_runtime::protocol::grpc::pb::ModelInferRequest {
    use kinfer_runtime::protocol::grpc::pb::{
        InferTensorContents, ModelInferRequest, model_infer_request::InferInputTensor,
    };
    let values: Vec<f32> = (0..rows).flat_map(|_| mlp_row()).collect();
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 30],
            parameters: Default::default(),
            contents: Some(InferTensorContents { fp32_contents: values, ..Default::default() }),
        }],
        ..Default::default()
    }
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, or the one `make setup-ort` installs.
pub fn ort_dylib() -> PathBuf {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let p = repo().join(".tools/onnxruntime/libonnxruntime.so.1.31.1");
    assert!(p.is_file(), "ONNX Runtime is not installed: run `make setup-ort` (or use `make test`)");
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running kinfer-runtime process.
pub struct Runtime {
    pub child: Child,
    pub base: String,
    pub port: u16,
    /// The gRPC port (`--grpc-port`; every test runtime gets its own).
    pub grpc_port: u16,
    pub tmp: tempfile::TempDir,
}

pub struct RuntimeBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    grpc: bool,
}

impl RuntimeBuilder {
    pub fn arg(mut self, k: &str, v: impl Into<String>) -> Self {
        self.args.push(k.into());
        self.args.push(v.into());
        self
    }
    /// Starts the runtime with gRPC off (`--grpc-port 0`).
    pub fn without_grpc(mut self) -> Self {
        self.grpc = false;
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Starts the process (it is live at once; see `wait_ready`).
    pub fn spawn(self) -> Runtime {
        let port = free_port();
        let grpc_port = if self.grpc { free_port() } else { 0 };
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinfer-runtime"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--grpc-port", &grpc_port.to_string()])
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .arg("--termination-log")
            .arg(tmp.path().join("termination-log"))
            .args(&self.args)
            .env("ORT_DYLIB_PATH", ort_dylib())
            .env("KINFER_LOG", "info")
            // No ambient AWS configuration may leak in: tests name everything they use.
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", tmp.path().join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", tmp.path().join("no-aws-credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn kinfer-runtime");
        Runtime { child, base: format!("http://127.0.0.1:{port}"), port, grpc_port, tmp }
    }

    /// Starts the process and waits until it is ready.
    pub async fn ready(self) -> Runtime {
        let mut rt = self.spawn();
        rt.wait_ready(Duration::from_secs(30)).await;
        rt
    }
}

pub fn runtime(model_uri: impl Into<String>) -> RuntimeBuilder {
    RuntimeBuilder { args: vec!["--model-uri".into(), model_uri.into()], envs: vec![], grpc: true }
}

/// A runtime serving the `KINFER_MODELS` list `models` (a JSON array).
pub fn runtime_models(models: &serde_json::Value) -> RuntimeBuilder {
    RuntimeBuilder { args: vec![], envs: vec![("KINFER_MODELS".into(), models.to_string())], grpc: true }
}

/// A runtime started with no model flag: the test names its models (e.g. `--models-file`).
pub fn runtime_bare() -> RuntimeBuilder {
    RuntimeBuilder { args: vec![], envs: vec![], grpc: true }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client")
}

impl Runtime {
    /// The gRPC endpoint, as tonic clients take it.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Polls readiness; panics with the process output if it exits or times out.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let c = client();
        let start = Instant::now();
        loop {
            if let Ok(r) = c.get(self.url("/v2/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let (out, err) = self.output();
                panic!("kinfer-runtime exited with {status} before ready\nstdout:\n{out}\nstderr:\n{err}");
            }
            assert!(start.elapsed() < limit, "kinfer-runtime not ready within {limit:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for the process to exit (it must, within `limit`); returns code, stdout and stderr.
    pub async fn wait_exit(&mut self, limit: Duration) -> (i32, String, String) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let (out, err) = self.output();
                return (status.code().unwrap_or(-1), out, err);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let (out, err) = self.output();
                panic!("kinfer-runtime did not exit within {limit:?}\nstdout:\n{out}\nstderr:\n{err}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn output(&mut self) -> (String, String) {
        use std::io::Read;
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    }

    pub fn termination_log(&self) -> Option<String> {
        std::fs::read_to_string(self.tmp.path().join("termination-log")).ok()
    }

    /// Creates the termination-log file so the runtime writes to it (as Kubernetes provides it).
    pub fn with_termination_log(self) -> Self {
        let _ = std::fs::write(self.tmp.path().join("termination-log"), "");
        self
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = client().post(self.url(path)).json(body).send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("non-JSON body ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, v, headers)
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("non-JSON body ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, v, headers)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = client().get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        client().get(self.url("/metrics")).send().await.expect("metrics").text().await.expect("text")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3 server on 127.0.0.1 with one bucket per directory under its root.
pub struct S3 {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    pub counts: std::sync::Arc<s3::Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl S3 {
    pub async fn start() -> S3 {
        let root = tempfile::tempdir().expect("tempdir");
        let (listener, addr) = s3::bind(0).await.expect("bind s3");
        let path = root.path().to_path_buf();
        let counts = std::sync::Arc::<s3::Counts>::default();
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let _ = s3::serve_counted(&path, listener, ACCESS_KEY, SECRET_KEY, c).await;
        });
        S3 { root, addr, counts, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Puts a file as `bucket/key` (s3s-fs keeps objects as plain files).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let p = self.root.path().join(bucket).join(key);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write object");
    }

    pub fn bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.path().join(bucket)).expect("mkdir bucket");
    }

    /// A runtime configured for this server with the given credentials.
    pub fn runtime(&self, uri: &str, access_key: &str, secret_key: &str) -> RuntimeBuilder {
        runtime(uri)
            .env("AWS_ENDPOINT_URL_S3", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .env("AWS_REGION", "us-east-1")
            .env("KINFER_S3_PATH_STYLE", "true")
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Compares two JSON numbers arrays with a relative tolerance (f32 round trips through JSON).
pub fn assert_close(got: &Value, want: &Value, what: &str) {
    let g = got.as_array().unwrap_or_else(|| panic!("{what}: not an array: {got}"));
    let w = want.as_array().unwrap_or_else(|| panic!("{what}: not an array: {want}"));
    assert_eq!(g.len(), w.len(), "{what}: length");
    for (i, (a, b)) in g.iter().zip(w).enumerate() {
        match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}[{i}]: got {x}, want {y}")
            }
            _ => assert_eq!(a, b, "{what}[{i}]"),
        }
    }
}

/// A one-request HTTP server that serves `body` after `delay` (a slow model download).
pub async fn slow_http(body: Vec<u8>, delay: Duration, status: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/models/iris.onnx")
}

/// Every record in every `*.jsonl.gz` object under `dir`, with the object keys.
pub fn read_log_objects(dir: &Path) -> (Vec<String>, Vec<Value>) {
    let mut keys = Vec::new();
    let mut records = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".jsonl.gz") {
                keys.push(p.strip_prefix(dir).unwrap().to_string_lossy().to_string());
                let mut text = String::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap()).read_to_string(&mut text).unwrap();
                records.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON line")));
            }
        }
    }
    keys.sort();
    (keys, records)
}

/// Waits until at least `n` request-log records are in the objects under `dir`.
pub async fn wait_for_records(dir: &Path, n: usize, limit: Duration) -> (Vec<String>, Vec<Value>) {
    let start = std::time::Instant::now();
    loop {
        let got = read_log_objects(dir);
        if got.1.len() >= n {
            return got;
        }
        assert!(start.elapsed() < limit, "only {} of {n} log records after {limit:?}", got.1.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
