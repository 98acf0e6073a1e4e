//! Several models in one runtime, over real HTTP and gRPC on 127.0.0.1: two example models on
//! every protocol (NVIDIA's tritonclient.http and tritonclient.grpc included), two versions of one
//! model, and model control (Triton's repository extension): replace under concurrent load with
//! no failed request, a broken replacement that keeps the old version serving, unload, and
//! control off by default.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kinfer_runtime::protocol::grpc::pb::{
    self, InferTensorContents, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor,
};
use serde_json::{Value, json};
use support::*;

/// The venv's Python (`KINFER_TEST_PYTHON`, set by the Makefile, or .tools/venv).
fn python() -> Option<PathBuf> {
    let p = std::env::var("KINFER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".tools/venv/bin/python"));
    p.is_file().then_some(p)
}

fn two_models() -> Value {
    json!([
        {"name": "iris", "uri": model_path("iris").display().to_string(), "version": "1"},
        {"name": "tabular", "uri": model_path("tabular").display().to_string(), "version": "3"},
    ])
}

fn v2_request(model: &str) -> Value {
    json!({"id": format!("{model}-req"), "inputs": expected(model)["inputs"]})
}

/// Checks a v2 answer against the outputs Python onnxruntime computed.
fn check_v2(model: &str, body: &Value) {
    let exp = expected(model);
    for want in exp["outputs"].as_array().unwrap() {
        let got = body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == want["name"]);
        let got = got.unwrap_or_else(|| panic!("{model}: output {} missing: {body}", want["name"]));
        assert_eq!(got["shape"], want["shape"], "{model}");
        assert_close(&got["data"], &want["data"], &format!("{model}.{}", want["name"]));
    }
}

fn rows(model: &str) -> Value {
    let input = &expected(model)["inputs"][0];
    let cols = input["shape"][1].as_u64().unwrap() as usize;
    Value::Array(input["data"].as_array().unwrap().chunks(cols).map(|c| Value::Array(c.to_vec())).collect())
}

fn grpc_request(model: &str, version: &str) -> pb::ModelInferRequest {
    let input = &expected(model)["inputs"][0];
    let data: Vec<f32> = input["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: input["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect(),
            parameters: Default::default(),
            contents: Some(InferTensorContents { fp32_contents: data, ..Default::default() }),
        }],
        ..Default::default()
    }
}

