//! Canary split, fallback and shadow traffic between two real runtimes on 127.0.0.1: a stable
//! iris (version 1) configured with `KINFER_CANARY_*`, and a candidate iris (version 2), plus tiny
//! test servers for a candidate that hangs or fails.

mod support;

#[path = "../../tests/observability/queries.rs"]
mod queries;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use kinfer_runtime::protocol::grpc::pb::{
    self, InferTensorContents, grpc_inference_service_client::GrpcInferenceServiceClient,
    model_infer_request::InferInputTensor,
};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "canary-test-token";

fn iris() -> String {
    model_path("iris").display().to_string()
}

/// The candidate: iris served as version 2.
async fn candidate(extra: &[(&str, &str)]) -> Runtime {
    // Thousands of requests: access lines at info would fill the harness's stdout pipe.
    let mut b = runtime(iris()).arg("--model-name", "iris").arg("--model-version", "2").env("KINFER_LOG", "warn");
    for (k, v) in extra {
        b = b.env(k, *v);
    }
    b.ready().await
}

fn v2_body() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]})
}

/// POSTs a v2 JSON request with `headers`; returns status, answering version header and body.
async fn infer(c: &reqwest::Client, rt: &Runtime, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut rb = c.post(rt.url("/v2/models/iris/infer")).json(&v2_body());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let version = r
        .headers()
        .get("x-kinfer-model-version")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no x-kinfer-model-version on a {status} answer"));
    (status, version, r.json().await.unwrap_or(Value::Null))
}

/// The value of one series in the exposition text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("number"))
}

fn grpc_request() -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "iris".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            parameters: Default::default(),
            contents: Some(InferTensorContents { fp32_contents: vec![5.1, 3.5, 1.4, 0.2], ..Default::default() }),
        }],
        ..Default::default()
    }
}

