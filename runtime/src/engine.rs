//! Inference threads. Each ONNX Runtime session has one dedicated OS thread that takes jobs from a
//! bounded queue. With dynamic batching on, a thread merges the queued requests whose non-batch
//! dimensions match into one session run (up to `max_batch_size` rows, waiting at most
//! `max_delay` for more), then splits the outputs back; a merged run that fails is retried request
//! by request so errors stay per request.
//!
//! **Inline runs.** On an idle server a model that takes microseconds costs less to run than to
//! hand to another thread (a queue push, a futex wake of a parked inference thread, and a wake of
//! the async task again, each from idle). With batching off, a request that finds no other request
//! in the engine and whose predicted run time is within the inline budget ([`InlinePolicy`], from
//! the warm-up timing: a fixed cost plus a cost per row) runs on the async worker that decoded it,
//! on a session that is free at that moment. Under concurrency only runs predicted within
//! [`BUSY_INLINE`] (25 µs) do; longer ones take the queue, where the inference threads are awake
//! already and keep the async workers free for I/O, which measured better for them
//! (docs/benchmarks.md). An async worker is never held for longer than the budget, and never
//! waits for a session.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use ort::session::Session;
use tokio::sync::oneshot;

use crate::{
    error::{ApiError, ErrorCode},
    metrics::ModelHistograms,
    model::{self, ModelInfo},
    telemetry::RunTiming,
    tensor::{Tensor, TensorData},
};

/// Dynamic batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_delay: Duration,
}

struct Job {
    inputs: Vec<Tensor>,
    /// Rows along the batch dimension (when the request can be merged with others).
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// A job's result, and when it ran (for its trace spans).
type Reply = (Result<Vec<Tensor>, ApiError>, RunTiming);

/// Which requests run inline on the async worker (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct InlinePolicy {
    /// Longest predicted run that goes inline; zero turns inline runs off.
    pub budget: Duration,
    /// Predicted run time of a one-row request (the warm-up's).
    pub base: Duration,
    /// Predicted extra time per row beyond the first.
    pub per_row: Duration,
}

impl InlinePolicy {
    /// No inline runs: every request takes the queue.
    pub const OFF: InlinePolicy = InlinePolicy { budget: Duration::ZERO, base: Duration::MAX, per_row: Duration::MAX };

    /// The policy from warm-up timings: `one` for a one-row run, and `(rows, time)` for a larger
    /// batch when the model has a dynamic batch dimension.
    pub fn from_warmup(budget: Duration, one: Duration, larger: Option<(usize, Duration)>) -> InlinePolicy {
        let per_row = match larger {
            Some((rows, t)) if rows > 1 => t.saturating_sub(one) / (rows as u32 - 1).max(1),
            // Without a measured slope, assume every row costs a whole run.
            _ => one,
        };
        InlinePolicy { budget, base: one, per_row }
    }

    /// Whether a request of `rows` rows is predicted to finish within the budget.
    pub fn allows(&self, rows: usize) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        self.within(rows, self.budget)
    }

    /// Whether a request of `rows` rows is predicted to finish within `limit`.
    pub fn within(&self, rows: usize, limit: Duration) -> bool {
        let extra = u32::try_from(rows.saturating_sub(1)).ok().and_then(|r| self.per_row.checked_mul(r));
        matches!(extra.and_then(|e| self.base.checked_add(e)), Some(t) if t <= limit)
    }
}

/// The sessions, each behind a lock: held by its inference thread while it runs a job, or by an
/// async worker for an inline run.
type Sessions = Arc<[Mutex<Session>]>;

fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // A panic inside ONNX Runtime leaves the session as usable as it was; keep serving.
    session.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Under concurrency, runs predicted within this go inline too (when a session is free): the
/// hand-off to an inference thread and back costs more than such a run, and skipping it cut the
/// p99 at 32 and 64 connections by a quarter with the same CPU per request (docs/benchmarks.md,
/// run 12).
const BUSY_INLINE: Duration = Duration::from_micros(25);