/// Runs one of the Python client scripts against `addr` for `model`.
fn run_client(py: &Path, script: &str, addr: &str, model: &str) -> String {
    let out = Command::new(py)
        .arg(repo().join("runtime/tests/clients").join(script))
        .arg(addr)
        .arg(model)
        .arg(repo().join("examples/models").join(model).join("expected.json"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed for {model}:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_are_served_together_on_every_protocol() {
    let rt = runtime_models(&two_models()).ready().await;

    // Open Inference Protocol v2, with and without the version in the path.
    for (model, version) in [("iris", "1"), ("tabular", "3")] {
        for path in [format!("/v2/models/{model}/infer"), format!("/v2/models/{model}/versions/{version}/infer")] {
            let (s, body, headers) = rt.post_json(&path, &v2_request(model)).await;
            assert_eq!(s, 200, "{path}: {body}");
            assert_eq!((body["model_name"].as_str(), body["model_version"].as_str()), (Some(model), Some(version)));
            assert_eq!(headers["x-kinfer-model-version"], version, "{path}");
            check_v2(model, &body);
        }
        let (s, meta) = rt.get_json(&format!("/v2/models/{model}/versions/{version}")).await;
        assert_eq!((s, meta["name"].as_str()), (200, Some(model)), "{meta}");
        let (s, r) = rt.get_json(&format!("/v2/models/{model}/ready")).await;
        assert_eq!((s, r["version"].as_str()), (200, Some(version)), "{r}");
        // KServe V1 and /predict (which names the model in a query parameter here).
        let (s, body, _) =
            rt.post_json(&format!("/v1/models/{model}:predict"), &json!({"instances": rows(model)})).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["predictions"].as_array().unwrap().len(), rows(model).as_array().unwrap().len());
        let (s, body, _) = rt.post_json(&format!("/predict?model={model}"), &json!({"instances": rows(model)})).await;
        assert_eq!((s, body["model_name"].as_str()), (200, Some(model)), "{body}");
    }
    let (s, body, _) = rt.post_json("/v2/models/iris/versions/3/infer", &v2_request("iris")).await;
    assert_eq!(s, 404);
    assert!(
        body["error"].as_str().unwrap().contains("version '3' not found; this server serves version '1'"),
        "{body}"
    );
    let (s, body, _) = rt.post_json("/v2/models/fraud/infer", &v2_request("tabular")).await;
    assert_eq!(s, 404);
    assert!(body["error"].as_str().unwrap().contains("this server serves 'iris', 'tabular'"), "{body}");
    let (s, body, _) = rt.post_json("/predict", &json!({"instances": rows("iris")})).await;
    assert_eq!((s, body["code"].as_str()), (400, Some("INVALID_REQUEST")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("`model` query parameter ('iris', 'tabular')"), "{body}");

    // Every listing names both.
    let (_, list) = rt.get_json("/v1/models").await;
    assert_eq!(list["models"], json!(["iris", "tabular"]));
    let (_, root) = rt.get_json("/").await;
    let names: Vec<&str> = root["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["iris", "tabular"]);
    assert_eq!(root["models"][1]["infer"], "/v2/models/tabular/infer");
    let (s, index, _) = rt.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(
        index,
        json!([
            {"name": "iris", "version": "1", "state": "READY", "reason": ""},
            {"name": "tabular", "version": "3", "state": "READY", "reason": ""},
        ])
    );

    // gRPC, by name and version.
    let mut grpc = GrpcInferenceServiceClient::connect(rt.grpc_url()).await.expect("connect");
    for (model, version) in [("iris", ""), ("tabular", "3")] {
        let r = grpc.model_infer(grpc_request(model, version)).await.expect("infer").into_inner();
        assert_eq!(r.model_name, model);
        let ready = grpc
            .model_ready(pb::ModelReadyRequest { name: model.into(), version: version.into() })
            .await
            .expect("ready")
            .into_inner();
        assert!(ready.ready, "{model}");
    }
    let e = grpc.model_infer(grpc_request("iris", "2")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // NVIDIA's own clients, unchanged, against each model of the one server.
    if let Some(py) = python() {
        for model in ["iris", "tabular"] {
            let http = run_client(&py, "triton_http.py", &format!("127.0.0.1:{}", rt.port), model);
            assert!(http.contains("tritonclient: all checks passed"), "{http}");
            let grpc = run_client(&py, "triton_grpc.py", &format!("127.0.0.1:{}", rt.grpc_port), model);
            assert!(grpc.contains("tritonclient.grpc: all checks passed"), "{grpc}");
        }
    } else {
        assert!(std::env::var("CI").is_err(), "the test venv is missing in CI: run `make venv`");
        eprintln!("SKIPPED the tritonclient part: no Python venv; run `make venv` (make test does)");
    }

    // Metrics carry each model (and version, where the metric has one).
    let m = rt.metrics().await;
    for line in [
        r#"kinfer_model_ready{model="iris",version="1"} 1"#,
        r#"kinfer_model_ready{model="tabular",version="3"} 1"#,
        r#"kinfer_model_load_duration_seconds{model="tabular",version="3"}"#,
        r#"kinfer_requests_total{code="200",model="iris",protocol="v2",version="1"} "#,
        r#"kinfer_requests_total{code="200",model="tabular",protocol="predict",version="3"} 1"#,
        r#"kinfer_requests_total{code="200",model="tabular",protocol="v1",version="3"} 1"#,
        r#"kinfer_requests_total{code="404",model="unknown",protocol="v2",version="unknown"} "#,
        r#"kinfer_inference_duration_seconds_count{model="tabular",version="3"}"#,
    ] {
        assert!(m.contains(line), "metrics lack {line:?}:\n{m}");
    }
}

#[tokio::test]
async fn two_versions_of_one_model_are_addressed_by_version() {
    let iris = model_path("iris").display().to_string();
    let rt = runtime_models(&json!([
        {"name": "iris", "uri": iris, "version": "1"},
        {"name": "iris", "uri": iris, "version": "2"},
    ]))
    .ready()
    .await;
    for v in ["1", "2"] {
        let (s, meta) = rt.get_json(&format!("/v2/models/iris/versions/{v}")).await;
        assert_eq!((s, meta["versions"].clone()), (200, json!([v])), "{meta}");
        let (s, body, _) = rt.post_json(&format!("/v2/models/iris/versions/{v}/infer"), &v2_request("iris")).await;
        assert_eq!((s, body["model_version"].as_str()), (200, Some(v)), "{body}");
    }
    // No version: the highest, as Triton's default policy serves the latest.
    let (_, body, _) = rt.post_json("/v2/models/iris/infer", &v2_request("iris")).await;
    assert_eq!(body["model_version"], "2");
    let (s, body, _) = rt.post_json("/v2/models/iris/versions/3/infer", &v2_request("iris")).await;
    assert_eq!(s, 404);
    assert!(body["error"].as_str().unwrap().contains("serves versions '1', '2'"), "{body}");
    let (_, root) = rt.get_json("/").await;
    assert_eq!(root["models"][0]["infer"], "/v2/models/iris/versions/1/infer");
    assert_eq!(root["models"][1]["infer"], "/v2/models/iris/versions/2/infer");
    let m = rt.metrics().await;
    assert!(m.contains(r#"kinfer_model_ready{model="iris",version="1"} 1"#), "{m}");
    assert!(m.contains(r#"kinfer_model_ready{model="iris",version="2"} 1"#), "{m}");
}

/// Threads named `kinfer-infer-*` in the process: the inference threads of every loaded model.
fn inference_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with("kinfer-infer-"))
                .count()
        })
        .unwrap_or(0)
}

async fn eventually_threads(pid: u32, want: usize) {
    let start = Instant::now();
    while inference_threads(pid) != want {
        assert!(start.elapsed() < Duration::from_secs(10), "{} inference threads, want {want}", inference_threads(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct LoadReport {
    ok: u64,
    failures: Vec<String>,
    versions: Vec<String>,
}

/// Clients posting iris inferences (no version in the path) until `stop`.
fn start_load(base: String, stop: Arc<AtomicBool>, clients: usize) -> Vec<tokio::task::JoinHandle<LoadReport>> {
    (0..clients)
        .map(|_| {
            let (base, stop) = (base.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut r = LoadReport { ok: 0, failures: vec![], versions: vec![] };
                while !stop.load(Ordering::Relaxed) {
                    let resp = c.post(format!("{base}/v2/models/iris/infer")).json(&v2_request("iris")).send().await;
                    match resp {
                        Ok(resp) if resp.status() == 200 => {
                            let body: Value = resp.json().await.unwrap_or(Value::Null);
                            let v = body["model_version"].as_str().unwrap_or("?").to_string();
                            if r.versions.last() != Some(&v) {
                                r.versions.push(v);
                            }
                            r.ok += 1;
                        }
                        Ok(resp) => {
                            r.failures.push(format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()))
                        }
                        Err(e) => r.failures.push(format!("{e:?}")),
                    }
                }
                r
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_replace_and_unload_under_concurrent_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("iris-2.onnx");
    std::fs::copy(model_path("iris"), &v2).unwrap();
    let broken = dir.path().join("broken.onnx");
    std::fs::write(&broken, "this is not an ONNX model").unwrap();
    let rt = runtime_models(&json!([
        {"name": "iris", "uri": model_path("iris").display().to_string(), "version": "1"},
        {"name": "tabular", "uri": model_path("tabular").display().to_string()},
    ]))
    .arg("--sessions", "2")
    .env("KINFER_MODEL_CONTROL", "explicit")
    // Thousands of access-log lines would fill the unread stdout pipe and stall the process.
    .env("KINFER_LOG", "warn")
    .ready()
    .await;
    let pid = rt.child.id();
    eventually_threads(pid, 4).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(rt.base.clone(), stop.clone(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Replace version 1 with version 2: prepared and warmed before it takes requests.
    let params = json!({"parameters": {"uri": v2.display().to_string(), "version": "2"}});
    let (s, body, _) = rt.post_json("/v2/repository/models/iris/load", &params).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["loaded"], json!([{"name": "iris", "version": "2", "state": "READY", "reason": ""}]));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A broken replacement: the load answers with the loader's message, version 2 keeps serving.
    let params = json!({"parameters": {"uri": broken.display().to_string(), "version": "3"}});
    let (s, body, _) = rt.post_json("/v2/repository/models/iris/load", &params).await;
    assert_eq!((s, body["code"].as_str()), (400, Some("INVALID_REQUEST")), "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("failed to load model 'iris' version '3'") && msg.contains("is not a valid ONNX model"),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for task in load {
        let r = task.await.unwrap();
        assert!(r.failures.is_empty(), "failed requests during the replacement: {:?}", r.failures);
        // Each client saw version 1, then only version 2.
        assert_eq!(r.versions.first().map(String::as_str), Some("1"), "{:?}", r.versions);
        assert_eq!(r.versions.last().map(String::as_str), Some("2"), "{:?}", r.versions);
        assert_eq!(r.versions.len(), 2, "{:?}", r.versions);
        ok += r.ok;
    }
    assert!(ok > 20, "only {ok} requests made it through");
    // Version 1's inference threads exited with its last request; version 2 has its own.
    eventually_threads(pid, 4).await;
    let (_, index, _) = rt.post_json("/v2/repository/index", &json!({})).await;
    assert_eq!(index[0], json!({"name": "iris", "version": "2", "state": "READY", "reason": ""}));
    let m = rt.metrics().await;
    assert!(m.contains(r#"kinfer_model_ready{model="iris",version="2"} 1"#), "{m}");
    assert!(!m.contains(r#"kinfer_model_ready{model="iris",version="1"}"#), "{m}");

    // Unload: refused with 503 naming how to load it; the other model and the server stay ready.
    let (s, body, _) = rt.post_raw("/v2/repository/models/iris/unload", "").await;
    assert_eq!((s, body["unloaded"].as_bool()), (200, Some(true)), "{body}");
    let (s, body, _) = rt.post_json("/v2/models/iris/infer", &v2_request("iris")).await;
    assert_eq!((s, body["code"].as_str()), (503, Some("MODEL_NOT_READY")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("POST /v2/repository/models/iris/load"), "{body}");
    assert_eq!(rt.get_json("/v2/models/iris/ready").await.0, 503);
    assert_eq!(rt.get_json("/v2/health/ready").await.0, 200);
    let (_, index, _) = rt.post_json("/v2/repository/index", &json!({"ready": true})).await;
    assert_eq!(index, json!([{"name": "tabular", "version": "1", "state": "READY", "reason": ""}]));
    eventually_threads(pid, 2).await;

    // Load again without parameters: the last loaded location and version.
    let (s, body, _) = rt.post_raw("/v2/repository/models/iris/load", "").await;
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = rt.post_json("/v2/models/iris/infer", &v2_request("iris")).await;
    assert_eq!((s, body["model_version"].as_str()), (200, Some("2")), "{body}");
    check_v2("iris", &body);

    // A new name with its location: served next to the others.
    let params = json!({"parameters": {"uri": model_path("mlp").display().to_string()}});
    let (s, body, _) = rt.post_json("/v2/repository/models/mlp/load", &params).await;
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = rt.post_json("/v2/models/mlp/infer", &v2_request("mlp")).await;
    assert_eq!(s, 200, "{body}");
    check_v2("mlp", &body);
    // A model that takes a while to download: LOADING in the index meanwhile, and the server
    // stays ready (only the models listed at start hold readiness back).
    let url = slow_http(std::fs::read(model_path("iris")).unwrap(), Duration::from_millis(1500), "200 OK").await;
    let base = rt.base.clone();
    let slow = tokio::spawn(async move {
        let params = json!({"parameters": {"uri": url, "version": "5"}});
        client().post(format!("{base}/v2/repository/models/flowers/load")).json(&params).send().await.unwrap().status()
    });
    let start = Instant::now();
    loop {
        let (_, index, _) = rt.post_json("/v2/repository/index", &json!({})).await;
        if index.as_array().unwrap().iter().any(|r| r["name"] == "flowers" && r["state"] == "LOADING") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no LOADING row: {index}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rt.get_json("/v2/health/ready").await.0, 200);
    let (s, body, _) = rt.post_json("/v2/models/flowers/infer", &v2_request("iris")).await;
    assert_eq!((s, body["code"].as_str()), (503, Some("MODEL_NOT_READY")), "{body}");
    assert_eq!(slow.await.unwrap(), 200);
    let (s, body, _) = rt.post_json("/v2/models/flowers/versions/5/infer", &v2_request("iris")).await;
    assert_eq!(s, 200, "{body}");

    let (s, body, _) = rt.post_json("/v2/repository/models/other/load", &json!({"parameters": {"config": "{}"}})).await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().contains("'config' is not supported"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_drives_model_control_on_both_ports() {
    let Some(py) = python() else {
        assert!(std::env::var("CI").is_err(), "the test venv is missing in CI: run `make venv`");
        eprintln!("SKIPPED: no Python venv with tritonclient; run `make venv` (make test does)");
        return;
    };
    let rt = runtime_models(&json!([
        {"name": "iris", "uri": model_path("iris").display().to_string()},
        {"name": "tabular", "uri": model_path("tabular").display().to_string()},
    ]))
    .env("KINFER_MODEL_CONTROL", "explicit")
    .ready()
    .await;
    let out = Command::new(&py)
        .arg(repo().join("runtime/tests/clients/triton_repository.py"))
        .arg(format!("127.0.0.1:{}", rt.port))
        .arg(format!("127.0.0.1:{}", rt.grpc_port))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tritonclient model control failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("tritonclient model control: all checks passed"), "{stdout}");
    // Both models serve again at the end.
    for model in ["iris", "tabular"] {
        let (s, body, _) = rt.post_json(&format!("/v2/models/{model}/infer"), &v2_request(model)).await;
        assert_eq!(s, 200, "{body}");
    }
}

#[tokio::test]
async fn model_control_is_off_by_default_and_behind_the_tokens() {
    let rt = runtime(model_path("iris").display().to_string()).arg("--model-name", "iris").ready().await;
    for action in ["load", "unload"] {
        let (s, body, _) = rt.post_raw(&format!("/v2/repository/models/iris/{action}"), "{}").await;
        assert_eq!(s, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("KINFER_MODEL_CONTROL=explicit"), "{body}");
    }
    // The model is untouched, and the index still answers.
    let (s, _, _) = rt.post_json("/v2/models/iris/infer", &v2_request("iris")).await;
    assert_eq!(s, 200);
    let (s, index, _) = rt.post_raw("/v2/repository/index", "").await;
    assert_eq!((s, index[0]["state"].as_str()), (200, Some("READY")), "{index}");
    // The same on the gRPC port.
    let mut grpc = GrpcInferenceServiceClient::connect(rt.grpc_url()).await.expect("connect");
    let e = grpc
        .repository_model_unload(pb::RepositoryModelUnloadRequest { model_name: "iris".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("KINFER_MODEL_CONTROL=explicit"), "{e:?}");
    let index = grpc.repository_index(pb::RepositoryIndexRequest::default()).await.expect("index").into_inner();
    assert_eq!(index.models[0].state, "READY");

    let secured = runtime(model_path("iris").display().to_string())
        .arg("--model-name", "iris")
        .env("KINFER_MODEL_CONTROL", "explicit")
        .env("KINFER_AUTH_TOKENS", "s3cret")
        .ready()
        .await;
    for path in ["/v2/repository/index", "/v2/repository/models/iris/unload"] {
        let (s, body, _) = secured.post_raw(path, "").await;
        assert_eq!((s, body["code"].as_str()), (401, Some("UNAUTHORIZED")), "{path}: {body}");
    }
    let mut grpc = GrpcInferenceServiceClient::connect(secured.grpc_url()).await.expect("connect");
    let e = grpc.repository_index(pb::RepositoryIndexRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let r = client().post(secured.url("/v2/repository/models/iris/load")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_bad_model_list_or_a_failing_model_ends_the_process_naming_it() {
    let mut rt = runtime_models(&json!([{"name": "iris", "uri": "/m.onnx"}, {"name": "iris", "uri": "/n.onnx"}]))
        .spawn()
        .with_termination_log();
    let (code, _, err) = rt.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, 1);
    assert!(err.contains("KINFER_MODELS: model 'iris' version '1' is listed twice"), "{err}");

    let mut rt = runtime_models(&json!([
        {"name": "iris", "uri": model_path("iris").display().to_string()},
        {"name": "gone", "uri": "/definitely/not/here.onnx"},
    ]))
    .spawn()
    .with_termination_log();
    let (code, _, err) = rt.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, 1);
    assert!(err.contains("model 'gone' version '1': model file /definitely/not/here.onnx not found"), "{err}");
    assert!(rt.termination_log().unwrap_or_default().contains("model 'gone'"));

    let mut rt =
        runtime(model_path("iris").display().to_string()).env("KINFER_MODELS", two_models().to_string()).spawn();
    let (code, _, err) = rt.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, 1);
    assert!(err.contains("are both set"), "{err}");

    // A canary replaces one model: not a list of them.
    let mut rt = runtime_models(&two_models()).env("KINFER_CANARY_URL", "http://127.0.0.1:9").spawn();
    let (code, _, err) = rt.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, 1);
    assert!(err.contains("KINFER_CANARY_URL routes one model to its canary"), "{err}");
}

#[tokio::test]
async fn models_file_takes_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.yaml");
    let yaml = format!(
        "- name: iris\n  uri: {}\n  version: 4\n- name: tabular\n  uri: {}\n",
        model_path("iris").display(),
        model_path("tabular").display()
    );
    std::fs::write(&file, yaml).unwrap();
    let rt = runtime_bare().arg("--models-file", file.display().to_string()).ready().await;
    let (_, list) = rt.get_json("/v1/models").await;
    assert_eq!(list["models"], json!(["iris", "tabular"]));
    let (s, body, _) = rt.post_json("/v2/models/iris/versions/4/infer", &v2_request("iris")).await;
    assert_eq!(s, 200, "{body}");
}
