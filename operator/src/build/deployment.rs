//! The runtime Deployment: the env contract of DESIGN.md, probes, security settings.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, SleepAction,
            Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{TEMPLATE_HASH_LABEL, child_meta, labels, selector_labels};
use crate::validate::{Scaling, ValidatedService};

/// Port the runtime listens on (`KINFER_HTTP_PORT`), named `http`.
pub const HTTP_PORT: i32 = 8080;
/// Port of the runtime's gRPC server (`KINFER_GRPC_PORT`: `inference.GRPCInferenceService`,
/// gRPC health and reflection), named `grpc`.
pub const GRPC_PORT: i32 = 8081;
/// Name of the runtime container.
pub const CONTAINER_NAME: &str = "runtime";
/// Where the runtime caches downloaded models (an emptyDir; the root filesystem is read-only).
pub const CACHE_DIR: &str = "/var/cache/kinfer";
/// Where the auth Secret is mounted (read-only); the token list is `AUTH_DIR/tokens`.
pub const AUTH_DIR: &str = "/var/run/kinfer/auth";
/// Where the labels ConfigMap is mounted (read-only); the class list is `LABELS_DIR/labels.txt`.
pub const LABELS_DIR: &str = "/var/run/kinfer/labels";
const AUTH_VOLUME: &str = "auth-tokens";
const LABELS_VOLUME: &str = "labels";
/// Owner and group may read (the pod's fsGroup is the runtime's group), nobody else.
const READ_ONLY_MODE: i32 = 0o440;
/// UID/GID of the runtime image's non-root user.
const RUNTIME_UID: i64 = 65532;
/// Startup budget: 180 × 5 s = 15 minutes to download and load the model.
const STARTUP_FAILURE_THRESHOLD: i32 = 180;
const STARTUP_PERIOD_SECONDS: i32 = 5;
/// Longer than the startup budget, so a slow download is not reported as a failed rollout.
const PROGRESS_DEADLINE_SECONDS: i32 = 1200;

/// Builds the Deployment running the runtime image.
pub fn build_deployment(isvc: &ValidatedService) -> Deployment {
    build_deployment_with(isvc, Vec::new())
}

/// Builds the Deployment with extra operator-set variables (the canary routing of
/// `super::canary::routing_env`), placed before the user's `runtime.env`.
pub fn build_deployment_with(isvc: &ValidatedService, operator_env: Vec<EnvVar>) -> Deployment {
    let mut template = pod_template(isvc, operator_env);
    let hash = pod_template_hash(&template);
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH_LABEL.into(), hash);

    Deployment {
        metadata: child_meta(isvc),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns `replicas`: leave it out of the apply.
            replicas: match isvc.scaling {
                Scaling::Fixed(n) => Some(n),
                Scaling::Auto(_) => None,
            },
            selector: LabelSelector { match_labels: Some(selector_labels(isvc)), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Never remove a serving pod before its replacement is ready: a new model that
                // fails to load leaves the old pods serving.
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            revision_history_limit: Some(3),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// FNV-1a of the serialized template: stable across operator runs and Rust versions.
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn pod_template(isvc: &ValidatedService, operator_env: Vec<EnvVar>) -> PodTemplateSpec {
    let runtime = isvc.spec.runtime.clone().unwrap_or_default();
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ]);
    let custom_sa = runtime.service_account_name.is_some();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(isvc)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(isvc, operator_env)],
            service_account_name: runtime.service_account_name,
            // The runtime never talks to the Kubernetes API; a chosen ServiceAccount may need
            // its token (IRSA / workload identity), the default one does not.
            automount_service_account_token: if custom_sa { None } else { Some(false) },
            enable_service_links: Some(false),
            image_pull_secrets: runtime.image_pull_secrets,
            node_selector: runtime.node_selector,
            tolerations: runtime.tolerations,
            affinity: runtime.affinity,
            termination_grace_period_seconds: Some(30),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUNTIME_UID),
                run_as_group: Some(RUNTIME_UID),
                fs_group: Some(RUNTIME_UID),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            volumes: Some(volumes(isvc)),
            ..PodSpec::default()
        }),
    }
}