/// Handle to the inference threads.
pub struct Engine {
    tx: Sender<Job>,
    pub info: Arc<ModelInfo>,
    batching: bool,
    sessions: Sessions,
    inline: InlinePolicy,
    hist: ModelHistograms,
    /// Requests inside [`Engine::infer`] (queued, running, or waiting for their reply).
    active: AtomicUsize,
}

/// Counts a request in [`Engine::active`] until it leaves `infer`, cancelled or not.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Engine {
    /// Starts one thread per session. `queue` bounds the jobs waiting for a thread; `inline`
    /// says which requests may run on the caller's thread instead (never with batching on).
    pub fn start(
        sessions: Vec<Session>,
        info: Arc<ModelInfo>,
        batch: BatchConfig,
        queue: usize,
        hist: ModelHistograms,
        inline: InlinePolicy,
    ) -> std::io::Result<Engine> {
        let batching = batch.max_batch_size > 1 && info.has_dynamic_batch();
        let inline = if batching { InlinePolicy::OFF } else { inline };
        let sessions: Sessions = sessions.into_iter().map(Mutex::new).collect();
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        for i in 0..sessions.len() {
            let worker = Worker {
                sessions: sessions.clone(),
                index: i,
                info: info.clone(),
                rx: rx.clone(),
                batch,
                batching,
                hist: hist.clone(),
            };
            std::thread::Builder::new().name(format!("kinfer-infer-{i}")).spawn(move || worker.run())?;
        }
        Ok(Engine { tx, info, batching, sessions, inline, hist, active: AtomicUsize::new(0) })
    }

    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Whether requests of `rows` rows may run inline (see the module docs).
    pub fn runs_inline(&self, rows: usize) -> bool {
        self.inline.allows(rows)
    }

    /// Runs inference on inputs in the model's input order.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ApiError> {
        let rows = inputs.first().and_then(|t| t.shape.first()).map(|d| (*d).max(0) as usize).unwrap_or(1);
        let others = self.active.fetch_add(1, Ordering::AcqRel);
        let _active = Active(&self.active);
        if (others == 0 || self.inline.within(rows, BUSY_INLINE)) && self.inline.allows(rows) {
            // A free session, if any; a busy one is never waited for here.
            if let Some(mut session) = self.sessions.iter().find_map(|s| s.try_lock().ok()) {
                self.hist.queue.observe(0.0);
                let started = Instant::now();
                let (out, t) = timed_run(&mut session, &self.info, &self.hist, &inputs, rows, started);
                crate::telemetry::record_engine(&t.of(started));
                return out.map_err(inference_error);
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job { inputs, rows, enqueued: Instant::now(), reply };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(ErrorCode::RateLimited, "the inference queue is full; retry later"));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::not_ready("the inference threads have stopped"));
            }
        }
        let (result, timing) = rx.await.map_err(|_| ApiError::internal("the inference thread dropped the request"))?;
        crate::telemetry::record_engine(&timing);
        result
    }
}

struct Worker {
    sessions: Sessions,
    /// The session this thread runs.
    index: usize,
    info: Arc<ModelInfo>,
    rx: Receiver<Job>,
    batch: BatchConfig,
    batching: bool,
    hist: ModelHistograms,
}

