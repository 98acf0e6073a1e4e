//! Request/response log to S3, off the request path.
//!
//! Handlers hand sampled records to a bounded queue with `try_send` (never waiting); one
//! background task packs them into gzip'd JSON-lines objects, cut by size and age, under
//! `prefix/model=<m>/date=YYYY-MM-DD/hour=HH/<time>-<pod>-<seq>.jsonl.gz`. When S3 is slow or down
//! the upload is retried with backoff while the queue fills; once it is full new records are
//! dropped and counted, and predictions never wait or fail. On shutdown the queue is drained and
//! the last object written, bounded by a deadline.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, Instant},
};

use flate2::{Compression, write::GzEncoder};
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::tensor::Tensor;

/// Where and how to write the log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub bucket: String,
    pub prefix: String,
    pub sample_rate: f64,
    pub max_object_bytes: usize,
    pub flush_interval: Duration,
    pub queue_capacity: usize,
    pub pod: String,
    pub model: String,
    pub path_style: bool,
}

impl LogConfig {
    /// Parses `s3://bucket/prefix/`.
    pub fn parse_uri(uri: &str) -> Result<(String, String), String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| format!("KINFER_LOG_URI must be s3://bucket/prefix/, got {uri:?}"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("KINFER_LOG_URI {uri:?} names no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        Ok((bucket.to_string(), if prefix.is_empty() { String::new() } else { format!("{prefix}/") }))
    }
}

/// One logged request.
#[derive(Debug, Serialize)]
pub struct Record {
    pub request_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub model: String,
    pub version: String,
    pub protocol: &'static str,
    pub status: u16,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<LoggedTensor>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<LoggedTensor>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A tensor as the log stores it (the OIP v2 JSON shape).
#[derive(Debug, Serialize)]
pub struct LoggedTensor {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: crate::tensor::TensorData,
}

impl From<Tensor> for LoggedTensor {
    fn from(t: Tensor) -> Self {
        LoggedTensor { name: t.name, datatype: t.data.datatype().oip_name(), shape: t.shape, data: t.data }
    }
}

/// Metrics of the log.
#[derive(Clone)]
pub struct LogMetrics {
    pub records: IntCounter,
    pub bytes: IntCounter,
    pub objects: IntCounter,
    pub failures: IntCounter,
    pub dropped: IntCounter,
    pub queue_depth: IntGauge,
}

impl LogMetrics {
    pub fn new(m: &crate::metrics::Metrics) -> Result<LogMetrics, prometheus::Error> {
        let lm = LogMetrics {
            records: IntCounter::new("kinfer_request_log_records_total", "Request log records written to S3")?,
            bytes: IntCounter::new(
                "kinfer_request_log_bytes_total",
                "Compressed bytes of request log objects written",
            )?,
            objects: IntCounter::new("kinfer_request_log_objects_total", "Request log objects written")?,
            failures: IntCounter::new(
                "kinfer_request_log_upload_failures_total",
                "Failed request log uploads (retried)",
            )?,
            dropped: IntCounter::new(
                "kinfer_request_log_dropped_total",
                "Request log records dropped because the queue was full",
            )?,
            queue_depth: IntGauge::new("kinfer_request_log_queue_depth", "Request log records waiting for upload")?,
        };
        m.register(Box::new(lm.records.clone()))?;
        m.register(Box::new(lm.bytes.clone()))?;
        m.register(Box::new(lm.objects.clone()))?;
        m.register(Box::new(lm.failures.clone()))?;
        m.register(Box::new(lm.dropped.clone()))?;
        m.register(Box::new(lm.queue_depth.clone()))?;
        Ok(lm)
    }
}

/// The handle the handlers use.
pub struct RequestLog {
    tx: mpsc::Sender<Record>,
    sample_rate: f64,
    metrics: LogMetrics,
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl RequestLog {
    /// Starts the uploader task.
    pub async fn start(cfg: LogConfig, metrics: LogMetrics) -> Arc<RequestLog> {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let (flush, flush_rx) = mpsc::channel(1);
        let client = crate::store::s3_client(cfg.path_style).await;
        let sample_rate = cfg.sample_rate.clamp(0.0, 1.0);
        let uploader = Uploader { cfg, client, metrics: metrics.clone(), seq: 0 };
        tokio::spawn(uploader.run(rx, flush_rx));
        Arc::new(RequestLog { tx, sample_rate, metrics, flush })
    }

    /// Whether this request is sampled.
    pub fn sampled(&self) -> bool {
        self.sample_rate >= 1.0 || (self.sample_rate > 0.0 && fastrand::f64() < self.sample_rate)
    }

    /// Queues a record; never waits. Full queue → dropped and counted.
    pub fn submit(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(_) => self.metrics.dropped.inc(),
        }
    }

