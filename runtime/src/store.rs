//! The model store: fetches the model named by a URI into a local file.
//!
//! `s3://bucket/key` (aws-sdk-s3 with the default credential chain; `AWS_ENDPOINT_URL_S3` and
//! `KINFER_S3_PATH_STYLE=true` for S3-compatible stores), `http(s)://`, `file://` and plain paths.
//! Downloads stream to the cache directory while their sha256 is computed; transient failures are
//! retried with backoff, permanent ones fail at once with a message that names the problem.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
}

/// Fetches the model to a local file and returns its path (after checking the sha256, if given).
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
        let bytes = tokio::fs::read(path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FetchError::permanent(format!("model file {} not found", path.display())),
            _ => FetchError::permanent(format!("cannot read model file {}: {e}", path.display())),
        })?;
        if let Some(want) = &expected {
            check_sha(uri, want, &hex::encode(Sha256::digest(&bytes)))?;
        }
        return Ok(path.clone());
    }

    let dir = opts.cache_dir.join(&hex::encode(Sha256::digest(uri.as_bytes()))[..16]);
    let file_name = uri.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("model.onnx");
    let file_name = file_name.split(['?', '#']).next().filter(|n| !n.is_empty()).unwrap_or("model.onnx");
    let dest = dir.join(file_name);
    if let Some(want) = &expected {
        // A cached copy with the expected checksum is reused.
        if let Ok(bytes) = tokio::fs::read(&dest).await
            && hex::encode(Sha256::digest(&bytes)) == *want
        {
            tracing::info!(path = %dest.display(), "using cached model");
            return Ok(dest);
        }
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| FetchError::permanent(format!("cannot create cache directory {}: {e}", dir.display())))?;

    let s3 = match &parsed {
        ModelUri::S3 { .. } => Some(s3_client(opts.path_style).await),
        _ => None,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| FetchError::permanent(format!("cannot build HTTP client: {e}")))?;

    let attempts = opts.attempts.max(1);
    let mut backoff = opts.initial_backoff;
    let mut attempt = 1;
    loop {
        let result = match &parsed {
            ModelUri::S3 { bucket, key } => match &s3 {
                Some(client) => download_s3(client, bucket, key, &dest).await,
                None => Err(FetchError::permanent("S3 client missing")),
            },
            ModelUri::Http(url) => download_http(&http, url, &dest).await,
            ModelUri::File(_) => unreachable_file(),
        };
        match result {
            Ok(sha) => {
                if let Some(want) = &expected {
                    check_sha(uri, want, &sha).inspect_err(|_| {
                        let _ = std::fs::remove_file(&dest);
                    })?;
                }
                return Ok(dest);
            }
            Err(e) if e.transient && attempt < attempts => {
                tracing::warn!(attempt, attempts, error = %e.message, "model download failed, retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                attempt += 1;
            }
            Err(e) if e.transient => {
                return Err(FetchError::permanent(format!("{} (gave up after {attempts} attempts)", e.message)));
            }
            Err(e) => return Err(e),
        }
    }
}

fn unreachable_file() -> Result<String, FetchError> {
    Err(FetchError::permanent("file URIs are read in place"))
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

async fn download_s3(client: &aws_sdk_s3::Client, bucket: &str, key: &str, dest: &Path) -> Result<String, FetchError> {
    let resp = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(r) => r,
        Err(e) => {
            let err = classify_s3(e, bucket, key);
            if !err.transient && err.message.contains("not found in bucket") && !bucket_exists(client, bucket).await {
                // Not every store says NoSuchBucket on GetObject; ask.
                return Err(FetchError::permanent(format!(
                    "S3 bucket {bucket:?} does not exist (s3://{bucket}/{key})"
                )));
            }
            return Err(err);
        }
    };
    let mut body = resp.body;
    let mut sink = Sink::create(dest).await?;
    while let Some(chunk) =
        body.try_next().await.map_err(|e| FetchError::transient(format!("reading s3://{bucket}/{key}: {e}")))?
    {
        sink.write(&chunk).await?;
    }
    sink.finish().await
}

/// False only when the store says the bucket is not there (404 / NoSuchBucket).
async fn bucket_exists(client: &aws_sdk_s3::Client, bucket: &str) -> bool {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => true,
        Err(SdkError::ServiceError(se)) => se.raw().status().as_u16() != 404,
        Err(_) => true,
    }
}

async fn download_http(client: &reqwest::Client, url: &str, dest: &Path) -> Result<String, FetchError> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| FetchError::transient(format!("cannot reach {url}: {}", error_chain(&e))))?;
    let status = resp.status();
    if !status.is_success() {
        let msg = format!("GET {url} returned HTTP {status}");
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            FetchError::transient(msg)
        } else {
            FetchError::permanent(msg)
        });
    }
    let mut sink = Sink::create(dest).await?;
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| FetchError::transient(format!("reading {url}: {}", error_chain(&e))))?
    {
        sink.write(&chunk).await?;
    }
    sink.finish().await
}

/// A download in progress: written to `<dest>.part`, hashed on the way, renamed when complete.
struct Sink {
    file: tokio::fs::File,
    part: PathBuf,
    dest: PathBuf,
    hasher: Sha256,
}

impl Sink {
    async fn create(dest: &Path) -> Result<Sink, FetchError> {
        let part = dest.with_extension("part");
        let file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| FetchError::permanent(format!("cannot write {}: {e}", part.display())))?;
        Ok(Sink { file, part, dest: dest.to_path_buf(), hasher: Sha256::new() })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| FetchError::permanent(format!("cannot write {}: {e}", self.part.display())))
    }

    async fn finish(mut self) -> Result<String, FetchError> {
        let io = |e: std::io::Error| FetchError::permanent(format!("cannot write {}: {e}", self.dest.display()));
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        tokio::fs::rename(&self.part, &self.dest).await.map_err(io)?;
        Ok(hex::encode(self.hasher.finalize()))
    }
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
    fn refuses_bad_uris_with_a_reason() {
        assert!(ModelUri::parse("s3://bucket-only").unwrap_err().message.contains("s3://<bucket>/<key>"));
        assert!(ModelUri::parse("s3://b/dir/").unwrap_err().message.contains("must name an object"));
        assert!(ModelUri::parse("gs://b/k").unwrap_err().message.contains("\"gs\" is not supported"));
    }
}
