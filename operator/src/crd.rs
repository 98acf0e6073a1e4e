//! The `InferenceService` custom resource (`serving.kinfer.dev/v1alpha1`).
//!
//! Every field carries a doc comment: it becomes the `description` in the CRD and therefore the
//! text of `kubectl explain inferenceservice.spec...`. Invariants that can be checked without
//! looking at other objects are in the schema itself (patterns, bounds, CEL
//! `x-kubernetes-validations`), so the API server refuses bad manifests with a clear message;
//! `validate.rs` checks them again (and a few more) in case the installed CRD is older.
//!
//! Short name: `kisvc` (`kubectl get kisvc`). KServe already registers `isvc` for its own
//! `InferenceService`; a different short name keeps both usable when both are installed.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "serving.kinfer.dev";
/// Short name for `kubectl get kisvc`.
pub const SHORT_NAME: &str = "kisvc";

/// Desired state of an InferenceService: one ONNX model served over HTTP (Open Inference
/// Protocol v2, KServe V1 and `/predict`) by pods of the generic kinfer-runtime image.
// NB: clippy reads the repeated `type_ = "string"` of the printer columns as duplicated
// attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "serving.kinfer.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    shortname = "kisvc",
    category = "kinfer",
    doc = "InferenceService serves one ONNX model over HTTP with the kinfer runtime. \
           The operator turns it into a Deployment, a Service, and when wanted a \
           HorizontalPodAutoscaler and a PodDisruptionBudget.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the current spec is fully rolled out and serving"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        description = "In-cluster URL of the Service"
    ),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".status.modelUri",
        description = "Model uri currently served by ready pods"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready runtime pods"
    ),
    printcolumn(
        name = "Canary",
        type_ = "string",
        json_path = ".status.canary.traffic",
        description = "Traffic the canary model gets now (e.g. `10% split`, `shadow 100%`)"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.replicas) && has(self.autoscaling))",
        "message": "set either spec.replicas or spec.autoscaling, not both"
    },
    {
        "rule": "!has(self.canary) || !has(self.canary.model) || !has(self.model) || self.canary.model.uri != self.model.uri || self.canary.model.version != self.model.version",
        "message": "spec.canary.model must differ from spec.model (another uri or version): a canary identical to the stable model compares nothing"
    },
    {
        "rule": "!has(self.canary) || has(self.model)",
        "message": "spec.canary needs spec.model: a canary replaces the one stable model, not a list (spec.models)"
    },
    {
        "rule": "!(has(self.model) && has(self.models))",
        "message": "set either spec.model (one model) or spec.models (several), not both"
    },
    {
        "rule": "has(self.model) || has(self.models)",
        "message": "set spec.model (one model) or spec.models (several models in one Deployment)"
    }
]))]
pub struct InferenceServiceSpec {
    /// The model to serve. Exactly one of `model` and `models` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,

    /// Several models served by the same pods (small models packed into one Deployment), each
    /// with the fields of `model` and a `name` (required, unique). Every protocol addresses them
    /// by name; all share the pods' resources, image and request settings, and one `storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "size(self) > 0",
            "message": "spec.models must list at least one model"
        },
        {
            "rule": "self.all(m, has(m.name))",
            "message": "every entry of spec.models needs a name"
        },
        {
            "rule": "self.all(m, !has(m.name) || self.exists_one(n, has(n.name) && n.name == m.name))",
            "message": "spec.models names must be unique"
        },
        {
            "rule": "self.all(m, has(m.storage) == has(self[0].storage) && (!has(m.storage) || m.storage == self[0].storage))",
            "message": "every entry of spec.models must have the same storage (the pods have one set of S3 settings)"
        }
    ]))]
    pub models: Option<Vec<ModelSpec>>,

    /// Fixed number of runtime pods. Mutually exclusive with `autoscaling`; when neither is set
    /// one pod runs. 0 stops serving but keeps the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Scale the runtime pods with a HorizontalPodAutoscaler (autoscaling/v2) on CPU and
    /// optionally memory utilisation. Mutually exclusive with `replicas`. Utilisation is measured
    /// against the pods' requests, so `resources.requests.cpu` (and `.memory` for a memory
    /// target) must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Dynamic batching: requests arriving close together run as one inference.
    /// Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingSpec>,

    /// Request/response logging to S3 (JSON lines, written in batches). Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSpec>,

    /// Bearer-token auth on the prediction endpoints (health and metrics stay open): the tokens
    /// come from a Secret mounted read-only into the pods, never copied into the Deployment.
    /// Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Cross-origin requests from browsers (CORS). Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,

    /// Prediction cache of each runtime pod: answers repeated requests (the same decoded inputs,
    /// model version and requested outputs) from memory without running the model. Off when
    /// unset; needs `maxEntries` or `maxBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,

    /// Request limits of each runtime pod: rows and bytes per request, deadline, concurrency,
    /// queue and per-client rate limit. Unset fields keep the runtime's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,

    /// Image inputs: JPEG/PNG accepted on `/predict` (multipart) and v2 (base64 `BYTES`), with
    /// their preprocessing. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,

    /// Class names (class index → name) for `/predict`'s labels and top-k, from a ConfigMap
    /// mounted read-only into the pods. Unset: class indices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelsSpec>,

    /// Compute resources of the runtime container (requests and limits). The CPU limit (or
    /// request) also sets the number of ONNX Runtime threads unless `runtime.threads` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// GPUs for each runtime pod, added to the container's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<GpuSpec>,

    /// Overrides of the runtime pod: image, threads, extra environment, scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,

    /// OpenTelemetry traces of the runtime pods (OTLP). Unset fields take the operator's
    /// defaults (its own `OTEL_*` variables); with no endpoint anywhere no traces are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,

    /// A candidate model run beside `model` in its own Deployment and Service
    /// (`<name>-canary`): it gets a share of the requests (`mode: split`, A/B with
    /// `stickyHeader`) or a copy of them (`mode: shadow`). The Service and URL stay the same.
    /// Promote by moving `canary.model` into `model` and removing `canary`; remove `canary`
    /// alone to roll back. Unset: no canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

