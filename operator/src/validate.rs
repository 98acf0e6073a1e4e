//! Step 1 of the pipeline: check an InferenceService and resolve its defaults. No client.
//!
//! The CRD schema already enforces most of this; it is checked again here because the
//! installed CRD may be older than the operator, and because some rules (a CPU request for
//! autoscaling, the resource name as a DNS label) are clearer with the operator's message.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};
use kube::{Resource, ResourceExt};

use crate::{
    config::OperatorConfig,
    crd::{AutoscalingSpec, CanaryMode, InferenceService, InferenceServiceSpec, ModelSpec},
};

/// Suffix of the canary's Deployment and Service names (`<name>-canary`).
pub const CANARY_SUFFIX: &str = "-canary";
/// Longest InferenceService name that still leaves room for [`CANARY_SUFFIX`] in a DNS label.
const MAX_NAME_WITH_CANARY: usize = 63 - CANARY_SUFFIX.len();

/// An InferenceService that passed validation, with every default resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedService {
    /// Name of the InferenceService (and of each child).
    pub name: String,
    /// Namespace of the InferenceService (and of each child).
    pub namespace: String,
    /// `metadata.generation` of the InferenceService.
    pub generation: Option<i64>,
    /// Controller owner reference set on each child.
    pub owner: OwnerReference,
    /// The spec as written.
    pub spec: InferenceServiceSpec,
    /// Served model name (spec or the resource name); the first of `models`.
    pub model_name: String,
    /// Every model to serve, with its name resolved: `spec.model` or the `spec.models` list.
    pub models: Vec<ServedModel>,
    /// Fixed replicas or autoscaling.
    pub scaling: Scaling,
    /// ONNX Runtime threads, when known.
    pub threads: Option<i32>,
    /// Runtime image.
    pub image: String,
    /// The runtime's `OTEL_*` variables (`spec.tracing` over the operator's defaults); empty
    /// when no collector endpoint is set.
    pub tracing_env: Vec<(String, String)>,
    /// Whether this is the stable runtime or the canary's.
    pub track: Track,
    /// The canary, when `spec.canary` is set (only on the stable service).
    pub canary: Option<Canary>,
}

/// Which runtime a [`ValidatedService`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// The stable model: `spec.model`, children named like the InferenceService.
    Stable,
    /// The candidate: `spec.canary.model`, children named `<name>-canary`.
    Canary,
}

/// A validated `spec.canary` with its defaults resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Canary {
    /// The candidate model (`spec.canary.model`).
    pub model: ModelSpec,
    /// The canary runtime: the stable spec with the canary's model and replicas, named
    /// `<name>-canary`; no autoscaler, no canary of its own.
    pub service: Box<ValidatedService>,
    /// `split` or `shadow`.
    pub mode: CanaryMode,
    /// Percent answered by the canary (split mode).
    pub traffic_percent: Option<i32>,
    /// Header whose value keeps a client on one version.
    pub sticky_header: Option<String>,
    /// Fraction copied to the canary (shadow mode; default 1).
    pub sample_rate: Option<f64>,
    /// Wait for the canary's answer, in milliseconds.
    pub timeout_millis: Option<i64>,
}

impl Canary {
    /// The canary's model.
    pub fn model(&self) -> &ModelSpec {
        &self.model
    }
}

/// One model the pods serve, as the runtime's `KINFER_MODELS` lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServedModel {
    pub name: String,
    pub uri: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// How the number of pods is decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Scaling {
    /// A fixed count (`spec.replicas`, default 1).
    Fixed(i32),
    /// A HorizontalPodAutoscaler decides.
    Auto(AutoscalingSpec),
}

impl ValidatedService {
    /// Replicas that must be available for the resource to be Ready: `replicas`, or
    /// `autoscaling.minReplicas`.
    pub fn min_available(&self) -> i32 {
        match &self.scaling {
            Scaling::Fixed(n) => *n,
            Scaling::Auto(a) => a.min_replicas,
        }
    }

    /// Whether a PodDisruptionBudget is wanted: only when more than one pod always runs.
    pub fn wants_pdb(&self) -> bool {
        match &self.scaling {
            Scaling::Fixed(n) => *n > 1,
            Scaling::Auto(a) => a.min_replicas > 1,
        }
    }
}

