//! Hostile and broken clients over real sockets on 127.0.0.1: stalled bodies, stalled headers,
//! idle connections and connection floods never keep a well-behaved client from being served,
//! and are shed within their deadlines. Deadlines are short here; every wait for the shedding
//! is a generous polling bound, never a tight timing.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const ROW: [f64; 4] = [5.1, 3.5, 1.4, 0.2];
/// How long any shedding may take before a test fails (the deadlines are 1–2 s).
const GENEROUS: Duration = Duration::from_secs(20);

fn iris() -> RuntimeBuilder {
    runtime(model_path("iris").display().to_string()).arg("--model-name", "iris")
}

async fn connect(rt: &Runtime) -> TcpStream {
    TcpStream::connect(("127.0.0.1", rt.port)).await.expect("connect")
}

/// A POST /predict that announces a 100 kB body and sends 15 bytes of it.
async fn stalled_upload(rt: &Runtime) -> TcpStream {
    let mut s = connect(rt).await;
    let head = "POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
                content-length: 100000\r\n\r\n{\"instances\": [";
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent; fails
/// the test when the connection is still open after `limit`.
async fn until_closed(s: &mut TcpStream, limit: Duration, what: &str) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit
            .checked_sub(start.elapsed())
            .unwrap_or_else(|| panic!("{what}: still open after {limit:?}; got {:?}", String::from_utf8_lossy(&got)));
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).to_string(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
}

/// Sends one HTTP/1.1 request on `s` and reads its response (status, JSON body).
async fn exchange(s: &mut TcpStream, request: &str) -> (u16, Value) {
    s.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(GENEROUS, s.read(&mut buf)).await.expect("response in time").expect("read");
        assert!(n > 0, "connection closed before a response; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let status = head[9..12].parse().expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("content-length"))
        .expect("content-length header");
    while got.len() < head_end + len {
        let n = tokio::time::timeout(GENEROUS, s.read(&mut buf)).await.expect("body in time").expect("read");
        assert!(n > 0, "connection closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    (status, serde_json::from_slice(&got[head_end..head_end + len]).unwrap_or(Value::Null))
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
}

fn predict_request(body: &str) -> String {
    format!(
        "POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The value of one sample (`name{labels}` exactly as rendered), 0 when absent.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find(|l| l.strip_prefix(sample).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn predict_ok(rt: &Runtime, what: &str) {
    let (s, v, _) = rt.post_json("/predict", &json!({"instances": [ROW]})).await;
    assert_eq!(s, 200, "{what}: a well-behaved client was not served: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_no_inference_slot_and_get_408_within_the_body_deadline() {
    let rt = iris().arg("--max-concurrency", "4").arg("--body-timeout-ms", "1500").ready().await;
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(stalled_upload(&rt).await);
    }
    // Ten times the concurrency limit is uploading slowly: predictions are still served.
    for i in 0..5 {
        predict_ok(&rt, &format!("prediction {i} during 40 stalled uploads")).await;
    }
    for (i, s) in stalled.iter_mut().enumerate() {
        let got = until_closed(s, GENEROUS, &format!("stalled upload {i}")).await;
        assert!(got.starts_with("HTTP/1.1 408"), "stalled upload {i}: {got}");
        assert!(got.to_lowercase().contains("connection: close"), "{got}");
        let body: Value = serde_json::from_str(got.split("\r\n\r\n").nth(1).unwrap_or_default()).expect("JSON body");
        assert_eq!(body["code"], "REQUEST_TIMEOUT", "{body}");
        assert!(body["error"].as_str().unwrap().contains("1500 ms (KINFER_BODY_TIMEOUT_MS)"), "{body}");
        assert!(body["request_id"].is_string(), "{body}");
    }
    let m = rt.metrics().await;
    assert_eq!(metric(&m, r#"kinfer_connections_shed_total{reason="body_timeout"}"#), 40.0, "{m}");
    assert_eq!(metric(&m, r#"kinfer_requests_rejected_total{limit="max_concurrency"}"#), 0.0, "{m}");
    assert_eq!(
        metric(&m, r#"kinfer_requests_total{code="408",model="iris",protocol="predict",version="1"}"#),
        40.0,
        "{m}"
    );
    predict_ok(&rt, "after the shedding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_that_completes_within_the_body_deadline_succeeds() {
    let rt = iris().arg("--body-timeout-ms", "4000").ready().await;
    let body = json!({"instances": [ROW, ROW]}).to_string();
    let mut s = connect(&rt).await;
    let head = format!(
        "POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The body trickles in over about a second, well inside the 4 s deadline.
    for chunk in body.as_bytes().chunks(body.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(chunk).await.unwrap();
    }
    let (status, v) = exchange(&mut s, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["predictions"].as_array().map(Vec::len), Some(2), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_and_silent_connections_are_closed_at_the_header_deadline() {
    let rt = iris().arg("--header-timeout-ms", "1000").ready().await;
    let mut stalled = Vec::new();
    for i in 0..60 {
        let mut s = connect(&rt).await;
        if i % 2 == 0 {
            s.write_all(b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-ty").await.unwrap();
        }
        stalled.push(s);
    }
    predict_ok(&rt, "during 60 stalled headers").await;
    for (i, s) in stalled.iter_mut().enumerate() {
        let got = until_closed(s, GENEROUS, &format!("stalled header {i}")).await;
        assert!(!got.starts_with("HTTP/1.1 200"), "{got}");
    }
    let m = rt.metrics().await;
    assert!(metric(&m, r#"kinfer_connections_shed_total{reason="header_timeout"}"#) >= 60.0, "{m}");
    predict_ok(&rt, "after the shedding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_the_idle_timeout_not_the_header_one() {
    let rt = iris().arg("--header-timeout-ms", "500").arg("--idle-timeout-seconds", "2").ready().await;
    let mut s = connect(&rt).await;
    let (status, v) = exchange(&mut s, &get("/v2/health/live")).await;
    assert_eq!(status, 200, "{v}");
    // Quiet for longer than the header deadline: a kept-alive connection is still usable.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let body = json!({"instances": [ROW]}).to_string();
    let (status, v) = exchange(&mut s, &predict_request(&body)).await;
    assert_eq!(status, 200, "{v}");
    // Then, idle, it is closed.
    let got = until_closed(&mut s, GENEROUS, "idle connection").await;
    assert!(got.is_empty(), "{got}");
    let m = rt.metrics().await;
    assert_eq!(metric(&m, r#"kinfer_connections_shed_total{reason="idle_timeout"}"#), 1.0, "{m}");
    assert_eq!(metric(&m, r#"kinfer_connections_shed_total{reason="header_timeout"}"#), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_probes_and_existing_clients_are_still_answered() {
    // Reserve connections get at most 1 s for their request head; the others 8 s here.
    let rt = iris().arg("--max-connections", "20").arg("--header-timeout-ms", "8000").ready().await;
    // A well-behaved client with a kept-alive connection from before the flood.
    let mut regular = connect(&rt).await;
    let body = json!({"instances": [ROW]}).to_string();
    assert_eq!(exchange(&mut regular, &predict_request(&body)).await.0, 200);

    // The flood fills the connection limit and part of the reserve.
    let before = metric(&rt.metrics().await, "kinfer_connections_accepted_total");
    let mut flood = Vec::new();
    for _ in 0..30 {
        flood.push(connect(&rt).await);
    }
    let start = Instant::now();
    loop {
        let m = rt.metrics().await;
        if metric(&m, "kinfer_connections_accepted_total") >= before + 31.0 {
            break;
        }
        assert!(start.elapsed() < GENEROUS, "flood not accepted:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Probes (a new connection each, as kubelet's) and metrics are answered.
    for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready"] {
        let (s, v) = rt.get_json(path).await;
        assert_eq!(s, 200, "{path} during the flood: {v}");
    }
    // The existing connection is served; an inference on a new one is refused with the limit named.
    assert_eq!(exchange(&mut regular, &predict_request(&body)).await.0, 200);
    let (s, v, h) = rt.post_json("/predict", &json!({"instances": [ROW]})).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["code"], "RATE_LIMITED");
    assert!(v["error"].as_str().unwrap().contains("KINFER_MAX_CONNECTIONS"), "{v}");
    assert!(h.contains_key("retry-after"));

    // Beyond the reserve too: refused at once with a 429 and closed (those that find a reserve
    // slot free are closed at its header deadline instead).
    let mut over = Vec::new();
    for _ in 0..60 {
        over.push(connect(&rt).await);
    }
    let mut refused = 0;
    for s in over.iter_mut() {
        let got = until_closed(s, GENEROUS, "connection over every limit").await;
        if got.starts_with("HTTP/1.1 429") {
            assert!(got.contains("KINFER_MAX_CONNECTIONS"), "{got}");
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} of 60 connections over the limits were refused");

    // The silent flood is shed at the header deadline; new clients are served again.
    for (i, s) in flood.iter_mut().enumerate() {
        until_closed(s, GENEROUS, &format!("flood connection {i}")).await;
    }
    predict_ok(&rt, "after the flood").await;
    let m = rt.metrics().await;
    assert!(metric(&m, r#"kinfer_connections_shed_total{reason="max_connections"}"#) >= 20.0, "{m}");
    assert!(metric(&m, r#"kinfer_connections_shed_total{reason="header_timeout"}"#) >= 30.0, "{m}");
    assert_eq!(metric(&m, r#"kinfer_requests_rejected_total{limit="max_connections"}"#), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_even_with_stalled_connections_open() {
    let mut rt = iris().arg("--header-timeout-ms", "60000").arg("--body-timeout-ms", "60000").ready().await;
    let mut silent = connect(&rt).await;
    let mut upload = stalled_upload(&rt).await;
    let mut idle = connect(&rt).await;
    assert_eq!(exchange(&mut idle, &get("/v2/health/live")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.sigterm();
    // Connections without a request in flight close at once; the upload gets its body deadline
    // at the latest (60 s), but shutdown must not wait on a silent or idle client.
    until_closed(&mut silent, GENEROUS, "silent connection at shutdown").await;
    until_closed(&mut idle, GENEROUS, "idle connection at shutdown").await;
    let _ = upload.shutdown().await;
    let (code, out, err) = rt.wait_exit(GENEROUS).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("drained; exiting"), "{out}");
}
