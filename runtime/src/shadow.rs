//! Shadow traffic (`KINFER_CANARY_MODE=shadow`): stable answers every request; a copy of a sample
//! of them goes to the candidate in the background and the two answers are compared.
//!
//! The hook sits in [`crate::server::infer`], where the decoded input tensors and stable's output
//! tensors are both at hand, so every protocol (v2 REST and its binary extension, V1, `/predict`,
//! gRPC) is covered the same way. A copy is queued with `try_send` into a bounded queue
//! (`KINFER_CANARY_SHADOW_QUEUE`; full → dropped and counted in `kinfer_shadow_dropped_total`), so
//! the stable answer never waits for or fails on the candidate. A background task sends each copy
//! as a v2 request with the binary tensor extension (lossless, also for BYTES) to the candidate's
//! `/v2/models/<name>/infer` with the request id, auth and trace headers of the original request,
//! asks for binary outputs, and compares output by output:
//!
//! - label outputs (BYTES, integer and BOOL tensors, e.g. a classifier's `label`):
//!   `kinfer_shadow_agreement_total{output,result="same|different"}`, one count per request
//!   (`same` when every element matches);
//! - floating-point outputs (scores, probabilities, regressions): `kinfer_shadow_abs_diff{output}`,
//!   the **maximum** absolute difference over the request's elements.
//!
//! Failed copies are counted in `kinfer_shadow_failures_total{reason}`. When the request log is on
//! and the stable request was sampled into it, the candidate's answer is logged as a second record
//! with the same `request_id`, `protocol: "shadow"`, the candidate's `version`, status and latency,
//! and its `outputs` (the inputs are in stable's record).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::{HeaderName, HeaderValue};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::{
    requestlog::{LoggedTensor, Record, RequestLog},
    tensor::{DataType, Tensor, TensorData},
};

/// Copies sent at once; beyond it copies wait in the queue.
const MAX_IN_FLIGHT: usize = 64;

/// Buckets of `kinfer_shadow_abs_diff`: exact agreement up to differences of order one.
const DIFF_BUCKETS: &[f64] = &[0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The shadow settings.
#[derive(Debug, Clone)]
pub struct ShadowConfig {
    /// The candidate's v2 inference URL.
    pub infer_url: String,
    pub version: String,
    pub sample_rate: f64,
    pub queue: usize,
    pub timeout: Duration,
}

/// Metrics of the shadow copies.
#[derive(Clone)]
pub struct ShadowMetrics {
    pub sent: IntCounter,
    pub dropped: IntCounter,
    pub failures: IntCounterVec,
    pub agreement: IntCounterVec,
    pub abs_diff: HistogramVec,
}

/// Reasons of `kinfer_shadow_failures_total`.
const FAILURE_REASONS: [&str; 5] = ["unreachable", "timeout", "status", "invalid_response", "incomparable"];

impl ShadowMetrics {
    /// `model`: the served model, a constant label (as on the other per-model series).
    fn new(m: &crate::metrics::Metrics, model: &str) -> Result<ShadowMetrics, prometheus::Error> {
        let sent = IntCounter::with_opts(
            Opts::new("kinfer_shadow_requests_total", "Shadow copies sent to the canary").const_label("model", model),
        )?;
        let dropped = IntCounter::with_opts(
            Opts::new("kinfer_shadow_dropped_total", "Shadow copies dropped because the shadow queue was full")
                .const_label("model", model),
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "kinfer_shadow_failures_total",
                "Shadow copies without a comparison: unreachable, timeout, status (canary answered non-200), \
                 invalid_response, incomparable (outputs missing or of another shape)",
            )
            .const_label("model", model),
            &["reason"],
        )?;
        let agreement = IntCounterVec::new(
            Opts::new(
                "kinfer_shadow_agreement_total",
                "Label outputs (BYTES, integer, BOOL) of shadow copies: same when every element matches stable's",
            )
            .const_label("model", model),
            &["output", "result"],
        )?;
        let abs_diff = HistogramVec::new(
            HistogramOpts::new(
                "kinfer_shadow_abs_diff",
                "Floating-point outputs of shadow copies: maximum absolute difference from stable per request",
            )
            .const_label("model", model)
            .buckets(DIFF_BUCKETS.to_vec()),
            &["output"],
        )?;
        for r in FAILURE_REASONS {
            failures.with_label_values(&[r]);
        }
        m.register(Box::new(sent.clone()))?;
        m.register(Box::new(dropped.clone()))?;
        m.register(Box::new(failures.clone()))?;
        m.register(Box::new(agreement.clone()))?;
        m.register(Box::new(abs_diff.clone()))?;
        Ok(ShadowMetrics { sent, dropped, failures, agreement, abs_diff })
    }
}

