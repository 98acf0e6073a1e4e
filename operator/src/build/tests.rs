//! Builder tests from the YAML fixtures in `tests/fixtures/`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, EnvVar, PodSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::*;
use crate::{
    config::OperatorConfig,
    fixtures::fixture,
    validate::{ValidatedService, validate},
};

fn valid(name: &str) -> ValidatedService {
    validate(&fixture(name), &OperatorConfig::default()).expect("fixture is valid")
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container(d: &Deployment) -> &Container {
    &pod_spec(d).containers[0]
}

fn env_map(d: &Deployment) -> BTreeMap<String, EnvVar> {
    container(d).env.iter().flatten().map(|e| (e.name.clone(), e.clone())).collect()
}

fn env_value(d: &Deployment, name: &str) -> Option<String> {
    env_map(d).get(name).and_then(|e| e.value.clone())
}

#[test]
fn deployment_runs_non_root_with_read_only_root_and_no_capabilities() {
    let d = build_deployment(&valid("minimal.yaml"));
    let pod = pod_spec(&d);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let sc = container(&d).security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_string()]));
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // writable cache and /tmp on emptyDirs, cache dir passed to the runtime
    let mounts: BTreeMap<_, _> =
        container(&d).volume_mounts.iter().flatten().map(|m| (m.mount_path.clone(), m.name.clone())).collect();
    assert!(mounts.contains_key(CACHE_DIR) && mounts.contains_key("/tmp"), "{mounts:?}");
    for v in pod.volumes.iter().flatten() {
        assert!(v.empty_dir.is_some(), "{v:?}");
    }
    assert_eq!(env_value(&d, "KINFER_CACHE_DIR").as_deref(), Some(CACHE_DIR));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(container(&d).termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
}

#[test]
fn probes_are_http_on_the_health_endpoints_and_startup_allows_slow_downloads() {
    let d = build_deployment(&valid("minimal.yaml"));
    let c = container(&d);
    let get = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let p = p.as_ref().unwrap();
        assert!(p.tcp_socket.is_none() && p.exec.is_none() && p.grpc.is_none());
        let h = p.http_get.as_ref().unwrap();
        assert_eq!(h.port, IntOrString::String("http".into()));
        h.path.clone().unwrap()
    };
    assert_eq!(get(&c.readiness_probe), "/v2/health/ready");
    assert_eq!(get(&c.liveness_probe), "/v2/health/live");
    assert_eq!(get(&c.startup_probe), "/v2/health/ready");
    let s = c.startup_probe.as_ref().unwrap();
    let budget = s.failure_threshold.unwrap() * s.period_seconds.unwrap();
    assert!(budget >= 900, "startup budget {budget}s is under 15 minutes");
    let progress = d.spec.as_ref().unwrap().progress_deadline_seconds.unwrap();
    assert!(progress > budget, "progress deadline must outlast the startup budget");
    let ports: Vec<_> = c.ports.as_ref().unwrap().iter().map(|p| (p.name.as_deref(), p.container_port)).collect();
    assert_eq!(ports, [(Some("http"), 8080), (Some("grpc"), 8081)]);
    assert_eq!(c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap().sleep.as_ref().unwrap().seconds, 5);
}

#[test]
fn rolling_update_keeps_capacity() {
    let d = build_deployment(&valid("full.yaml"));
    let spec = d.spec.as_ref().unwrap();
    let ru = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
    assert_eq!(spec.replicas, Some(3));
}

