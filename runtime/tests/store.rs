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

// ---- The store in-process: parallel ranged downloads, the sha256 check, the cache ----

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use kinfer_runtime::store::{self, FetchOptions};

fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..n).map(|_| rng.u8(..)).collect()
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Options for the local S3 server: 64 KiB parts, 4 at once, quick retries.
fn opts_for(s3: &S3, cache: &std::path::Path) -> FetchOptions {
    let mut o = FetchOptions::new(cache);
    o.part_bytes = 64 * 1024;
    o.concurrency = 4;
    o.attempts = 3;
    o.initial_backoff = Duration::from_millis(5);
    o.s3_client = Some(store::s3_client_for(&s3.endpoint(), ACCESS_KEY, SECRET_KEY));
    o
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn large_s3_object_downloads_as_parallel_ranged_parts_byte_identical() {
    let s3 = S3::start().await;
    let bytes = random_bytes(1024 * 1024 + 12_345); // 17 parts of 64 KiB, the last one short
    s3.put("models", "big/model.bin", &bytes);
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts_for(&s3, cache.path());
    o.expected_sha256 = Some(sha_hex(&bytes));
    let path = store::fetch("s3://models/big/model.bin", &o).await.unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes, "downloaded file differs");
    assert_eq!(s3.counts.gets(), 17);
    assert_eq!(s3.counts.ranged_gets(), 17);
    assert_eq!(files_under(cache.path()), vec![path], "only the model is left in the cache");

    // A small object is one GET.
    s3.put("models", "small/model.bin", b"tiny");
    s3.counts.reset();
    let path = store::fetch("s3://models/small/model.bin", &o.clone().tap(|o| o.expected_sha256 = None)).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"tiny");
    assert_eq!(s3.counts.gets(), 1);

    // An empty object (a ranged GET of it is 416 InvalidRange) falls back to a plain GET.
    s3.put("models", "empty/model.bin", b"");
    let path = store::fetch("s3://models/empty/model.bin", &o.clone().tap(|o| o.expected_sha256 = None)).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"");
}

trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl Tap for FetchOptions {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_fetching_into_one_cache_folder_do_not_share_a_partial_file() {
    let s3 = S3::start().await;
    let bytes = random_bytes(512 * 1024 + 7); // 9 parts of 64 KiB
    s3.put("models", "shared/model.bin", &bytes);
    let cache = tempfile::tempdir().unwrap();
    let o = opts_for(&s3, cache.path()).tap(|o| o.expected_sha256 = Some(sha_hex(&bytes)));
    let path = store::fetch("s3://models/shared/model.bin", &o).await.unwrap();
    std::fs::remove_file(&path).unwrap();

    // Left behind: a partial file of a download that died two hours ago, and one being written
    // right now by another pod on the node.
    let dir = path.parent().unwrap();
    let stale = dir.join("model.bin.999999-0.part");
    let live = dir.join("model.bin.999998-0.part");
    std::fs::write(&stale, b"dead").unwrap();
    std::fs::write(&live, b"busy").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(two_hours_ago).unwrap();

    // Two fetches of the same model at once (two pods sharing the node's cache folder).
    let (a, b) = tokio::join!(
        store::fetch("s3://models/shared/model.bin", &o),
        store::fetch("s3://models/shared/model.bin", &o)
    );
    assert_eq!(a.unwrap(), path);
    assert_eq!(b.unwrap(), path);
    assert!(std::fs::read(&path).unwrap() == bytes, "the model file is intact");
    let mut left = files_under(cache.path());
    left.sort();
    assert_eq!(left, vec![path.clone(), live], "the stale partial file is swept, the live one kept");
}

#[tokio::test]
async fn sha_mismatch_names_both_and_leaves_nothing_in_the_cache() {
    let s3 = S3::start().await;
    let bytes = random_bytes(300 * 1024);
    s3.put("models", "m/model.bin", &bytes);
    let cache = tempfile::tempdir().unwrap();
    let o = opts_for(&s3, cache.path()).tap(|o| o.expected_sha256 = Some("ab".repeat(32)));
    let err = store::fetch("s3://models/m/model.bin", &o).await.unwrap_err();
    let want = format!(
        "checksum mismatch for s3://models/m/model.bin: expected sha256 {}, got {}",
        "ab".repeat(32),
        sha_hex(&bytes)
    );
    assert_eq!(err.message, want);
    assert!(files_under(cache.path()).is_empty(), "{:?}", files_under(cache.path()));
}

#[tokio::test]
async fn cached_file_with_the_right_sha_is_reused_and_a_corrupt_one_downloaded_again() {
    let s3 = S3::start().await;
    let bytes = random_bytes(200 * 1024);
    s3.put("models", "m/model.bin", &bytes);
    let cache = tempfile::tempdir().unwrap();
    let o = opts_for(&s3, cache.path()).tap(|o| o.expected_sha256 = Some(sha_hex(&bytes)));
    let path = store::fetch("s3://models/m/model.bin", &o).await.unwrap();
    assert_eq!(s3.counts.gets(), 4);

    // Restarted on the same node: no GET at all.
    s3.counts.reset();
    assert_eq!(store::fetch("s3://models/m/model.bin", &o).await.unwrap(), path);
    assert_eq!(s3.counts.gets(), 0);

    // One byte flipped in place (same size): downloaded again.
    let mut bad = bytes.clone();
    bad[100_000] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(store::fetch("s3://models/m/model.bin", &o).await.unwrap(), path);
    assert_eq!(s3.counts.gets(), 4);
    assert!(std::fs::read(&path).unwrap() == bytes);

    // A partial (truncated) cached file: downloaded again.
    std::fs::write(&path, &bytes[..1000]).unwrap();
    s3.counts.reset();
    store::fetch("s3://models/m/model.bin", &o).await.unwrap();
    assert_eq!(s3.counts.gets(), 4);
    assert!(std::fs::read(&path).unwrap() == bytes);

    // Without an expected sha256 a cached file cannot be told from a stale one: downloaded again.
    s3.counts.reset();
    store::fetch("s3://models/m/model.bin", &o.clone().tap(|o| o.expected_sha256 = None)).await.unwrap();
    assert_eq!(s3.counts.gets(), 4);
}

/// A one-file HTTP server: with `ranges`, `Range: bytes=a-b` gets 206 and `Content-Range`;
/// without, every GET gets the whole body (200). With `flaky`, the first GET of each part after
/// the first answers 503. Returns the URL and the count of GETs.
async fn range_http(body: Vec<u8>, ranges: bool, flaky: bool) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gets = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let g = gets.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (body, g, failed) = (body.clone(), g.clone(), failed.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                g.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let range = head.lines().find_map(|l| l.strip_prefix("range: bytes=")).map(|r| {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b: usize = b.parse::<usize>().unwrap().min(body.len() - 1);
                    (a, b)
                });
                let reply = match range {
                    Some((a, _)) if flaky && a > 0 && failed.lock().unwrap().insert(a) => {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .as_bytes()
                            .to_vec()
                    }
                    Some((a, b)) if ranges => {
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {a}-{b}/{}\r\nconnection: close\r\n\r\n",
                            b + 1 - a,
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body[a..=b]);
                        r
                    }
                    _ => {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len())
                                .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                };
                let _ = sock.write_all(&reply).await;
            });
        }
    });
    (format!("http://{addr}/models/model.bin"), gets)
}

fn http_opts(cache: &std::path::Path, sha: &[u8]) -> FetchOptions {
    FetchOptions::new(cache).tap(|o| {
        o.part_bytes = 64 * 1024;
        o.concurrency = 3;
        o.attempts = 3;
        o.initial_backoff = Duration::from_millis(5);
        o.expected_sha256 = Some(sha_hex(sha));
    })
}

#[tokio::test]
async fn http_server_without_range_support_falls_back_to_one_stream() {
    let bytes = random_bytes(500 * 1024);
    let cache = tempfile::tempdir().unwrap();
    let (url, gets) = range_http(bytes.clone(), false, false).await;
    let path = store::fetch(&url, &http_opts(cache.path(), &bytes)).await.unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
    assert_eq!(gets.load(Ordering::SeqCst), 1);

    // The same server with ranges: 8 parts.
    let cache = tempfile::tempdir().unwrap();
    let (url, gets) = range_http(bytes.clone(), true, false).await;
    let path = store::fetch(&url, &http_opts(cache.path(), &bytes)).await.unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
    assert_eq!(gets.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn a_failed_part_is_retried_alone() {
    // Parts 2..8 each fail once (503): 1 + 7 × 2 GETs, not a whole-file restart.
    let bytes = random_bytes(500 * 1024);
    let cache = tempfile::tempdir().unwrap();
    let (url, gets) = range_http(bytes.clone(), true, true).await;
    let path = store::fetch(&url, &http_opts(cache.path(), &bytes)).await.unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
    assert_eq!(gets.load(Ordering::SeqCst), 15);
}