/// What a request hands to the shadow hook in `server::infer` (set by the protocol's middleware).
pub struct ShadowCtx {
    /// The request id (read when the copy is queued: gRPC may take it from the message).
    pub id: Box<dyn Fn() -> Arc<str> + Send + Sync>,
    /// The original request's auth and trace headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

tokio::task_local! {
    pub(crate) static CTX: ShadowCtx;
}

/// The request headers a shadow copy carries.
const COPIED_HEADERS: &[&str] = &["authorization", "x-api-key", "traceparent", "tracestate"];

impl ShadowCtx {
    /// The copied headers of `get` (an HTTP header map or gRPC metadata).
    /// With tracing on, the trace headers name the current request's span (the copy continues
    /// its trace) instead of the caller's.
    pub fn headers<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers: Vec<(HeaderName, HeaderValue)> = COPIED_HEADERS
            .iter()
            .filter_map(|n| Some((HeaderName::from_static(n), HeaderValue::from_bytes(get(n)?).ok()?)))
            .collect();
        crate::telemetry::inject_pairs(&mut headers);
        headers
    }
}

/// One copy waiting to be sent.
struct Job {
    id: Arc<str>,
    headers: Vec<(HeaderName, HeaderValue)>,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    /// The request log and the served model name, when stable's record of this request is logged.
    log: Option<(Arc<RequestLog>, String)>,
}

/// The shadow copier.
pub struct Shadow {
    tx: mpsc::Sender<Job>,
    sample_rate: f64,
    pub metrics: ShadowMetrics,
}

/// A sampled request's inputs, kept until stable's outputs are known.
pub struct Pending {
    inputs: Vec<Tensor>,
    logged: bool,
}

impl Shadow {
    /// Registers the metrics and starts the sender task.
    pub fn start(
        cfg: ShadowConfig,
        http: reqwest::Client,
        metrics: &crate::metrics::Metrics,
        model: &str,
    ) -> Result<Shadow, String> {
        let sm = ShadowMetrics::new(metrics, model).map_err(|e| format!("cannot register shadow metrics: {e}"))?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let sample_rate = cfg.sample_rate;
        tokio::spawn(run(rx, Arc::new(Sender { cfg, http, metrics: sm.clone() })));
        Ok(Shadow { tx, sample_rate, metrics: sm })
    }

    fn sampled(&self) -> bool {
        self.sample_rate >= 1.0 || (self.sample_rate > 0.0 && fastrand::f64() < self.sample_rate)
    }

    /// Before inference: keeps a copy of the inputs when this request is sampled. `logged`: stable's
    /// record of this request goes to the request log.
    pub fn take(&self, inputs: &[Tensor], logged: bool) -> Option<Pending> {
        (self.sampled() && CTX.try_with(|_| ()).is_ok()).then(|| Pending { inputs: inputs.to_vec(), logged })
    }

    /// After a successful inference: queues the copy (never waits; a full queue drops it).
    pub fn submit(&self, p: Pending, outputs: &[Tensor], log: Option<&Arc<RequestLog>>, model: &str) {
        let Ok((id, headers)) = CTX.try_with(|c| ((c.id)(), c.headers.clone())) else { return };
        let job = Job {
            id,
            headers,
            inputs: p.inputs,
            outputs: outputs.to_vec(),
            log: log.filter(|_| p.logged).map(|l| (l.clone(), model.to_string())),
        };
        if self.tx.try_send(job).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

struct Sender {
    cfg: ShadowConfig,
    http: reqwest::Client,
    metrics: ShadowMetrics,
}

/// Sends queued copies, at most [`MAX_IN_FLIGHT`] at once.
async fn run(mut rx: mpsc::Receiver<Job>, sender: Arc<Sender>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(job).await;
            drop(permit);
        });
    }
}

