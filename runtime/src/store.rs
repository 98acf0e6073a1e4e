//! The model store: fetches the model named by a URI into a local file.
//!
//! `s3://bucket/key` (aws-sdk-s3 with the default credential chain; `AWS_ENDPOINT_URL_S3` and
//! `KINFER_S3_PATH_STYLE=true` for S3-compatible stores), `http(s)://`, `file://` and plain paths.
//! Objects larger than one part (`KINFER_DOWNLOAD_PART_BYTES`) come as parallel ranged GETs
//! (`KINFER_DOWNLOAD_CONCURRENCY` at once) written with positional writes into `<file>.<pid>-<n>.part` in
//! the cache directory; smaller ones, and servers that ignore `Range`, as one stream. The sha256 is
//! computed while the bytes arrive and checked before the file is renamed into place. Transient
//! failures are retried with backoff (per part), permanent ones fail at once with a message that
//! names the problem.

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

/// Where a model lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelUri {
    S3 { bucket: String, key: String },
    Http(String),
    File(PathBuf),
}

/// A fetch failure. `transient` ones are retried.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub message: String,
    pub transient: bool,
}

impl FetchError {
    fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: false }
    }
    fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: true }
    }
}

impl ModelUri {
    pub fn parse(uri: &str) -> Result<ModelUri, FetchError> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
                return Err(FetchError::permanent(format!(
                    "model uri {uri:?} must name an object: s3://<bucket>/<key>"
                )));
            }
            return Ok(ModelUri::S3 { bucket: bucket.to_string(), key: key.to_string() });
        }
        if uri.starts_with("http://") || uri.starts_with("https://") {
            return Ok(ModelUri::Http(uri.to_string()));
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return Ok(ModelUri::File(PathBuf::from(path)));
        }
        if uri.is_empty() {
            return Err(FetchError::permanent("model uri is empty"));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(FetchError::permanent(format!(
                "model uri scheme {scheme:?} is not supported; use s3://, http(s)://, file:// or a path"
            )));
        }
        Ok(ModelUri::File(PathBuf::from(uri)))
    }
}

/// Settings for fetching.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub cache_dir: PathBuf,
    pub expected_sha256: Option<String>,
    pub attempts: u32,
    pub path_style: bool,
    pub initial_backoff: Duration,
    /// Objects larger than this are fetched as parts of this size by parallel ranged GETs;
    /// smaller ones are one GET (`KINFER_DOWNLOAD_PART_BYTES`).
    pub part_bytes: u64,
    /// Ranged GETs in flight at once (`KINFER_DOWNLOAD_CONCURRENCY`).
    pub concurrency: usize,
    /// The S3 client to use instead of one from the default chain (tests, benchmarks).
    pub s3_client: Option<aws_sdk_s3::Client>,
}

impl FetchOptions {
    /// The defaults of the runtime's settings, caching in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> FetchOptions {
        FetchOptions {
            cache_dir: cache_dir.into(),
            expected_sha256: None,
            attempts: 5,
            path_style: false,
            initial_backoff: Duration::from_millis(500),
            part_bytes: 16 * 1024 * 1024,
            concurrency: 8,
            s3_client: None,
        }
    }
}

