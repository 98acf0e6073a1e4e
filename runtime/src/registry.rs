//! The served models: the list this runtime serves (`KINFER_MODELS`, `--models-file`, or the
//! one-model flags), how one is loaded (fetch → sessions → warm-up → inference threads), and the
//! registry every protocol looks models up in by name and version.
//!
//! Each request holds an [`Arc`] of its [`Served`] model for as long as it runs: a load that
//! replaces a model takes new requests at once while the ones in flight finish on the old
//! sessions, whose inference threads exit when the last handle drops. A load prepares and warms
//! the new sessions before they take traffic; a failed one leaves the old version serving.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::BTreeMap,
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, ModelControl},
    engine::{self, Engine},
    error::ApiError,
    metrics::{self, Metrics},
    model, store,
};

/// One model to serve: the entries of `KINFER_MODELS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSpec {
    pub name: String,
    pub uri: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A version given as a string or, in hand-written YAML, a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Version {
    Text(String),
    Number(u64),
}

impl Version {
    fn into_string(self) -> String {
        match self {
            Version::Text(s) => s,
            Version::Number(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    uri: String,
    version: Option<Version>,
    sha256: Option<String>,
}

/// Parses the model list (a JSON array, or with `yaml` also YAML) and checks it: at least one
/// model, valid names, a URI each, no name and version twice.
pub fn parse_models(text: &str, yaml: bool) -> Result<Vec<ModelSpec>, String> {
    let raw: Vec<RawSpec> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) if !yaml => {
            return Err(format!("not a JSON array of {{\"name\", \"uri\", \"version\", \"sha256\"}}: {e}"));
        }
        Err(_) => serde_yaml::from_str(text)
            .map_err(|e| format!("not a JSON or YAML list of {{name, uri, version, sha256}}: {e}"))?,
    };
    if raw.is_empty() {
        return Err("the model list is empty".into());
    }
    let mut specs: Vec<ModelSpec> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let uri = r.uri.trim().to_string();
        if uri.is_empty() {
            return Err(format!("model #{}: uri is empty", i + 1));
        }
        let name = r.name.filter(|n| !n.is_empty()).unwrap_or_else(|| name_from_uri(&uri));
        check_name(&name).map_err(|e| format!("model #{}: {e}", i + 1))?;
        let version = r.version.map(Version::into_string).unwrap_or_else(|| "1".into());
        check_version(&version).map_err(|e| format!("model '{name}': {e}"))?;
        if specs.iter().any(|s| s.name == name && s.version == version) {
            return Err(format!("model '{name}' version '{version}' is listed twice"));
        }
        specs.push(ModelSpec { name, uri, version, sha256: r.sha256.filter(|s| !s.is_empty()) });
    }
    Ok(specs)
}

/// Model names go in URL paths: letters, digits, `.`, `_` and `-`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name != "."
        && name != "..";
    if ok { Ok(()) } else { Err(format!("name '{name}' must be 1-253 letters, digits, '.', '_' or '-'")) }
}

fn check_version(version: &str) -> Result<(), String> {
    check_name(version).map_err(|_| format!("version '{version}' must be 1-253 letters, digits, '.', '_' or '-'"))
}

/// The file stem of a URI ("model" when it has none): the default name of a listed model.
pub fn name_from_uri(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let stem = last.split('.').next().unwrap_or_default();
    if stem.is_empty() { "model".to_string() } else { stem.to_string() }
}

/// Versions order numerically when both are numbers, else as text; the highest is the default
/// when a request names none (Triton's "latest" policy).
fn version_order(a: &str, b: &str) -> CmpOrdering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// A loaded, warmed-up model version taking requests.
pub struct Served {
    pub spec: ModelSpec,
    pub engine: Engine,
    /// Image inputs and class names for /predict.
    pub image: crate::image::Serving,
}

impl std::ops::Deref for Served {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// Loads models with the process's settings (sessions, batching, images, cache).
pub struct Loader {
    cfg: Config,
    env: Arc<ort::environment::Environment>,
    metrics: Arc<Metrics>,
}

impl Loader {
    pub fn new(cfg: Config, env: Arc<ort::environment::Environment>, metrics: Arc<Metrics>) -> Loader {
        Loader { cfg, env, metrics }
    }