    /// Writes everything queued so far; returns when done or when `deadline` passes.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.flush.send(done).await.is_err() {
            return false;
        }
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

struct Batch {
    gz: GzEncoder<Vec<u8>>,
    raw_bytes: usize,
    records: u64,
    started: Instant,
    hour: (time::Date, u8),
}

struct Uploader {
    cfg: LogConfig,
    client: aws_sdk_s3::Client,
    metrics: LogMetrics,
    seq: u64,
}

impl Uploader {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>) {
        let mut batch: Option<Batch> = None;
        let mut tick =
            tokio::time::interval(self.cfg.flush_interval.min(Duration::from_secs(1)).max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                rec = rx.recv() => {
                    let Some(rec) = rec else { break };
                    self.metrics.queue_depth.dec();
                    self.add(&mut batch, rec).await;
                }
                done = flush_rx.recv() => {
                    let Some(done) = done else { break };
                    while let Ok(rec) = rx.try_recv() {
                        self.metrics.queue_depth.dec();
                        self.add(&mut batch, rec).await;
                    }
                    if let Some(b) = batch.take() {
                        self.upload(b).await;
                    }
                    let _ = done.send(());
                }
                _ = tick.tick() => {
                    if batch.as_ref().is_some_and(|b| b.started.elapsed() >= self.cfg.flush_interval)
                        && let Some(b) = batch.take()
                    {
                        self.upload(b).await;
                    }
                }
            }
        }
        if let Some(b) = batch.take() {
            self.upload(b).await;
        }
    }

    async fn add(&mut self, batch: &mut Option<Batch>, rec: Record) {
        let hour = (rec.time.date(), rec.time.hour());
        if let Some(b) = batch.as_ref()
            && b.hour != hour
            && let Some(b) = batch.take()
        {
            self.upload(b).await;
        }
        let b = batch.get_or_insert_with(|| Batch {
            gz: GzEncoder::new(Vec::new(), Compression::fast()),
            raw_bytes: 0,
            records: 0,
            started: Instant::now(),
            hour,
        });
        let mut line = match serde_json::to_vec(&rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "request log record not serializable; dropped");
                self.metrics.dropped.inc();
                return;
            }
        };
        line.push(b'\n');
        if b.gz.write_all(&line).is_err() {
            self.metrics.dropped.inc();
            return;
        }
        b.raw_bytes += line.len();
        b.records += 1;
        if b.raw_bytes >= self.cfg.max_object_bytes
            && let Some(b) = batch.take()
        {
            self.upload(b).await;
        }
    }

    fn key(&mut self, b: &Batch) -> String {
        self.seq += 1;
        let now = OffsetDateTime::now_utc();
        let stamp = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}{:03}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.millisecond()
        );
        let (date, hour) = b.hour;
        format!(
            "{}model={}/date={:04}-{:02}-{:02}/hour={:02}/{}-{}-{:06}.jsonl.gz",
            self.cfg.prefix,
            sanitize(&self.cfg.model),
            date.year(),
            u8::from(date.month()),
            date.day(),
            hour,
            stamp,
            sanitize(&self.cfg.pod),
            self.seq
        )
    }

    /// Uploads one object, retrying with backoff until it is written. Meanwhile the queue fills
    /// and, once full, new records are dropped (counted) — the request path never waits.
    async fn upload(&mut self, b: Batch) {
        let key = self.key(&b);
        let records = b.records;
        let body = match b.gz.finish() {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, records, "request log batch could not be compressed; dropped");
                self.metrics.dropped.inc_by(records);
                return;
            }
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            let put = self
                .client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(&key)
                .content_type("application/x-ndjson")
                .content_encoding("gzip")
                .body(body.clone().into())
                .send()
                .await;
            match put {
                Ok(_) => {
                    self.metrics.records.inc_by(records);
                    self.metrics.bytes.inc_by(body.len() as u64);
                    self.metrics.objects.inc();
                    tracing::debug!(key, records, bytes = body.len(), "request log object written");
                    return;
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::warn!(key, records, error = %aws_sdk_s3::error::DisplayErrorContext(&e), retry_in_ms = backoff.as_millis() as u64, "request log upload failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Keeps key segments to safe characters.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_uris() {
        assert_eq!(LogConfig::parse_uri("s3://logs/audit/fraud/").unwrap(), ("logs".into(), "audit/fraud/".into()));
        assert_eq!(LogConfig::parse_uri("s3://logs").unwrap(), ("logs".into(), String::new()));
        assert!(LogConfig::parse_uri("http://x/y").unwrap_err().contains("must be s3://"));
        assert!(LogConfig::parse_uri("s3:///p").unwrap_err().contains("no bucket"));
    }

    #[test]
    fn key_segments_are_sanitized() {
        assert_eq!(sanitize("pod/a b"), "pod_a_b");
    }
}
