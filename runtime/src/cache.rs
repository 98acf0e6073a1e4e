//! The prediction cache: answers a request whose decoded inputs were seen before with the stored
//! outputs, without running the model.
//!
//! Opt-in (`KINFER_CACHE_MAX_ENTRIES` and/or `KINFER_CACHE_MAX_BYTES`, optional
//! `KINFER_CACHE_TTL_SECONDS`). It sits at the decode → infer seam ([`crate::server::infer`]),
//! which every protocol calls with decoded tensors, so the same rows sent as v2 JSON, v2 binary,
//! V1, `/predict` or gRPC share one entry. Outputs are stored as the model returned them;
//! encoding (JSON or binary, the output selection's order, `/predict`'s threshold) happens per
//! request afterwards.
//!
//! * **Key**: a canonical, length-prefixed encoding of the model name and version, the requested
//!   output set and every input tensor (name, datatype, shape, little-endian data bytes). The
//!   map is indexed by its xxh3-128 hash (seeded per process), and every entry keeps the full
//!   encoding: a hit is only served when the stored bytes equal the request's, so a hash
//!   collision costs a miss, never another request's outputs. Comparing costs one `memcmp` of
//!   the inputs (cheaper than hashing them), and keeping the bytes is the only way to be sure
//!   without trusting a non-cryptographic hash against crafted inputs; the key's bytes count in
//!   the entry's size.
//! * **Eviction**: least recently used first, when an insert would go past `max_entries` or
//!   `max_bytes` (an entry counts its key, its output tensors and a fixed overhead). Entries
//!   older than the TTL are never served; they are removed when looked up, on each insert and by
//!   a sweep every second.
//! * **Single flight**: while a miss runs the model, identical requests wait for its result
//!   instead of running it again (they answer `hit`). If the leader's inference fails, the
//!   followers get the same error: same inputs, same model, same outcome (ONNX Runtime refusing a
//!   value, a full queue). If the leader gives up instead (its own shorter deadline passed, or
//!   its client went away), nothing failed: one follower takes over and runs the model. Errors
//!   are never stored.
//! * **Locking**: one mutex around the LRU map and the in-flight table; the critical section is
//!   a hash-map lookup or insert. Key encoding, hashing, the key comparison and copying outputs
//!   out happen outside it.

use std::{
    collections::{HashMap, VecDeque},
    mem::size_of,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::time::Instant;

use tokio::sync::watch;

use crate::{error::ApiError, metrics::Metrics, tensor::Tensor};

/// Limits of the cache, from the runtime's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_entries: Option<usize>,
    pub max_bytes: Option<usize>,
    pub ttl: Option<Duration>,
}

impl Settings {
    /// The cache's settings; `None` (cache off) when neither maximum is set.
    pub fn new(max_entries: Option<u64>, max_bytes: Option<u64>, ttl_seconds: Option<u64>) -> Option<Settings> {
        let size = |v: Option<u64>| v.filter(|n| *n > 0).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let s = Settings {
            max_entries: size(max_entries),
            max_bytes: size(max_bytes),
            ttl: ttl_seconds.filter(|s| *s > 0).map(Duration::from_secs),
        };
        (s.max_entries.is_some() || s.max_bytes.is_some()).then_some(s)
    }
}

/// How the cache answered a request: the `x-kinfer-cache` header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served from a stored entry, or from an identical request's run (single flight).
    Hit,
    /// The model ran; its outputs are stored (when they fit).
    Miss,
    /// The request asked not to use the cache (`parameters.cache: false`, `?cache=false`).
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Bypass => "bypass",
        }
    }
}

/// The response header that says how the cache answered.
pub const HEADER: &str = "x-kinfer-cache";

/// What a request tells the cache beside its inputs.
#[derive(Debug, Clone, Copy)]
pub struct Use<'a> {
    /// Indices of the outputs the request asked for (any order, repeats allowed).
    pub outputs: &'a [usize],
    /// False when the client bypasses the cache for this request.
    pub enabled: bool,
}