/// Checks the resource and resolves defaults. The error message names the offending field.
pub fn validate(isvc: &InferenceService, config: &OperatorConfig) -> Result<ValidatedService, String> {
    let name = isvc.name_any();
    if !is_dns1035_label(&name) {
        return Err(format!(
            "metadata.name {name:?} must be a DNS-1035 label (at most 63 lowercase letters, digits \
             and '-', starting with a letter), because the Service is named after it"
        ));
    }
    let namespace = isvc.namespace().ok_or_else(|| "metadata.namespace is missing".to_string())?;
    let owner = isvc.controller_owner_ref(&()).ok_or_else(|| "metadata.uid is missing".to_string())?;
    let spec = &isvc.spec;

    let models = validate_models(spec, &name)?;

    let scaling = match (spec.replicas, &spec.autoscaling) {
        (Some(_), Some(_)) => {
            return Err("set either spec.replicas or spec.autoscaling, not both".into());
        }
        (Some(n), None) if !(0..=1000).contains(&n) => {
            return Err(format!("spec.replicas {n} must be between 0 and 1000"));
        }
        (Some(n), None) => Scaling::Fixed(n),
        (None, None) => Scaling::Fixed(1),
        (None, Some(a)) => {
            if a.min_replicas < 1 || a.min_replicas > a.max_replicas {
                return Err(format!(
                    "autoscaling.minReplicas ({}) must be at least 1 and at most \
                     autoscaling.maxReplicas ({})",
                    a.min_replicas, a.max_replicas
                ));
            }
            if !has_resource(spec.resources.as_ref(), "cpu") {
                return Err("autoscaling needs resources.requests.cpu: the autoscaler measures \
                            CPU utilisation against the request"
                    .into());
            }
            if a.target_memory_utilization.is_some() && !has_resource(spec.resources.as_ref(), "memory") {
                return Err("autoscaling.targetMemoryUtilization needs \
                            resources.requests.memory"
                    .into());
            }
            Scaling::Auto(a.clone())
        }
    };

    if let Some(b) = &spec.batching
        && !(1..=1024).contains(&b.max_batch_size)
    {
        return Err("batching.maxBatchSize must be between 1 and 1024".into());
    }
    if let Some(l) = &spec.logging {
        if !l.uri.starts_with("s3://") {
            return Err(format!("logging.uri {:?} must start with s3://", l.uri));
        }
        if !(0.0..=1.0).contains(&l.sample_rate) {
            return Err("logging.sampleRate must be between 0 and 1".into());
        }
        at_least_one("logging.flushIntervalSeconds", l.flush_interval_seconds.map(i64::from))?;
        at_least_one("logging.maxObjectBytes", l.max_object_bytes)?;
        at_least_one("logging.queueCapacity", l.queue_capacity.map(i64::from))?;
    }
    if let Some(c) = &spec.cors {
        validate_cors_origins(&c.allowed_origins)?;
    }
    if let Some(l) = &spec.limits {
        at_least_one("limits.maxBatchRows", l.max_batch_rows.map(i64::from))?;
        at_least_one("limits.maxBodyBytes", l.max_body_bytes)?;
        at_least_one("limits.requestTimeoutMillis", l.request_timeout_millis)?;
        at_least_one("limits.maxConcurrency", l.max_concurrency.map(i64::from))?;
        at_least_one("limits.queueCapacity", l.queue_capacity.map(i64::from))?;
        at_least_one("limits.rateLimitBurst", l.rate_limit_burst.map(i64::from))?;
        at_least_one("limits.bodyTimeoutMillis", l.body_timeout_millis)?;
        at_least_one("limits.headerTimeoutMillis", l.header_timeout_millis)?;
        at_least_one("limits.idleTimeoutSeconds", l.idle_timeout_seconds.map(i64::from))?;
        at_least_one("limits.maxConnections", l.max_connections.map(i64::from))?;
        if let Some(r) = l.rate_limit_per_second
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(format!("limits.rateLimitPerSecond {r} must be a number of at least 0"));
        }
        if l.rate_limit_burst.is_some() && l.rate_limit_per_second.is_none() {
            return Err("limits.rateLimitBurst needs limits.rateLimitPerSecond".into());
        }
    }
    if let Some(c) = &spec.cache {
        if c.max_entries.is_none() && c.max_bytes.is_none() {
            return Err("cache needs maxEntries or maxBytes (or both)".into());
        }
        at_least_one("cache.maxEntries", c.max_entries)?;
        at_least_one("cache.ttlSeconds", c.ttl_seconds)?;
        if let Some(q) = &c.max_bytes
            && parse_bytes(q).is_none_or(|b| b == 0)
        {
            return Err(format!(
                "cache.maxBytes {:?} must be a positive whole number of bytes, as an integer or a quantity such as 256Mi",
                q.0
            ));
        }
    }
    if let Some(i) = &spec.image {
        if i.preprocess.trim().is_empty() || i.preprocess.contains(['\n', '\r']) {
            return Err("image.preprocess must be one line of key=value pairs (or `auto`)".into());
        }
        if let Some(k) = i.top_k
            && k < 0
        {
            return Err(format!("image.topK {k} must be at least 0"));
        }
    }

    let runtime = spec.runtime.clone().unwrap_or_default();
    if let Some(env) = &runtime.env {
        let mut seen = BTreeSet::new();
        for e in env {
            if !seen.insert(e.name.as_str()) {
                return Err(format!("runtime.env has {:?} twice", e.name));
            }
        }
    }

    let threads = match runtime.threads {
        Some(t) => Some(t),
        None => cpu_threads(spec.resources.as_ref())?,
    };

    let tracing_env = tracing_env(spec.tracing.as_ref(), &config.tracing, &name, &namespace)?;
    let mut stable = ValidatedService {
        tracing_env,
        name: name.clone(),
        namespace,
        generation: isvc.meta().generation,
        owner,
        spec: spec.clone(),
        model_name: models.first().map(|m| m.name.clone()).unwrap_or(name),
        models,
        scaling,
        threads,
        image: runtime.image.unwrap_or_else(|| config.runtime_image.clone()),
        track: Track::Stable,
        canary: None,
    };
    stable.canary = validate_canary(&stable)?;
    Ok(stable)
}