/// Where the runtime pods send their traces, and how many.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The collector's OTLP endpoint, e.g. `http://otel-collector.observability:4318`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`). Unset: the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.matches('^https?://[^/?#]+')",
            "message": "tracing.endpoint must be an http:// or https:// URL"
        }
    ]))]
    pub endpoint: Option<String>,

    /// OTLP transport, `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`). Unset: the
    /// operator's default, else `http/protobuf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,

    /// Fraction of new traces recorded, from 0 to 1; a request whose caller sampled its trace is
    /// always recorded (`OTEL_TRACES_SAMPLER=parentbased_traceidratio` and
    /// `OTEL_TRACES_SAMPLER_ARG`). Unset: the operator's default sampler, else every trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: Option<f64>,
}

/// OTLP transport.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (collector port 4317).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (collector port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// A candidate model served beside the stable one (see `spec.canary`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.model)",
        "message": "spec.canary.model is required: the candidate model (same fields as spec.model)"
    },
    {
        "rule": "!has(self.trafficPercent) || (self.trafficPercent >= 0 && self.trafficPercent <= 100)",
        "message": "spec.canary.trafficPercent must be between 0 and 100"
    },
    {
        "rule": "self.mode != 'shadow' || !has(self.trafficPercent)",
        "message": "spec.canary.trafficPercent does not apply to mode: shadow (every answer comes from the stable model; use sampleRate for the share copied to the canary)"
    },
    {
        "rule": "self.mode != 'split' || has(self.trafficPercent)",
        "message": "spec.canary.trafficPercent is required with mode: split (0-100)"
    },
    {
        "rule": "self.mode == 'shadow' || !has(self.sampleRate)",
        "message": "spec.canary.sampleRate applies only to mode: shadow"
    },
    {
        "rule": "self.mode == 'split' || !has(self.stickyHeader)",
        "message": "spec.canary.stickyHeader applies only to mode: split"
    }
]))]
pub struct CanarySpec {
    /// The candidate model: same fields as `spec.model`. `name` must be unset or equal to the
    /// stable model's served name (requests are forwarded with the same path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,

    /// Percent of requests answered by the canary in `split` mode (0–100; 0 runs the canary
    /// without traffic). Sets `KINFER_CANARY_PERCENT` on the stable pods. Not with `shadow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub traffic_percent: Option<i32>,

    /// `split`: `trafficPercent` of the requests are answered by the canary. `shadow`: every
    /// request is answered by the stable model and a copy (`sampleRate` of them) is sent to the
    /// canary, whose answer is only measured.
    #[serde(default)]
    pub mode: CanaryMode,

    /// `split` only: request header whose value picks the version (A/B tests): the same value
    /// always goes to the same version, on every pod, e.g. `x-user-id`
    /// (`KINFER_CANARY_STICKY_HEADER`). Requests without it are split at random. Unset: every
    /// request is split at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"))]
    pub sticky_header: Option<String>,

    /// `shadow` only: fraction of requests copied to the canary, from 0 to 1. Unset: 1 (all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_rate: Option<f64>,

    /// Runtime pods of the canary (fixed; no autoscaler). Unset: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,

    /// Longest time a stable pod waits for the canary's answer before answering the request
    /// itself, in milliseconds (`KINFER_CANARY_TIMEOUT_MS`). Unset: the runtime's default (2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub timeout_millis: Option<i64>,
}

/// How the canary gets traffic.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CanaryMode {
    /// A share of the requests is answered by the canary.
    #[default]
    Split,
    /// Requests are answered by the stable model and copied to the canary.
    Shadow,
}

impl CanaryMode {
    /// The value of `KINFER_CANARY_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryMode::Split => "split",
            CanaryMode::Shadow => "shadow",
        }
    }
}