/// Adds `"cached": true|false` to a JSON object body (`/predict`'s answer) as its last member.
pub fn mark_json_object(body: &mut Vec<u8>, status: Option<Status>) {
    let Some(status) = status else { return };
    if body.len() > 2 && body.last() == Some(&b'}') {
        body.pop();
        let cached = if status == Status::Hit { "true" } else { "false" };
        body.extend_from_slice(format!(",\"cached\":{cached}}}").as_bytes());
    }
}

/// Parses a query parameter's value (`?cache=false`), naming it when it is not a boolean.
pub fn parse_query_flag(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None => Ok(true),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ApiError::invalid(format!("query parameter 'cache' must be true or false, got '{other}'"))),
    }
}

/// Parses `parameters.cache` of a v2 JSON request.
pub fn parse_json_flag(value: Option<&serde_json::Value>) -> Result<bool, ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(format!("parameters.cache must be true or false, got {other}"))),
    }
}

type Outcome = Result<Arc<Vec<Tensor>>, ApiError>;

/// The canonical key of one request: its encoding and that encoding's hash.
pub struct Key {
    hash: u128,
    bytes: Arc<[u8]>,
}

impl Key {
    /// Encodes the model, version, requested output set and inputs (every field length-prefixed,
    /// so no two different requests share an encoding) and hashes it with the process's seed.
    fn new(seed: u64, model: &str, version: &str, outputs: &[usize], inputs: &[Tensor]) -> Key {
        let mut out = Vec::with_capacity(64 + inputs.iter().map(|t| t.name.len() + t.data.len() * 8).sum::<usize>());
        let put = |out: &mut Vec<u8>, s: &[u8]| {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        };
        put(&mut out, b"kinfer-cache-1");
        put(&mut out, model.as_bytes());
        put(&mut out, version.as_bytes());
        let mut selected = outputs.to_vec();
        selected.sort_unstable();
        selected.dedup();
        out.extend_from_slice(&(selected.len() as u64).to_le_bytes());
        for i in selected {
            out.extend_from_slice(&(i as u64).to_le_bytes());
        }
        out.extend_from_slice(&(inputs.len() as u64).to_le_bytes());
        for t in inputs {
            put(&mut out, t.name.as_bytes());
            put(&mut out, t.datatype().oip_name().as_bytes());
            out.extend_from_slice(&(t.shape.len() as u64).to_le_bytes());
            for d in &t.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            // The data's length goes before it: written as a placeholder, then filled in.
            let at = out.len();
            out.extend_from_slice(&[0; 8]);
            t.data.write_le_bytes(&mut out);
            let n = (out.len() - at - 8) as u64;
            out[at..at + 8].copy_from_slice(&n.to_le_bytes());
        }
        let hash = xxhash_rust::xxh3::xxh3_128_with_seed(&out, seed);
        Key { hash, bytes: out.into() }
    }
}

/// One stored answer.
struct Entry {
    key: Arc<[u8]>,
    outputs: Arc<Vec<Tensor>>,
    /// What the entry counts against `max_bytes`.
    bytes: usize,
    /// Insertion number: tells a TTL record whether it still describes this entry.
    seq: u64,
    expires: Option<Instant>,
}

/// Fixed cost of an entry beside its key and tensors: the entry, its LRU node and map slot.
const ENTRY_OVERHEAD: usize = size_of::<Entry>() + 128;

/// Bytes an entry of `key` and `outputs` counts.
fn entry_bytes(key: &[u8], outputs: &[Tensor]) -> usize {
    let tensors: usize = outputs
        .iter()
        .map(|t| {
            let data = match &t.data {
                crate::tensor::TensorData::Bytes(v) => v.iter().map(|s| size_of::<String>() + s.len()).sum(),
                crate::tensor::TensorData::Bool(v) => v.len(),
                d => d.datatype().byte_size().unwrap_or(8) * d.len(),
            };
            size_of::<Tensor>() + t.name.len() + t.shape.len() * size_of::<i64>() + data
        })
        .sum();
    ENTRY_OVERHEAD + key.len() + tensors
}