#[test]
fn minimal_env_follows_the_contract() {
    let d = build_deployment(&valid("minimal.yaml"));
    assert_eq!(env_value(&d, "KINFER_MODEL_URI").as_deref(), Some("s3://models/iris/1/model.onnx"));
    assert_eq!(env_value(&d, "KINFER_MODEL_NAME").as_deref(), Some("iris"));
    assert_eq!(env_value(&d, "KINFER_MODEL_VERSION").as_deref(), Some("1"));
    assert_eq!(env_value(&d, "KINFER_HTTP_PORT").as_deref(), Some("8080"));
    assert_eq!(env_value(&d, "KINFER_GRPC_PORT").as_deref(), Some("8081"));
    let env = env_map(&d);
    for absent in [
        "KINFER_MODEL_SHA256",
        "KINFER_THREADS",
        "KINFER_MAX_BATCH_SIZE",
        "KINFER_LOG_URI",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "KINFER_S3_PATH_STYLE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "KINFER_LOG_FLUSH_INTERVAL_MS",
        "KINFER_LOG_MAX_OBJECT_BYTES",
        "KINFER_LOG_QUEUE_CAPACITY",
        "KINFER_AUTH_TOKENS",
        "KINFER_AUTH_TOKENS_FILE",
        "KINFER_CORS_ORIGINS",
        "KINFER_MAX_BATCH_ROWS",
        "KINFER_MAX_BODY_BYTES",
        "KINFER_REQUEST_TIMEOUT_MS",
        "KINFER_MAX_CONCURRENCY",
        "KINFER_QUEUE_CAPACITY",
        "KINFER_RATE_LIMIT_RPS",
        "KINFER_RATE_LIMIT_BURST",
        "KINFER_IMAGE_PREPROCESS",
        "KINFER_TOP_K",
        "KINFER_LABELS_FILE",
    ] {
        assert!(!env.contains_key(absent), "{absent} set without being asked for");
    }
    let volumes: Vec<_> = pod_spec(&d).volumes.iter().flatten().map(|v| v.name.clone()).collect();
    assert_eq!(volumes, ["model-cache", "tmp"]);
    assert_eq!(container(&d).image.as_deref(), Some(crate::config::DEFAULT_RUNTIME_IMAGE));
}