impl Worker {
    fn run(mut self) {
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match self.rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            if !self.batching || first.rows >= self.batch.max_batch_size {
                self.run_one(first);
                continue;
            }
            let deadline = first.enqueued + self.batch.max_delay;
            let mut rows = first.rows;
            let mut jobs = vec![first];
            while rows < self.batch.max_batch_size {
                let next = match self.rx.try_recv() {
                    Ok(j) => j,
                    Err(_) if self.batch.max_delay.is_zero() => break,
                    Err(_) => match self.rx.recv_deadline(deadline) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                    },
                };
                if rows + next.rows <= self.batch.max_batch_size && compatible(&jobs[0].inputs, &next.inputs) {
                    rows += next.rows;
                    jobs.push(next);
                } else {
                    carry = Some(next);
                    break;
                }
            }
            if jobs.len() == 1 {
                if let Some(j) = jobs.pop() {
                    self.run_one(j);
                }
            } else {
                self.run_batch(jobs, rows);
            }
        }
    }

    /// One session run that started at `started`; returns when it ran for the trace spans.
    fn timed_run(&mut self, inputs: &[Tensor], rows: usize, started: Instant) -> (Result<Vec<Tensor>, String>, Timing) {
        let mut session = lock(&self.sessions[self.index]);
        timed_run(&mut session, &self.info, &self.hist, inputs, rows, started)
    }

    fn run_one(&mut self, job: Job) {
        if job.reply.is_closed() {
            return; // the client went away while queued
        }
        let started = Instant::now();
        self.hist.queue.observe(started.duration_since(job.enqueued).as_secs_f64());
        let (out, t) = self.timed_run(&job.inputs, job.rows, started);
        let timing = t.of(job.enqueued);
        let _ = job.reply.send((out.map_err(inference_error), timing));
    }

    fn run_batch(&mut self, jobs: Vec<Job>, rows: usize) {
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.len() <= 1 {
            jobs.into_iter().for_each(|j| self.run_one(j));
            return;
        }
        let now = Instant::now();
        for j in &jobs {
            self.hist.queue.observe(now.duration_since(j.enqueued).as_secs_f64());
        }
        let merged = merge(&jobs, rows);
        let (outputs, t) = self.timed_run(&merged, rows, Instant::now());
        let split = outputs.ok().and_then(|outs| split(&outs, &jobs));
        match split {
            Some(parts) => {
                for (job, part) in jobs.into_iter().zip(parts) {
                    let timing = t.of(job.enqueued);
                    let _ = job.reply.send((Ok(part), timing));
                }
            }
            None => {
                // Run each on its own: a bad request must not fail its neighbours.
                for job in jobs {
                    let (out, t) = self.timed_run(&job.inputs, job.rows, Instant::now());
                    let timing = t.of(job.enqueued);
                    let _ = job.reply.send((out.map_err(inference_error), timing));
                }
            }
        }
    }
}

/// One session run that started at `started`, recorded in the inference-time and batch-size
/// histograms; returns when it ran, for the trace spans.
fn timed_run(
    session: &mut Session,
    info: &ModelInfo,
    hist: &ModelHistograms,
    inputs: &[Tensor],
    rows: usize,
    started: Instant,
) -> (Result<Vec<Tensor>, String>, Timing) {
    let out = model::run(session, info, inputs);
    let finished = Instant::now();
    hist.inference.observe(finished.duration_since(started).as_secs_f64());
    hist.batch.observe(rows as f64);
    (out, Timing { started, finished, batch_size: rows })
}

/// When a session run happened (the timestamps the histograms already take).
#[derive(Clone, Copy)]
struct Timing {
    started: Instant,
    finished: Instant,
    batch_size: usize,
}

impl Timing {
    fn of(self, enqueued: Instant) -> RunTiming {
        RunTiming { enqueued, started: self.started, finished: self.finished, batch_size: self.batch_size }
    }
}

/// The median time of `runs` session runs of `inputs` (at least one), for [`InlinePolicy`].
pub fn time_runs(session: &mut Session, info: &ModelInfo, inputs: &[Tensor], runs: usize) -> Result<Duration, String> {
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        model::run(session, info, inputs)?;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn inference_error(message: String) -> ApiError {
    // ONNX Runtime rejects values the model cannot take (e.g. an index out of range) at run time.
    ApiError::invalid(format!("inference failed: {message}"))
}

/// Requests can share a run when every input has the same datatype and non-batch dimensions.
fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.datatype() == y.datatype()
                && x.shape.len() == y.shape.len()
                && x.shape[1..] == y.shape[1..]
        })
}

fn merge(jobs: &[Job], rows: usize) -> Vec<Tensor> {
    let first = &jobs[0].inputs;
    first
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let total: usize = jobs.iter().map(|j| j.inputs[i].data.len()).sum();
            let mut data = TensorData::empty(t.datatype(), total);
            for j in jobs {
                data.extend_from(&j.inputs[i].data);
            }
            let mut shape = t.shape.clone();
            shape[0] = rows as i64;
            Tensor { name: t.name.clone(), shape, data }
        })
        .collect()
}