#[derive(Serialize)]
struct InputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    parameters: BinarySize,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct RequestJson<'a> {
    id: &'a str,
    inputs: Vec<InputJson<'a>>,
    parameters: BinaryOutput,
}

#[derive(Serialize)]
struct BinaryOutput {
    binary_data_output: bool,
}

/// A v2 request with the binary tensor extension: the JSON header, its length, then the raw
/// tensors in input order.
pub fn encode_request(id: &str, inputs: &[Tensor]) -> (Vec<u8>, usize) {
    let mut raw = Vec::new();
    let mut list = Vec::with_capacity(inputs.len());
    for t in inputs {
        let before = raw.len();
        t.data.write_le_bytes(&mut raw);
        list.push(InputJson {
            name: &t.name,
            datatype: t.datatype().oip_name(),
            shape: &t.shape,
            parameters: BinarySize { binary_data_size: raw.len() - before },
        });
    }
    let req = RequestJson { id, inputs: list, parameters: BinaryOutput { binary_data_output: true } };
    // Plain structs of strings and numbers always serialize.
    let mut body = serde_json::to_vec(&req).unwrap_or_default();
    let header_len = body.len();
    body.extend_from_slice(&raw);
    (body, header_len)
}

#[derive(serde::Deserialize)]
struct ResponseJson {
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(serde::Deserialize)]
struct OutputJson {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    parameters: Option<OutputParams>,
}

#[derive(serde::Deserialize)]
struct OutputParams {
    #[serde(default)]
    binary_data_size: Option<usize>,
}

/// Parses a v2 response (JSON, or JSON header + binary tensors when `header_len` is given).
pub fn decode_response(body: &[u8], header_len: Option<usize>) -> Result<Vec<(Tensor, &'static str)>, String> {
    let (json, mut raw) = match header_len {
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => return Err(format!("header length {n} is past the body's {} bytes", body.len())),
        None => (body, &[][..]),
    };
    let resp: ResponseJson = serde_json::from_slice(json).map_err(|e| format!("invalid response JSON: {e}"))?;
    let mut out = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        let dt = DataType::from_oip(&o.datatype).ok_or_else(|| format!("unknown datatype {:?}", o.datatype))?;
        let data = match (o.parameters.and_then(|p| p.binary_data_size), o.data) {
            (Some(n), _) => {
                if n > raw.len() {
                    return Err(format!("output {} claims {n} binary bytes, {} left", o.name, raw.len()));
                }
                let (mine, rest) = raw.split_at(n);
                raw = rest;
                TensorData::from_le_bytes(dt, mine)?
            }
            (None, Some(v)) => from_json(dt, &v).ok_or_else(|| format!("output {}: data is not {dt}", o.name))?,
            (None, None) => return Err(format!("output {} has no data", o.name)),
        };
        out.push((Tensor { name: o.name, shape: o.shape, data }, dt.oip_name()));
    }
    Ok(out)
}

/// JSON `data` (flat or nested) as typed data: strings for BYTES, booleans, FP32, else numbers
/// as f64.
fn from_json(dt: DataType, v: &serde_json::Value) -> Option<TensorData> {
    let mut flat = Vec::new();
    fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x),
        }
    }
    walk(v, &mut flat);
    Some(match dt {
        DataType::Bytes => {
            TensorData::Bytes(flat.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<_>>()?)
        }
        DataType::Bool => TensorData::Bool(flat.iter().map(|x| x.as_bool()).collect::<Option<_>>()?),
        // FP32 as f32, so a value printed from an f32 compares equal to it.
        DataType::F32 => TensorData::F32(flat.iter().map(|x| x.as_f64().map(|f| f as f32)).collect::<Option<_>>()?),
        _ => TensorData::F64(flat.iter().map(|x| x.as_f64()).collect::<Option<_>>()?),
    })
}