#[test]
fn several_models_reach_the_runtime_as_kinfer_models_with_one_storage() {
    let d = build_deployment(&valid("two-models.yaml"));
    let list: serde_json::Value =
        serde_json::from_str(&env_value(&d, "KINFER_MODELS").expect("KINFER_MODELS")).unwrap();
    assert_eq!(
        list,
        serde_json::json!([
            {"name": "iris", "uri": "s3://models/iris/1/model.onnx", "version": "1"},
            {"name": "fraud", "uri": "s3://models/tabular/1/model.onnx", "version": "3",
             "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
        ])
    );
    let env = env_map(&d);
    for absent in ["KINFER_MODEL_URI", "KINFER_MODEL_NAME", "KINFER_MODEL_VERSION", "KINFER_MODEL_SHA256"] {
        assert!(!env.contains_key(absent), "{absent} set next to KINFER_MODELS");
    }
    assert_eq!(env_value(&d, "AWS_ENDPOINT_URL_S3").as_deref(), Some("http://s3.kinfer-s3.svc.cluster.local:9000"));
    assert_eq!(env_value(&d, "AWS_REGION").as_deref(), Some("us-east-1"));
    let key = env["AWS_ACCESS_KEY_ID"].value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).unwrap();
    assert_eq!(key.name, "s3-credentials");
    // One model in spec.models is still the list (its name is what the user wrote).
    let mut one = fixture("two-models.yaml");
    one.spec.models.as_mut().unwrap().truncate(1);
    let d = build_deployment(&validate(&one, &OperatorConfig::default()).unwrap());
    assert!(env_value(&d, "KINFER_MODELS").unwrap().contains(r#""name":"iris""#));
}

#[test]
fn full_env_follows_the_contract_and_credentials_come_only_from_the_secret() {
    let d = build_deployment(&valid("full.yaml"));
    let v = |n| env_value(&d, n);
    assert_eq!(v("KINFER_MODEL_URI").as_deref(), Some("s3://models/fraud/3/model.onnx"));
    assert_eq!(v("KINFER_MODEL_NAME").as_deref(), Some("fraud-detector"));
    assert_eq!(
        v("KINFER_MODEL_SHA256").as_deref(),
        Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
    );
    assert_eq!(v("KINFER_THREADS").as_deref(), Some("2"), "1500m limit rounds up to 2");
    assert_eq!(v("KINFER_MAX_BATCH_SIZE").as_deref(), Some("32"));
    assert_eq!(v("KINFER_MAX_BATCH_DELAY_US").as_deref(), Some("2000"));
    assert_eq!(v("KINFER_LOG_URI").as_deref(), Some("s3://inference-logs/fraud/"));
    assert_eq!(v("KINFER_LOG_SAMPLE_RATE").as_deref(), Some("0.25"));
    assert_eq!(v("AWS_ENDPOINT_URL_S3").as_deref(), Some("http://minio.storage:9000"));
    assert_eq!(v("AWS_REGION").as_deref(), Some("us-east-1"));
    assert_eq!(v("KINFER_S3_PATH_STYLE").as_deref(), Some("true"));

    let env = env_map(&d);
    for (var, key) in [
        ("AWS_ACCESS_KEY_ID", "access-key"),
        ("AWS_SECRET_ACCESS_KEY", "secret-key"),
        ("AWS_SESSION_TOKEN", "session-token"),
    ] {
        let e = &env[var];
        assert!(e.value.is_none(), "{var} must not be set in clear");
        let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("s3-creds", key));
    }
    // user env: new names appended, a contract name replaced in place (no duplicates)
    assert_eq!(v("RUST_LOG").as_deref(), Some("debug"));
    assert_eq!(v("KINFER_MODEL_VERSION").as_deref(), Some("3-hotfix"));
    let names: Vec<_> = container(&d).env.iter().flatten().map(|e| e.name.clone()).collect();
    let mut dedup = names.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(names.len(), dedup.len(), "duplicate env names: {names:?}");
    assert_eq!(names[2], "KINFER_MODEL_VERSION");
}

#[test]
fn runtime_overrides_and_gpus_reach_the_pod() {
    let d = build_deployment(&valid("full.yaml"));
    let pod = pod_spec(&d);
    let c = container(&d);
    assert_eq!(c.image.as_deref(), Some("registry.example.com/kinfer-runtime:dev"));
    assert_eq!(pod.service_account_name.as_deref(), Some("fraud-runtime"));
    assert_eq!(pod.automount_service_account_token, None);
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    assert_eq!(pod.node_selector.as_ref().unwrap()["node.kubernetes.io/instance-type"], "g5.xlarge");
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("nvidia.com/gpu"));
    assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
    let res = c.resources.as_ref().unwrap();
    let limits = res.limits.as_ref().unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    assert_eq!(limits["cpu"].0, "1500m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "512Mi");
}

#[test]
fn gpu_resource_name_can_be_overridden() {
    let mut isvc = fixture("minimal.yaml");
    isvc.spec.gpus = Some(crate::crd::GpuSpec { count: 2, resource_name: "amd.com/gpu".into() });
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    let limits = container(&d).resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits["amd.com/gpu"].0, "2");
    assert!(!limits.contains_key("nvidia.com/gpu"));
}

#[test]
fn pods_are_scraped_by_prometheus() {
    let d = build_deployment(&valid("minimal.yaml"));
    let meta = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
    let a = meta.annotations.as_ref().unwrap();
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "8080");
    assert_eq!(a["prometheus.io/path"], "/metrics");
}