/// Checks `spec.canary` (what the CRD's CEL rules check, and the rules that need the resolved
/// model name) and derives the canary runtime from the stable one.
fn validate_canary(stable: &ValidatedService) -> Result<Option<Canary>, String> {
    let Some(c) = &stable.spec.canary else {
        return Ok(None);
    };
    let model =
        c.model.clone().ok_or("spec.canary.model is required: the candidate model (same fields as spec.model)")?;
    let stable_model = stable
        .spec
        .model
        .as_ref()
        .ok_or("spec.canary needs spec.model: a canary replaces the one stable model, not a list (spec.models)")?;
    check_model("spec.canary.model", &model)?;
    if model.uri == stable_model.uri && model.version == stable_model.version {
        return Err("spec.canary.model must differ from spec.model (another uri or version): a canary \
                    identical to the stable model compares nothing"
            .into());
    }
    if let Some(n) = &model.name
        && *n != stable.model_name
    {
        return Err(format!(
            "spec.canary.model.name {n:?} must be unset or equal to the stable model's name {:?}: \
             the stable pods forward requests to the canary with the same path",
            stable.model_name
        ));
    }
    if stable.name.len() > MAX_NAME_WITH_CANARY {
        return Err(format!(
            "metadata.name {:?} is too long for a canary: its Deployment and Service are named \
             <name>{CANARY_SUFFIX}, so the name may have at most {MAX_NAME_WITH_CANARY} characters",
            stable.name
        ));
    }
    match (c.mode, c.traffic_percent) {
        (_, Some(p)) if !(0..=100).contains(&p) => {
            return Err(format!("spec.canary.trafficPercent {p} must be between 0 and 100"));
        }
        (CanaryMode::Shadow, Some(_)) => {
            return Err("spec.canary.trafficPercent does not apply to mode: shadow (every answer comes from the \
                        stable model; use sampleRate for the share copied to the canary)"
                .into());
        }
        (CanaryMode::Split, None) => {
            return Err("spec.canary.trafficPercent is required with mode: split (0-100)".into());
        }
        _ => {}
    }
    if let Some(r) = c.sample_rate {
        if c.mode != CanaryMode::Shadow {
            return Err("spec.canary.sampleRate applies only to mode: shadow".into());
        }
        if !(0.0..=1.0).contains(&r) {
            return Err(format!("spec.canary.sampleRate {r} must be between 0 and 1"));
        }
    }
    if let Some(h) = &c.sticky_header {
        if h.is_empty() || !h.bytes().all(is_header_name_byte) {
            return Err(format!("spec.canary.stickyHeader {h:?} must be an HTTP header name"));
        }
        if c.mode != CanaryMode::Split {
            return Err("spec.canary.stickyHeader applies only to mode: split".into());
        }
    }
    let replicas = c.replicas.unwrap_or(1);
    if !(1..=100).contains(&replicas) {
        return Err(format!("spec.canary.replicas {replicas} must be between 1 and 100"));
    }
    at_least_one("spec.canary.timeoutMillis", c.timeout_millis)?;

    let models = vec![ServedModel {
        name: stable.model_name.clone(),
        uri: model.uri.clone(),
        version: model.version.clone(),
        sha256: model.sha256.clone(),
    }];
    let mut spec = stable.spec.clone();
    spec.model = Some(model.clone());
    spec.replicas = Some(replicas);
    spec.autoscaling = None;
    spec.canary = None;
    let service = ValidatedService {
        name: format!("{}{CANARY_SUFFIX}", stable.name),
        spec,
        models,
        scaling: Scaling::Fixed(replicas),
        track: Track::Canary,
        canary: None,
        ..stable.clone()
    };
    Ok(Some(Canary {
        model,
        service: Box::new(service),
        mode: c.mode,
        traffic_percent: c.traffic_percent,
        sticky_header: c.sticky_header.clone(),
        sample_rate: c.sample_rate,
        timeout_millis: c.timeout_millis,
    }))
}

