//! Dynamic batching and graceful shutdown, over real HTTP.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn mlp_rows() -> (Vec<Value>, Vec<f64>) {
    let exp = expected("mlp");
    let rows = exp["inputs"][0]["data"].as_array().unwrap().chunks(30).map(|c| Value::Array(c.to_vec())).collect();
    let want = exp["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    (rows, want)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rows_are_merged_and_split_back_in_order() {
    let rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--max-batch-size", "16")
        .arg("--max-batch-delay-us", "100000")
        .ready()
        .await;
    let (rows, want) = mlp_rows();
    let mut tasks = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let url = rt.url("/v2/models/mlp/infer");
        let body = json!({"id": format!("r{i}"), "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]});
        tasks.push(tokio::spawn(async move {
            let v: Value = client().post(url).json(&body).send().await.unwrap().json().await.unwrap();
            v
        }));
    }
    // A two-row request joins the same batch and gets its two rows back.
    let two = json!({"instances": [rows[0], rows[1]]});
    let (s, pair, _) = rt.post_json("/v1/models/mlp:predict", &two).await;
    assert_eq!(s, 200, "{pair}");
    for (i, t) in tasks.into_iter().enumerate() {
        let v = t.await.unwrap();
        assert_eq!(v["id"], format!("r{i}"));
        assert_eq!(v["outputs"][0]["shape"], json!([1, 1]), "{v}");
        let got = v["outputs"][0]["data"][0].as_f64().unwrap();
        assert!((got - want[i]).abs() < 1e-4 * (1.0 + want[i].abs()), "row {i}: got {got}, want {}", want[i]);
    }
    assert!((pair["predictions"][1][0].as_f64().unwrap() - want[1]).abs() < 1e-4 * (1.0 + want[1].abs()));
    let m = rt.metrics().await;
    let runs = metric(&m, "kinfer_batch_size_count");
    let rows_run = metric(&m, "kinfer_batch_size_sum");
    // Warm-up is not counted; 8 single rows + one 2-row request = 10 rows.
    assert_eq!(rows_run, 10.0, "{m}");
    assert!(runs < 9.0, "requests were not merged: {runs} runs for 9 requests\n{m}");
    assert!(m.contains("kinfer_queue_duration_seconds_count"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_unready_and_finishes_every_accepted_request() {
    // A long batching delay keeps requests in flight when SIGTERM arrives.
    let mut rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--max-batch-size", "64")
        .arg("--max-batch-delay-us", "700000")
        .arg("--shutdown-delay-seconds", "1")
        .ready()
        .await;
    let (rows, _) = mlp_rows();
    let mut tasks = Vec::new();
    for row in rows.iter().take(6) {
        let url = rt.url("/predict");
        let body = json!({"instances": [row]});
        tasks.push(tokio::spawn(
            async move { client().post(url).json(&body).send().await.map(|r| r.status().as_u16()) },
        ));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    rt.sigterm();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, v) = rt.get_json("/v2/health/ready").await;
    assert_eq!(s, 503, "readiness must turn false at once: {v}");
    assert_eq!(v["code"], "MODEL_NOT_READY");
    // Still draining: a request routed before endpoints update is served.
    let (s, _, _) = rt.post_json("/predict", &json!({"instances": [rows[0]]})).await;
    assert_eq!(s, 200);
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("request accepted before SIGTERM failed"), 200);
    }
    let (code, out, err) = rt.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("drained; exiting"), "{out}");
}
