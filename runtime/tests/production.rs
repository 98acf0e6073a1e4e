//! What production needs beyond the protocols: the request log to S3 (records land, S3 outages
//! never touch predictions, shutdown flushes), overload and deadlines, auth, rate limits, CORS.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const ROW: [f64; 4] = [5.1, 3.5, 1.4, 0.2];

async fn predict(rt: &Runtime) -> (u16, String) {
    let (s, _, h) = rt.post_json("/predict", &json!({"instances": [ROW]})).await;
    (s, h["x-request-id"].to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_records_land_in_s3_partitioned_and_parse() {
    let s3 = S3::start().await;
    s3.bucket("logs");
    let rt = s3
        .runtime(&model_path("iris").display().to_string(), ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "iris")
        .arg("--model-version", "7")
        .arg("--log-uri", "s3://logs/audit/")
        .arg("--log-flush-interval-ms", "200")
        .env("HOSTNAME", "iris-pod-1")
        .ready()
        .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (s, id) = predict(&rt).await;
        assert_eq!(s, 200);
        ids.push(id);
    }
    let (s, bad, _) = rt.post_json("/predict", &json!({"instances": [[1, 2]]})).await;
    assert_eq!(s, 400);
    let (keys, records) = wait_for_records(&s3.root.path().join("logs"), 6, Duration::from_secs(10)).await;
    for k in &keys {
        let parts: Vec<&str> = k.split('/').collect();
        assert_eq!(parts[0], "audit", "{k}");
        assert_eq!(parts[1], "model=iris", "{k}");
        assert!(parts[2].starts_with("date=20") && parts[2].len() == "date=2026-11-23".len(), "{k}");
        assert!(parts[3].starts_with("hour=") && parts[3].len() == 7, "{k}");
        assert!(parts[4].contains("-iris-pod-1-") && parts[4].ends_with(".jsonl.gz"), "{k}");
    }
    for id in &ids {
        let r = records.iter().find(|r| r["request_id"] == *id).unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(r["model"], "iris");
        assert_eq!(r["version"], "7");
        assert_eq!(r["protocol"], "predict");
        assert_eq!(r["status"], 200);
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r["inputs"][0]["name"], "input");
        assert_eq!(r["inputs"][0]["shape"], json!([1, 4]));
        assert_eq!(r["inputs"][0]["data"].as_array().unwrap().len(), 4);
        assert_eq!(r["outputs"][0]["name"], "label");
        assert_eq!(r["outputs"][0]["data"], json!([0]));
    }
    let err = records.iter().find(|r| r["request_id"] == bad["request_id"]).expect("error record");
    assert_eq!(err["status"], 400);
    assert!(err["error"].as_str().unwrap().contains("expected [-1, 4]"), "{err}");
    let m = rt.metrics().await;
    assert!(m.contains("kinfer_request_log_records_total 6"), "{m}");
    assert!(m.contains("kinfer_request_log_dropped_total 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_never_fails_a_prediction_drops_are_counted_and_logging_resumes() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("logs")).unwrap();
    let port = free_port();
    let start_store = |root: std::path::PathBuf| async move {
        let (listener, _) = support::s3::bind(port).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = support::s3::serve(&root, listener, ACCESS_KEY, SECRET_KEY).await;
        });
        task.abort_handle()
    };
    let store = start_store(root.path().to_path_buf()).await;
    let rt = runtime(model_path("iris").display().to_string())
        .arg("--model-name", "iris")
        .arg("--log-uri", "s3://logs/")
        .arg("--log-flush-interval-ms", "100")
        .arg("--log-queue-capacity", "8")
        .env("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("KINFER_S3_PATH_STYLE", "true")
        .ready()
        .await;
    for _ in 0..3 {
        assert_eq!(predict(&rt).await.0, 200);
    }
    wait_for_records(&root.path().join("logs"), 3, Duration::from_secs(10)).await;

    // S3 goes down: every prediction still succeeds, quickly; the queue fills and drops are counted.
    store.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..40 {
        let t = std::time::Instant::now();
        assert_eq!(predict(&rt).await.0, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "a prediction waited on S3");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = rt.metrics().await;
    let dropped: f64 = m
        .lines()
        .find(|l| l.starts_with("kinfer_request_log_dropped_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(dropped > 0.0, "no drops counted while S3 was down:\n{m}");
    assert!(m.contains("kinfer_request_log_upload_failures_total"), "{m}");

    // S3 returns: the queued records and new ones land.
    // (Records sent while the queue is still full are dropped by design: keep predicting until
    // the uploader has caught up and a new record lands.)
    let _store = start_store(root.path().to_path_buf()).await;
    let mut after = Vec::new();
    let start = std::time::Instant::now();
    loop {
        after.push(predict(&rt).await.1);
        let (_, records) = read_log_objects(&root.path().join("logs"));
        if records.iter().any(|r| after.contains(&r["request_id"].as_str().unwrap_or_default().to_string())) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "logging did not resume after S3 returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_request_log() {
    let s3 = S3::start().await;
    s3.bucket("logs");
    let mut rt = s3
        .runtime(&model_path("iris").display().to_string(), ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "iris")
        .arg("--log-uri", "s3://logs/shutdown")
        .arg("--log-flush-interval-ms", "600000")
        .ready()
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(predict(&rt).await.1);
    }
    assert!(read_log_objects(&s3.root.path().join("logs")).1.is_empty(), "nothing is written before the flush");
    rt.sigterm();
    let (code, out, err) = rt.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("request log flushed"), "{out}");
    let (_, records) = read_log_objects(&s3.root.path().join("logs"));
    for id in ids {
        assert!(records.iter().any(|r| r["request_id"] == id), "record {id} lost at shutdown");
    }
}

#[tokio::test]
async fn bearer_auth_guards_predictions_not_health_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# mounted secret\nfile-token\n").unwrap();
    let rt = runtime(model_path("iris").display().to_string())
        .arg("--model-name", "iris")
        .env("KINFER_AUTH_TOKENS", "env-token-1,env-token-2")
        .arg("--auth-tokens-file", file.display().to_string())
        .ready()
        .await;
    let c = client();
    let body = json!({"instances": [ROW]});
    for (path, token, want) in [
        ("/predict", None, 401),
        ("/predict", Some("wrong"), 401),
        ("/predict", Some("env-token-2"), 200),
        ("/predict", Some("file-token"), 200),
        ("/v1/models/iris:predict", None, 401),
        ("/v2/models/iris/infer", None, 401),
    ] {
        let mut r = c.post(rt.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path} with {token:?}");
        if want == 401 {
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["code"], "UNAUTHORIZED");
            assert!(v["request_id"].is_string());
        }
    }
    assert_eq!(c.get(rt.url("/v2/models/iris")).send().await.unwrap().status(), 401);
    for open in ["/v2/health/live", "/v2/health/ready", "/metrics", "/v2"] {
        assert_eq!(c.get(rt.url(open)).send().await.unwrap().status(), 200, "{open}");
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let mut rt =
        runtime(model_path("iris").display().to_string()).env("KINFER_AUTH_TOKENS", "super-secret-token").ready().await;
    let c = client();
    let _ =
        c.post(rt.url("/predict")).bearer_auth("super-secret-token").json(&json!({"instances": [ROW]})).send().await;
    let _ = c.post(rt.url("/predict")).bearer_auth("guessed-token").json(&json!({"instances": [ROW]})).send().await;
    rt.sigterm();
    let (_, out, err) = rt.wait_exit(Duration::from_secs(10)).await;
    assert!(out.contains("\"status\":401"), "{out}");
    assert!(!out.contains("super-secret-token") && !err.contains("super-secret-token"));
    assert!(!out.contains("guessed-token") && !err.contains("guessed-token"));
}

#[tokio::test]
async fn per_key_rate_limit_answers_429_with_retry_after() {
    let rt = runtime(model_path("iris").display().to_string())
        .arg("--rate-limit-rps", "2")
        .arg("--rate-limit-burst", "2")
        .ready()
        .await;
    let c = client();
    let body = json!({"instances": [ROW]});
    let send = |key: &'static str| c.post(rt.url("/predict")).header("x-api-key", key).json(&body).send();
    assert_eq!(send("team-a").await.unwrap().status(), 200);
    assert_eq!(send("team-a").await.unwrap().status(), 200);
    let r = send("team-a").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "RATE_LIMITED");
    assert!(v["error"].as_str().unwrap().contains("2 requests/s"));
    assert_eq!(send("team-b").await.unwrap().status(), 200, "another key has its own budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_and_deadlines_give_504() {
    // A long batching delay holds requests inside the server.
    let rt = runtime(model_path("mlp").display().to_string())
        .arg("--model-name", "mlp")
        .arg("--max-batch-size", "64")
        .arg("--max-batch-delay-us", "400000")
        .arg("--max-concurrency", "2")
        .ready()
        .await;
    let row: Vec<f64> =
        expected("mlp")["inputs"][0]["data"].as_array().unwrap()[..30].iter().map(|v| v.as_f64().unwrap()).collect();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let url = rt.url("/predict");
        let body = json!({"instances": [row]});
        tasks.push(tokio::spawn(async move { client().post(url).json(&body).send().await.unwrap().status().as_u16() }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let (s, v, _) = rt.post_json("/predict", &json!({"instances": [row]})).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["code"], "RATE_LIMITED");
    assert!(v["error"].as_str().unwrap().contains("KINFER_MAX_CONCURRENCY"));
    assert!(t.elapsed() < Duration::from_millis(200), "429 must be immediate");
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }

    // Client deadline shorter than the batching delay → 504, on v2 and on /predict.
    let body = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}], "parameters": {"timeout_ms": 50}});
    let (s, v, _) = rt.post_json("/v2/models/mlp/infer", &body).await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["code"], "INFERENCE_TIMEOUT");
    assert!(v["error"].as_str().unwrap().contains("50 ms"));
    let (s, v, _) = rt.post_json("/predict?timeout_ms=50", &json!({"instances": [row]})).await;
    assert_eq!((s, v["code"].clone()), (504, json!("INFERENCE_TIMEOUT")));
    let m = rt.metrics().await;
    assert!(m.contains(r#"kinfer_requests_total{code="504",model="mlp",protocol="v2",version="1"} 1"#), "{m}");
    assert!(m.contains(r#"kinfer_requests_total{code="429",model="mlp",protocol="predict",version="1"} 1"#), "{m}");
}

#[tokio::test]
async fn server_deadline_applies_without_a_client_timeout() {
    let rt = runtime(model_path("mlp").display().to_string())
        .arg("--max-batch-size", "64")
        .arg("--max-batch-delay-us", "300000")
        .arg("--request-timeout-ms", "40")
        .ready()
        .await;
    let row: Vec<f64> = vec![0.0; 30];
    let (s, v, _) = rt.post_json("/predict", &json!({"instances": [row]})).await;
    assert_eq!(s, 504, "{v}");
    assert!(v["error"].as_str().unwrap().contains("40 ms"));
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let c = client();
    let off = runtime(model_path("iris").display().to_string()).ready().await;
    let r = c
        .post(off.url("/predict"))
        .header("origin", "https://app.example")
        .json(&json!({"instances": [ROW]}))
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let on = runtime(model_path("iris").display().to_string())
        .arg("--cors-origins", "https://app.example,https://admin.example")
        .env("KINFER_AUTH_TOKENS", "t")
        .ready()
        .await;
    // Preflight passes without a token; the allowed origin is echoed.
    let r = c
        .request(reqwest::Method::OPTIONS, on.url("/predict"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let r = c
        .post(on.url("/predict"))
        .bearer_auth("t")
        .header("origin", "https://evil.example")
        .json(&json!({"instances": [ROW]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = c
        .post(on.url("/predict"))
        .bearer_auth("t")
        .header("origin", "https://admin.example")
        .json(&json!({"instances": [ROW]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://admin.example");
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
}

#[tokio::test]
async fn openapi_document_and_docs_are_served_offline() {
    let rt = runtime(model_path("iris").display().to_string()).env("KINFER_AUTH_TOKENS", "t").ready().await;
    let (s, doc) = rt.get_json("/openapi.json").await;
    assert_eq!(s, 200, "docs stay open when auth is on");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v2/models/{model}/infer", "/v1/models/{model}:predict", "/predict", "/v2/health/ready", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "openapi.json lacks {path}");
    }
    let infer = &doc["paths"]["/v2/models/{model}/infer"]["post"];
    assert!(infer["responses"]["400"].is_object() && infer["responses"]["504"].is_object());
    assert!(doc["components"]["schemas"]["InferenceRequest"].is_object());
    assert!(doc["components"]["schemas"]["ErrorResponse"]["properties"]["request_id"].is_object());
    let c = client();
    let page = c.get(rt.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Swagger UI"));
    // The UI's assets come from the binary, not from the internet.
    let js = c.get(rt.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.bytes().await.unwrap().len() > 100_000);
}
