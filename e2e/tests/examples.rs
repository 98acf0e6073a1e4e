//! The manifests in examples/ are valid InferenceServices for this operator: each one
//! deserializes into the operator's own types and passes its validation (no cluster needed).

use std::path::Path;

use kinfer_e2e::repo_root;
use kinfer_operator::{InferenceService, OperatorConfig, validate::validate};

fn example_services() -> Vec<(String, InferenceService)> {
    let dir = repo_root().join("examples");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("valid YAML");
            if value.get("kind").and_then(|k| k.as_str()) != Some("InferenceService") {
                continue;
            }
            let isvc: InferenceService = serde_yaml::from_value(value)
                .unwrap_or_else(|e| panic!("{}: not an InferenceService of this operator: {e}", name(&path)));
            out.push((name(&path), isvc));
        }
    }
    out
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

use serde::Deserialize as _;

#[test]
fn every_example_inference_service_passes_the_operators_validation() {
    let services = example_services();
    assert!(services.len() >= 3, "expected the iris, fraud and GPU examples, found {}", services.len());
    for (file, mut isvc) in services {
        // What the API server adds on create.
        isvc.metadata.namespace = Some("default".into());
        isvc.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
        isvc.metadata.generation = Some(1);
        let v = validate(&isvc, &OperatorConfig::default())
            .unwrap_or_else(|e| panic!("{file}: refused by the operator: {e}"));
        assert!(!v.model_name.is_empty(), "{file}");
    }
}

#[test]
fn the_fraud_example_uses_autoscaling_batching_and_logging() {
    let (_, fraud) = example_services()
        .into_iter()
        .find(|(f, _)| f == "fraud-autoscaling.yaml")
        .expect("examples/fraud-autoscaling.yaml");
    let a = fraud.spec.autoscaling.as_ref().expect("autoscaling");
    assert!(a.min_replicas >= 1 && a.max_replicas > a.min_replicas);
    assert!(fraud.spec.batching.is_some(), "batching");
    assert!(fraud.spec.logging.is_some(), "request logging");
}

#[test]
fn the_gpu_example_asks_for_a_gpu() {
    let (_, gpu) = example_services().into_iter().find(|(f, _)| f == "gpu.yaml").expect("examples/gpu.yaml");
    assert_eq!(gpu.spec.gpus.as_ref().expect("gpus").count, 1);
}