/// Splits merged outputs back by each job's rows; `None` when an output has no matching batch dim.
fn split(outputs: &[Tensor], jobs: &[Job]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = jobs.iter().map(|j| j.rows).sum();
    let mut parts: Vec<Vec<Tensor>> = jobs.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for out in outputs {
        if out.shape.first().copied() != Some(total as i64) || total == 0 {
            return None;
        }
        let per_row = out.data.len() / total;
        let mut start = 0;
        for (job, part) in jobs.iter().zip(parts.iter_mut()) {
            let end = start + job.rows * per_row;
            let mut shape = out.shape.clone();
            shape[0] = job.rows as i64;
            part.push(Tensor { name: out.name.clone(), shape, data: out.data.slice(start, end) });
            start = end;
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: usize, cols: usize, v: f32) -> Tensor {
        Tensor { name: "x".into(), shape: vec![rows as i64, cols as i64], data: TensorData::F32(vec![v; rows * cols]) }
    }

    fn job(inputs: Vec<Tensor>) -> Job {
        let rows = inputs[0].shape[0] as usize;
        Job { inputs, rows, enqueued: Instant::now(), reply: oneshot::channel().0 }
    }

    #[test]
    fn inline_policy_predicts_from_the_warm_up() {
        let us = Duration::from_micros;
        // 5 µs for one row, 69 µs for 65 rows: 1 µs per extra row.
        let p = InlinePolicy::from_warmup(us(100), us(5), Some((65, us(69))));
        assert_eq!(p.per_row, us(1));
        assert!(p.allows(1) && p.allows(96));
        assert!(!p.allows(97));
        assert!(!p.allows(usize::MAX));
        // Under concurrency only the runs predicted within BUSY_INLINE (25 µs: 21 rows here).
        assert!(p.within(21, BUSY_INLINE) && !p.within(22, BUSY_INLINE));
        // No slope measured: each row is assumed to cost a whole run.
        let p = InlinePolicy::from_warmup(us(100), us(30), None);
        assert!(p.allows(3) && !p.allows(4));
        // A slow model, or a zero budget, never runs inline.
        assert!(!InlinePolicy::from_warmup(us(100), us(500), None).allows(1));
        assert!(!InlinePolicy::from_warmup(Duration::ZERO, us(1), None).allows(1));
        assert!(!InlinePolicy::OFF.allows(1));
    }

    #[test]
    fn only_matching_trailing_dims_merge() {
        assert!(compatible(&[t(1, 4, 0.0)], &[t(3, 4, 1.0)]));
        assert!(!compatible(&[t(1, 4, 0.0)], &[t(1, 5, 0.0)]));
        let mut other = t(1, 4, 0.0);
        other.data = TensorData::F64(vec![0.0; 4]);
        assert!(!compatible(&[t(1, 4, 0.0)], &[other]));
    }

    #[test]
    fn merge_then_split_returns_each_request_its_rows() {
        let jobs = vec![job(vec![t(1, 2, 1.0)]), job(vec![t(2, 2, 2.0)])];
        let merged = merge(&jobs, 3);
        assert_eq!(merged[0].shape, vec![3, 2]);
        assert_eq!(merged[0].data, TensorData::F32(vec![1.0, 1.0, 2.0, 2.0, 2.0, 2.0]));
        let out = Tensor { name: "y".into(), shape: vec![3], data: TensorData::I64(vec![7, 8, 9]) };
        let parts = split(&[out], &jobs).unwrap();
        assert_eq!(parts[0][0].data, TensorData::I64(vec![7]));
        assert_eq!(parts[1][0].data, TensorData::I64(vec![8, 9]));
        assert_eq!(parts[1][0].shape, vec![2]);
        let no_batch = Tensor { name: "z".into(), shape: vec![1], data: TensorData::F32(vec![0.0]) };
        assert!(split(&[no_batch], &jobs).is_none());
    }
}