/// Where the model is and how to fetch it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.storage) || self.uri.startsWith('s3://')",
        "message": "model.storage applies only to s3:// model uris"
    }
]))]
pub struct ModelSpec {
    /// Location of the ONNX model file: `s3://bucket/key` (AWS S3 or any S3-compatible store,
    /// see `storage`), `http://…` or `https://…`. The runtime downloads it at start.
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.startsWith('s3://') || self.startsWith('http://') || self.startsWith('https://')",
            "message": "model.uri must start with s3://, http:// or https:// (file paths only work outside a cluster)"
        },
        {
            "rule": "!self.startsWith('s3://') || self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^/].*$')",
            "message": "model.uri must look like s3://bucket/key/of/model.onnx"
        }
    ]))]
    pub uri: String,

    /// Model format. Only `onnx` is supported.
    #[serde(default)]
    pub format: ModelFormat,

    /// Name the model is served under (`/v2/models/{name}`). Defaults to the
    /// InferenceService's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"))]
    pub name: Option<String>,

    /// Version label reported by the runtime (`/v2/models/{name}/versions/{version}`).
    #[serde(default = "default_model_version")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"))]
    pub version: String,

    /// Expected SHA-256 of the model file (64 lowercase hex digits). The runtime refuses a file
    /// that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,

    /// S3 settings: endpoint of an S3-compatible store, region, addressing style and the Secret
    /// holding credentials. Without it the AWS default chain applies (IRSA / web identity
    /// through `runtime.serviceAccountName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
}

fn default_model_version() -> String {
    "1".to_string()
}

/// Model file format.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// ONNX, run with ONNX Runtime.
    #[default]
    Onnx,
}

/// S3 settings for the model (and the request log).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Endpoint of an S3-compatible store such as MinIO or Ceph, e.g.
    /// `http://minio.storage:9000` (sets `AWS_ENDPOINT_URL_S3`). Unset: AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.startsWith('http://') || self.startsWith('https://')",
            "message": "storage.endpoint must be an http:// or https:// URL"
        }
    ]))]
    pub endpoint: Option<String>,

    /// Region of the bucket (sets `AWS_REGION`), e.g. `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^[a-z0-9-]{1,32}$"))]
    pub region: Option<String>,

    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    /// Defaults to true when `endpoint` is set, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,

    /// Secret in the same namespace holding the access keys. The runtime receives them only as
    /// `secretKeyRef` environment variables; the operator never reads the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<S3SecretRef>,
}

/// Reference to a Secret with S3 credentials.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3SecretRef {
    /// Name of the Secret (same namespace as the InferenceService).
    #[schemars(length(max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,

    /// Key of the access key id in the Secret.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub access_key_id_key: String,

    /// Key of the secret access key in the Secret.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub secret_access_key_key: String,

    /// Key of a session token in the Secret, for temporary credentials. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub session_token_key: Option<String>,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_string()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_string()
}

/// Autoscaling of the runtime pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"
    }
]))]
pub struct AutoscalingSpec {
    /// Fewest pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,

    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Target average CPU utilisation in percent of the CPU request.
    #[serde(rename = "targetCPUUtilization", default = "default_target_cpu")]
    #[schemars(range(min = 1, max = 500))]
    pub target_cpu_utilization: i32,

    /// Target average memory utilisation in percent of the memory request. Unset: CPU only.
    #[serde(rename = "targetMemoryUtilization", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 500))]
    pub target_memory_utilization: Option<i32>,

    /// How long the autoscaler waits before removing pods after load drops, in seconds.
    /// Unset: the Kubernetes default (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_cpu() -> i32 {
    80
}

/// Dynamic batching settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// Largest number of requests run as one batch.
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: i32,

    /// Longest time a request waits for others to join its batch, in microseconds.
    #[serde(default = "default_batch_delay")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_batch_delay_micros: i32,
}

fn default_batch_delay() -> i32 {
    1000
}

/// Request/response logging.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// S3 prefix the log is written under, e.g. `s3://inference-logs/fraud/`. Uses the same
    /// `model.storage` settings (endpoint, region, credentials) as the model.
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')",
            "message": "logging.uri must look like s3://bucket/prefix/"
        }
    ]))]
    pub uri: String,

    /// Fraction of requests logged, from 0 (none) to 1 (all).
    #[serde(default = "default_sample_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_rate: f64,

    /// Longest time a record waits before its object is written, in seconds
    /// (`KINFER_LOG_FLUSH_INTERVAL_MS`). Unset: the runtime's default (60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub flush_interval_seconds: Option<i32>,

    /// An object is written once this many uncompressed bytes are queued in it
    /// (`KINFER_LOG_MAX_OBJECT_BYTES`). Unset: the runtime's default (8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1073741824))]
    pub max_object_bytes: Option<i64>,

    /// Records held in memory while S3 is slow; beyond it records are dropped and counted
    /// (`KINFER_LOG_QUEUE_CAPACITY`). Unset: the runtime's default (10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub queue_capacity: Option<i32>,
}