    /// Fetches, loads and warms up one model and starts its inference threads. The error is the
    /// message users see (a download failure, a file that is not ONNX, a failed warm-up...).
    pub async fn load(&self, spec: &ModelSpec) -> Result<Served, String> {
        let cfg = &self.cfg;
        let t0 = Instant::now();
        let images = crate::image::Prepared::from_config(cfg)?;
        let opts = store::FetchOptions {
            cache_dir: cfg.cache_dir.clone(),
            expected_sha256: spec.sha256.clone(),
            attempts: cfg.download_attempts,
            path_style: store::path_style_from_env(),
            initial_backoff: Duration::from_millis(500),
            part_bytes: cfg.download_part_bytes,
            concurrency: cfg.download_concurrency as usize,
            s3_client: None,
        };
        let path = store::fetch(&spec.uri, &opts).await.map_err(|e| e.message)?;
        tracing::info!(model = %spec.name, version = %spec.version, uri = %spec.uri, path = %path.display(),
            elapsed_ms = t0.elapsed().as_millis() as u64, "model fetched");

        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
        let (sessions_wanted, intra) = cfg.session_layout(size);
        tracing::info!(model = %spec.name, sessions = sessions_wanted, intra_threads = intra, "session layout");
        let (env, s) = (self.env.clone(), spec.clone());
        let inline_budget = Duration::from_micros(cfg.inline_budget_us);
        let (sessions, mut info, inline) = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read model file {}: {e}", path.display()))?;
            let so = model::SessionOptions { intra_threads: intra };
            let mut sessions = Vec::with_capacity(sessions_wanted);
            for _ in 0..sessions_wanted {
                sessions.push(model::build_session(&env, &s.uri, &bytes, so).map_err(|e| e.to_string())?);
            }
            let info = model::model_info(&sessions[0], &s.name, &s.version, &bytes).map_err(|e| e.to_string())?;
            let warm = model::warmup_inputs(&info);
            for session in sessions.iter_mut() {
                model::run(session, &info, &warm).map_err(|e| format!("warm-up inference failed: {e}"))?;
            }
            let inline = crate::inline_policy(&mut sessions[0], &info, &warm, inline_budget);
            Ok((sessions, info, inline))
        })
        .await
        .map_err(|e| format!("model loading thread failed: {e}"))??;
        tracing::info!(
            model = %spec.name,
            budget_us = inline.budget.as_micros() as u64,
            one_row_us = inline.base.as_secs_f64() * 1e6,
            per_row_us = inline.per_row.as_secs_f64() * 1e6,
            "inline inference policy (KINFER_INLINE_BUDGET_US)"
        );
        let image = images.resolve(&mut info)?;
        let info = Arc::new(info);
        let hist = metrics::ModelHistograms::new(&self.metrics, &info.name, &info.version);
        let batch = engine::BatchConfig {
            max_batch_size: cfg.max_batch_size.max(1),
            max_delay: Duration::from_micros(cfg.max_batch_delay_us),
        };
        let engine = Engine::start(sessions, info.clone(), batch, cfg.queue_capacity(), hist, inline)
            .map_err(|e| format!("cannot start inference threads: {e}"))?;
        if cfg.max_batch_size > 1 && !engine.batching() {
            tracing::warn!(model = %info.name,
                "dynamic batching requested but the model's inputs have no dynamic batch dimension; serving requests one by one"
            );
        }
        let elapsed = t0.elapsed();
        self.metrics.model_load_duration.with_label_values(&[&info.name, &info.version]).set(elapsed.as_secs_f64());
        tracing::info!(
            model = %info.name, version = %info.version,
            inputs = ?info.inputs.iter().map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape)).collect::<Vec<_>>(),
            outputs = ?info.outputs.iter().map(|s| format!("{}:{}{:?}", s.name, s.datatype, s.shape)).collect::<Vec<_>>(),
            batching = engine.batching(), load_ms = elapsed.as_millis() as u64, "model ready");
        Ok(Served { spec: spec.clone(), engine, image })
    }
}

/// Where a model name stands (the `state` of Triton's repository index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its first load is running.
    Loading,
    /// Serving (a reload may be preparing its replacement meanwhile).
    Ready,
    /// Unloaded on request.
    Unloaded,
}