#[test]
fn every_child_has_owner_reference_and_standard_labels() {
    let v = valid("autoscaling.yaml");
    let c = build(&v, Vec::new());
    let metas = [
        &c.deployment.metadata,
        &c.service.metadata,
        &c.hpa.as_ref().unwrap().metadata,
        &c.pdb.as_ref().unwrap().metadata,
    ];
    for m in metas {
        assert_eq!(m.name.as_deref(), Some("churn"));
        assert_eq!(m.namespace.as_deref(), Some("ml"));
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        let o = &owners[0];
        assert_eq!((o.kind.as_str(), o.name.as_str()), ("InferenceService", "churn"));
        assert_eq!(o.api_version, "serving.kinfer.dev/v1alpha1");
        assert_eq!(o.controller, Some(true));
        assert_eq!(o.uid, "0000-uid-isvc");
        let l = m.labels.as_ref().unwrap();
        assert_eq!(l["app.kubernetes.io/name"], "kinfer-runtime");
        assert_eq!(l["app.kubernetes.io/instance"], "churn");
        assert_eq!(l["app.kubernetes.io/component"], "predictor");
        assert_eq!(l["app.kubernetes.io/managed-by"], "kinfer-operator");
        assert_eq!(l["app.kubernetes.io/part-of"], "kinfer");
        assert_eq!(l[ISVC_LABEL], "churn");
    }
    // pods carry the labels the selector and the Service select on
    let spec = c.deployment.spec.as_ref().unwrap();
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v));
    }
    for (k, v) in c.service.spec.as_ref().unwrap().selector.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v));
    }
}

#[test]
fn service_maps_port_80_to_the_named_http_port() {
    let s = build_service(&valid("minimal.yaml"));
    let spec = s.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let p = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(p.port, 80);
    assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
}

#[test]
fn service_exposes_the_grpc_port_with_app_protocol_grpc() {
    let s = build_service(&valid("minimal.yaml"));
    let ports = s.spec.as_ref().unwrap().ports.as_ref().unwrap();
    let g = ports.iter().find(|p| p.name.as_deref() == Some("grpc")).expect("a port named grpc");
    assert_eq!(g.port, 8081);
    assert_eq!(g.target_port, Some(IntOrString::String("grpc".into())));
    assert_eq!(g.app_protocol.as_deref(), Some("grpc"));
    assert_eq!(g.protocol.as_deref(), Some("TCP"));
    // The target names a container port that exists.
    let d = build_deployment(&valid("minimal.yaml"));
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert!(c.ports.as_ref().unwrap().iter().any(|p| p.name.as_deref() == Some("grpc") && p.container_port == 8081));
}

#[test]
fn hpa_exists_only_with_autoscaling_and_owns_replicas() {
    assert!(build_hpa(&valid("minimal.yaml")).is_none());
    assert!(build_hpa(&valid("full.yaml")).is_none());
    let v = valid("autoscaling.yaml");
    assert_eq!(build_deployment(&v).spec.unwrap().replicas, None, "the HPA owns replicas");
    let hpa = build_hpa(&v).unwrap();
    let spec = hpa.spec.unwrap();
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.name, "churn");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
    let targets: BTreeMap<String, i32> = spec
        .metrics
        .unwrap()
        .into_iter()
        .map(|m| {
            let r = m.resource.unwrap();
            (r.name, r.target.average_utilization.unwrap())
        })
        .collect();
    assert_eq!(targets, BTreeMap::from([("cpu".into(), 70), ("memory".into(), 85)]));
    assert_eq!(spec.behavior.unwrap().scale_down.unwrap().stabilization_window_seconds, Some(120));
}

#[test]
fn pdb_exists_only_when_more_than_one_pod_always_runs() {
    assert!(build_pdb(&valid("minimal.yaml")).is_none(), "1 replica");
    let pdb = build_pdb(&valid("full.yaml")).expect("3 replicas");
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
    assert!(build_pdb(&valid("autoscaling.yaml")).is_some(), "minReplicas 2");
    let mut isvc = fixture("autoscaling.yaml");
    isvc.spec.autoscaling.as_mut().unwrap().min_replicas = 1;
    let v = validate(&isvc, &OperatorConfig::default()).unwrap();
    assert!(build_pdb(&v).is_none(), "minReplicas 1");
}

#[test]
fn template_hash_follows_the_pod_template_not_the_replica_count() {
    let hash = |isvc: &crate::crd::InferenceService| {
        let d = build_deployment(&validate(isvc, &OperatorConfig::default()).unwrap());
        d.spec.unwrap().template.metadata.unwrap().labels.unwrap()[TEMPLATE_HASH_LABEL].clone()
    };
    let a = fixture("minimal.yaml");
    let mut b = a.clone();
    b.spec.replicas = Some(4);
    let mut c = a.clone();
    c.spec.model.as_mut().unwrap().uri = "s3://models/iris/2/model.onnx".into();
    assert_eq!(hash(&a), hash(&a));
    assert_eq!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&c));
}