/// An RFC 9110 token character (header names).
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `spec.tracing` over the operator's inherited `OTEL_*` defaults, checked as the runtime will
/// check them, plus the service name (the InferenceService's) and its namespace as a resource
/// attribute. Empty when no endpoint results: the pods then export nothing.
fn tracing_env(
    spec: Option<&crate::crd::TracingSpec>,
    defaults: &crate::config::TracingDefaults,
    name: &str,
    namespace: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = defaults.vars.clone();
    let mut set = |replaces: &[&str], name: &str, value: String| {
        vars.retain(|(n, _)| !replaces.contains(&n.as_str()));
        vars.push((name.to_string(), value));
    };
    if let Some(t) = spec {
        if let Some(e) = &t.endpoint {
            let host = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                return Err(format!("tracing.endpoint {e:?} must be an http:// or https:// URL"));
            }
            set(
                &["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                e.clone(),
            );
        }
        if let Some(p) = t.protocol {
            set(
                &["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                p.as_str().to_string(),
            );
        }
        if let Some(r) = t.sampling_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("tracing.samplingRatio {r} must be between 0 and 1"));
            }
            set(
                &["OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"],
                "OTEL_TRACES_SAMPLER",
                "parentbased_traceidratio".into(),
            );
            set(&[], "OTEL_TRACES_SAMPLER_ARG", r.to_string());
        }
    }
    // The runtime's own check, so a pod never fails to start on settings accepted here.
    let lookup = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    match kinfer_telemetry::Settings::from_lookup(&lookup) {
        Ok(None) => return Ok(Vec::new()),
        Ok(Some(_)) => {}
        Err(e) => return Err(format!("tracing: {e}")),
    }
    vars.push(("OTEL_SERVICE_NAME".into(), name.to_string()));
    vars.push(("OTEL_RESOURCE_ATTRIBUTES".into(), format!("k8s.namespace.name={namespace}")));
    Ok(vars)
}

fn at_least_one(field: &str, v: Option<i64>) -> Result<(), String> {
    match v {
        Some(n) if n < 1 => Err(format!("{field} {n} must be at least 1")),
        _ => Ok(()),
    }
}

/// `["*"]`, or origins `http(s)://host[:port]` without path (what a browser sends in `Origin`).
fn validate_cors_origins(origins: &[String]) -> Result<(), String> {
    if origins.is_empty() {
        return Err("cors.allowedOrigins must list at least one origin (or \"*\")".into());
    }
    if origins.iter().any(|o| o == "*") {
        return if origins.len() == 1 {
            Ok(())
        } else {
            Err("cors.allowedOrigins: \"*\" must be the only entry".into())
        };
    }
    for o in origins {
        let host_port = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
        let ok = host_port.is_some_and(|hp| {
            let (host, port) = hp.split_once(':').unwrap_or((hp, ""));
            !host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && (hp.len() == host.len()
                    || (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())))
        });
        if !ok {
            return Err(format!(
                "cors.allowedOrigins entry {o:?} must be \"*\" or an http(s) origin such as \
                 https://app.example.com (no path)"
            ));
        }
    }
    Ok(())
}