/// How one output of the two versions compares.
#[derive(Debug, PartialEq)]
pub enum Comparison {
    /// Label outputs: whether every element is the same.
    Labels { same: bool },
    /// Floating-point outputs: the largest absolute difference.
    MaxAbsDiff(f64),
    /// Missing on the candidate, or another element count.
    Incomparable,
}

/// Compares stable's output with the candidate's.
pub fn compare(stable: &Tensor, canary: Option<&Tensor>) -> Comparison {
    let Some(canary) = canary else { return Comparison::Incomparable };
    let (a, b) = (&stable.data, &canary.data);
    if a.len() != b.len() {
        return Comparison::Incomparable;
    }
    match (a, b) {
        (TensorData::Bytes(x), TensorData::Bytes(y)) => Comparison::Labels { same: x == y },
        (TensorData::Bytes(_), _) | (_, TensorData::Bytes(_)) => Comparison::Labels { same: false },
        _ if stable.datatype().is_float() => {
            let mut max = 0.0f64;
            for i in 0..a.len() {
                let (Some(x), Some(y)) = (a.get_f64(i), b.get_f64(i)) else { return Comparison::Incomparable };
                let d = (x - y).abs();
                // NaN on one side only is a difference; NaN on both is agreement.
                let d = if d.is_nan() { if x.is_nan() && y.is_nan() { 0.0 } else { f64::INFINITY } } else { d };
                max = max.max(d);
            }
            Comparison::MaxAbsDiff(max)
        }
        _ => Comparison::Labels { same: (0..a.len()).all(|i| a.get_f64(i) == b.get_f64(i)) },
    }
}