/// Bearer-token auth.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret in the same namespace holding the accepted tokens, one per line (`#` starts a
    /// comment). It is mounted read-only at `/var/run/kinfer/auth/tokens` and named by
    /// `KINFER_AUTH_TOKENS_FILE`; the operator never reads it. Requests without one of these
    /// tokens as `Authorization: Bearer …` get 401. The runtime reads the file at start: restart
    /// the pods (`kubectl rollout restart`) after rotating tokens.
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the InferenceService).
    #[schemars(length(max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,

    /// Key in the Secret whose value is the token list.
    #[serde(default = "default_tokens_key")]
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}

fn default_tokens_key() -> String {
    "tokens".to_string()
}

/// CORS settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// Origins allowed to call the endpoints from a browser (`KINFER_CORS_ORIGINS`): either
    /// `["*"]` (any origin) or a list of origins such as `https://app.example.com` or
    /// `http://localhost:3000` (scheme, host and optional port; no path).
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(o, o == '*' || o.matches('^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$'))",
            "message": "cors.allowedOrigins entries must be \"*\" or an http(s) origin such as https://app.example.com (no path)"
        },
        {
            "rule": "!self.exists(o, o == '*') || size(self) == 1",
            "message": "cors.allowedOrigins: \"*\" must be the only entry"
        }
    ]))]
    pub allowed_origins: Vec<String>,
}

/// The prediction cache of each runtime pod (least recently used entries go first).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.maxEntries) || has(self.maxBytes)",
        "message": "cache needs maxEntries or maxBytes (or both)"
    },
    {
        "rule": "!has(self.maxBytes) || (isQuantity(string(self.maxBytes)) && quantity(string(self.maxBytes)).isInteger() && quantity(string(self.maxBytes)).asInteger() > 0)",
        "message": "cache.maxBytes must be a positive whole number of bytes, as an integer or a quantity such as 256Mi"
    }
]))]
pub struct CacheSpec {
    /// Most entries kept per pod (`KINFER_CACHE_MAX_ENTRIES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub max_entries: Option<i64>,

    /// Most memory the entries may count per pod: keys (the inputs), outputs and overhead
    /// (`KINFER_CACHE_MAX_BYTES`). An integer or a Kubernetes quantity (`256Mi`, `1G`). Count it
    /// in the pod's memory request and limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Quantity>,

    /// Seconds an entry may be served after it was stored (`KINFER_CACHE_TTL_SECONDS`). Unset:
    /// until evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub ttl_seconds: Option<i64>,
}

/// Request limits of each runtime pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.rateLimitBurst) || has(self.rateLimitPerSecond)",
        "message": "limits.rateLimitBurst needs limits.rateLimitPerSecond"
    }
]))]
pub struct LimitsSpec {
    /// Most rows (or images) in one request on any protocol; more → 400 naming the limit
    /// (`KINFER_MAX_BATCH_ROWS`). Unset: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_batch_rows: Option<i32>,

    /// Largest request body in bytes; larger → 413 (`KINFER_MAX_BODY_BYTES`). Unset: 32 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967296i64))]
    pub max_body_bytes: Option<i64>,

    /// Server-side deadline of one inference request in milliseconds (a client's `timeout_ms`
    /// may only shorten it); past it → 504 (`KINFER_REQUEST_TIMEOUT_MS`). Unset: 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub request_timeout_millis: Option<i64>,

    /// Inference requests served at once by a pod; more → 429 at once
    /// (`KINFER_MAX_CONCURRENCY`). Unset: 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrency: Option<i32>,

    /// Requests that may wait for an inference thread; more → 429 at once
    /// (`KINFER_QUEUE_CAPACITY`). Unset: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub queue_capacity: Option<i32>,

    /// Requests per second allowed per API key (bearer token, else `x-api-key`) on the
    /// prediction endpoints, per pod; more → 429 with `Retry-After` (`KINFER_RATE_LIMIT_RPS`).
    /// 0 or unset: no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub rate_limit_per_second: Option<f64>,

    /// Burst size of the per-key rate limit (`KINFER_RATE_LIMIT_BURST`). Unset: one second's
    /// worth of `rateLimitPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rate_limit_burst: Option<i32>,

    /// Longest wait for a request body, from its head to its last byte, in milliseconds; past it
    /// → 408 and the connection is closed. A request takes an inference slot only once its body
    /// is complete (`KINFER_BODY_TIMEOUT_MS`). Unset: 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub body_timeout_millis: Option<i64>,

    /// Longest wait for a request head in milliseconds (from accept on a new connection, from
    /// its first byte on a kept-alive one); past it the connection is closed
    /// (`KINFER_HEADER_TIMEOUT_MS`). Unset: 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub header_timeout_millis: Option<i64>,

    /// Kept-alive connections with no request in flight and no bytes moving are closed after
    /// this many seconds (`KINFER_IDLE_TIMEOUT_SECONDS`). Keep it above the idle timeout of
    /// load balancers in front. Unset: 75.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: Option<i32>,