/// The cache's metrics, resolved for the served model.
struct CacheMetrics {
    hits: IntCounter,
    misses: IntCounter,
    bypasses: IntCounter,
    evicted_bytes: IntCounter,
    evicted_entries: IntCounter,
    expired: IntCounter,
    entries: IntGauge,
    bytes: IntGauge,
}

impl CacheMetrics {
    fn new(m: &Metrics, model: &str, version: &str) -> Result<CacheMetrics, prometheus::Error> {
        let labels = ["model", "version"];
        let counter = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &labels)?;
            m.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &labels)?;
            m.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let lv = [model, version];
        let hits = counter(
            "kinfer_cache_hits_total",
            "Requests answered from the prediction cache (or an identical in-flight request)",
        )?;
        let misses = counter("kinfer_cache_misses_total", "Requests that ran the model and stored the outputs")?;
        let bypasses = counter("kinfer_cache_bypasses_total", "Requests that asked not to use the prediction cache")?;
        let evictions = IntCounterVec::new(
            Opts::new(
                "kinfer_cache_evictions_total",
                "Entries removed from the prediction cache, by reason: max_bytes, max_entries (least recently used \
                 first) or ttl (expired)",
            ),
            &["model", "version", "reason"],
        )?;
        m.register(Box::new(evictions.clone()))?;
        let entries = gauge("kinfer_cache_entries", "Entries in the prediction cache")?;
        let bytes =
            gauge("kinfer_cache_bytes", "Bytes the prediction cache's entries count (keys, outputs, overhead)")?;
        Ok(CacheMetrics {
            hits: hits.with_label_values(&lv),
            misses: misses.with_label_values(&lv),
            bypasses: bypasses.with_label_values(&lv),
            evicted_bytes: evictions.with_label_values(&[model, version, "max_bytes"]),
            evicted_entries: evictions.with_label_values(&[model, version, "max_entries"]),
            expired: evictions.with_label_values(&[model, version, "ttl"]),
            entries: entries.with_label_values(&lv),
            bytes: bytes.with_label_values(&lv),
        })
    }
}

/// What the lock protects.
struct Inner {
    lru: lru::LruCache<u128, Arc<Entry>>,
    bytes: usize,
    /// Requests running the model, by key hash; followers wait on the receiver.
    inflight: HashMap<u128, Flight>,
    /// (expiry, hash, seq) in insertion order, which is expiry order (one TTL for all): the TTL
    /// sweep pops from the front. Records of entries evicted earlier are skipped.
    expiries: VecDeque<(Instant, u128, u64)>,
    next_seq: u64,
}

struct Flight {
    key: Arc<[u8]>,
    done: watch::Receiver<Option<Outcome>>,
}

/// The prediction cache of one served model.
pub struct Cache {
    settings: Settings,
    seed: u64,
    inner: Mutex<Inner>,
    metrics: CacheMetrics,
}

/// What a lookup found.
enum Step {
    Hit(Arc<Entry>),
    Follow(Arc<[u8]>, watch::Receiver<Option<Outcome>>),
    Lead(watch::Sender<Option<Outcome>>),
}