struct Entry {
    /// What the name serves, or is being loaded to serve.
    specs: Vec<ModelSpec>,
    /// The loaded versions, lowest first.
    served: Vec<Arc<Served>>,
    state: State,
    /// The last failed load's message.
    reason: Option<String>,
    /// Listed at start and not loaded yet: the server is not ready until it is. A load through
    /// model control never takes the server out of readiness.
    gates_readiness: bool,
}

/// One row of `POST /v2/repository/index`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IndexRow {
    pub name: String,
    pub version: String,
    /// READY, LOADING or UNAVAILABLE.
    pub state: &'static str,
    pub reason: String,
}

/// What a load changes (Triton passes model settings as load `parameters`).
#[derive(Debug, Default, Clone)]
pub struct LoadRequest {
    pub uri: Option<String>,
    pub version: Option<String>,
    pub sha256: Option<String>,
}

/// The served models by name.
pub struct Registry {
    entries: RwLock<BTreeMap<String, Entry>>,
    control: ModelControl,
    loader: OnceLock<Loader>,
    /// One load or unload at a time.
    changing: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(specs: Vec<ModelSpec>, control: ModelControl, metrics: Arc<Metrics>) -> Registry {
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for spec in specs {
            entries
                .entry(spec.name.clone())
                .or_insert_with(|| Entry {
                    specs: vec![],
                    served: vec![],
                    state: State::Loading,
                    reason: None,
                    gates_readiness: true,
                })
                .specs
                .push(spec);
        }
        Registry {
            entries: RwLock::new(entries),
            control,
            loader: OnceLock::new(),
            changing: Default::default(),
            metrics,
        }
    }

    /// Sets the loader (once, before [`Registry::load_all`]).
    pub fn set_loader(&self, loader: Loader) {
        let _ = self.loader.set(loader);
    }

    pub fn control(&self) -> ModelControl {
        self.control
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The model names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn choices(map: &BTreeMap<String, Entry>) -> String {
        map.keys().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
    }

    /// The served model `name` (`version`, or the highest loaded one), for one request.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let map = self.read();
        let Some(entry) = map.get(name) else {
            return Err(ApiError::not_found(format!(
                "model '{name}' not found; this server serves {}",
                Self::choices(&map)
            )));
        };
        let served = match version {
            Some(v) => entry.served.iter().find(|s| s.spec.version == v),
            None => entry.served.last(),
        };
        if let Some(s) = served {
            return Ok(s.clone());
        }
        let listed = |v: &str| entry.specs.iter().any(|s| s.version == v);
        match (entry.state, version) {
            (State::Unloaded, _) => Err(ApiError::not_ready(format!(
                "model '{name}' is unloaded; load it with POST /v2/repository/models/{name}/load"
            ))),
            (State::Loading, Some(v)) if listed(v) => {
                Err(ApiError::not_ready(format!("model '{name}' version '{v}' is still loading")))
            }
            (State::Loading, None) => Err(ApiError::not_ready(format!("model '{name}' is still loading"))),
            (_, Some(v)) => {
                let mut versions: Vec<&str> = entry.specs.iter().map(|s| s.version.as_str()).collect();
                versions.sort_by(|a, b| version_order(a, b));
                let list = versions.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ");
                let word = if versions.len() == 1 { "version" } else { "versions" };
                Err(ApiError::not_found(format!(
                    "model '{name}' version '{v}' not found; this server serves {word} {list}"
                )))
            }
            (State::Ready, None) => Err(ApiError::not_ready(format!("model '{name}' is not loaded"))),
        }
    }

    /// The model of a `/predict` request: the one its `model` parameter names, else the only one
    /// served (several and none named: an error listing them).
    pub fn pick(&self, requested: Option<&str>) -> Result<String, ApiError> {
        if let Some(name) = requested {
            return Ok(name.to_string());
        }
        let map = self.read();
        if map.len() == 1
            && let Some(name) = map.keys().next()
        {
            return Ok(name.clone());
        }
        Err(ApiError::invalid(format!(
            "this server serves several models: name one with the `model` query parameter ({})",
            Self::choices(&map)
        )))
    }

    /// The label a request for `name` is counted under: the name when it is served, else
    /// "unknown" (names from requests never become label values by themselves).
    pub fn label(&self, name: &str, version: Option<&str>) -> Option<(String, String)> {
        let map = self.read();
        let entry = map.get(name)?;
        let version = match version {
            Some(v) => entry.served.iter().find(|s| s.spec.version == v).map(|s| s.spec.version.clone())?,
            None => entry.served.last().map(|s| s.spec.version.clone())?,
        };
        Some((name.to_string(), version))
    }