    /// Client connections a pod serves at once; beyond it a reserve of 32 answers only GET
    /// (health, metrics) and the rest get 429 and are closed (`KINFER_MAX_CONNECTIONS`). The
    /// runtime lowers it to fit its file descriptor limit. Unset: 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<i32>,
}

/// Image inputs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Preprocessing of uploaded images as `key=value` pairs (`KINFER_IMAGE_PREPROCESS`), e.g.
    /// `resize=256,crop=224x224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225`; keys: input,
    /// resize, crop, scale, mean, std, layout, channels, filter, max_megapixels; `auto` = every
    /// default. See docs/images.md. The runtime checks it against the model at start.
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(regex(pattern = r"^[^\r\n]+$"))]
    pub preprocess: String,

    /// Classes listed per row in `/predict`'s `top_k` (`KINFER_TOP_K`). 0: the model's raw
    /// outputs per row instead, for image models that are not classifiers (e.g. embeddings).
    /// Unset: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub top_k: Option<i32>,
}

/// Class names for classifiers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelsSpec {
    /// ConfigMap in the same namespace holding the class names, one per line, line 1 = class 0.
    /// Mounted read-only at `/var/run/kinfer/labels/labels.txt` (`KINFER_LABELS_FILE`); the
    /// runtime refuses to start when the count differs from the model's classes.
    pub config_map_ref: ConfigMapKeyRef,
}

/// A key of a ConfigMap in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap (same namespace as the InferenceService).
    #[schemars(length(max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,

    /// Key in the ConfigMap whose value is the class list.
    #[serde(default = "default_labels_key")]
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}

fn default_labels_key() -> String {
    "labels.txt".to_string()
}

fn default_sample_rate() -> f64 {
    1.0
}

/// GPUs for each runtime pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Number of GPUs per pod (set as the container's limit of `resourceName`).
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,

    /// Extended resource name of the GPU device plugin.
    #[serde(default = "default_gpu_resource")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"))]
    pub resource_name: String,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".to_string()
}

/// Overrides of the runtime pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Runtime image. Defaults to the operator's `--runtime-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// ONNX Runtime intra-op threads (`KINFER_THREADS`). Defaults to the CPU limit (or request)
    /// rounded up; with neither the runtime uses the CPUs it sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<i32>,

    /// Extra environment variables of the runtime container. An entry with the same name as
    /// one the operator sets replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "env_list_schema")]
    pub env: Option<Vec<EnvVar>>,

    /// ServiceAccount of the runtime pods (e.g. one bound to an IAM role for S3 access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub service_account_name: Option<String>,

    /// Secrets for pulling the runtime image from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// Node labels the runtime pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Affinity rules of the runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// `Option<Vec<EnvVar>>` as a list keyed by `name`, so the API server refuses duplicates
/// (which server-side apply could not merge).
fn env_list_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Option<Vec<EnvVar>>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["name"]));
    schema
}

/// Observed state of an InferenceService, computed from what its children report.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// Standard conditions. `Ready`: the current spec is fully rolled out and every wanted
    /// pod is ready (while a rollout is under way it keeps its previous status with reason
    /// `Progressing`). `Progressing`: a rollout is under way (False once complete or failed;
    /// a failed rollout has reason `ModelFailed` or `RolloutFailed` and the runtime's message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// In-cluster URL of the Service, `http://<name>.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Model uri served by the ready pods of the last complete rollout (with `spec.models`, the
    /// uris comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,

    /// Each model of the current spec: whether the ready pods serve it, and the runtime's load
    /// error when it failed to load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelStatus>,

    /// Runtime pods (all versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Runtime pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Runtime pods running the current spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,

    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The canary, while its Deployment exists (also while it is retired after a promotion or
    /// a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// Observed state of the canary.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Model version of the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Model uri of the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,

    /// Canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Canary pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Mode of the split the stable pods apply now (`split` or `shadow`); unset while no
    /// request goes to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,

    /// Percent of requests the canary answers now (split mode; 0 in shadow mode and while the
    /// stable pods do not route to it yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_percent: Option<i32>,

    /// Fraction of requests copied to the canary now (shadow mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<f64>,

    /// Header that keeps a client on one version, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,

    /// The split in effect in words, for `kubectl get kisvc`: `10% split`, `shadow 100%`, or
    /// `none` while the stable pods do not route to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<String>,

    /// Why the canary does not serve, with the runtime's own termination message when its
    /// model failed to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Conditions as a list keyed by `type` (the Kubernetes convention for `conditions`).
fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// The status of one model of `spec.model` / `spec.models`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The name it is served under.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its uri.
    pub uri: String,
    /// True when every wanted pod of the current spec serves it.
    pub ready: bool,
    /// Why it does not serve: the runtime's load error, when a pod reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl InferenceServiceSpec {
    /// The models to serve: `spec.model`, or the entries of `spec.models`.
    pub fn model_list(&self) -> Vec<&ModelSpec> {
        match (&self.model, &self.models) {
            (Some(m), _) => vec![m],
            (None, Some(list)) => list.iter().collect(),
            (None, None) => vec![],
        }
    }
}