fn grpc_call(route: Option<&str>) -> tonic::Request<pb::ModelInferRequest> {
    let mut req = tonic::Request::new(grpc_request());
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    if let Some(r) = route {
        req.metadata_mut().insert("x-kinfer-route", r.parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_share_sticky_keys_forced_routes_and_version_on_every_protocol() {
    let canary = candidate(&[("KINFER_AUTH_TOKENS", TOKEN)]).await;
    let stable = runtime(iris())
        .arg("--model-name", "iris")
        .env("KINFER_LOG", "warn")
        .env("KINFER_AUTH_TOKENS", TOKEN)
        .env("KINFER_CANARY_URL", &canary.base)
        .env("KINFER_CANARY_GRPC_URL", canary.grpc_url())
        .env("KINFER_CANARY_PERCENT", "20")
        .env("KINFER_CANARY_STICKY_HEADER", "X-User")
        .env("KINFER_CANARY_VERSION", "2")
        .ready()
        .await;
    let c = client();
    let auth = ("authorization", "Bearer canary-test-token");

    // Auth applies on stable before any forwarding: the candidate never sees the request.
    let (s, v, _) = infer(&c, &stable, &[("x-kinfer-route", "canary")]).await;
    assert_eq!((s, v.as_str()), (401, "1"));
    assert_eq!(
        metric(&canary.metrics().await, r#"kinfer_requests_total{code="401",model="iris",protocol="v2",version="2"}"#),
        0.0
    );

    // 2,000 requests without a sticky key: the canary's share is 20% within 5 sigma.
    let n = 2000usize;
    let mut answers: HashMap<String, usize> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (c, url) = (c.clone(), stable.url("/v2/models/iris/infer"));
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..n / 8 {
                let r = c
                    .post(&url)
                    .header(auth.0, auth.1)
                    .header("x-request-id", format!("split-{w}-{i}"))
                    .json(&v2_body())
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200);
                let v = r.headers()["x-kinfer-model-version"].to_str().unwrap().to_string();
                assert_eq!(r.headers()["x-request-id"], format!("split-{w}-{i}").as_str());
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["model_version"], v.as_str(), "the body names the version that answered");
                got.push(v);
            }
            got
        });
    }
    while let Some(got) = tasks.join_next().await {
        for v in got.unwrap() {
            *answers.entry(v).or_default() += 1;
        }
    }
    let to_canary = answers.get("2").copied().unwrap_or(0) as f64;
    let sigma = (n as f64 * 0.2 * 0.8).sqrt();
    assert!((to_canary - 0.2 * n as f64).abs() < 5.0 * sigma, "{answers:?}");
    assert_eq!(answers.values().sum::<usize>(), n, "{answers:?}");

    // Sticky keys never switch, and land where the documented hash puts them.
    for k in 0..40 {
        let key = format!("user-{k}");
        let want = if kinfer_runtime::canary::bucket(key.as_bytes()) < 2000 { "2" } else { "1" };
        for _ in 0..5 {
            let (s, v, _) = infer(&c, &stable, &[auth, ("x-user", &key)]).await;
            assert_eq!((s, v.as_str()), (200, want), "{key}");
        }
    }

    // Forced sides; a bad value is refused naming the header and its values.
    for _ in 0..10 {
        assert_eq!(infer(&c, &stable, &[auth, ("x-kinfer-route", "canary")]).await.1, "2");
        assert_eq!(infer(&c, &stable, &[auth, ("x-kinfer-route", "stable")]).await.1, "1");
    }
    let (s, _, body) = infer(&c, &stable, &[auth, ("x-kinfer-route", "blue")]).await;
    assert_eq!(s, 400);
    let e = body["error"].as_str().unwrap();
    assert!(e.contains("x-kinfer-route") && e.contains("stable") && e.contains("canary"), "{e}");

    // A request naming a version goes to the side that serves it, whatever the header says.
    for (path, want) in [("/v2/models/iris/versions/2/infer", "2"), ("/v2/models/iris/versions/1/infer", "1")] {
        let r = c
            .post(stable.url(path))
            .header(auth.0, auth.1)
            .header("x-kinfer-route", if want == "1" { "canary" } else { "stable" })
            .json(&v2_body())
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.headers()["x-kinfer-model-version"].to_str().unwrap()),
            (200, want),
            "{path}"
        );
    }

    // V1, /predict and the binary extension are forwarded as they came.
    let r = c
        .post(stable.url("/v1/models/iris:predict?timeout_ms=5000"))
        .header(auth.0, auth.1)
        .header("x-kinfer-route", "canary")
        .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-kinfer-model-version"].to_str().unwrap()), (200, "2"));
    assert_eq!(r.json::<Value>().await.unwrap()["predictions"][0]["label"], 0);
    let r = c
        .post(stable.url("/predict"))
        .header(auth.0, auth.1)
        .header("x-kinfer-route", "canary")
        .json(&json!({"instances": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["model_version"], "2");
    let header = br#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}}],"outputs":[{"name":"label","parameters":{"binary_data":true}}]}"#;
    let mut body = header.to_vec();
    for x in [5.1f32, 3.5, 1.4, 0.2] {
        body.extend_from_slice(&x.to_le_bytes());
    }
    let r = c
        .post(stable.url("/v2/models/iris/infer"))
        .header(auth.0, auth.1)
        .header("x-kinfer-route", "canary")
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-kinfer-model-version"], "2");
    let n_json: usize = r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..n_json]).unwrap();
    assert_eq!(head["model_version"], "2");
    assert_eq!(&bytes[n_json..], &0i64.to_le_bytes());

    // A candidate 4xx (the client's fault) is returned as is, from the candidate.
    let r = c
        .post(stable.url("/v2/models/iris/infer"))
        .header(auth.0, auth.1)
        .header("x-kinfer-route", "canary")
        .json(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-kinfer-model-version"].to_str().unwrap()), (400, "2"));

    // gRPC: forced sides carry the version in the message and the metadata; the split holds.
    let mut g = GrpcInferenceServiceClient::connect(stable.grpc_url()).await.expect("connect");
    let r = g.model_infer(grpc_call(Some("canary"))).await.expect("canary call");
    assert_eq!(r.metadata().get("x-kinfer-model-version").unwrap(), "2");
    assert_eq!(r.get_ref().model_version, "2");
    let r = g.model_infer(grpc_call(Some("stable"))).await.expect("stable call");
    assert_eq!(
        (r.metadata().get("x-kinfer-model-version").unwrap().to_str().unwrap(), r.get_ref().model_version.as_str()),
        ("1", "1")
    );
    let e = g.model_infer(grpc_call(Some("green"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("x-kinfer-route"), "{e:?}");
    let calls = 400;
    let mut to_canary = 0;
    for _ in 0..calls {
        let r = g.model_infer(grpc_call(None)).await.expect("call");
        if r.get_ref().model_version == "2" {
            to_canary += 1;
        }
    }
    let sigma = (calls as f64 * 0.2 * 0.8).sqrt();
    assert!((f64::from(to_canary) - 0.2 * calls as f64).abs() < 5.0 * sigma, "{to_canary} of {calls}");

    // Stable's metrics: routing decisions by side, no fallbacks, and the candidate's answers
    // counted by the candidate only.
    let m = stable.metrics().await;
    let routed = metric(&m, r#"kinfer_canary_requests_total{model="iris",route="canary"}"#);
    assert!(routed >= to_canary as f64 + answers["2"] as f64, "{m}");
    assert_eq!(metric(&m, r#"kinfer_canary_fallbacks_total{model="iris",reason="unreachable"}"#), 0.0, "{m}");
    let cm = canary.metrics().await;
    assert!(
        metric(&cm, r#"kinfer_requests_total{code="200",model="iris",protocol="v2",version="2"}"#)
            >= answers["2"] as f64,
        "{cm}"
    );
    assert!(
        metric(&cm, r#"kinfer_requests_total{code="200",model="iris",protocol="grpc",version="2"}"#)
            >= to_canary as f64,
        "{cm}"
    );
}

/// What the test candidate does with each request.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Misbehave {
    /// Closes the connection without answering.
    Hangup = 0,
    /// Holds the request for 10 s.
    Hang = 1,
    /// 500 Internal Server Error.
    Fail = 2,
    /// 503 (not ready).
    NotReady = 3,
}

/// A candidate that misbehaves as `mode` says; returns its base URL.
async fn bad_candidate(mode: Arc<AtomicU8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mode = mode.load(Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the whole request (head and content-length body) first.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let (status, body) = match mode {
                    0 => return,
                    1 => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        return;
                    }
                    2 => ("500 Internal Server Error", r#"{"error":"boom","code":"INTERNAL"}"#),
                    _ => ("503 Service Unavailable", r#"{"error":"loading","code":"MODEL_NOT_READY"}"#),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_down_slow_or_failing_canary_never_fails_a_request() {
    let mode = Arc::new(AtomicU8::new(Misbehave::Hangup as u8));
    let url = bad_candidate(mode.clone()).await;
    let dead_grpc = format!("http://127.0.0.1:{}", free_port());
    let stable = runtime(iris())
        .arg("--model-name", "iris")
        .env("KINFER_CANARY_URL", &url)
        .env("KINFER_CANARY_GRPC_URL", &dead_grpc)
        .env("KINFER_CANARY_PERCENT", "100")
        .env("KINFER_CANARY_VERSION", "2")
        .env("KINFER_CANARY_TIMEOUT_MS", "300")
        .ready()
        .await;
    let c = client();
    let cases = [
        (Misbehave::Hangup, "unreachable", 20),
        (Misbehave::Hang, "timeout", 5),
        (Misbehave::Fail, "server_error", 20),
        (Misbehave::NotReady, "not_ready", 20),
    ];
    for (m, reason, n) in cases {
        mode.store(m as u8, Ordering::SeqCst);
        for _ in 0..n {
            let (s, v, body) = infer(&c, &stable, &[]).await;
            assert_eq!((s, v.as_str()), (200, "1"), "{reason}: {body}");
            assert_eq!(body["outputs"][0]["data"], json!([0]), "{reason}");
        }
        let m = stable.metrics().await;
        assert_eq!(
            metric(&m, &format!(r#"kinfer_canary_fallbacks_total{{model="iris",reason="{reason}"}}"#)),
            n as f64,
            "{m}"
        );
    }
    // A dead port: nothing listens at all.
    let dead = runtime(iris())
        .arg("--model-name", "iris")
        .env("KINFER_CANARY_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("KINFER_CANARY_PERCENT", "100")
        .ready()
        .await;
    for _ in 0..20 {
        let (s, v, _) = infer(&c, &dead, &[]).await;
        assert_eq!((s, v.as_str()), (200, "1"));
    }
    let m = dead.metrics().await;
    assert_eq!(metric(&m, r#"kinfer_canary_fallbacks_total{model="iris",reason="unreachable"}"#), 20.0, "{m}");
    assert_eq!(metric(&m, r#"kinfer_requests_total{code="200",model="iris",protocol="v2",version="1"}"#), 20.0, "{m}");

    // gRPC to a dead canary port: served by stable.
    let mut g = GrpcInferenceServiceClient::connect(stable.grpc_url()).await.expect("connect");
    for _ in 0..10 {
        let mut req = tonic::Request::new(grpc_request());
        req.metadata_mut().insert("x-kinfer-route", "canary".parse().unwrap());
        let r = g.model_infer(req).await.expect("served by stable");
        assert_eq!(r.get_ref().model_version, "1");
        assert_eq!(r.metadata().get("x-kinfer-model-version").unwrap(), "1");
    }
    let m = stable.metrics().await;
    assert_eq!(metric(&m, r#"kinfer_canary_fallbacks_total{model="iris",reason="unreachable"}"#), 30.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_settings_are_refused_naming_the_variable() {
    for (env, var) in [
        (vec![("KINFER_CANARY_URL", "http://127.0.0.1:1"), ("KINFER_CANARY_PERCENT", "150")], "KINFER_CANARY_PERCENT"),
        (vec![("KINFER_CANARY_URL", "http://127.0.0.1:1"), ("KINFER_CANARY_MODE", "mirror")], "KINFER_CANARY_MODE"),
        (vec![("KINFER_CANARY_URL", "127.0.0.1:8080")], "KINFER_CANARY_URL"),
        (
            vec![
                ("KINFER_CANARY_URL", "http://127.0.0.1:1"),
                ("KINFER_CANARY_MODE", "shadow"),
                ("KINFER_CANARY_PERCENT", "5"),
            ],
            "KINFER_CANARY_PERCENT",
        ),
    ] {
        let mut b = runtime(iris()).without_grpc();
        for (k, v) in &env {
            b = b.env(k, *v);
        }
        let mut rt = b.spawn();
        let (code, _, err) = rt.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(code, 1, "{env:?}: {err}");
        assert!(err.contains(var), "{env:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_copies_are_compared_and_logged_beside_stable_records() {
    let s3 = S3::start().await;
    s3.bucket("logs");
    let canary = candidate(&[]).await;
    let stable = s3
        .runtime(&iris(), ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "iris")
        .arg("--log-uri", "s3://logs/audit/")
        .arg("--log-flush-interval-ms", "200")
        .env("KINFER_CANARY_URL", &canary.base)
        .env("KINFER_CANARY_MODE", "shadow")
        .env("KINFER_CANARY_VERSION", "2")
        .ready()
        .await;
    let c = client();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = format!("shadow-v2-{i}");
        let (s, v, body) = infer(&c, &stable, &[("x-request-id", &id)]).await;
        assert_eq!((s, v.as_str()), (200, "1"), "stable answers in shadow mode: {body}");
        assert_eq!(body["model_version"], "1");
        ids.push((id, "v2"));
    }
    for i in 0..5 {
        let id = format!("shadow-v1-{i}");
        let r = c
            .post(stable.url("/v1/models/iris:predict"))
            .header("x-request-id", &id)
            .json(&json!({"instances": [[6.9, 3.1, 5.4, 2.1]]}))
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["x-kinfer-model-version"].to_str().unwrap()), (200, "1"));
        ids.push((id, "v1"));
    }
    let mut g = GrpcInferenceServiceClient::connect(stable.grpc_url()).await.expect("connect");
    for i in 0..5 {
        let id = format!("shadow-grpc-{i}");
        let mut req = tonic::Request::new(grpc_request());
        req.metadata_mut().insert("x-request-id", id.parse().unwrap());
        let r = g.model_infer(req).await.expect("call");
        assert_eq!(r.get_ref().model_version, "1");
        ids.push((id, "grpc"));
    }
    let dir = s3.root.path().join("logs");
    let (_, records) = wait_for_records(&dir, 2 * ids.len(), Duration::from_secs(20)).await;
    for (id, protocol) in &ids {
        let mine: Vec<&Value> = records.iter().filter(|r| r["request_id"] == id.as_str()).collect();
        let stable_rec = mine.iter().find(|r| r["protocol"] == *protocol).unwrap_or_else(|| panic!("{id}: {mine:?}"));
        let shadow_rec = mine.iter().find(|r| r["protocol"] == "shadow").unwrap_or_else(|| panic!("{id}: {mine:?}"));
        assert_eq!((&stable_rec["version"], &shadow_rec["version"]), (&json!("1"), &json!("2")), "{id}");
        assert_eq!(shadow_rec["status"], 200, "{shadow_rec}");
        assert!(shadow_rec.get("inputs").is_none(), "inputs are in stable's record: {shadow_rec}");
        for (a, b) in stable_rec["outputs"].as_array().unwrap().iter().zip(shadow_rec["outputs"].as_array().unwrap()) {
            assert_eq!((&a["name"], &a["datatype"], &a["shape"]), (&b["name"], &b["datatype"], &b["shape"]), "{id}");
            assert_close(&b["data"], &a["data"], id);
        }
    }
    let n = ids.len() as f64;
    let m = stable.metrics().await;
    assert_eq!(metric(&m, r#"kinfer_shadow_requests_total{model="iris"}"#), n, "{m}");
    assert_eq!(metric(&m, r#"kinfer_shadow_agreement_total{model="iris",output="label",result="same"}"#), n, "{m}");
    assert_eq!(
        metric(&m, r#"kinfer_shadow_agreement_total{model="iris",output="label",result="different"}"#),
        0.0,
        "{m}"
    );
    assert_eq!(metric(&m, r#"kinfer_shadow_abs_diff_count{model="iris",output="probabilities"}"#), n, "{m}");
    assert_eq!(
        metric(&m, r#"kinfer_shadow_abs_diff_bucket{model="iris",output="probabilities",le="0"}"#),
        n,
        "same model: {m}"
    );
    assert_eq!(metric(&m, r#"kinfer_shadow_dropped_total{model="iris"}"#), 0.0, "{m}");

    // The chart's canary panels and alert name only series and labels this runtime exports
    // (tests/observability.rs checks the rest against a runtime without a canary).
    let scrape = queries::Scrape::parse(&m);
    let canary_metric = |n: &str| n.starts_with("kinfer_canary_") || n.starts_with("kinfer_shadow_");
    let dashboard = queries::check(&queries::dashboard_queries(), &scrape, canary_metric);
    let rules = queries::check(&queries::rule_queries(), &scrape, canary_metric);
    let problems: Vec<&String> = dashboard.problems.iter().chain(&rules.problems).collect();
    assert!(problems.is_empty(), "the dashboard or the rules name what the runtime does not export:\n{problems:#?}");
    for name in [
        "kinfer_canary_requests_total",
        "kinfer_canary_fallbacks_total",
        "kinfer_shadow_agreement_total",
        "kinfer_shadow_abs_diff_bucket",
        "kinfer_shadow_dropped_total",
        "kinfer_shadow_failures_total",
    ] {
        assert!(dashboard.checked.contains(name), "no dashboard panel uses {name}: {:?}", dashboard.checked);
    }
    assert!(rules.checked.contains("kinfer_canary_fallbacks_total"), "{:?}", rules.checked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_or_hanging_shadow_canary_costs_stable_nothing() {
    let dead = runtime(iris())
        .arg("--model-name", "iris")
        .env("KINFER_CANARY_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("KINFER_CANARY_MODE", "shadow")
        .ready()
        .await;
    let c = client();
    for _ in 0..50 {
        let (s, v, _) = infer(&c, &dead, &[]).await;
        assert_eq!((s, v.as_str()), (200, "1"));
    }
    let mut m = String::new();
    for _ in 0..100 {
        m = dead.metrics().await;
        if metric(&m, r#"kinfer_shadow_failures_total{model="iris",reason="unreachable"}"#) == 50.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&m, r#"kinfer_shadow_failures_total{model="iris",reason="unreachable"}"#), 50.0, "{m}");

    // A candidate that holds every copy: the queue fills and further copies are dropped, counted.
    let mode = Arc::new(AtomicU8::new(Misbehave::Hang as u8));
    let hanging = runtime(iris())
        .arg("--model-name", "iris")
        .env("KINFER_LOG", "warn")
        .env("KINFER_CANARY_URL", bad_candidate(mode).await)
        .env("KINFER_CANARY_MODE", "shadow")
        .env("KINFER_CANARY_SHADOW_QUEUE", "4")
        .env("KINFER_CANARY_TIMEOUT_MS", "20000")
        .ready()
        .await;
    for _ in 0..150 {
        let (s, v, _) = infer(&c, &hanging, &[]).await;
        assert_eq!((s, v.as_str()), (200, "1"));
    }
    let m = hanging.metrics().await;
    // At most 64 copies in flight, one held by the sender and 4 queued: the rest are dropped.
    let (sent, dropped) = (
        metric(&m, r#"kinfer_shadow_requests_total{model="iris"}"#),
        metric(&m, r#"kinfer_shadow_dropped_total{model="iris"}"#),
    );
    assert!(sent <= 64.0 && (150.0 - 64.0 - 1.0 - 4.0..150.0).contains(&dropped), "{m}");
}