impl Sender {
    async fn send(&self, job: Job) {
        self.metrics.sent.inc();
        let (body, header_len) = encode_request(&job.id, &job.inputs);
        let mut rb = self
            .http
            .post(&self.cfg.infer_url)
            .header("content-type", "application/octet-stream")
            .header(crate::protocol::v2::HEADER_LENGTH, header_len)
            .header("x-request-id", &*job.id)
            .body(body);
        for (k, v) in &job.headers {
            rb = rb.header(k, v);
        }
        let start = Instant::now();
        let exchange = async {
            let r = rb.send().await?;
            let status = r.status();
            let header_len = r
                .headers()
                .get(crate::protocol::v2::HEADER_LENGTH)
                .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, header_len, body))
        };
        let (status, header_len, body) = match tokio::time::timeout(self.cfg.timeout, exchange).await {
            Err(_) => return self.failed("timeout", &job, None),
            Ok(Err(e)) if e.is_timeout() => return self.failed("timeout", &job, None),
            Ok(Err(_)) => return self.failed("unreachable", &job, None),
            Ok(Ok(r)) => r,
        };
        let latency = start.elapsed();
        if !status.is_success() {
            let error = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            self.log(&job, status.as_u16(), latency, None, Some(error));
            return self.failed("status", &job, None);
        }
        let outputs = match decode_response(&body, header_len) {
            Ok(o) => o,
            Err(e) => {
                self.log(&job, status.as_u16(), latency, None, Some(e.clone()));
                return self.failed("invalid_response", &job, Some(&e));
            }
        };
        let mut incomparable = false;
        for s in &job.outputs {
            match compare(s, outputs.iter().map(|(t, _)| t).find(|t| t.name == s.name)) {
                Comparison::Labels { same } => {
                    let result = if same { "same" } else { "different" };
                    self.metrics.agreement.with_label_values(&[s.name.as_str(), result]).inc();
                }
                Comparison::MaxAbsDiff(d) => self.metrics.abs_diff.with_label_values(&[s.name.as_str()]).observe(d),
                Comparison::Incomparable => incomparable = true,
            }
        }
        if incomparable {
            self.metrics.failures.with_label_values(&["incomparable"]).inc();
        }
        let logged = outputs
            .into_iter()
            .map(|(t, datatype)| LoggedTensor { name: t.name, datatype, shape: t.shape, data: t.data })
            .collect();
        self.log(&job, status.as_u16(), latency, Some(logged), None);
    }

    fn failed(&self, reason: &str, job: &Job, detail: Option<&str>) {
        self.metrics.failures.with_label_values(&[reason]).inc();
        tracing::debug!(request_id = %job.id, reason, detail = detail.unwrap_or("-"), "shadow copy failed");
    }

    /// The candidate's record in the request log (when stable's record is there).
    fn log(
        &self,
        job: &Job,
        status: u16,
        latency: Duration,
        outputs: Option<Vec<LoggedTensor>>,
        error: Option<String>,
    ) {
        let Some((log, model)) = &job.log else { return };
        log.submit(Record {
            request_id: job.id.to_string(),
            time: time::OffsetDateTime::now_utc(),
            model: model.clone(),
            version: self.cfg.version.clone(),
            protocol: "shadow",
            status,
            latency_ms: latency.as_secs_f64() * 1000.0,
            inputs: None,
            outputs,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: Vec<i64>, data: TensorData) -> Tensor {
        Tensor { name: name.into(), shape, data }
    }

    #[test]
    fn request_round_trips_through_the_v2_decoder() {
        let inputs = vec![t("input", vec![2, 4], TensorData::F32(vec![5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]))];
        let (body, n) = encode_request("r1", &inputs);
        let info = crate::protocol::v2::tests::iris();
        let req = crate::protocol::v2::decode(&body, Some(n), &info, crate::protocol::Limits { max_rows: 10 }).unwrap();
        assert_eq!(req.inputs, inputs);
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert!(req.outputs.iter().all(|(_, binary)| *binary), "binary outputs asked for");
    }

    #[test]
    fn responses_decode_binary_and_json() {
        let info = crate::protocol::v2::tests::iris();
        let outs = vec![
            t("label", vec![2], TensorData::I64(vec![0, 2])),
            t("probabilities", vec![2, 3], TensorData::F32(vec![0.9, 0.05, 0.05, 0.0, 0.1, 0.9])),
        ];
        let bin = crate::protocol::v2::encode(&info, None, &outs, &[(0, true), (1, true)]);
        let got = decode_response(&bin.body, bin.header_len).unwrap();
        assert_eq!(got.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(), outs);
        let json = crate::protocol::v2::encode(&info, None, &outs, &[(0, false), (1, false)]);
        let got = decode_response(&json.body, None).unwrap();
        assert_eq!(got[0].1, "INT64");
        assert_eq!(compare(&outs[0], Some(&got[0].0)), Comparison::Labels { same: true });
        assert_eq!(compare(&outs[1], Some(&got[1].0)), Comparison::MaxAbsDiff(0.0));
        assert!(decode_response(b"{", None).is_err());
    }

    #[test]
    fn comparisons() {
        let a = t("label", vec![2], TensorData::Bytes(vec!["setosa".into(), "virginica".into()]));
        let b = t("label", vec![2], TensorData::Bytes(vec!["setosa".into(), "versicolor".into()]));
        assert_eq!(compare(&a, Some(&a)), Comparison::Labels { same: true });
        assert_eq!(compare(&a, Some(&b)), Comparison::Labels { same: false });
        let p = t("p", vec![2], TensorData::F32(vec![0.5, 0.25]));
        let q = t("p", vec![2], TensorData::F32(vec![0.5, 0.75]));
        assert_eq!(compare(&p, Some(&q)), Comparison::MaxAbsDiff(0.5));
        assert_eq!(compare(&p, None), Comparison::Incomparable);
        let short = t("p", vec![1], TensorData::F32(vec![0.5]));
        assert_eq!(compare(&p, Some(&short)), Comparison::Incomparable);
        let l = t("l", vec![2], TensorData::I64(vec![1, 2]));
        assert_eq!(
            compare(&l, Some(&t("l", vec![2], TensorData::I64(vec![1, 3])))),
            Comparison::Labels { same: false }
        );
    }
}
