//! The ClusterIP Service in front of the runtime pods.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{child_meta, selector_labels};
use crate::validate::ValidatedService;

/// Port of the Service (`http://<name>.<namespace>.svc.cluster.local`), forwarded to the
/// container's `http` port.
pub const SERVICE_PORT: i32 = 80;
/// gRPC port of the Service (`<name>.<namespace>.svc.cluster.local:8081`), forwarded to the
/// container's `grpc` port; `appProtocol: grpc` tells meshes and gateways it is HTTP/2 gRPC.
pub const SERVICE_GRPC_PORT: i32 = super::deployment::GRPC_PORT;

/// Builds the Service: port 80 to the pods' named port `http`, 8081 to `grpc`.
pub fn build_service(isvc: &ValidatedService) -> Service {
    Service {
        metadata: child_meta(isvc),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(isvc)),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: SERVICE_PORT,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("grpc".into()),
                    port: SERVICE_GRPC_PORT,
                    target_port: Some(IntOrString::String("grpc".into())),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("grpc".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
