//! The access log over the spawned binary: written by its own thread, one line per request on
//! every protocol (successes, refusals and failures alike), every line there after SIGTERM, the
//! fields the JSON subscriber writes, and the text format.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kinfer_runtime::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{Value, json};
use support::*;

fn v2_body(rows: usize) -> Value {
    let data: Vec<f32> = (0..rows).flat_map(|_| mlp_row()).collect();
    json!({"inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32", "data": data}]})
}

/// The access lines in `stdout`, by request id.
fn access_lines(stdout: &str) -> HashMap<String, Vec<Value>> {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for v in stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if v["target"] == "kinfer::access" {
            by_id.entry(v["request_id"].as_str().unwrap_or_default().to_string()).or_default().push(v);
        }
    }
    by_id
}

async fn post(rt: &Runtime, path: &str, id: &str, body: &Value) -> u16 {
    let r = client().post(rt.url(path)).header("x-request-id", id).json(body).send().await.expect("request");
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_access_line_on_every_protocol() {
    let mut rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--shutdown-delay-seconds", "0")
        .ready()
        .await;

    // 60 concurrent requests: answered, refused (400), unknown model (404), V1 and /predict.
    let mut calls = Vec::new();
    for i in 0..60 {
        let rt = &rt;
        calls.push(async move {
            let (id, path, body, want) = match i % 6 {
                0 => (format!("bad-{i}"), "/v2/models/mlp/infer", json!({"inputs": "nope"}), 400),
                1 => (format!("nf-{i}"), "/v2/models/nosuch/infer", v2_body(1), 404),
                2 => (format!("v1-{i}"), "/v1/models/mlp:predict", json!({"instances": [mlp_row()]}), 200),
                3 => (format!("pr-{i}"), "/predict", json!({"instances": [mlp_row(), mlp_row()]}), 200),
                _ => (format!("ok-{i}"), "/v2/models/mlp/infer", v2_body(1 + i % 3), 200),
            };
            let got = post(rt, path, &id, &body).await;
            assert_eq!(got, want, "{id} {path}");
            (id, want)
        });
    }
    let sent: Vec<(String, u16)> = futures::future::join_all(calls).await;

    // One gRPC call, with its request id in the metadata.
    let mut grpc = GrpcInferenceServiceClient::connect(rt.grpc_url()).await.expect("gRPC connects");
    let mut req = tonic::Request::new(mlp_grpc_request("mlp", 1));
    req.metadata_mut().insert("x-request-id", "grpc-1".parse().expect("metadata value"));
    grpc.model_infer(req).await.expect("gRPC inference");

    // Nothing dropped while the writer kept up.
    let metrics = rt.metrics().await;
    assert!(metrics.contains("kinfer_access_log_dropped_total 0"), "{metrics}");

    // Lines still queued at SIGTERM are written before the process exits.
    rt.sigterm();
    let (code, stdout, _) = rt.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, 0);
    let lines = access_lines(&stdout);
    for (id, status) in &sent {
        let got = lines.get(id).unwrap_or_else(|| panic!("no access line for {id} in:\n{stdout}"));
        assert_eq!(got.len(), 1, "one line for {id}: {got:?}");
        let l = &got[0];
        assert_eq!(l["status"], *status, "{l}");
        assert_eq!(l["message"], "request");
        assert_eq!(l["method"], "POST");
        assert!(l["latency_us"].is_u64() && l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        match *status {
            200 => {
                assert_eq!(l["level"], "INFO");
                assert_eq!((l["model"].as_str(), l["version"].as_str()), (Some("mlp"), Some("1")), "{l}");
                assert!(l.get("error").is_none() && l.get("code").is_none(), "{l}");
            }
            400 => {
                assert_eq!((l["model"].as_str(), l["protocol"].as_str()), (Some("mlp"), Some("v2")), "{l}");
                assert_eq!(l["code"], "INVALID_REQUEST", "{l}");
                assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l}");
            }
            _ => {
                assert_eq!(l["model"], "unknown", "{l}");
                assert_eq!(l["code"], "MODEL_NOT_FOUND", "{l}");
            }
        }
    }
    let protocol = |prefix: &str| {
        lines.iter().filter(|(id, _)| id.starts_with(prefix)).map(|(_, l)| l[0]["protocol"].clone()).collect::<Vec<_>>()
    };
    assert!(protocol("v1-").iter().all(|p| p == "v1") && protocol("pr-").iter().all(|p| p == "predict"));
    let g = &lines.get("grpc-1").unwrap_or_else(|| panic!("no gRPC access line in:\n{stdout}"))[0];
    assert_eq!(
        (g["protocol"].as_str(), g["grpc_code"].as_str(), g["status"].as_u64()),
        (Some("grpc"), Some("Ok"), Some(200))
    );
    assert_eq!(g["path"], "/inference.GRPCInferenceService/ModelInfer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_format_and_the_level_filter_apply_to_access_lines() {
    let mut rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--shutdown-delay-seconds", "0")
        .without_grpc()
        .env("KINFER_LOG_FORMAT", "text")
        .ready()
        .await;
    assert_eq!(post(&rt, "/v2/models/mlp/infer", "text-ok", &v2_body(1)).await, 200);
    assert_eq!(post(&rt, "/v2/models/mlp/infer", "text-bad", &json!({"inputs": []})).await, 400);
    rt.sigterm();
    let (_, stdout, _) = rt.wait_exit(Duration::from_secs(20)).await;
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("request_id={id} ")))
            .unwrap_or_else(|| panic!("no text access line for {id} in:\n{stdout}"))
            .to_string()
    };
    let ok = line("text-ok");
    assert!(ok.contains(" INFO kinfer::access: request ") && ok.contains(" status=200 "), "{ok}");
    let bad = line("text-bad");
    assert!(bad.contains(" status=400 ") && bad.contains("code=\"INVALID_REQUEST\""), "{bad}");

    // KINFER_LOG=warn: no access line for answered or refused requests (internal errors only).
    let mut quiet = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--shutdown-delay-seconds", "0")
        .without_grpc()
        .env("KINFER_LOG", "warn")
        .ready()
        .await;
    assert_eq!(post(&quiet, "/v2/models/mlp/infer", "quiet-ok", &v2_body(1)).await, 200);
    assert_eq!(post(&quiet, "/v2/models/mlp/infer", "quiet-bad", &json!({"inputs": []})).await, 400);
    quiet.sigterm();
    let (_, stdout, _) = quiet.wait_exit(Duration::from_secs(20)).await;
    assert!(!stdout.contains("quiet-ok") && !stdout.contains("quiet-bad"), "{stdout}");
}