/// Fetches the model to a local file and returns its path (after checking the sha256, if given).
///
/// Remote models land in `<cache_dir>/<hash of the uri>/<file name>`. With an expected sha256, a
/// cached file is reused when hashing it gives that sha256 (a corrupt or stale one is removed and
/// downloaded again); without one the model is always downloaded again, as a cached file cannot
/// be told from a stale one. A download is written to `<file>.<pid>-<n>.part` and renamed into place only
/// when complete and verified.
pub async fn fetch(uri: &str, opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let expected = match &opts.expected_sha256 {
        Some(s) => {
            let s = s.trim().to_ascii_lowercase();
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FetchError::permanent(format!(
                    "KINFER_MODEL_SHA256 must be 64 hex characters, got {:?}",
                    opts.expected_sha256.as_deref().unwrap_or_default()
                )));
            }
            Some(s)
        }
        None => None,
    };
    let parsed = ModelUri::parse(uri)?;
    if let ModelUri::File(path) = &parsed {
        let read_err = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => FetchError::permanent(format!("model file {} not found", path.display())),
            _ => FetchError::permanent(format!("cannot read model file {}: {e}", path.display())),
        };
        match &expected {
            Some(want) => check_sha(uri, want, &sha256_file(path).await.map_err(read_err)?)?,
            None => drop(std::fs::File::open(path).map_err(read_err)?),
        }
        return Ok(path.clone());
    }

    let dir = opts.cache_dir.join(&hex::encode(Sha256::digest(uri.as_bytes()))[..16]);
    let file_name = uri.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("model.onnx");
    let file_name = file_name.split(['?', '#']).next().filter(|n| !n.is_empty()).unwrap_or("model.onnx");
    let dest = dir.join(file_name);
    if let Some(want) = &expected {
        // A cached copy with the expected checksum is reused: hashing it (about a second per GB)
        // is the only check that also catches a file damaged in place.
        match sha256_file(&dest).await {
            Ok(got) if got == *want => {
                tracing::info!(path = %dest.display(), "using cached model (sha256 verified)");
                return Ok(dest);
            }
            Ok(got) => {
                tracing::warn!(path = %dest.display(), expected = %want, actual = %got,
                    "cached model does not match the expected sha256; downloading it again");
                let _ = std::fs::remove_file(&dest);
            }
            Err(_) => {}
        }
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| FetchError::permanent(format!("cannot create cache directory {}: {e}", dir.display())))?;

    let s3 = match &parsed {
        ModelUri::S3 { .. } => Some(match &opts.s3_client {
            Some(c) => c.clone(),
            None => s3_client(opts.path_style).await,
        }),
        _ => None,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| FetchError::permanent(format!("cannot build HTTP client: {e}")))?;
    let src = match (&parsed, &s3) {
        (ModelUri::S3 { bucket, key }, Some(client)) => Source::S3 { client, bucket, key },
        (ModelUri::Http(url), _) => Source::Http { client: &http, url },
        _ => return Err(FetchError::permanent("file URIs are read in place")),
    };
    // Each process writes its own partial file (pods sharing a node's cache folder may fetch the
    // same model at once); the verified one is renamed into place, which is atomic.
    sweep_stale_parts(&dest);
    let part = part_path(&dest);
    let cleanup = || {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_dir(&dir); // only when empty
    };

    let attempts = opts.attempts.max(1);
    let mut backoff = opts.initial_backoff;
    let mut attempt = 1;
    let t0 = std::time::Instant::now();
    loop {
        match download(&src, &part, opts).await {
            Ok((sha, size, parts)) => {
                if let Some(want) = &expected {
                    check_sha(uri, want, &sha).inspect_err(|_| cleanup())?;
                }
                tokio::fs::rename(&part, &dest).await.map_err(|e| {
                    cleanup();
                    FetchError::permanent(format!("cannot write {}: {e}", dest.display()))
                })?;
                let secs = t0.elapsed().as_secs_f64();
                tracing::info!(
                    uri,
                    bytes = size,
                    parts,
                    seconds = secs,
                    mb_per_s = size as f64 / 1e6 / secs.max(1e-9),
                    "model downloaded"
                );
                return Ok(dest);
            }
            Err(e) if e.transient && attempt < attempts => {
                tracing::warn!(attempt, attempts, error = %e.message, "model download failed, retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            Err(e) if e.transient => {
                cleanup();
                return Err(FetchError::permanent(format!("{} (gave up after {attempts} attempts)", e.message)));
            }
            Err(e) => {
                cleanup();
                return Err(e);
            }
        }
    }
}

/// The sha256 of a file, read in 1 MiB blocks on a blocking thread.
async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(h.finalize()));
            }
            h.update(&buf[..n]);
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

fn check_sha(uri: &str, want: &str, got: &str) -> Result<(), FetchError> {
    if want == got {
        Ok(())
    } else {
        Err(FetchError::permanent(format!("checksum mismatch for {uri}: expected sha256 {want}, got {got}")))
    }
}

