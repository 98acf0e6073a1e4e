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

/// Builds the Service: port 80 to the pods' named port `http`.
pub fn build_service(isvc: &ValidatedService) -> Service {
    Service {
        metadata: child_meta(isvc),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(isvc)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
