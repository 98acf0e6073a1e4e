//! Model loading from a real S3-compatible server (s3s-fs on 127.0.0.1), HTTP and files, and
//! every start-up failure: the process exits 1 with a message that names the problem, and writes
//! it to the termination log.

mod support;

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;

fn iris_bytes() -> Vec<u8> {
    std::fs::read(model_path("iris")).unwrap()
}

async fn assert_serves_iris(rt: &Runtime, name: &str) {
    let (s, body, _) = rt.post_json("/predict", &json!({"instances": [[5.1, 3.5, 1.4, 0.2]]})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["model_name"], name);
    assert_eq!(body["predictions"][0]["label"], 0);
}

/// Starts a runtime that must fail; returns its stderr and termination log.
async fn expect_failure(builder: RuntimeBuilder) -> (String, String) {
    let mut rt = builder.spawn().with_termination_log();
    let (code, _out, err) = rt.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, 1, "expected exit 1; stderr: {err}");
    let log = rt.termination_log().unwrap_or_default();
    (err, log)
}

#[tokio::test]
async fn loads_from_s3_with_credentials_and_checksum() {
    let s3 = S3::start().await;
    s3.put("models", "iris/1/model.onnx", &iris_bytes());
    let sha = hex::encode(Sha256::digest(iris_bytes()));
    let rt = s3
        .runtime("s3://models/iris/1/model.onnx", ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "iris")
        .arg("--model-sha256", sha)
        .ready()
        .await;
    assert_serves_iris(&rt, "iris").await;
}

#[tokio::test]
async fn s3_failures_name_the_problem() {
    let s3 = S3::start().await;
    s3.put("models", "iris/model.onnx", &iris_bytes());
    s3.put("models", "broken/model.onnx", b"this is not a protobuf");
    s3.put("models", "zipmap/model.onnx", &std::fs::read(model_path("iris_zipmap")).unwrap());

    let (err, log) = expect_failure(s3.runtime("s3://models/iris/missing.onnx", ACCESS_KEY, SECRET_KEY)).await;
    assert!(err.contains("S3 object \"iris/missing.onnx\" not found in bucket \"models\""), "{err}");
    assert!(log.contains("not found in bucket"), "termination log: {log}");

    let (err, _) = expect_failure(s3.runtime("s3://no-such-bucket/model.onnx", ACCESS_KEY, SECRET_KEY)).await;
    assert!(err.contains("S3 bucket \"no-such-bucket\" does not exist"), "{err}");

    let (err, _) = expect_failure(s3.runtime("s3://models/iris/model.onnx", ACCESS_KEY, "wrong-secret")).await;
    assert!(err.contains("access denied reading s3://models/iris/model.onnx"), "{err}");
    assert!(err.contains("check the S3 credentials"), "{err}");

    let (err, _) = expect_failure(s3.runtime("s3://models/iris/model.onnx", "unknown-key", SECRET_KEY)).await;
    assert!(err.contains("access denied"), "{err}");

    let (err, _) = expect_failure(s3.runtime("s3://models/broken/model.onnx", ACCESS_KEY, SECRET_KEY)).await;
    assert!(err.contains("s3://models/broken/model.onnx is not a valid ONNX model"), "{err}");

    let (err, _) = expect_failure(
        s3.runtime("s3://models/iris/model.onnx", ACCESS_KEY, SECRET_KEY).arg("--model-sha256", "0".repeat(64)),
    )
    .await;
    assert!(err.contains("checksum mismatch for s3://models/iris/model.onnx: expected sha256 0000"), "{err}");

    let (err, _) = expect_failure(s3.runtime("s3://models/zipmap/model.onnx", ACCESS_KEY, SECRET_KEY)).await;
    assert!(err.contains("ZipMap"), "{err}");
    assert!(err.contains("'zipmap': False"), "{err}");
}