/// The S3 client: default credential chain and region (us-east-1 when none is configured),
/// rustls with ring, no SDK-level retries (ours classify errors first).
pub async fn s3_client(path_style: bool) -> aws_sdk_s3::Client {
    use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    // Every provider (credentials, region, IMDS) is built from this loader, so all use `http`.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .build(),
        )
        .load()
        .await;
    let mut conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style);
    if sdk.region().is_none() {
        conf = conf.region(Region::new("us-east-1"));
    }
    aws_sdk_s3::Client::from_conf(conf.build())
}

/// An S3 client for an explicit endpoint with static credentials, path-style (tests, benchmarks).
pub fn s3_client_for(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    use aws_config::{BehaviorVersion, Region, retry::RetryConfig};
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "static"))
        .force_path_style(true)
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Whether S3 should be addressed path-style (`KINFER_S3_PATH_STYLE=true|1|yes`).
pub fn path_style_from_env() -> bool {
    std::env::var("KINFER_S3_PATH_STYLE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        .unwrap_or(false)
}

fn classify_s3<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: SdkError<E>,
    bucket: &str,
    key: &str,
) -> FetchError {
    let what = format!("s3://{bucket}/{key}");
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = err.code().unwrap_or_default().to_string();
            let msg = err.message().unwrap_or_default().to_string();
            match (code.as_str(), status) {
                ("NoSuchBucket", _) => FetchError::permanent(format!("S3 bucket {bucket:?} does not exist ({what})")),
                ("NoSuchKey", _) | (_, 404) => {
                    FetchError::permanent(format!("S3 object {key:?} not found in bucket {bucket:?} ({what})"))
                }
                ("AccessDenied", _) | ("InvalidAccessKeyId", _) | ("SignatureDoesNotMatch", _) | (_, 401 | 403) => {
                    FetchError::permanent(format!(
                        "access denied reading {what}: {} {msg}; check the S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the pod's IAM role)",
                        if code.is_empty() { status.to_string() } else { code.clone() }
                    ))
                }
                (_, s) if s >= 500 || s == 429 => {
                    FetchError::transient(format!("S3 error reading {what}: {code} {msg} (HTTP {s})"))
                }
                _ => FetchError::permanent(format!("S3 error reading {what}: {code} {msg} (HTTP {status})")),
            }
        }
        SdkError::ConstructionFailure(_) => {
            FetchError::permanent(format!("cannot build the S3 request for {what}: {}", error_chain(&err)))
        }
        SdkError::DispatchFailure(d) if !d.is_io() && !d.is_timeout() => {
            // Missing credentials and endpoint resolution problems land here too; they do not heal.
            let chain = error_chain(&err);
            if chain.contains("credentials") {
                FetchError::permanent(format!("no usable AWS credentials to read {what}: {chain}"))
            } else {
                FetchError::transient(format!("cannot reach S3 for {what}: {chain}"))
            }
        }
        _ => FetchError::transient(format!("cannot reach S3 for {what}: {}", error_chain(&err))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// False only when the store says the bucket is not there (404 / NoSuchBucket).
async fn bucket_exists(client: &aws_sdk_s3::Client, bucket: &str) -> bool {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(SdkError::ServiceError(se)) => se.raw().status().as_u16() != 404,
        Err(_) => true,
    }
}

/// Where a download comes from.
enum Source<'a> {
    S3 { client: &'a aws_sdk_s3::Client, bucket: &'a str, key: &'a str },
    Http { client: &'a reqwest::Client, url: &'a str },
}

/// A response body, read chunk by chunk.
enum Body {
    S3(aws_sdk_s3::primitives::ByteStream),
    Http(reqwest::Response),
}

/// The answer to a GET: the body, and the object's size when the server sent only the range asked.
enum Got {
    Body {
        body: Body,
        total: Option<u64>,
    },
    /// 416 / InvalidRange: the object is empty.
    RangeNotSatisfiable,
}