/// `spec.model` or `spec.models` (exactly one; the list non-empty, names given and unique, one
/// storage), each model checked with its field path in the message.
fn validate_models(spec: &InferenceServiceSpec, isvc_name: &str) -> Result<Vec<ServedModel>, String> {
    let entries: Vec<(String, &ModelSpec)> = match (&spec.model, &spec.models) {
        (Some(_), Some(_)) => return Err("set either spec.model (one model) or spec.models (several), not both".into()),
        (None, None) => {
            return Err("set spec.model (one model) or spec.models (several models in one Deployment)".into());
        }
        (Some(m), None) => vec![("model".to_string(), m)],
        (None, Some(list)) if list.is_empty() => return Err("spec.models must list at least one model".into()),
        (None, Some(list)) => list.iter().enumerate().map(|(i, m)| (format!("models[{i}]"), m)).collect(),
    };
    let mut names = BTreeSet::new();
    let mut served = Vec::with_capacity(entries.len());
    for (field, m) in &entries {
        check_model(field, m)?;
        let name = match (&m.name, spec.models.is_some()) {
            (Some(n), _) => n.clone(),
            (None, false) => isvc_name.to_string(),
            (None, true) => return Err(format!("{field}.name is required: every entry of spec.models needs a name")),
        };
        if !names.insert(name.clone()) {
            return Err(format!("{field}.name {name:?} is used twice: spec.models names must be unique"));
        }
        if m.storage != entries[0].1.storage {
            return Err(format!(
                "{field}.storage differs from models[0].storage: every entry of spec.models must have the \
                 same storage (the pods have one set of S3 settings)"
            ));
        }
        served.push(ServedModel { name, uri: m.uri.clone(), version: m.version.clone(), sha256: m.sha256.clone() });
    }
    Ok(served)
}

fn check_model(field: &str, m: &ModelSpec) -> Result<(), String> {
    validate_model_uri(field, &m.uri)?;
    if m.storage.is_some() && !m.uri.starts_with("s3://") {
        return Err(format!("{field}.storage applies only to s3:// model uris"));
    }
    if let Some(endpoint) = m.storage.as_ref().and_then(|s| s.endpoint.as_ref())
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(format!("{field}.storage.endpoint {endpoint:?} must be an http:// or https:// URL"));
    }
    if let Some(sha) = &m.sha256
        && !(sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(format!("{field}.sha256 must be 64 lowercase hex digits"));
    }
    Ok(())
}

fn validate_model_uri(field: &str, uri: &str) -> Result<(), String> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(()),
            _ => Err(format!("{field}.uri {uri:?} must look like s3://bucket/key/of/model.onnx")),
        }
    } else if uri.starts_with("http://") || uri.starts_with("https://") {
        Ok(())
    } else {
        Err(format!(
            "{field}.uri {uri:?} must start with s3://, http:// or https:// (file paths only work \
             outside a cluster)"
        ))
    }
}

fn has_resource(resources: Option<&ResourceRequirements>, name: &str) -> bool {
    resources.is_some_and(|r| {
        r.requests.as_ref().is_some_and(|m| m.contains_key(name))
            || r.limits.as_ref().is_some_and(|m| m.contains_key(name))
    })
}

/// Threads from the CPU limit, else the CPU request, rounded up.
fn cpu_threads(resources: Option<&ResourceRequirements>) -> Result<Option<i32>, String> {
    let Some(r) = resources else { return Ok(None) };
    let cpu = r.limits.as_ref().and_then(|m| m.get("cpu")).or_else(|| r.requests.as_ref().and_then(|m| m.get("cpu")));
    match cpu {
        None => Ok(None),
        Some(q) => parse_cpu_millis(q)
            .map(|m| Some(i32::try_from(m.div_ceil(1000).max(1)).unwrap_or(i32::MAX)))
            .ok_or_else(|| format!("resources cpu quantity {:?} is not a valid CPU amount", q.0)),
    }
}

/// Parses a quantity of bytes (`1000000`, `256Mi`, `1G`, `1.5Gi`, `1e6`) into a whole number;
/// `None` when it is not one (a fraction of a byte, `100m`, negative, too large).
pub fn parse_bytes(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() + frac.len() > 30 {
        return None;
    }
    // number = digits / 10^frac.len(); the suffix multiplies it (or divides, for `e-N`).
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let (mul, exp10): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().ok().filter(|x| (-30..=30).contains(x))?),
        _ => return None,
    };
    let exp = exp10 - frac.len() as i32;
    let scaled = digits.checked_mul(mul)?;
    let value = if exp >= 0 {
        scaled.checked_mul(10u128.checked_pow(exp as u32)?)?
    } else {
        let div = 10u128.checked_pow((-exp) as u32)?;
        if !scaled.is_multiple_of(div) {
            return None;
        }
        scaled / div
    };
    u64::try_from(value).ok()
}