impl InferenceService {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::Value;

    const COMMITTED: &str = include_str!("../../crds/inferenceservices.serving.kinfer.dev.yaml");

    #[test]
    fn committed_crd_yaml_is_up_to_date() {
        let generated = serde_yaml::to_string(&InferenceService::crd()).unwrap();
        assert!(
            generated == COMMITTED,
            "crds/inferenceservices.serving.kinfer.dev.yaml is out of date: run `make crds` \
             (cargo run -q -p kinfer-operator --bin crdgen > crds/inferenceservices.serving.kinfer.dev.yaml)"
        );
    }

    fn schema() -> Value {
        let crd = serde_json::to_value(InferenceService::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    /// Checks the rules of https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
    /// on every node, collecting violations with their JSON path.
    fn check_structural(node: &Value, path: &str, root: bool, errors: &mut Vec<String>) {
        let Some(obj) = node.as_object() else {
            errors.push(format!("{path}: schema is not an object"));
            return;
        };
        let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for banned in ["$ref", "$schema", "definitions", "$defs", "const", "examples"] {
            if obj.contains_key(banned) {
                errors.push(format!("{path}: has {banned}"));
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => {
                if !["object", "array", "string", "integer", "number", "boolean"].contains(&t.as_str()) {
                    errors.push(format!("{path}: unknown type {t}"));
                }
                if t == "array" && !obj.get("items").is_some_and(Value::is_object) {
                    errors.push(format!("{path}: array without a single items schema"));
                }
            }
            Some(other) => errors.push(format!("{path}: type must be one string, got {other}")),
            None if int_or_string || preserve => {}
            None => errors.push(format!("{path}: no type")),
        }
        if root && obj.get("type") != Some(&Value::String("object".into())) {
            errors.push(format!("{path}: root must be an object"));
        }
        if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
            errors.push(format!("{path}: both properties and additionalProperties"));
        }
        if obj.contains_key("nullable") && obj.get("type").is_none() && !int_or_string {
            errors.push(format!("{path}: nullable without type"));
        }
        for junctor in ["anyOf", "oneOf", "allOf", "not"] {
            let Some(branches) = obj.get(junctor) else { continue };
            let branches: Vec<&Value> = match branches {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            for (i, b) in branches.iter().enumerate() {
                for forbidden in ["description", "type", "default", "additionalProperties", "nullable"] {
                    // the int-or-string idiom `anyOf: [{type: integer}, {type: string}]` is the
                    // one allowed exception
                    if b.get(forbidden).is_some() && !(int_or_string && forbidden == "type") {
                        errors.push(format!("{path}.{junctor}[{i}]: {forbidden} inside a junctor"));
                    }
                }
            }
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                check_structural(v, &format!("{path}.{k}"), false, errors);
            }
        }
        if let Some(items) = obj.get("items") {
            check_structural(items, &format!("{path}[]"), false, errors);
        }
        if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
            check_structural(ap, &format!("{path}{{}}"), false, errors);
        }
        if obj.get("x-kubernetes-list-type") == Some(&Value::String("map".into())) {
            let required: Vec<&str> = obj["items"]["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for key in obj["x-kubernetes-list-map-keys"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !required.contains(&key) {
                    errors.push(format!("{path}: list-map key {key} is not required in items"));
                }
            }
        }
    }

    #[test]
    fn crd_schema_is_structural() {
        let mut errors = Vec::new();
        check_structural(&schema(), "openAPIV3Schema", true, &mut errors);
        assert!(errors.is_empty(), "non-structural schema:\n{}", errors.join("\n"));
    }