impl Source<'_> {
    fn what(&self) -> String {
        match self {
            Source::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
            Source::Http { url, .. } => url.to_string(),
        }
    }

    /// GET of the bytes `first..=last` (`None`: the whole object).
    async fn get(&self, range: Option<(u64, u64)>) -> Result<Got, FetchError> {
        let range_header = range.map(|(a, b)| format!("bytes={a}-{b}"));
        match self {
            Source::S3 { client, bucket, key } => {
                let resp = match client.get_object().bucket(*bucket).key(*key).set_range(range_header).send().await {
                    Ok(r) => r,
                    Err(e) => {
                        if range.is_some() && e.code() == Some("InvalidRange") {
                            return Ok(Got::RangeNotSatisfiable);
                        }
                        let err = classify_s3(e, bucket, key);
                        if !err.transient
                            && err.message.contains("not found in bucket")
                            && !bucket_exists(client, bucket).await
                        {
                            // Not every store says NoSuchBucket on GetObject; ask.
                            return Err(FetchError::permanent(format!(
                                "S3 bucket {bucket:?} does not exist (s3://{bucket}/{key})"
                            )));
                        }
                        return Err(err);
                    }
                };
                let total = if range.is_some() { resp.content_range().and_then(range_total) } else { None };
                Ok(Got::Body { body: Body::S3(resp.body), total })
            }
            Source::Http { client, url } => {
                let mut req = client.get(*url);
                if let Some(h) = range_header {
                    req = req.header(reqwest::header::RANGE, h);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| FetchError::transient(format!("cannot reach {url}: {}", error_chain(&e))))?;
                let status = resp.status();
                if status.as_u16() == 416 && range.is_some() {
                    return Ok(Got::RangeNotSatisfiable);
                }
                if !status.is_success() {
                    let msg = format!("GET {url} returned HTTP {status}");
                    return Err(if status.is_server_error() || status.as_u16() == 429 {
                        FetchError::transient(msg)
                    } else {
                        FetchError::permanent(msg)
                    });
                }
                let total = if status.as_u16() == 206 {
                    resp.headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(range_total)
                } else {
                    None
                };
                Ok(Got::Body { body: Body::Http(resp), total })
            }
        }
    }
}

/// The object size in a `Content-Range: bytes a-b/size`.
fn range_total(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?.rsplit_once('/')?.1.trim().parse().ok()
}

impl Body {
    async fn next(&mut self, what: &str) -> Result<Option<bytes::Bytes>, FetchError> {
        match self {
            Body::S3(b) => b.try_next().await.map_err(|e| FetchError::transient(format!("reading {what}: {e}"))),
            Body::Http(r) => {
                r.chunk().await.map_err(|e| FetchError::transient(format!("reading {what}: {}", error_chain(&e))))
            }
        }
    }
}

/// Bytes gathered before one positional write.
const WRITE_BLOCK: usize = 1 << 20;