/// Parses a CPU quantity (`500m`, `2`, `1.5`) into millicores.
pub fn parse_cpu_millis(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().ok();
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut frac_millis = 0u64;
    for (i, b) in frac.bytes().take(3).enumerate() {
        frac_millis += u64::from(b - b'0') * 10u64.pow(2 - i as u32);
    }
    let rest_nonzero = frac.bytes().skip(3).any(|b| b != b'0');
    int.checked_mul(1000)?.checked_add(frac_millis + u64::from(rest_nonzero))
}

fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_quantities_parse_to_millicores() {
        assert_eq!(parse_cpu_millis(&q("500m")), Some(500));
        assert_eq!(parse_cpu_millis(&q("2")), Some(2000));
        assert_eq!(parse_cpu_millis(&q("1.5")), Some(1500));
        assert_eq!(parse_cpu_millis(&q("0.0001")), Some(1));
        assert_eq!(parse_cpu_millis(&q("two")), None);
        assert_eq!(parse_cpu_millis(&q("")), None);
    }

    #[test]
    fn byte_quantities_parse_to_whole_bytes() {
        for (s, want) in [
            ("1000000", Some(1_000_000)),
            ("256Mi", Some(256 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1.5Gi", Some(3 << 29)),
            ("1G", Some(1_000_000_000)),
            ("64k", Some(64_000)),
            ("1e6", Some(1_000_000)),
            ("0", Some(0)),
            ("100m", None),
            ("0.5", None),
            ("-1Mi", None),
            ("1.2.3", None),
            ("Mi", None),
            ("", None),
            ("99999999999Ei", None),
        ] {
            assert_eq!(parse_bytes(&q(s)), want, "{s}");
        }
    }

    #[test]
    fn invalid_specs_are_refused_with_a_message_naming_the_field() {
        use crate::fixtures::fixture;
        let cfg = OperatorConfig::default();
        type Mutation = Box<dyn Fn(&mut InferenceService)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "not both",
                Box::new(|i| {
                    i.spec.replicas = Some(2);
                    i.spec.autoscaling = Some(serde_json::from_value(serde_json::json!({"maxReplicas": 3})).unwrap());
                }),
            ),
            ("model.uri", Box::new(|i| i.spec.model.as_mut().unwrap().uri = "file:///m.onnx".into())),
            ("model.uri", Box::new(|i| i.spec.model.as_mut().unwrap().uri = "s3://bucket-only".into())),
            (
                "model.storage applies only to s3://",
                Box::new(|i| {
                    i.spec.model.as_mut().unwrap().uri = "https://x/m.onnx".into();
                    i.spec.model.as_mut().unwrap().storage =
                        Some(serde_json::from_value(serde_json::json!({"region": "eu-west-1"})).unwrap());
                }),
            ),
            ("model.sha256", Box::new(|i| i.spec.model.as_mut().unwrap().sha256 = Some("ABC".into()))),
            ("set spec.model (one model) or spec.models (several models", Box::new(|i| i.spec.model = None)),
            ("not both", Box::new(|i| i.spec.models = Some(vec![i.spec.model.clone().unwrap()]))),
            (
                "at least one model",
                Box::new(|i| {
                    i.spec.model = None;
                    i.spec.models = Some(vec![]);
                }),
            ),
            ("models[0].name is required", Box::new(|i| i.spec.models = i.spec.model.take().map(|m| vec![m]))),
            (
                "models[1].name \"iris\" is used twice",
                Box::new(|i| {
                    let mut m = i.spec.model.take().unwrap();
                    m.name = Some("iris".into());
                    i.spec.models = Some(vec![m.clone(), m]);
                }),
            ),
            (
                "models[1].storage differs",
                Box::new(|i| {
                    let mut a = i.spec.model.take().unwrap();
                    a.name = Some("a".into());
                    let mut b = a.clone();
                    b.name = Some("b".into());
                    b.storage = Some(serde_json::from_value(serde_json::json!({"region": "eu-west-1"})).unwrap());
                    i.spec.models = Some(vec![a, b]);
                }),
            ),
            (
                "models[1].uri",
                Box::new(|i| {
                    let mut a = i.spec.model.take().unwrap();
                    a.name = Some("a".into());
                    let mut b = a.clone();
                    b.name = Some("b".into());
                    b.uri = "file:///m.onnx".into();
                    i.spec.models = Some(vec![a, b]);
                }),
            ),
            ("spec.replicas", Box::new(|i| i.spec.replicas = Some(-1))),
            (
                "minReplicas",
                Box::new(|i| {
                    i.spec.autoscaling =
                        Some(serde_json::from_value(serde_json::json!({"minReplicas": 4, "maxReplicas": 3})).unwrap());
                }),
            ),
            (
                "runtime.env",
                Box::new(|i| {
                    i.spec.runtime = Some(
                        serde_json::from_value(serde_json::json!({"env": [{"name": "A"}, {"name": "A"}]})).unwrap(),
                    );
                }),
            ),
            ("metadata.name", Box::new(|i| i.metadata.name = Some("9lives".into()))),
            (
                "cors.allowedOrigins entry \"https://a.example.com/app\"",
                Box::new(|i| {
                    i.spec.cors =
                        Some(crate::crd::CorsSpec { allowed_origins: vec!["https://a.example.com/app".into()] });
                }),
            ),
            (
                "cors.allowedOrigins entry \"a.example.com\"",
                Box::new(|i| {
                    i.spec.cors = Some(crate::crd::CorsSpec { allowed_origins: vec!["a.example.com".into()] })
                }),
            ),
            (
                "must be the only entry",
                Box::new(|i| {
                    i.spec.cors = Some(crate::crd::CorsSpec {
                        allowed_origins: vec!["*".into(), "https://a.example.com".into()],
                    });
                }),
            ),
            ("at least one origin", Box::new(|i| i.spec.cors = Some(crate::crd::CorsSpec { allowed_origins: vec![] }))),
            (
                "limits.rateLimitBurst needs limits.rateLimitPerSecond",
                Box::new(|i| {
                    i.spec.limits = Some(crate::crd::LimitsSpec { rate_limit_burst: Some(5), ..Default::default() });
                }),
            ),
            (
                "limits.rateLimitPerSecond",
                Box::new(|i| {
                    i.spec.limits =
                        Some(crate::crd::LimitsSpec { rate_limit_per_second: Some(-1.0), ..Default::default() });
                }),
            ),
            (
                "cache needs maxEntries or maxBytes",
                Box::new(|i| {
                    i.spec.cache = Some(crate::crd::CacheSpec { ttl_seconds: Some(60), ..Default::default() });
                }),
            ),
            (
                "cache.maxEntries 0 must be at least 1",
                Box::new(|i| i.spec.cache = Some(crate::crd::CacheSpec { max_entries: Some(0), ..Default::default() })),
            ),
            (
                "cache.ttlSeconds -1 must be at least 1",
                Box::new(|i| {
                    i.spec.cache = Some(crate::crd::CacheSpec {
                        max_entries: Some(10),
                        ttl_seconds: Some(-1),
                        ..Default::default()
                    });
                }),
            ),
            (
                "cache.maxBytes \"0.5\" must be a positive whole number of bytes",
                Box::new(|i| {
                    i.spec.cache = Some(crate::crd::CacheSpec { max_bytes: Some(q("0.5")), ..Default::default() });
                }),
            ),
            (
                "limits.maxConcurrency 0 must be at least 1",
                Box::new(|i| {
                    i.spec.limits = Some(crate::crd::LimitsSpec { max_concurrency: Some(0), ..Default::default() });
                }),
            ),
            (
                "limits.maxConnections 0 must be at least 1",
                Box::new(|i| {
                    i.spec.limits = Some(crate::crd::LimitsSpec { max_connections: Some(0), ..Default::default() });
                }),
            ),
            (
                "limits.headerTimeoutMillis 0 must be at least 1",
                Box::new(|i| {
                    i.spec.limits =
                        Some(crate::crd::LimitsSpec { header_timeout_millis: Some(0), ..Default::default() });
                }),
            ),
            (
                "image.topK -1 must be at least 0",
                Box::new(|i| i.spec.image = Some(crate::crd::ImageSpec { preprocess: "auto".into(), top_k: Some(-1) })),
            ),
            (
                "image.preprocess",
                Box::new(|i| i.spec.image = Some(crate::crd::ImageSpec { preprocess: " ".into(), top_k: None })),
            ),
            (
                "cpu quantity",
                Box::new(|i| {
                    i.spec.resources =
                        Some(serde_json::from_value(serde_json::json!({"limits": {"cpu": "lots"}})).unwrap());
                }),
            ),
        ];
        for (needle, mutate) in cases {
            let mut isvc = fixture("minimal.yaml");
            mutate(&mut isvc);
            let err = validate(&isvc, &cfg).expect_err(needle);
            assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
        }
        for ok in [vec!["*"], vec!["https://app.example.com", "http://localhost:3000"]] {
            let mut isvc = fixture("minimal.yaml");
            isvc.spec.cors = Some(crate::crd::CorsSpec { allowed_origins: ok.iter().map(|o| o.to_string()).collect() });
            validate(&isvc, &cfg).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        validate(&fixture("full.yaml"), &cfg).unwrap();
        let v = validate(&fixture("minimal.yaml"), &cfg).unwrap();
        assert_eq!((v.scaling, v.model_name.as_str(), v.threads), (Scaling::Fixed(1), "iris", None));
    }

    #[test]
    fn a_canary_needs_spec_model_not_a_list() {
        let mut i = crate::fixtures::fixture("canary.yaml");
        let mut m = i.spec.model.take().unwrap();
        m.name = Some("fraud".into());
        i.spec.models = Some(vec![m]);
        let err = validate(&i, &OperatorConfig::default()).unwrap_err();
        assert!(err.contains("spec.canary needs spec.model"), "{err}");
    }

    #[test]
    fn canary_specs_are_checked_and_the_canary_runtime_derived() {
        use crate::fixtures::fixture;
        let cfg = OperatorConfig::default();
        let v = validate(&fixture("canary.yaml"), &cfg).unwrap();
        let c = v.canary.as_ref().expect("canary");
        assert_eq!(v.track, Track::Stable);
        assert_eq!((c.service.name.as_str(), c.service.track), ("fraud-canary", Track::Canary));
        assert_eq!((c.service.model_name.as_str(), c.model().version.as_str()), ("fraud", "4"));
        assert_eq!(c.service.scaling, Scaling::Fixed(1));
        assert!(c.service.spec.canary.is_none() && c.service.spec.autoscaling.is_none());
        assert_eq!(c.service.spec.limits, v.spec.limits, "everything but the model as stable");

        type Mutation = Box<dyn Fn(&mut InferenceService)>;
        let canary = |f: fn(&mut crate::crd::CanarySpec)| -> Mutation {
            Box::new(move |i: &mut InferenceService| f(i.spec.canary.as_mut().unwrap()))
        };
        let cases: Vec<(&str, Mutation)> = vec![
            ("spec.canary.model is required", canary(|c| c.model = None)),
            ("spec.canary.trafficPercent 101 must be between 0 and 100", canary(|c| c.traffic_percent = Some(101))),
            ("spec.canary.trafficPercent is required with mode: split", canary(|c| c.traffic_percent = None)),
            ("does not apply to mode: shadow", canary(|c| c.mode = crate::crd::CanaryMode::Shadow)),
            ("spec.canary.sampleRate applies only to mode: shadow", canary(|c| c.sample_rate = Some(0.5))),
            (
                "spec.canary.model must differ from spec.model",
                canary(|c| {
                    let m = c.model.as_mut().unwrap();
                    m.uri = "s3://models/fraud/3/model.onnx".into();
                    m.version = "3".into();
                }),
            ),
            (
                "spec.canary.model.name \"fraud-v4\" must be unset or equal to the stable model's name \"fraud\"",
                canary(|c| c.model.as_mut().unwrap().name = Some("fraud-v4".into())),
            ),
            ("spec.canary.model.uri", canary(|c| c.model.as_mut().unwrap().uri = "file:///m.onnx".into())),
            ("spec.canary.stickyHeader", canary(|c| c.sticky_header = Some("x user".into()))),
            ("spec.canary.replicas 0 must be between 1 and 100", canary(|c| c.replicas = Some(0))),
            ("too long for a canary", Box::new(|i| i.metadata.name = Some(format!("f{}", "r".repeat(56))))),
        ];
        for (needle, mutate) in cases {
            let mut isvc = fixture("canary.yaml");
            mutate(&mut isvc);
            let err = validate(&isvc, &cfg).expect_err(needle);
            assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
        }
        let mut isvc = fixture("canary.yaml");
        isvc.metadata.name = Some(format!("f{}", "r".repeat(55)));
        validate(&isvc, &cfg).expect("56 characters leave room for -canary");
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns1035_label("fraud-v2"));
        assert!(!is_dns1035_label("2fraud"));
        assert!(!is_dns1035_label("Fraud"));
        assert!(!is_dns1035_label("fraud-"));
        assert!(!is_dns1035_label(&"a".repeat(64)));
    }
}