    fn rules(node: &Value, out: &mut Vec<(String, String)>) {
        if let Some(v) = node.get("x-kubernetes-validations").and_then(Value::as_array) {
            for r in v {
                out.push((
                    r["rule"].as_str().unwrap_or_default().to_string(),
                    r["message"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        match node {
            Value::Object(m) => m.values().for_each(|v| rules(v, out)),
            Value::Array(a) => a.iter().for_each(|v| rules(v, out)),
            _ => {}
        }
    }

    #[test]
    fn crd_has_cel_rules_with_messages() {
        let mut found = Vec::new();
        rules(&schema(), &mut found);
        for needle in [
            "set either spec.replicas or spec.autoscaling, not both",
            "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
            "model.uri must start with s3://, http:// or https://",
            "model.uri must look like s3://bucket/key",
            "model.storage applies only to s3:// model uris",
            "storage.endpoint must be an http:// or https:// URL",
            "logging.uri must look like s3://bucket/prefix/",
            "cors.allowedOrigins entries must be \"*\" or an http(s) origin",
            "cors.allowedOrigins: \"*\" must be the only entry",
            "limits.rateLimitBurst needs limits.rateLimitPerSecond",
            "spec.canary.model is required",
            "spec.canary.trafficPercent must be between 0 and 100",
            "spec.canary.trafficPercent does not apply to mode: shadow",
            "spec.canary.model must differ from spec.model",
        ] {
            assert!(found.iter().any(|(_, m)| m.contains(needle)), "no CEL rule with message {needle:?} in {found:?}");
        }
        assert!(found.iter().all(|(r, m)| !r.is_empty() && !m.is_empty()));
    }

    fn fixture_value(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cel_refusals.rs"));

    /// The CEL rules evaluated client-side (kube-cel, with schema defaults applied first, as
    /// the API server does): the valid fixtures pass, which also proves every rule on their
    /// path compiles; the invalid ones fail with the rule's message.
    #[test]
    fn cel_rules_accept_valid_fixtures_and_refuse_invalid_ones_with_their_message() {
        let validator = kube::core::cel::Validator::new();
        let schema = schema();
        for ok in ["minimal.yaml", "full.yaml", "autoscaling.yaml", "canary.yaml", "two-models.yaml"] {
            if let Err(e) = validator.validate(&schema, &fixture_value(ok), None) {
                panic!("{ok} refused: {e}");
            }
        }
        for &(file, message) in CEL_REFUSALS {
            let err = validator.validate(&schema, &fixture_value(file), None).expect_err(file).to_string();
            assert!(err.contains(message), "{file}: {err}");
        }
        let mut v = fixture_value("minimal.yaml");
        v["spec"]["model"]["uri"] = "s3://bucket-only".into();
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("must look like s3://bucket/key"), "{err}");
        v["spec"]["model"]["uri"] = "https://host/model.onnx".into();
        v["spec"]["model"]["storage"] = serde_json::json!({"region": "eu-west-1"});
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("model.storage applies only to s3://"), "{err}");
        let mut v = fixture_value("full.yaml");
        v["spec"]["logging"]["uri"] = "file:///var/log".into();
        v["spec"]["model"]["storage"]["endpoint"] = "minio:9000".into();
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("logging.uri must look like s3://bucket/prefix/"), "{err}");
        assert!(err.contains("storage.endpoint must be an http:// or https:// URL"), "{err}");

        // cache.maxBytes: an integer or a quantity of whole bytes, above 0
        let mut v = fixture_value("minimal.yaml");
        for ok in [serde_json::json!(1048576), serde_json::json!("256Mi"), serde_json::json!("1G")] {
            v["spec"]["cache"] = serde_json::json!({ "maxBytes": ok });
            if let Err(e) = validator.validate(&schema, &v, None) {
                panic!("cache.maxBytes {ok} refused: {e}");
            }
        }
        for bad in [serde_json::json!(0), serde_json::json!("0"), serde_json::json!("100m"), serde_json::json!("lots")]
        {
            v["spec"]["cache"] = serde_json::json!({ "maxBytes": bad });
            let err = validator.validate(&schema, &v, None).expect_err("refused").to_string();
            assert!(err.contains("cache.maxBytes must be a positive whole number"), "{bad}: {err}");
        }

        // CORS origins, limits
        let mut v = fixture_value("full.yaml");
        v["spec"]["cors"]["allowedOrigins"] = serde_json::json!(["https://ok.example.com:8443", "ftp://files"]);
        v["spec"]["limits"] = serde_json::json!({"rateLimitBurst": 10});
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("cors.allowedOrigins entries must be \"*\" or an http(s) origin"), "{err}");
        assert!(err.contains("limits.rateLimitBurst needs limits.rateLimitPerSecond"), "{err}");
        v["spec"]["cors"]["allowedOrigins"] = serde_json::json!(["*", "https://a.example.com"]);
        v["spec"]["limits"] = serde_json::json!({"rateLimitPerSecond": 0, "rateLimitBurst": 10});
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("cors.allowedOrigins: \"*\" must be the only entry"), "{err}");
        assert!(!err.contains("rateLimitBurst"), "{err}");
        v["spec"]["cors"]["allowedOrigins"] = serde_json::json!(["*"]);
        validator.validate(&schema, &v, None).unwrap();
        v["spec"]["cors"]["allowedOrigins"] = serde_json::json!(["https://app.example.com/path"]);
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("cors.allowedOrigins entries must be"), "{err}");
    }