impl Cache {
    /// A cache for `model`/`version`, with its metrics registered in `metrics`.
    pub fn new(settings: Settings, metrics: &Metrics, model: &str, version: &str) -> Result<Cache, prometheus::Error> {
        Ok(Cache {
            settings,
            seed: fastrand::u64(..),
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                inflight: HashMap::new(),
                expiries: VecDeque::new(),
                next_seq: 0,
            }),
            metrics: CacheMetrics::new(metrics, model, version)?,
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The critical section never panics, so a poisoned lock still holds consistent data.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers from the cache, or runs `run` (at most once) and stores its outputs.
    ///
    /// `model`/`version` are the served model's; `use_.outputs` the requested output indices.
    pub async fn get_or_run<F, Fut>(
        &self,
        model: &str,
        version: &str,
        inputs: Vec<Tensor>,
        use_: Use<'_>,
        run: F,
    ) -> (Result<Arc<Vec<Tensor>>, ApiError>, Status)
    where
        F: FnOnce(Vec<Tensor>) -> Fut,
        Fut: Future<Output = Result<Vec<Tensor>, ApiError>>,
    {
        if !use_.enabled {
            self.metrics.bypasses.inc();
            return (run(inputs).await.map(Arc::new), Status::Bypass);
        }
        let key = Key::new(self.seed, model, version, use_.outputs, &inputs);
        loop {
            match self.begin(&key, Instant::now()) {
                Step::Hit(entry) if entry.key == key.bytes => {
                    self.metrics.hits.inc();
                    return (Ok(entry.outputs.clone()), Status::Hit);
                }
                Step::Follow(k, mut done) if k == key.bytes => {
                    // `wait_for` fails when the leader gave up without a result: look again.
                    let outcome = done.wait_for(Option::is_some).await.ok().and_then(|v| v.clone());
                    match outcome {
                        Some(Ok(outputs)) => {
                            self.metrics.hits.inc();
                            return (Ok(outputs), Status::Hit);
                        }
                        Some(Err(e)) => {
                            self.metrics.misses.inc();
                            return (Err(e), Status::Miss);
                        }
                        None => {}
                    }
                }
                Step::Lead(tx) => {
                    let mut leader = Leader { cache: self, key: &key, tx: Some(tx) };
                    self.metrics.misses.inc();
                    let outcome = run(inputs).await.map(Arc::new);
                    leader.finish(&outcome);
                    return (outcome, Status::Miss);
                }
                // A hash collision with a different request (stored or running): answer this
                // one without the cache rather than risk the other's outputs.
                Step::Hit(_) | Step::Follow(..) => {
                    self.metrics.misses.inc();
                    return (run(inputs).await.map(Arc::new), Status::Miss);
                }
            }
        }
    }

    fn begin(&self, key: &Key, now: Instant) -> Step {
        let mut inner = self.lock();
        if let Some(entry) = inner.lru.get(&key.hash) {
            if entry.expires.is_none_or(|e| e > now) {
                return Step::Hit(entry.clone());
            }
            self.remove(&mut inner, key.hash);
            self.metrics.expired.inc();
            self.publish(&inner);
        }
        if let Some(f) = inner.inflight.get(&key.hash) {
            return Step::Follow(f.key.clone(), f.done.clone());
        }
        let (tx, rx) = watch::channel(None);
        inner.inflight.insert(key.hash, Flight { key: key.bytes.clone(), done: rx });
        Step::Lead(tx)
    }

    fn remove(&self, inner: &mut Inner, hash: u128) -> Option<Arc<Entry>> {
        let e = inner.lru.pop(&hash)?;
        inner.bytes -= e.bytes;
        Some(e)
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.entries.set(inner.lru.len() as i64);
        self.metrics.bytes.set(inner.bytes as i64);
    }

    /// Stores a leader's outputs, evicting the least recently used entries to fit.
    fn insert(&self, inner: &mut Inner, key: &Key, outputs: &Arc<Vec<Tensor>>) {
        let bytes = entry_bytes(&key.bytes, outputs);
        if self.settings.max_bytes.is_some_and(|max| bytes > max) {
            tracing::debug!(bytes, "prediction too large for the cache; not stored");
            return;
        }
        let now = Instant::now();
        self.expire(inner, now);
        self.remove(inner, key.hash);
        while let Some(max) = self.settings.max_entries
            && inner.lru.len() >= max
            && self.pop_lru(inner)
        {
            self.metrics.evicted_entries.inc();
        }
        while let Some(max) = self.settings.max_bytes
            && inner.bytes + bytes > max
            && self.pop_lru(inner)
        {
            self.metrics.evicted_bytes.inc();
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let expires = self.settings.ttl.map(|ttl| now + ttl);
        if let Some(at) = expires {
            inner.expiries.push_back((at, key.hash, seq));
            // Records of entries evicted early pile up under heavy churn: drop them now and then.
            if inner.expiries.len() > 2 * inner.lru.len() + 64 {
                let Inner { expiries, lru, .. } = inner;
                expiries.retain(|(_, h, s)| lru.peek(h).is_some_and(|e| e.seq == *s));
            }
        }
        inner
            .lru
            .put(key.hash, Arc::new(Entry { key: key.bytes.clone(), outputs: outputs.clone(), bytes, seq, expires }));
        inner.bytes += bytes;
        self.publish(inner);
    }

    fn pop_lru(&self, inner: &mut Inner) -> bool {
        match inner.lru.pop_lru() {
            Some((_, e)) => {
                inner.bytes -= e.bytes;
                true
            }
            None => false,
        }
    }

    /// Removes the entries whose TTL has passed.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(at, hash, seq)) = inner.expiries.front() {
            if at > now {
                break;
            }
            inner.expiries.pop_front();
            if inner.lru.peek(&hash).is_some_and(|e| e.seq == seq) {
                self.remove(inner, hash);
                self.metrics.expired.inc();
            }
        }
    }