#[test]
fn logging_cors_limits_and_image_settings_reach_the_runtime_env() {
    let d = build_deployment(&valid("full.yaml"));
    let v = |n| env_value(&d, n);
    assert_eq!(v("KINFER_LOG_FLUSH_INTERVAL_MS").as_deref(), Some("30000"), "seconds → milliseconds");
    assert_eq!(v("KINFER_LOG_MAX_OBJECT_BYTES").as_deref(), Some("4194304"));
    assert_eq!(v("KINFER_LOG_QUEUE_CAPACITY").as_deref(), Some("5000"));
    assert_eq!(v("KINFER_CORS_ORIGINS").as_deref(), Some("https://dashboard.example.com,http://localhost:3000"));
    assert_eq!(v("KINFER_MAX_BATCH_ROWS").as_deref(), Some("500"));
    assert_eq!(v("KINFER_MAX_BODY_BYTES").as_deref(), Some("8388608"));
    assert_eq!(v("KINFER_REQUEST_TIMEOUT_MS").as_deref(), Some("2500"));
    assert_eq!(v("KINFER_MAX_CONCURRENCY").as_deref(), Some("64"));
    assert_eq!(v("KINFER_QUEUE_CAPACITY").as_deref(), Some("256"));
    assert_eq!(v("KINFER_RATE_LIMIT_RPS").as_deref(), Some("12.5"));
    assert_eq!(v("KINFER_RATE_LIMIT_BURST").as_deref(), Some("40"));
    assert_eq!(v("KINFER_BODY_TIMEOUT_MS").as_deref(), Some("3000"));
    assert_eq!(v("KINFER_HEADER_TIMEOUT_MS").as_deref(), Some("4000"));
    assert_eq!(v("KINFER_IDLE_TIMEOUT_SECONDS").as_deref(), Some("120"));
    assert_eq!(v("KINFER_MAX_CONNECTIONS").as_deref(), Some("2000"));
    assert_eq!(
        v("KINFER_IMAGE_PREPROCESS").as_deref(),
        Some("resize=256,crop=224x224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225")
    );
    assert_eq!(v("KINFER_TOP_K").as_deref(), Some("3"));
    assert_eq!(v("KINFER_CACHE_MAX_ENTRIES").as_deref(), Some("10000"));
    assert_eq!(v("KINFER_CACHE_MAX_BYTES").as_deref(), Some("67108864"), "64Mi → bytes");
    assert_eq!(v("KINFER_CACHE_TTL_SECONDS").as_deref(), Some("300"));

    // only the limits that are set; "*" passes through; a rate of 0 (off) is passed as such
    let mut isvc = fixture("minimal.yaml");
    isvc.spec.cors = Some(crate::crd::CorsSpec { allowed_origins: vec!["*".into()] });
    isvc.spec.limits = Some(crate::crd::LimitsSpec {
        max_body_bytes: Some(1024),
        rate_limit_per_second: Some(0.0),
        ..Default::default()
    });
    isvc.spec.image = Some(crate::crd::ImageSpec { preprocess: "auto".into(), top_k: None });
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    let env = env_map(&d);
    assert_eq!(env_value(&d, "KINFER_CORS_ORIGINS").as_deref(), Some("*"));
    assert_eq!(env_value(&d, "KINFER_MAX_BODY_BYTES").as_deref(), Some("1024"));
    assert_eq!(env_value(&d, "KINFER_RATE_LIMIT_RPS").as_deref(), Some("0"));
    assert_eq!(env_value(&d, "KINFER_IMAGE_PREPROCESS").as_deref(), Some("auto"));
    for absent in [
        "KINFER_MAX_BATCH_ROWS",
        "KINFER_REQUEST_TIMEOUT_MS",
        "KINFER_RATE_LIMIT_BURST",
        "KINFER_TOP_K",
        // unset connection settings keep the runtime's defaults
        "KINFER_BODY_TIMEOUT_MS",
        "KINFER_HEADER_TIMEOUT_MS",
        "KINFER_IDLE_TIMEOUT_SECONDS",
        "KINFER_MAX_CONNECTIONS",
    ] {
        assert!(!env.contains_key(absent), "{absent} set without being asked for");
    }
    // topK 0: raw outputs (image models that are not classifiers)
    isvc.spec.image.as_mut().unwrap().top_k = Some(0);
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    assert_eq!(env_value(&d, "KINFER_TOP_K").as_deref(), Some("0"));
}

