//! The canary's children (`spec.canary`): a Deployment and a Service named `<name>-canary`,
//! built like the stable ones from the derived [`ValidatedService`] of
//! [`crate::validate::Canary`], and the routing environment of the stable pods, which forward a
//! share (or a copy) of the requests to the canary Service's ClusterIP.
//!
//! The canary's pods carry `app.kubernetes.io/instance=<name>-canary`, so neither the stable
//! Deployment's selector nor the user-facing Service's selects them; they keep
//! `serving.kinfer.dev/inferenceservice=<name>` (the pod watch maps them to their resource) and
//! add `serving.kinfer.dev/track=canary`.

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{EnvVar, Service, ServicePort, ServiceSpec},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    child_meta,
    deployment::{GRPC_PORT, HTTP_PORT, build_deployment, value},
    selector_labels,
};
use crate::validate::{Canary, ValidatedService};

/// Label on the canary's children and pods (value `canary`); the stable ones do not carry it.
pub const TRACK_LABEL: &str = "serving.kinfer.dev/track";

/// Every variable of the routing contract (runtime side: the stable pods' canary router).
pub const CANARY_ENV: &[&str] = &[
    "KINFER_CANARY_URL",
    "KINFER_CANARY_GRPC_URL",
    "KINFER_CANARY_MODE",
    "KINFER_CANARY_PERCENT",
    "KINFER_CANARY_STICKY_HEADER",
    "KINFER_CANARY_SAMPLE_RATE",
    "KINFER_CANARY_VERSION",
    "KINFER_CANARY_TIMEOUT_MS",
];

/// The canary's Deployment and Service.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryChildren {
    /// The canary runtime pods (`canary.replicas`, no autoscaler).
    pub deployment: Deployment,
    /// ClusterIP Service in front of them, on the runtime's own ports (8080 HTTP, 8081 gRPC),
    /// which the stable pods call.
    pub service: Service,
}

/// The canary's children, when `spec.canary` is set.
pub fn build_canary(isvc: &ValidatedService) -> Option<CanaryChildren> {
    let canary = isvc.canary.as_ref()?;
    let service = &canary.service;
    Some(CanaryChildren { deployment: build_deployment(service), service: build_canary_service(service) })
}

fn build_canary_service(canary: &ValidatedService) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: Some(name.into()),
        ..ServicePort::default()
    };
    Service {
        metadata: child_meta(canary),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(canary)),
            ports: Some(vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `http://<ip>:<port>` (IPv6 addresses in brackets).
pub fn canary_url(cluster_ip: &str, port: i32) -> String {
    if cluster_ip.contains(':') {
        format!("http://[{cluster_ip}]:{port}")
    } else {
        format!("http://{cluster_ip}:{port}")
    }
}

/// The stable pods' routing variables for a canary whose Service has `cluster_ip` (the address
/// the API server allocated: clusters without DNS still work).
pub fn routing_env(canary: &Canary, cluster_ip: &str) -> Vec<EnvVar> {
    let mut env = vec![
        value("KINFER_CANARY_URL", &canary_url(cluster_ip, HTTP_PORT)),
        value("KINFER_CANARY_GRPC_URL", &canary_url(cluster_ip, GRPC_PORT)),
        value("KINFER_CANARY_MODE", canary.mode.as_str()),
    ];
    if let Some(p) = canary.traffic_percent {
        env.push(value("KINFER_CANARY_PERCENT", &p.to_string()));
    }
    if let Some(h) = &canary.sticky_header {
        env.push(value("KINFER_CANARY_STICKY_HEADER", h));
    }
    if canary.mode == crate::crd::CanaryMode::Shadow {
        env.push(value("KINFER_CANARY_SAMPLE_RATE", &canary.sample_rate.unwrap_or(1.0).to_string()));
    }
    env.push(value("KINFER_CANARY_VERSION", &canary.model().version));
    if let Some(t) = canary.timeout_millis {
        env.push(value("KINFER_CANARY_TIMEOUT_MS", &t.to_string()));
    }
    env
}
