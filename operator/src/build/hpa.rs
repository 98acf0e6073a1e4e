//! The HorizontalPodAutoscaler (autoscaling/v2), present only with `spec.autoscaling`.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget, ResourceMetricSource,
};

use super::child_meta;
use crate::validate::{Scaling, ValidatedService};

/// Builds the autoscaler of the Deployment, or `None` when replicas are fixed.
pub fn build_hpa(isvc: &ValidatedService) -> Option<HorizontalPodAutoscaler> {
    let Scaling::Auto(a) = &isvc.scaling else {
        return None;
    };
    let mut metrics = vec![utilization("cpu", a.target_cpu_utilization)];
    if let Some(m) = a.target_memory_utilization {
        metrics.push(utilization("memory", m));
    }
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(isvc),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: isvc.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: a.scale_down_stabilization_seconds.map(|s| HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(s),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        }),
        status: None,
    })
}

fn utilization(resource: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}