#[test]
fn auth_tokens_come_from_a_read_only_secret_volume_never_in_clear() {
    let d = build_deployment(&valid("full.yaml"));
    let pod = pod_spec(&d);
    let vol = pod.volumes.iter().flatten().find(|v| v.secret.is_some()).expect("a Secret volume");
    let secret = vol.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("fraud-api-tokens"));
    let items = secret.items.as_ref().unwrap();
    assert_eq!(items.len(), 1, "only the token key is projected");
    assert_eq!((items[0].key.as_str(), items[0].path.as_str()), ("api-tokens", "tokens"));
    assert_eq!(secret.default_mode, Some(0o440));
    assert_eq!(secret.optional, Some(false));
    let mount = container(&d).volume_mounts.iter().flatten().find(|m| m.name == vol.name).unwrap();
    assert_eq!(mount.mount_path, AUTH_DIR);
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(env_value(&d, "KINFER_AUTH_TOKENS_FILE"), Some(format!("{AUTH_DIR}/tokens")));
    let env = env_map(&d);
    assert!(!env.contains_key("KINFER_AUTH_TOKENS"), "tokens are never passed as env");
    for e in env.values() {
        let secret_ref = e.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref());
        assert!(secret_ref.is_none_or(|r| r.name != "fraud-api-tokens"), "{e:?}");
    }
    // the whole Deployment never carries the Secret's content, only its name and key
    let text = serde_json::to_string(&d).unwrap();
    assert_eq!(text.matches("fraud-api-tokens").count(), 1, "{text}");

    // default key
    let mut isvc = fixture("minimal.yaml");
    isvc.spec.auth = serde_json::from_value(serde_json::json!({"secretRef": {"name": "tok"}})).unwrap();
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    let vol = pod_spec(&d).volumes.iter().flatten().find(|v| v.secret.is_some()).cloned().unwrap();
    let item = &vol.secret.unwrap().items.unwrap()[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), ("tokens", "tokens"));
}

#[test]
fn labels_come_from_a_read_only_config_map_volume() {
    let d = build_deployment(&valid("full.yaml"));
    let pod = pod_spec(&d);
    let vol = pod.volumes.iter().flatten().find(|v| v.config_map.is_some()).expect("a ConfigMap volume");
    let cm = vol.config_map.as_ref().unwrap();
    assert_eq!(cm.name, "fraud-classes");
    let items = cm.items.as_ref().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0].key.as_str(), items[0].path.as_str()), ("labels.txt", "labels.txt"), "default key");
    let mount = container(&d).volume_mounts.iter().flatten().find(|m| m.name == vol.name).unwrap();
    assert_eq!(mount.mount_path, LABELS_DIR);
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(env_value(&d, "KINFER_LABELS_FILE"), Some(format!("{LABELS_DIR}/labels.txt")));
    // the writable volumes stay writable, and every mount has its volume
    let mounts = container(&d).volume_mounts.clone().unwrap();
    for m in &mounts {
        assert!(pod.volumes.iter().flatten().any(|v| v.name == m.name), "{m:?}");
        let writable = m.mount_path == CACHE_DIR || m.mount_path == "/tmp";
        assert_eq!(m.read_only.unwrap_or(false), !writable, "{m:?}");
    }
    assert_eq!(mounts.len(), 4);

    let mut isvc = fixture("minimal.yaml");
    isvc.spec.labels =
        serde_json::from_value(serde_json::json!({"configMapRef": {"name": "classes", "key": "names"}})).unwrap();
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    let vol = pod_spec(&d).volumes.iter().flatten().find(|v| v.config_map.is_some()).cloned().unwrap();
    let cm = vol.config_map.unwrap();
    assert_eq!(cm.name, "classes");
    let item = &cm.items.unwrap()[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), ("names", "labels.txt"));
}