    /// Removes expired entries now (the sweep task calls it every second).
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    fn sweep_at(&self, now: Instant) {
        if self.settings.ttl.is_none() {
            return;
        }
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        self.publish(&inner);
    }

    /// Starts the TTL sweep on the current Tokio runtime (nothing to do without a TTL). It ends
    /// when the cache is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        if self.settings.ttl.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(cache) => cache.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Entries and bytes held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.lru.len(), inner.bytes)
    }
}

/// The request that runs the model for a key. Dropped without [`Leader::finish`] (its deadline
/// passed, or its client went away), it leaves the in-flight table and its followers look again.
struct Leader<'a> {
    cache: &'a Cache,
    key: &'a Key,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Leader<'_> {
    fn finish(&mut self, outcome: &Outcome) {
        {
            let mut inner = self.cache.lock();
            inner.inflight.remove(&self.key.hash);
            if let Ok(outputs) = outcome {
                self.cache.insert(&mut inner, self.key, outputs);
            }
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(outcome.clone()));
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.cache.lock().inflight.remove(&self.key.hash);
            // Dropping the sender wakes the followers with "no result".
            self.tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{error::ErrorCode, tensor::TensorData};

    fn cache(max_entries: Option<u64>, max_bytes: Option<u64>, ttl: Option<u64>) -> Arc<Cache> {
        let m = Metrics::new().unwrap();
        let s = Settings::new(max_entries, max_bytes, ttl).unwrap();
        Arc::new(Cache::new(s, &m, "iris", "1").unwrap())
    }

    fn input(v: f32) -> Vec<Tensor> {
        vec![Tensor { name: "x".into(), shape: vec![1, 4], data: TensorData::F32(vec![v; 4]) }]
    }

    fn output(v: i64) -> Vec<Tensor> {
        vec![Tensor { name: "label".into(), shape: vec![1], data: TensorData::I64(vec![v]) }]
    }

    const ALL: Use<'static> = Use { outputs: &[0, 1], enabled: true };

    /// Runs one request through the cache; the model answers `v` and counts its runs.
    async fn ask(c: &Cache, v: f32, runs: &AtomicUsize) -> Status {
        let (out, status) = c
            .get_or_run("iris", "1", input(v), ALL, |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(output(v as i64))
            })
            .await;
        assert_eq!(out.expect("outputs").as_ref(), &output(v as i64));
        status
    }

    #[test]
    fn off_unless_a_maximum_is_set() {
        assert_eq!(Settings::new(None, None, Some(60)), None);
        assert_eq!(Settings::new(Some(0), Some(0), None), None);
        let s = Settings::new(Some(10), None, Some(60)).unwrap();
        assert_eq!((s.max_entries, s.max_bytes, s.ttl), (Some(10), None, Some(Duration::from_secs(60))));
    }

    #[test]
    fn keys_differ_by_every_field() {
        let base = Key::new(7, "m", "1", &[0], &input(1.0));
        let same = Key::new(7, "m", "1", &[0, 0], &input(1.0));
        assert_eq!((base.hash, &base.bytes), (same.hash, &same.bytes));
        let mut renamed = input(1.0);
        renamed[0].name = "y".into();
        let mut reshaped = input(1.0);
        reshaped[0].shape = vec![2, 2];
        let mut retyped = input(1.0);
        retyped[0].data = TensorData::I32(vec![0x3f80_0000; 4]); // the same bytes as 1.0f32
        for other in [
            Key::new(7, "m", "2", &[0], &input(1.0)),
            Key::new(7, "n", "1", &[0], &input(1.0)),
            Key::new(7, "m", "1", &[1], &input(1.0)),
            Key::new(7, "m", "1", &[0, 1], &input(1.0)),
            Key::new(7, "m", "1", &[0], &input(2.0)),
            Key::new(7, "m", "1", &[0], &renamed),
            Key::new(7, "m", "1", &[0], &reshaped),
            Key::new(7, "m", "1", &[0], &retyped),
            // Field boundaries are length-prefixed: "m"+"12" is not "m1"+"2".
            Key::new(7, "m1", "", &[0], &input(1.0)),
        ] {
            assert_ne!(other.bytes, base.bytes);
            assert_ne!(other.hash, base.hash);
        }
    }

    #[tokio::test]
    async fn miss_then_hit_with_the_same_outputs() {
        let c = cache(Some(10), None, None);
        let runs = AtomicUsize::new(0);
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Miss);
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Hit); // `ask` checks the outputs
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.metrics.hits.get(), 1);
        assert_eq!(c.metrics.misses.get(), 1);
        let bypass = c.get_or_run("iris", "1", input(1.0), Use { enabled: false, ..ALL }, |_| async { Ok(output(9)) });
        let (out, s) = bypass.await;
        assert_eq!((s, out.unwrap()[0].data.clone()), (Status::Bypass, TensorData::I64(vec![9])));
    }

    #[tokio::test]
    async fn evicts_the_least_recently_used_by_entries_and_bytes() {
        let c = cache(Some(2), None, None);
        let runs = AtomicUsize::new(0);
        ask(&c, 1.0, &runs).await;
        ask(&c, 2.0, &runs).await;
        ask(&c, 1.0, &runs).await; // 1 is now the most recently used
        ask(&c, 3.0, &runs).await; // evicts 2
        assert_eq!(c.metrics.evicted_entries.get(), 1);
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Hit);
        assert_eq!(ask(&c, 2.0, &runs).await, Status::Miss);
        assert_eq!(c.usage().0, 2);

        let one = entry_bytes(&Key::new(0, "iris", "1", &[0, 1], &input(1.0)).bytes, &output(1));
        let c = cache(None, Some(2 * one as u64 + one as u64 / 2), None);
        ask(&c, 1.0, &runs).await;
        ask(&c, 2.0, &runs).await;
        assert_eq!(c.usage(), (2, 2 * one));
        ask(&c, 3.0, &runs).await;
        assert_eq!(c.usage(), (2, 2 * one));
        assert_eq!(c.metrics.evicted_bytes.get(), 1);
        assert_eq!(c.metrics.bytes.get(), 2 * one as i64);
        assert_eq!(c.metrics.entries.get(), 2);
    }

    #[tokio::test]
    async fn an_entry_larger_than_max_bytes_is_not_stored() {
        let c = cache(None, Some(16), None);
        let runs = AtomicUsize::new(0);
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Miss);
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Miss);
        assert_eq!(c.usage(), (0, 0));
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let c = cache(Some(10), None, Some(5));
        let runs = AtomicUsize::new(0);
        let t0 = Instant::now();
        ask(&c, 1.0, &runs).await;
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Hit);
        let key = Key::new(c.seed, "iris", "1", &[0, 1], &input(1.0));
        assert!(matches!(c.begin(&key, t0 + Duration::from_secs(4)), Step::Hit(_)));
        // Past the TTL a lookup does not serve it (a hit does not extend the TTL)...
        match c.begin(&key, t0 + Duration::from_secs(6)) {
            Step::Lead(tx) => drop(Leader { cache: &c, key: &key, tx: Some(tx) }),
            _ => panic!("an expired entry was served"),
        }
        assert_eq!((c.usage().0, c.metrics.expired.get()), (0, 1));
        // ...and the sweep removes what nobody looks up.
        ask(&c, 2.0, &runs).await;
        c.sweep_at(Instant::now() + Duration::from_secs(4));
        assert_eq!(c.usage().0, 1);
        c.sweep_at(Instant::now() + Duration::from_secs(6));
        assert_eq!((c.usage(), c.metrics.expired.get()), ((0, 0), 2));
        assert_eq!((c.metrics.entries.get(), c.metrics.bytes.get()), (0, 0));
        assert!(c.lock().inflight.is_empty());
    }

    #[tokio::test]
    async fn errors_are_not_stored() {
        let c = cache(Some(10), None, None);
        let fail = |_| async { Err(ApiError::invalid("inference failed: bad value")) };
        let (r, s) = c.get_or_run("iris", "1", input(1.0), ALL, fail).await;
        assert_eq!((r.unwrap_err().code, s), (ErrorCode::InvalidRequest, Status::Miss));
        let runs = AtomicUsize::new(0);
        assert_eq!(ask(&c, 1.0, &runs).await, Status::Miss);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    /// A leader whose model run waits for `gate`, with `n` identical followers behind it.
    async fn flight(c: &Arc<Cache>, leader_result: Outcome, n: usize) -> Vec<(Outcome, Status)> {
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_run("iris", "1", input(1.0), ALL, |_| async move {
                    let _ = gate_rx.await;
                    leader_result.map(|o| o.as_ref().clone())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        while c.lock().inflight.is_empty() {
            tokio::task::yield_now().await;
        }
        let followers: Vec<_> = (0..n)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(
                    async move { c.get_or_run("iris", "1", input(1.0), ALL, |_| async { Ok(output(2)) }).await },
                )
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let _ = gate_tx.send(());
        let mut all = vec![leader.await.unwrap()];
        for f in followers {
            all.push(f.await.unwrap());
        }
        all
    }

    #[tokio::test]
    async fn identical_requests_in_flight_run_the_model_once() {
        let c = cache(Some(10), None, None);
        let all = flight(&c, Ok(Arc::new(output(1))), 5).await;
        assert_eq!(all[0].1, Status::Miss);
        for (out, status) in &all[1..] {
            assert_eq!(*status, Status::Hit);
            assert_eq!(out.as_ref().unwrap().as_ref(), &output(1)); // the leader's, not their own run's
        }
        assert_eq!((c.metrics.misses.get(), c.metrics.hits.get()), (1, 5));
    }

    #[tokio::test]
    async fn followers_get_the_leaders_error() {
        let c = cache(Some(10), None, None);
        let all = flight(&c, Err(ApiError::invalid("inference failed: bad value")), 3).await;
        for (out, _) in &all {
            assert_eq!(out.as_ref().unwrap_err().message, "inference failed: bad value");
        }
        assert_eq!(c.usage().0, 0);
        assert!(c.lock().inflight.is_empty());
    }

    #[tokio::test]
    async fn a_follower_takes_over_when_the_leader_gives_up() {
        let c = cache(Some(10), None, None);
        let leader = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_run("iris", "1", input(1.0), ALL, |_| std::future::pending::<Result<Vec<Tensor>, ApiError>>())
                    .await
            })
        };
        while c.lock().inflight.is_empty() {
            tokio::task::yield_now().await;
        }
        let follower = {
            let c = c.clone();
            tokio::spawn(async move { c.get_or_run("iris", "1", input(1.0), ALL, |_| async { Ok(output(2)) }).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        leader.abort(); // as when its deadline passes or its client goes away
        let (out, status) = follower.await.unwrap();
        assert_eq!((out.unwrap().as_ref(), status), (&output(2), Status::Miss));
        let (out, status) = c.get_or_run("iris", "1", input(1.0), ALL, |_| async { Ok(output(3)) }).await;
        assert_eq!((out.unwrap().as_ref(), status), (&output(2), Status::Hit), "the follower's run was stored");
    }
}