    /// The only model name and its default version, when exactly one name is listed: what a
    /// request is counted under before its model is known (e.g. refused by auth on gRPC).
    pub fn only(&self) -> Option<(String, String)> {
        let map = self.read();
        if map.len() != 1 {
            return None;
        }
        let (name, e) = map.iter().next()?;
        let version =
            e.served.last().map(|s| s.spec.version.clone()).or_else(|| e.specs.last().map(|s| s.version.clone()))?;
        Some((name.clone(), version))
    }

    /// Ready when every model listed at start has loaded and at least one model serves. Models
    /// unloaded, or being loaded through model control, do not take the server out of readiness.
    pub fn all_ready(&self) -> bool {
        let map = self.read();
        if map.values().any(|e| e.gates_readiness) {
            return false;
        }
        map.values().any(|e| !e.served.is_empty())
    }

    /// Models still loading, for the readiness message.
    pub fn loading(&self) -> Vec<String> {
        self.read().iter().filter(|(_, e)| e.state == State::Loading).map(|(n, _)| n.clone()).collect()
    }

    /// Triton's repository index: one row per version (served, or listed and not served).
    pub fn index(&self, ready_only: bool) -> Vec<IndexRow> {
        let map = self.read();
        let mut rows = Vec::new();
        for (name, e) in map.iter() {
            for s in &e.served {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: s.spec.version.clone(),
                    state: "READY",
                    reason: String::new(),
                });
            }
            if ready_only || !e.served.is_empty() {
                continue;
            }
            for spec in &e.specs {
                let (state, reason) = match e.state {
                    State::Loading => ("LOADING", String::new()),
                    State::Unloaded => ("UNAVAILABLE", e.reason.clone().unwrap_or_else(|| "unloaded".into())),
                    State::Ready => ("UNAVAILABLE", e.reason.clone().unwrap_or_default()),
                };
                rows.push(IndexRow { name: name.clone(), version: spec.version.clone(), state, reason });
            }
        }
        rows
    }

    /// Loads every listed model (concurrently); the first failure names its model.
    pub async fn load_all(&self) -> Result<(), String> {
        // Model control waits for the start-up loads.
        let _one_at_a_time = self.changing.lock().await;
        let specs: Vec<ModelSpec> = self.read().values().flat_map(|e| e.specs.clone()).collect();
        let several = specs.len() > 1;
        let loads = specs.iter().map(|spec| async move {
            let served = self.loader()?.load(spec).await.map_err(|e| {
                // With several models the message names the one that failed (the operator's
                // status.models reads it); one model keeps the loader's message as it is.
                if several { format!("model '{}' version '{}': {e}", spec.name, spec.version) } else { e }
            })?;
            self.install(&spec.name, vec![Arc::new(served)], true);
            Ok::<(), String>(())
        });
        for r in futures::future::join_all(loads).await {
            r?;
        }
        Ok(())
    }

    fn loader(&self) -> Result<&Loader, String> {
        self.loader.get().ok_or_else(|| "the model loader is not set up".to_string())
    }

    /// Puts loaded versions in service. `add` keeps the name's other versions (start-up loads
    /// them one by one); otherwise they replace what the name served.
    fn install(&self, name: &str, new: Vec<Arc<Served>>, add: bool) {
        let mut map = self.write();
        let entry = map.entry(name.to_string()).or_insert_with(|| Entry {
            specs: vec![],
            served: vec![],
            state: State::Loading,
            reason: None,
            gates_readiness: false,
        });
        let old = if add { vec![] } else { std::mem::take(&mut entry.served) };
        if !add {
            entry.specs = new.iter().map(|s| s.spec.clone()).collect();
        }
        for s in new {
            entry.served.retain(|o| o.spec.version != s.spec.version);
            entry.served.push(s);
        }
        entry.served.sort_by(|a, b| version_order(&a.spec.version, &b.spec.version));
        let all_loaded = entry.specs.iter().all(|sp| entry.served.iter().any(|s| s.spec.version == sp.version));
        if all_loaded {
            entry.state = State::Ready;
            entry.reason = None;
            entry.gates_readiness = false;
        }
        for o in &old {
            if !entry.served.iter().any(|s| s.spec.version == o.spec.version) {
                let _ = self.metrics.model_ready.remove_label_values(&[name, &o.spec.version]);
            }
        }
        for s in &entry.served {
            self.metrics.model_ready.with_label_values(&[name, &s.spec.version]).set(1.0);
        }
    }

    /// `POST /v2/repository/models/{name}/load`: loads `name` again, or what `req` names, and
    /// puts it in service once warmed up. A failure leaves what was serving in place.
    pub async fn load(&self, name: &str, req: LoadRequest) -> Result<Vec<IndexRow>, ApiError> {
        self.control_on()?;
        check_name(name).map_err(ApiError::invalid)?;
        let _one_at_a_time = self.changing.lock().await;
        let specs = {
            let map = self.read();
            let current = map.get(name).map(|e| e.specs.clone()).unwrap_or_default();
            match (&req.uri, &req.version) {
                (Some(uri), version) => {
                    let version = match version {
                        Some(v) => v.clone(),
                        None if current.len() == 1 => current[0].version.clone(),
                        None => "1".into(),
                    };
                    check_version(&version).map_err(ApiError::invalid)?;
                    vec![ModelSpec { name: name.to_string(), uri: uri.clone(), version, sha256: req.sha256.clone() }]
                }
                (None, Some(_)) => {
                    return Err(ApiError::invalid(
                        "parameter 'version' needs 'uri': name the file of the new version too",
                    ));
                }
                (None, None) if current.is_empty() => {
                    return Err(ApiError::not_found(format!(
                        "model '{name}' not found; this server serves {}; give a new model's location \
                         in the load's parameters (\"uri\", optional \"version\" and \"sha256\")",
                        Self::choices(&map)
                    )));
                }
                (None, None) => current,
            }
        };
        // What to put back when the load fails and nothing was serving.
        let before = {
            let mut map = self.write();
            let created = !map.contains_key(name);
            let entry = map.entry(name.to_string()).or_insert_with(|| Entry {
                specs: specs.clone(),
                served: vec![],
                state: State::Loading,
                reason: None,
                gates_readiness: false,
            });
            let before = (created, entry.state, entry.specs.clone());
            if entry.served.is_empty() {
                entry.state = State::Loading;
                entry.specs = specs.clone();
            }
            before
        };
        tracing::info!(model = name, versions = ?specs.iter().map(|s| &s.version).collect::<Vec<_>>(), "model load requested");
        let loader = self.loader().map_err(ApiError::internal)?;
        let mut loaded = Vec::with_capacity(specs.len());
        for spec in &specs {
            match loader.load(spec).await {
                Ok(s) => loaded.push(Arc::new(s)),
                Err(e) => {
                    let message = format!("failed to load model '{name}' version '{}': {e}", spec.version);
                    tracing::warn!(model = name, version = %spec.version, error = %e, "model load failed; the previous version keeps serving");
                    let mut map = self.write();
                    let (created, state, old_specs) = before;
                    if created {
                        map.remove(name);
                    } else if let Some(entry) = map.get_mut(name) {
                        entry.reason = Some(message.clone());
                        if entry.served.is_empty() {
                            entry.state = state;
                            entry.specs = old_specs;
                        }
                    }
                    return Err(ApiError::invalid(message));
                }
            }
        }
        self.install(name, loaded, false);
        tracing::info!(model = name, "model loaded and serving");
        Ok(self.index(false).into_iter().filter(|r| r.name == name).collect())
    }

    /// `POST /v2/repository/models/{name}/unload`: stops taking requests for `name`; requests in
    /// flight finish.
    pub async fn unload(&self, name: &str) -> Result<(), ApiError> {
        self.control_on()?;
        let _one_at_a_time = self.changing.lock().await;
        let old = {
            let mut map = self.write();
            let choices = Self::choices(&map);
            let Some(entry) = map.get_mut(name) else {
                return Err(ApiError::not_found(format!("model '{name}' not found; this server serves {choices}")));
            };
            entry.state = State::Unloaded;
            entry.reason = None;
            std::mem::take(&mut entry.served)
        };
        for o in &old {
            let _ = self.metrics.model_ready.remove_label_values(&[name, &o.spec.version]);
        }
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    fn control_on(&self) -> Result<(), ApiError> {
        match self.control {
            ModelControl::Explicit => Ok(()),
            ModelControl::None => Err(ApiError::invalid(
                "model control is off: this server serves the models it started with; start it with \
                 KINFER_MODEL_CONTROL=explicit (--model-control explicit) to load and unload models",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_lists_are_checked_naming_the_entry() {
        let ok = parse_models(r#"[{"name":"iris","uri":"s3://b/iris/1/model.onnx","version":"1","sha256":""}]"#, false)
            .unwrap();
        assert_eq!(
            ok[0],
            ModelSpec {
                name: "iris".into(),
                uri: "s3://b/iris/1/model.onnx".into(),
                version: "1".into(),
                sha256: None
            }
        );
        let yaml = "- name: iris\n  uri: /m/iris.onnx\n  version: 2\n- uri: /m/tabular.onnx\n";
        let y = parse_models(yaml, true).unwrap();
        assert_eq!((y[0].version.as_str(), y[1].name.as_str()), ("2", "tabular"));
        assert!(parse_models(yaml, false).unwrap_err().contains("JSON array"));
        assert_eq!(parse_models("[]", false).unwrap_err(), "the model list is empty");
        let dup = parse_models(r#"[{"uri":"/a/iris.onnx"},{"name":"iris","uri":"/b.onnx","version":"1"}]"#, false);
        assert_eq!(dup.unwrap_err(), "model 'iris' version '1' is listed twice");
        let bad = parse_models(r#"[{"name":"a/b","uri":"/x.onnx"}]"#, false).unwrap_err();
        assert!(bad.contains("model #1") && bad.contains("'a/b'"), "{bad}");
        let unknown = parse_models(r#"[{"uri":"/x.onnx","url":"y"}]"#, false).unwrap_err();
        assert!(unknown.contains("unknown field `url`"), "{unknown}");
        assert!(parse_models(r#"[{"uri":" "}]"#, false).unwrap_err().contains("uri is empty"));
    }

    #[test]
    fn versions_order_numerically() {
        assert_eq!(version_order("10", "9"), CmpOrdering::Greater);
        assert_eq!(version_order("b", "a"), CmpOrdering::Greater);
        assert_eq!(name_from_uri("s3://b/fraud/3/fraud.onnx"), "fraud");
    }

    fn registry(control: ModelControl) -> Registry {
        let m = Arc::new(Metrics::new().unwrap());
        let specs =
            parse_models(r#"[{"name":"iris","uri":"/i.onnx"},{"name":"tabular","uri":"/t.onnx"}]"#, false).unwrap();
        Registry::new(specs, control, m)
    }

    #[test]
    fn lookups_before_loading_say_what_is_wrong() {
        let r = registry(ModelControl::None);
        assert!(!r.all_ready());
        let e = r.get("nope", None).err().unwrap();
        assert_eq!(e.message, "model 'nope' not found; this server serves 'iris', 'tabular'");
        assert!(r.get("iris", None).err().unwrap().message.contains("still loading"));
        assert!(r.get("iris", Some("7")).err().unwrap().message.contains("version '7' not found"));
        assert!(r.pick(None).unwrap_err().message.contains("'iris', 'tabular'"));
        assert_eq!(r.index(false).iter().map(|r| r.state).collect::<Vec<_>>(), ["LOADING", "LOADING"]);
        assert!(r.index(true).is_empty());
    }

    #[tokio::test]
    async fn control_is_off_unless_explicit() {
        let r = registry(ModelControl::None);
        let e = r.load("iris", LoadRequest::default()).await.unwrap_err();
        assert!(e.message.contains("KINFER_MODEL_CONTROL=explicit"), "{}", e.message);
        assert!(r.unload("iris").await.unwrap_err().message.contains("KINFER_MODEL_CONTROL=explicit"));
        let on = registry(ModelControl::Explicit);
        let v = on.load("iris", LoadRequest { version: Some("2".into()), ..Default::default() }).await.unwrap_err();
        assert!(v.message.contains("needs 'uri'"), "{}", v.message);
        let n = on.load("new", LoadRequest::default()).await.unwrap_err();
        assert!(n.message.contains("not found") && n.message.contains("\"uri\""), "{}", n.message);
        on.unload("iris").await.unwrap();
        assert!(on.get("iris", None).err().unwrap().message.contains("unloaded"));
        // tabular was listed at start and never loaded: not ready.
        assert!(!on.all_ready());
    }
}