#[test]
fn template_hash_changes_with_the_new_settings() {
    let hash = |isvc: &crate::crd::InferenceService| {
        let d = build_deployment(&validate(isvc, &OperatorConfig::default()).unwrap());
        d.spec.unwrap().template.metadata.unwrap().labels.unwrap()[TEMPLATE_HASH_LABEL].clone()
    };
    let a = fixture("full.yaml");
    let mut b = a.clone();
    b.spec.auth.as_mut().unwrap().secret_ref.name = "other-tokens".into();
    let mut c = a.clone();
    c.spec.limits.as_mut().unwrap().max_batch_rows = Some(100);
    assert_ne!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&c));
}

/// examples/fraud-secured.yaml, as users copy it: tokens from its Secret through a volume.
#[test]
fn the_secured_example_builds_auth_cors_and_limits() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fraud-secured.yaml");
    let Ok(text) = std::fs::read_to_string(path) else { return };
    let doc = text.split("\n---\n").find(|d| d.contains("kind: InferenceService")).unwrap();
    let mut isvc: crate::crd::InferenceService = serde_yaml::from_str(doc).unwrap();
    isvc.metadata.namespace = Some("default".into());
    isvc.metadata.uid = Some("0000-uid-isvc".into());
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    let secret = pod_spec(&d).volumes.iter().flatten().find_map(|v| v.secret.clone()).unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("fraud-api-tokens"));
    assert_eq!(env_value(&d, "KINFER_AUTH_TOKENS_FILE"), Some(format!("{AUTH_DIR}/tokens")));
    assert!(!serde_json::to_string(&d).unwrap().contains("demo-token"), "a token leaked into the Deployment");
    assert!(env_value(&d, "KINFER_CORS_ORIGINS").unwrap().contains("https://fraud-dashboard.example.com"));
    for var in ["KINFER_MAX_BATCH_ROWS", "KINFER_MAX_BODY_BYTES", "KINFER_REQUEST_TIMEOUT_MS", "KINFER_RATE_LIMIT_RPS"]
    {
        assert!(env_value(&d, var).is_some(), "{var}");
    }
}

fn otel_env(d: &Deployment) -> BTreeMap<String, String> {
    env_map(d)
        .into_iter()
        .filter(|(n, _)| n.starts_with("OTEL_"))
        .map(|(n, e)| (n, e.value.unwrap_or_default()))
        .collect()
}

fn with_defaults(vars: &[(&str, &str)]) -> OperatorConfig {
    let vars: BTreeMap<&str, &str> = vars.iter().copied().collect();
    OperatorConfig {
        tracing: crate::config::TracingDefaults::from_lookup(|n| vars.get(n).map(|v| v.to_string())),
        ..OperatorConfig::default()
    }
}

#[test]
fn no_collector_anywhere_means_no_otel_variables() {
    assert!(otel_env(&build_deployment(&valid("minimal.yaml"))).is_empty());
    // A sampler alone does not turn tracing on.
    let cfg = with_defaults(&[("OTEL_TRACES_SAMPLER", "always_on")]);
    assert!(otel_env(&build_deployment(&validate(&fixture("minimal.yaml"), &cfg).unwrap())).is_empty());
}

