//! Prints the InferenceService CRD as YAML (`make crds` writes it to crds/).

use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&kinfer_operator::InferenceService::crd())?);
    Ok(())
}