fn container(isvc: &ValidatedService, operator_env: Vec<EnvVar>) -> Container {
    let runtime = isvc.spec.runtime.clone().unwrap_or_default();
    let mut env = env(isvc, Vec::new());
    env.extend(operator_env);
    override_env(&mut env, runtime.env.unwrap_or_default());
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(isvc.image.clone()),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        // Traffic only once the model is loaded and warmed up: never a TCP probe.
        readiness_probe: Some(http_probe("/v2/health/ready", 5, 3, 2)),
        // `/v2/health/live` answers as soon as the process runs, so a long download is never
        // killed by liveness.
        liveness_probe: Some(http_probe("/v2/health/live", 10, 3, 5)),
        // Readiness and liveness start once the model is ready; a load that has not finished
        // in 15 minutes restarts the container.
        startup_probe: Some(http_probe("/v2/health/ready", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD, 2)),
        // The runtime drains in-flight requests on SIGTERM; the short sleep lets endpoints
        // controllers and proxies stop sending new traffic first.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler { sleep: Some(SleepAction { seconds: 5 }), ..LifecycleHandler::default() }),
            ..Lifecycle::default()
        }),
        resources: resources(isvc),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUNTIME_UID),
            run_as_group: Some(RUNTIME_UID),
            privileged: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(volume_mounts(isvc)),
        ..Container::default()
    }
}

/// The environment of the operator ↔ runtime contract (DESIGN.md), then the user's extra
/// variables; a user variable with the name of a contract variable replaces it in place.
fn env(isvc: &ValidatedService, extra: Vec<EnvVar>) -> Vec<EnvVar> {
    let spec = &isvc.spec;
    let mut env = match (&spec.model, isvc.models.as_slice()) {
        // One model: the single-model variables of the contract.
        (Some(_), [model]) => {
            let mut env = vec![
                value("KINFER_MODEL_URI", &model.uri),
                value("KINFER_MODEL_NAME", &model.name),
                value("KINFER_MODEL_VERSION", &model.version),
            ];
            if let Some(sha) = &model.sha256 {
                env.push(value("KINFER_MODEL_SHA256", sha));
            }
            env
        }
        // spec.models: the list, as the runtime's KINFER_MODELS JSON array.
        (_, models) => vec![value("KINFER_MODELS", &serde_json::to_string(models).unwrap_or_default())],
    };
    env.push(value("KINFER_HTTP_PORT", &HTTP_PORT.to_string()));
    env.push(value("KINFER_GRPC_PORT", &GRPC_PORT.to_string()));
    if let Some(t) = isvc.threads {
        env.push(value("KINFER_THREADS", &t.to_string()));
    }
    env.push(value("KINFER_CACHE_DIR", CACHE_DIR));
    if let Some(b) = &spec.batching {
        env.push(value("KINFER_MAX_BATCH_SIZE", &b.max_batch_size.to_string()));
        env.push(value("KINFER_MAX_BATCH_DELAY_US", &b.max_batch_delay_micros.to_string()));
    }
    if let Some(l) = &spec.logging {
        env.push(value("KINFER_LOG_URI", &l.uri));
        env.push(value("KINFER_LOG_SAMPLE_RATE", &l.sample_rate.to_string()));
        if let Some(s) = l.flush_interval_seconds {
            env.push(value("KINFER_LOG_FLUSH_INTERVAL_MS", &(i64::from(s) * 1000).to_string()));
        }
        if let Some(b) = l.max_object_bytes {
            env.push(value("KINFER_LOG_MAX_OBJECT_BYTES", &b.to_string()));
        }
        if let Some(q) = l.queue_capacity {
            env.push(value("KINFER_LOG_QUEUE_CAPACITY", &q.to_string()));
        }
    }
    if spec.auth.is_some() {
        // Only the path: the tokens stay in the Secret volume.
        env.push(value("KINFER_AUTH_TOKENS_FILE", &format!("{AUTH_DIR}/tokens")));
    }
    if let Some(c) = &spec.cors {
        env.push(value("KINFER_CORS_ORIGINS", &c.allowed_origins.join(",")));
    }
    if let Some(c) = &spec.cache {
        if let Some(n) = c.max_entries {
            env.push(value("KINFER_CACHE_MAX_ENTRIES", &n.to_string()));
        }
        // Validated: a whole number of bytes (the runtime takes an integer, not a quantity).
        if let Some(b) = c.max_bytes.as_ref().and_then(crate::validate::parse_bytes) {
            env.push(value("KINFER_CACHE_MAX_BYTES", &b.to_string()));
        }
        if let Some(t) = c.ttl_seconds {
            env.push(value("KINFER_CACHE_TTL_SECONDS", &t.to_string()));
        }
    }
    if let Some(l) = &spec.limits {
        let limits = [
            ("KINFER_MAX_BATCH_ROWS", l.max_batch_rows.map(i64::from)),
            ("KINFER_MAX_BODY_BYTES", l.max_body_bytes),
            ("KINFER_REQUEST_TIMEOUT_MS", l.request_timeout_millis),
            ("KINFER_MAX_CONCURRENCY", l.max_concurrency.map(i64::from)),
            ("KINFER_QUEUE_CAPACITY", l.queue_capacity.map(i64::from)),
            ("KINFER_BODY_TIMEOUT_MS", l.body_timeout_millis),
            ("KINFER_HEADER_TIMEOUT_MS", l.header_timeout_millis),
            ("KINFER_IDLE_TIMEOUT_SECONDS", l.idle_timeout_seconds.map(i64::from)),
            ("KINFER_MAX_CONNECTIONS", l.max_connections.map(i64::from)),
        ];
        for (name, v) in limits.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))) {
            env.push(value(name, &v.to_string()));
        }
        if let Some(r) = l.rate_limit_per_second {
            env.push(value("KINFER_RATE_LIMIT_RPS", &r.to_string()));
        }
        if let Some(b) = l.rate_limit_burst {
            env.push(value("KINFER_RATE_LIMIT_BURST", &b.to_string()));
        }
    }
    env.extend(isvc.tracing_env.iter().map(|(n, v)| value(n, v)));
    if let Some(i) = &spec.image {
        env.push(value("KINFER_IMAGE_PREPROCESS", &i.preprocess));
        if let Some(k) = i.top_k {
            env.push(value("KINFER_TOP_K", &k.to_string()));
        }
    }
    if spec.labels.is_some() {
        env.push(value("KINFER_LABELS_FILE", &format!("{LABELS_DIR}/labels.txt")));
    }
    // One storage for every model (validation refuses a list whose entries differ).
    if let Some(s) = spec.model_list().first().and_then(|m| m.storage.as_ref()) {
        if let Some(endpoint) = &s.endpoint {
            env.push(value("AWS_ENDPOINT_URL_S3", endpoint));
        }
        if let Some(region) = &s.region {
            env.push(value("AWS_REGION", region));
        }
        if s.path_style.unwrap_or(s.endpoint.is_some()) {
            env.push(value("KINFER_S3_PATH_STYLE", "true"));
        }
        if let Some(r) = &s.secret_ref {
            env.push(secret("AWS_ACCESS_KEY_ID", &r.name, &r.access_key_id_key));
            env.push(secret("AWS_SECRET_ACCESS_KEY", &r.name, &r.secret_access_key_key));
            if let Some(k) = &r.session_token_key {
                env.push(secret("AWS_SESSION_TOKEN", &r.name, k));
            }
        }
    }
    override_env(&mut env, extra);
    env
}