/// Writes `body` at `*off` (advanced as bytes are written) up to `end`, hashing the bytes when a
/// hasher is given. The body must end exactly at `end` (`u64::MAX`: wherever it ends).
async fn write_body(
    body: &mut Body,
    file: &Arc<std::fs::File>,
    off: &mut u64,
    end: u64,
    mut hasher: Option<&mut Sha256>,
    what: &str,
) -> Result<(), FetchError> {
    let mut buf = Vec::with_capacity(WRITE_BLOCK);
    loop {
        let next = body.next(what).await;
        let chunk = match &next {
            Ok(Some(c)) => Some(c),
            _ => None,
        };
        if let Some(c) = chunk {
            if *off + (buf.len() + c.len()) as u64 > end {
                return Err(FetchError::permanent(format!("{what} sent more bytes than the range asked for")));
            }
            if let Some(h) = hasher.as_deref_mut() {
                h.update(c);
            }
            buf.extend_from_slice(c);
        }
        if !buf.is_empty() && (chunk.is_none() || buf.len() >= WRITE_BLOCK) {
            // The bytes received are kept even when the body then fails: a retry resumes after them.
            let (f, at, block) = (file.clone(), *off, std::mem::take(&mut buf));
            buf = tokio::task::spawn_blocking(move || f.write_all_at(&block, at).map(|()| block))
                .await
                .map_err(|e| FetchError::permanent(format!("writing {what}: {e}")))?
                .map_err(|e| FetchError::permanent(format!("cannot write the download of {what}: {e}")))?;
            *off += buf.len() as u64;
            buf.clear();
        }
        match next {
            Ok(Some(_)) => {}
            Ok(None) if end != u64::MAX && *off < end => {
                return Err(FetchError::transient(format!("{what}: the body ended at byte {off} of {end}")));
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// A partial file of `dest` unique to this process and download: `<file>.<pid>-<n>.part`.
fn part_path(dest: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{name}.{}-{n}.part", std::process::id()))
}

/// Partial files of `dest` untouched for an hour: left by a process that died mid-download (a
/// live download writes to its file all the time). Removed so they do not fill the cache folder.
fn sweep_stale_parts(dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name().map(|f| f.to_string_lossy().into_owned())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{name}.");
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if file.starts_with(&prefix) && file.ends_with(".part") && stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Downloads `src` into `part` (created or truncated) and returns its sha256, size and number of
/// parts.
///
/// The first GET asks for the first part's range. A server that answers 200 sends the whole
/// object: it is streamed and hashed as it arrives. A 206 names the object's size: the other
/// parts are fetched by up to `concurrency` ranged GETs at once, each written where it belongs
/// with positional writes and retried on its own (resuming after its last written byte). A
/// hashing thread follows the contiguous prefix of completed parts, reading it back from the file
/// (from the page cache) while later parts still download, so no part is held in memory and the
/// hash is ready about when the last byte is.
async fn download(src: &Source<'_>, part: &Path, opts: &FetchOptions) -> Result<(String, u64, u64), FetchError> {
    let what = src.what();
    let part_bytes = opts.part_bytes.max(1);
    let io = |e: std::io::Error| FetchError::permanent(format!("cannot write {}: {e}", part.display()));
    let file = Arc::new(
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(part).map_err(io)?,
    );
    let (mut body, total) = match src.get(Some((0, part_bytes - 1))).await? {
        Got::Body { body, total } => (body, total),
        Got::RangeNotSatisfiable => match src.get(None).await? {
            Got::Body { body, .. } => (body, None),
            Got::RangeNotSatisfiable => return Err(FetchError::permanent(format!("{what}: HTTP 416 on a plain GET"))),
        },
    };
    let Some(total) = total else {
        // No range support (or an empty object): one stream, hashed as it arrives.
        let mut hasher = Sha256::new();
        let mut off = 0;
        write_body(&mut body, &file, &mut off, u64::MAX, Some(&mut hasher), &what).await?;
        file.sync_all().map_err(io)?;
        return Ok((hex::encode(hasher.finalize()), off, 1));
    };
    file.set_len(total).map_err(io)?;
    let parts = total.div_ceil(part_bytes).max(1);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<u64>();
    let reader = file.try_clone().map_err(io)?;
    let hashing = tokio::task::spawn_blocking(move || hash_parts(&reader, part_bytes, total, parts, done_rx));

    let range = |i: u64| (i * part_bytes, ((i + 1) * part_bytes).min(total));
    let first = {
        let done_tx = done_tx.clone();
        let (file, what) = (&file, &what);
        async move {
            fetch_part(src, file, range(0), Some(body), opts, what).await?;
            let _ = done_tx.send(0);
            Ok::<(), FetchError>(())
        }
    };
    // `concurrency` GETs in flight: the first part's and `concurrency - 1` others (one at a
    // time, after the first part, when it is 1).
    let rest = futures::stream::iter(1..parts)
        .map(|i| {
            let (file, what) = (&file, &what);
            async move { fetch_part(src, file, range(i), None, opts, what).await.map(|()| i) }
        })
        .buffer_unordered(opts.concurrency.max(2) - 1)
        .try_for_each(|i| {
            let _ = done_tx.send(i);
            futures::future::ready(Ok(()))
        });
    let joined = if opts.concurrency <= 1 {
        match first.await {
            Ok(()) => rest.await.map(|()| ((), ())),
            Err(e) => Err(e),
        }
    } else {
        tokio::try_join!(first, rest)
    };
    drop(done_tx);
    if let Err(e) = joined {
        hashing.abort();
        return Err(e);
    }
    let sha = hashing
        .await
        .map_err(|e| FetchError::permanent(format!("hashing {what}: {e}")))?
        .map_err(|e| FetchError::permanent(format!("cannot read back {}: {e}", part.display())))?;
    file.sync_all().map_err(io)?;
    Ok((sha, total, parts))
}

/// One part, `start..end`, with its own retries; `body` is an already opened response for it.
async fn fetch_part(
    src: &Source<'_>,
    file: &Arc<std::fs::File>,
    (start, end): (u64, u64),
    mut body: Option<Body>,
    opts: &FetchOptions,
    what: &str,
) -> Result<(), FetchError> {
    let attempts = opts.attempts.max(1);
    let mut backoff = opts.initial_backoff;
    let mut attempt = 1;
    let mut off = start;
    loop {
        let result = async {
            let mut b = match body.take() {
                Some(b) => b,
                None => match src.get(Some((off, end - 1))).await? {
                    Got::Body { body, total: Some(_) } => body,
                    _ => {
                        return Err(FetchError::permanent(format!(
                            "{what} answered the ranged GET of bytes {off}-{} without that range",
                            end - 1
                        )));
                    }
                },
            };
            write_body(&mut b, file, &mut off, end, None, what).await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.transient && attempt < attempts => {
                tracing::warn!(attempt, attempts, start, end, error = %e.message,
                    "model download part failed, retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            Err(e) if e.transient => {
                return Err(FetchError::permanent(format!(
                    "{} (bytes {start}-{}: gave up after {attempts} attempts)",
                    e.message,
                    end - 1
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hashes the file in order as parts complete (their indices arrive on `done`, in any order).
fn hash_parts(
    file: &std::fs::File,
    part_bytes: u64,
    total: u64,
    parts: u64,
    done: std::sync::mpsc::Receiver<u64>,
) -> std::io::Result<String> {
    let mut finished = std::collections::BTreeSet::new();
    let mut next = 0;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WRITE_BLOCK];
    while next < parts {
        let i = done.recv().map_err(|_| std::io::Error::other("download stopped"))?;
        finished.insert(i);
        while finished.remove(&next) {
            let (mut off, end) = (next * part_bytes, ((next + 1) * part_bytes).min(total));
            while off < end {
                let n = (end - off).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], off)?;
                hasher.update(&buf[..n]);
                off += n as u64;
            }
            next += 1;
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_scheme() {
        assert_eq!(
            ModelUri::parse("s3://models/fraud/3/model.onnx").unwrap(),
            ModelUri::S3 { bucket: "models".into(), key: "fraud/3/model.onnx".into() }
        );
        assert_eq!(ModelUri::parse("file:///m/x.onnx").unwrap(), ModelUri::File("/m/x.onnx".into()));
        assert_eq!(ModelUri::parse("models/x.onnx").unwrap(), ModelUri::File("models/x.onnx".into()));
        assert!(matches!(ModelUri::parse("https://h/x.onnx").unwrap(), ModelUri::Http(_)));
    }

    #[test]
    fn reads_the_size_in_a_content_range() {
        assert_eq!(range_total("bytes 0-15/500000000"), Some(500_000_000));
        assert_eq!(range_total("bytes 0-15/*"), None);
        assert_eq!(range_total("0-15/20"), None);
    }

    #[test]
    fn refuses_bad_uris_with_a_reason() {
        assert!(ModelUri::parse("s3://bucket-only").unwrap_err().message.contains("s3://<bucket>/<key>"));
        assert!(ModelUri::parse("s3://b/dir/").unwrap_err().message.contains("must name an object"));
        assert!(ModelUri::parse("gs://b/k").unwrap_err().message.contains("\"gs\" is not supported"));
    }
}