#[tokio::test]
async fn unreachable_s3_endpoint_is_retried_then_reported() {
    // Nothing listens on this port.
    let port = free_port();
    let builder = runtime("s3://models/iris/model.onnx")
        .env("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("KINFER_S3_PATH_STYLE", "true")
        .arg("--download-attempts", "2");
    let (err, log) = expect_failure(builder).await;
    assert!(err.contains("cannot reach S3 for s3://models/iris/model.onnx"), "{err}");
    assert!(err.contains("gave up after 2 attempts"), "{err}");
    assert!(log.contains("cannot reach S3"), "{log}");
}

#[tokio::test]
async fn s3_outage_at_start_heals_within_the_retries() {
    // The store comes up after the runtime's first attempt failed: the retry loads the model.
    let port = free_port();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("models/iris")).unwrap();
    std::fs::write(root.path().join("models/iris/model.onnx"), iris_bytes()).unwrap();
    let mut rt = runtime("s3://models/iris/model.onnx")
        .env("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("KINFER_S3_PATH_STYLE", "true")
        .arg("--model-name", "iris")
        .spawn();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (listener, _) = support::s3::bind(port).await.unwrap();
    let path = root.path().to_path_buf();
    let server = tokio::spawn(async move { support::s3::serve(&path, listener, ACCESS_KEY, SECRET_KEY).await });
    rt.wait_ready(Duration::from_secs(20)).await;
    assert_serves_iris(&rt, "iris").await;
    server.abort();
}

#[tokio::test]
async fn file_failures_name_the_problem() {
    let (err, log) = expect_failure(runtime("/definitely/not/here.onnx")).await;
    assert!(err.contains("model file /definitely/not/here.onnx not found"), "{err}");
    assert!(log.contains("not found"), "{log}");
    let (err, _) = expect_failure(runtime("gs://bucket/model.onnx")).await;
    assert!(err.contains("scheme \"gs\" is not supported"), "{err}");
    let (err, _) = expect_failure(runtime(model_path("iris").display().to_string()).arg("--model-sha256", "abc")).await;
    assert!(err.contains("must be 64 hex characters"), "{err}");
}

#[test]
fn missing_onnx_runtime_library_is_one_line_saying_what_to_run() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinfer-runtime"))
        .args(["--model-uri", "x.onnx", "--termination-log", "/nonexistent/termination-log"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ONNX Runtime library not found at /nonexistent/libonnxruntime.so.1.31.1"), "{err}");
    assert!(err.contains("make setup-ort"), "{err}");
}

#[tokio::test]
async fn http_model_is_live_at_once_and_ready_only_after_loading() {
    let url = slow_http(iris_bytes(), Duration::from_millis(1500), "200 OK").await;
    let mut rt = runtime(url).spawn();
    // Live while the download is in flight; not ready; inference refused with MODEL_NOT_READY.
    let c = client();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = c.get(rt.url("/v2/health/live")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, v) = rt.get_json("/v2/health/ready").await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["code"], "MODEL_NOT_READY");
    let (s, v, _) = rt.post_json("/predict", &json!({"instances": [[5.1, 3.5, 1.4, 0.2]]})).await;
    assert_eq!(s, 503);
    assert_eq!(v["code"], "MODEL_NOT_READY");
    assert!(v["error"].as_str().unwrap().contains("still loading"));
    let (s, _) = rt.get_json("/v2/models/iris/ready").await;
    assert_eq!(s, 503);
    assert!(rt.metrics().await.contains("kinfer_requests_in_flight 0"));
    rt.wait_ready(Duration::from_secs(20)).await;
    assert_serves_iris(&rt, "iris").await;
}

#[tokio::test]
async fn http_errors_are_permanent_or_retried() {
    let url = slow_http(b"gone".to_vec(), Duration::ZERO, "404 Not Found").await;
    let (err, _) = expect_failure(runtime(url.clone())).await;
    assert!(err.contains(&format!("GET {url} returned HTTP 404")), "{err}");
    let url = slow_http(b"oops".to_vec(), Duration::ZERO, "503 Service Unavailable").await;
    let (err, _) = expect_failure(runtime(url).arg("--download-attempts", "2")).await;
    assert!(err.contains("HTTP 503") && err.contains("gave up after 2 attempts"), "{err}");
}