/// Adds `extra` to `env`; a variable of the same name is replaced in place.
fn override_env(env: &mut Vec<EnvVar>, extra: Vec<EnvVar>) {
    for e in extra {
        match env.iter_mut().find(|x| x.name == e.name) {
            Some(slot) => *slot = e,
            None => env.push(e),
        }
    }
}

/// The writable emptyDirs, then the read-only Secret (auth tokens) and ConfigMap (labels)
/// volumes, each projecting only the one key the runtime reads.
fn volumes(isvc: &ValidatedService) -> Vec<Volume> {
    let mut v = vec![empty_dir("model-cache"), empty_dir("tmp")];
    if let Some(a) = &isvc.spec.auth {
        v.push(Volume {
            name: AUTH_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(a.secret_ref.name.clone()),
                items: Some(vec![key_to_path(&a.secret_ref.key, "tokens")]),
                default_mode: Some(READ_ONLY_MODE),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    if let Some(l) = &isvc.spec.labels {
        v.push(Volume {
            name: LABELS_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: l.config_map_ref.name.clone(),
                items: Some(vec![key_to_path(&l.config_map_ref.key, "labels.txt")]),
                default_mode: Some(READ_ONLY_MODE),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    v
}

fn volume_mounts(isvc: &ValidatedService) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let mut m = vec![mount("model-cache", CACHE_DIR, false), mount("tmp", "/tmp", false)];
    if isvc.spec.auth.is_some() {
        m.push(mount(AUTH_VOLUME, AUTH_DIR, true));
    }
    if isvc.spec.labels.is_some() {
        m.push(mount(LABELS_VOLUME, LABELS_DIR, true));
    }
    m
}

fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath { key: key.into(), path: path.into(), mode: None }
}

pub(super) fn value(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
    }
}

/// The spec's resources with the GPU limit added.
fn resources(isvc: &ValidatedService) -> Option<ResourceRequirements> {
    let mut r = isvc.spec.resources.clone();
    if let Some(g) = &isvc.spec.gpus {
        r.get_or_insert_with(ResourceRequirements::default)
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(g.resource_name.clone(), Quantity(g.count.to_string()));
    }
    r
}

fn http_probe(path: &str, period: i32, failure_threshold: i32, timeout: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(timeout),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}