    /// The canary rules beyond the fixtures: split needs a percent, sampleRate only in shadow,
    /// the same uri with another version is a valid canary.
    #[test]
    fn canary_cel_rules_cover_the_modes() {
        let validator = kube::core::cel::Validator::new();
        let schema = schema();
        let mut v = fixture_value("canary.yaml");
        v["spec"]["canary"].as_object_mut().unwrap().remove("trafficPercent");
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("spec.canary.trafficPercent is required with mode: split"), "{err}");
        v["spec"]["canary"]["mode"] = "shadow".into();
        v["spec"]["canary"]["sampleRate"] = 0.5.into();
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("spec.canary.stickyHeader applies only to mode: split"), "{err}");
        v["spec"]["canary"].as_object_mut().unwrap().remove("stickyHeader");
        validator.validate(&schema, &v, None).unwrap();
        v["spec"]["canary"]["mode"] = "split".into();
        v["spec"]["canary"]["trafficPercent"] = 5.into();
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("spec.canary.sampleRate applies only to mode: shadow"), "{err}");
        let mut v = fixture_value("canary.yaml");
        v["spec"]["canary"]["model"]["uri"] = v["spec"]["model"]["uri"].clone();
        validator.validate(&schema, &v, None).expect("same uri, another version");
        // version defaults to "1" on both sides: identical
        let mut v = fixture_value("canary.yaml");
        v["spec"]["model"].as_object_mut().unwrap().remove("version");
        v["spec"]["canary"]["model"] = v["spec"]["model"].clone();
        let err = validator.validate(&schema, &v, None).unwrap_err().to_string();
        assert!(err.contains("spec.canary.model must differ from spec.model"), "{err}");
    }

    /// The connection deadlines and limit are bounded in the schema: no 0 (the runtime refuses
    /// it at start), no value past what a pod could use.
    #[test]
    fn connection_settings_have_schema_bounds() {
        let crd = serde_json::to_value(InferenceService::crd()).unwrap();
        let limits = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["limits"]
            ["properties"];
        for (field, max) in [
            ("bodyTimeoutMillis", 600000.0),
            ("headerTimeoutMillis", 600000.0),
            ("idleTimeoutSeconds", 86400.0),
            ("maxConnections", 1000000.0),
        ] {
            assert_eq!(limits[field]["minimum"].as_f64(), Some(1.0), "{field}: {}", limits[field]);
            assert_eq!(limits[field]["maximum"].as_f64(), Some(max), "{field}: {}", limits[field]);
            assert!(limits[field]["description"].as_str().is_some_and(|d| d.contains("KINFER_")), "{field}");
        }
    }

    /// The manifests users copy from examples/ pass the CRD's CEL rules.
    #[test]
    fn example_manifests_pass_the_cel_rules() {
        let validator = kube::core::cel::Validator::new();
        let schema = schema();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut checked = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let Ok(value) = Value::deserialize(doc) else { continue };
                if value["kind"] != "InferenceService" {
                    continue;
                }
                if let Err(e) = validator.validate(&schema, &value, None) {
                    panic!("{}: {e}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked > 0, "no InferenceService found in {dir}");
    }

    #[test]
    fn crd_names_columns_and_subresources() {
        let crd = InferenceService::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.short_names, Some(vec![SHORT_NAME.to_string()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<String> =
            version.additional_printer_columns.iter().flatten().map(|c| c.name.to_uppercase()).collect();
        for c in ["READY", "URL", "MODEL", "REPLICAS", "CANARY", "AGE"] {
            assert!(columns.contains(&c.to_string()), "{columns:?}");
        }
    }

    #[test]
    fn every_spec_field_has_a_description() {
        fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    let p = format!("{path}.{k}");
                    if v.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                        missing.push(p.clone());
                    }
                    walk(v, &p, missing);
                }
            }
            if let Some(items) = node.get("items") {
                walk(items, path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&schema()["properties"]["spec"], "spec", &mut missing);
        walk(&schema()["properties"]["status"], "status", &mut missing);
        assert!(missing.is_empty(), "fields without description: {missing:?}");
    }

    #[test]
    fn defaults_apply_when_deserializing() {
        let isvc: InferenceService = serde_yaml::from_str(
            "apiVersion: serving.kinfer.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: a}\n\
             spec:\n  model: {uri: 's3://b/k.onnx', storage: {secretRef: {name: s}}}\n  \
             autoscaling: {maxReplicas: 3}\n  logging: {uri: 's3://l/'}\n  gpus: {count: 1}\n  \
             auth: {secretRef: {name: t}}\n  labels: {configMapRef: {name: c}}\n",
        )
        .unwrap();
        let s = &isvc.spec;
        assert_eq!(s.model.as_ref().unwrap().version, "1");
        assert_eq!(s.model.as_ref().unwrap().format, ModelFormat::Onnx);
        let r = s.model.as_ref().unwrap().storage.as_ref().unwrap().secret_ref.as_ref().unwrap();
        assert_eq!(r.access_key_id_key, "AWS_ACCESS_KEY_ID");
        assert_eq!(r.secret_access_key_key, "AWS_SECRET_ACCESS_KEY");
        let a = s.autoscaling.as_ref().unwrap();
        assert_eq!((a.min_replicas, a.target_cpu_utilization), (1, 80));
        assert_eq!(s.logging.as_ref().unwrap().sample_rate, 1.0);
        assert_eq!(s.gpus.as_ref().unwrap().resource_name, "nvidia.com/gpu");
        assert_eq!(s.auth.as_ref().unwrap().secret_ref.key, "tokens");
        assert_eq!(s.labels.as_ref().unwrap().config_map_ref.key, "labels.txt");
        let l = s.logging.as_ref().unwrap();
        assert_eq!((l.flush_interval_seconds, l.max_object_bytes, l.queue_capacity), (None, None, None));
    }
}