#[test]
fn runtime_pods_inherit_the_operators_collector_and_name_themselves() {
    let cfg = with_defaults(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector.observability:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ("OTEL_SERVICE_NAME", "kinfer-operator"),
    ]);
    let isvc = fixture("minimal.yaml");
    let v = validate(&isvc, &cfg).unwrap();
    let env = otel_env(&build_deployment(&v));
    let ns = v.namespace.clone();
    let want: BTreeMap<String, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector.observability:4317".to_string()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_string()),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1".to_string()),
        // The operator's own service name is not inherited: the pods are the InferenceService.
        ("OTEL_SERVICE_NAME", v.name.clone()),
        ("OTEL_RESOURCE_ATTRIBUTES", format!("k8s.namespace.name={ns}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(env, want);
}

#[test]
fn spec_tracing_overrides_the_operators_defaults() {
    let cfg = with_defaults(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://default:4318/v1/traces"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ]);
    let mut isvc = fixture("minimal.yaml");
    isvc.spec.tracing = Some(crate::crd::TracingSpec {
        endpoint: Some("http://team-collector.ml:4317".into()),
        protocol: Some(crate::crd::OtlpProtocol::Grpc),
        sampling_ratio: Some(0.25),
    });
    let env = otel_env(&build_deployment(&validate(&isvc, &cfg).unwrap()));
    assert_eq!(env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str), Some("http://team-collector.ml:4317"));
    assert!(!env.contains_key("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), "the default would win over the spec: {env:?}");
    assert!(!env.contains_key("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), "{env:?}");
    assert_eq!(env.get("OTEL_EXPORTER_OTLP_PROTOCOL").map(String::as_str), Some("grpc"));
    assert_eq!(env.get("OTEL_TRACES_SAMPLER").map(String::as_str), Some("parentbased_traceidratio"));
    assert_eq!(env.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str), Some("0.25"));

    // Only the ratio: the operator's collector, the spec's sampler.
    isvc.spec.tracing = Some(crate::crd::TracingSpec { sampling_ratio: Some(0.5), ..Default::default() });
    let env = otel_env(&build_deployment(&validate(&isvc, &cfg).unwrap()));
    assert_eq!(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(String::as_str),
        Some("http://default:4318/v1/traces")
    );
    assert_eq!(env.get("OTEL_TRACES_SAMPLER_ARG").map(String::as_str), Some("0.5"));
}

#[test]
fn tracing_settings_the_runtime_would_refuse_are_refused_here() {
    let mut isvc = fixture("minimal.yaml");
    isvc.spec.tracing = Some(crate::crd::TracingSpec {
        endpoint: Some("https://collector:4317".into()),
        protocol: Some(crate::crd::OtlpProtocol::Grpc),
        sampling_ratio: None,
    });
    let e = validate(&isvc, &OperatorConfig::default()).unwrap_err();
    assert!(e.starts_with("tracing: ") && e.contains("TLS"), "{e}");
    isvc.spec.tracing = Some(crate::crd::TracingSpec { endpoint: Some("collector:4317".into()), ..Default::default() });
    let e = validate(&isvc, &OperatorConfig::default()).unwrap_err();
    assert!(e.contains("tracing.endpoint"), "{e}");
}

#[test]
fn the_cache_reaches_the_runtime_env_only_when_set() {
    let env = env_map(&build_deployment(&valid("minimal.yaml")));
    for absent in ["KINFER_CACHE_MAX_ENTRIES", "KINFER_CACHE_MAX_BYTES", "KINFER_CACHE_TTL_SECONDS"] {
        assert!(!env.contains_key(absent), "{absent} set without spec.cache");
    }
    // maxBytes as a plain integer; no TTL: entries stay until evicted.
    let mut isvc = fixture("minimal.yaml");
    isvc.spec.cache = Some(crate::crd::CacheSpec {
        max_bytes: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("5000000".into())),
        ..Default::default()
    });
    let d = build_deployment(&validate(&isvc, &OperatorConfig::default()).unwrap());
    assert_eq!(env_value(&d, "KINFER_CACHE_MAX_BYTES").as_deref(), Some("5000000"));
    assert_eq!(env_value(&d, "KINFER_CACHE_MAX_ENTRIES"), None);
    assert_eq!(env_value(&d, "KINFER_CACHE_TTL_SECONDS"), None);
}
