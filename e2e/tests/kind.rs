//! End-to-end tests against a real cluster (kind via e2e/kind.sh, or any cluster of the current
//! kubeconfig). Skipped, with the reason printed, unless `KINFER_E2E=1`. Run one at a time:
//! `KINFER_E2E=1 cargo test -p kinfer-e2e --test kind -- --test-threads=1 --nocapture`.
//! Settings: see the table in e2e/src/lib.rs.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service, policy::v1::PodDisruptionBudget,
};
use kinfer_e2e::{TestNamespace, check_outputs, enabled, eventually, expected, infer_request};
use kube::{Api, ResourceExt, api::DeleteParams};
use serde_json::json;

#[path = "kind/canary.rs"]
mod canary;

fn iris_spec(ns: &TestNamespace, path: &str, replicas: i32) -> serde_json::Value {
    json!({
        "model": { "uri": ns.config.model_uri(path), "version": "1", "storage": ns.config.storage() },
        "replicas": replicas,
        "resources": {
            "requests": { "cpu": "50m", "memory": "64Mi" },
            "limits": { "cpu": "1", "memory": "512Mi" }
        },
        "runtime": { "image": ns.config.runtime_image },
    })
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
}

async fn gone<K>(api: &Api<K>, name: &str) -> Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_none())
}

/// The whole life of one model: Ready → correct predictions from every pod → model update
/// rolled out with zero failed requests → a broken model is reported while the old pods keep
/// serving → delete → children garbage-collected.
#[tokio::test]
async fn iris_lifecycle() -> Result<()> {
    if !enabled("iris_lifecycle") {
        return Ok(());
    }
    let ns = TestNamespace::create("iris_lifecycle").await?;
    let result = iris_lifecycle_in(&ns).await;
    ns.finish(result).await
}

async fn iris_lifecycle_in(ns: &TestNamespace) -> Result<()> {
    let exp = expected("iris")?;
    let request = infer_request(&exp, "e2e");

    // 1. Apply → Ready.
    ns.apply("iris", iris_spec(ns, "iris/1/model.onnx", 2)).await?;
    let isvc = ns.wait_ready("iris").await?;
    let status = isvc.status.clone().unwrap_or_default();
    let uid = isvc.uid().unwrap_or_default();
    ensure!(status.ready_replicas == Some(2), "readyReplicas: {status:?}");
    ensure!(
        status.url.as_deref().is_some_and(|u| u.starts_with(&format!("http://iris.{}.svc", ns.name))),
        "status.url: {:?}",
        status.url
    );
    ensure!(
        status.model_uri.as_deref() == Some(ns.config.model_uri("iris/1/model.onnx").as_str()),
        "status.modelUri: {:?}",
        status.model_uri
    );
    let deploy = ns.api::<Deployment>().get("iris").await?;
    let svc = ns.api::<Service>().get("iris").await?;
    let pdb = ns.api::<PodDisruptionBudget>().get("iris").await?;
    for (kind, meta) in
        [("Deployment", &deploy.metadata), ("Service", &svc.metadata), ("PodDisruptionBudget", &pdb.metadata)]
    {
        ensure!(owned_by(meta, &uid), "{kind} iris has no controller owner reference to the InferenceService");
    }
    ensure!(ns.api::<HorizontalPodAutoscaler>().get_opt("iris").await?.is_none(), "no HPA without spec.autoscaling");

    // 2. Every ready pod answers with the expected outputs.
    let pods = ns.ready_pods("iris").await?;
    ensure!(pods.len() == 2, "{} ready pods", pods.len());
    for pod in &pods {
        let got = ns.infer_pod(&pod.name_any(), "iris", &request).await?;
        check_outputs(&exp, &got).map_err(|e| anyhow::anyhow!("pod {}: {e}", pod.name_any()))?;
        ensure!(got["id"] == "e2e", "id not echoed: {got}");
    }
    // ... and so does the Service.
    check_outputs(&exp, &ns.infer_service("iris", "iris", &request).await?)?;

    // 3. A new model uri rolls out while a client keeps sending requests: none fails.
    let load = ns.start_load("iris", "iris", request.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let new_uri = ns.config.model_uri("iris/2/model.onnx");
    let old_pods: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    ns.patch_spec("iris", json!({ "model": { "uri": new_uri, "version": "2" } })).await?;
    let isvc = ns.wait_ready("iris").await?;
    ensure!(
        isvc.status.as_ref().and_then(|s| s.model_uri.as_deref()) == Some(new_uri.as_str()),
        "status.modelUri after the update: {:?}",
        isvc.status
    );
    let new_pods = ns.ready_pods("iris").await?;
    ensure!(new_pods.iter().all(|p| !old_pods.contains(&p.name_any())), "the pods were not replaced");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    eprintln!("rollout under load: {report:?}");
    ensure!(report.failed == 0, "requests failed during the rollout: {report:?}");
    ensure!(report.ok >= 10, "too few requests went through: {report:?}");
    let model_meta = ns.infer_pod(&new_pods[0].name_any(), "iris", &request).await?;
    check_outputs(&exp, &model_meta)?;

    // 4. A broken model: the status says why, the old pods keep serving.
    let load = ns.start_load("iris", "iris", request.clone());
    let serving: Vec<String> = new_pods.iter().map(|p| p.name_any()).collect();
    ns.patch_spec("iris", json!({ "model": { "uri": ns.config.model_uri("iris/broken/model.onnx"), "version": "3" } }))
        .await?;
    let failed = ns
        .wait_for("iris", "a failed rollout", ns.config.ready_timeout, |i| {
            [i.condition("Ready"), i.condition("Progressing")].into_iter().flatten().any(|c| {
                c.observed_generation == i.metadata.generation
                    && matches!(c.reason.as_str(), "ModelFailed" | "RolloutFailed")
            })
        })
        .await?;
    let why: Vec<String> = [failed.condition("Ready"), failed.condition("Progressing")]
        .into_iter()
        .flatten()
        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect();
    eprintln!("broken model reported as: {why:?}");
    ensure!(why.iter().any(|w| w.contains("ModelFailed") || w.contains("RolloutFailed")), "no failure reason: {why:?}");
    let message_says_why = [failed.condition("Ready"), failed.condition("Progressing")]
        .into_iter()
        .flatten()
        .any(|c| c.message.len() > 10);
    ensure!(message_says_why, "the condition message does not say why: {why:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = ns.ready_pods("iris").await?;
    ensure!(
        serving.iter().all(|p| still.iter().any(|s| &s.name_any() == p)),
        "old pods stopped serving: had {serving:?}, now ready {:?}",
        still.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    check_outputs(&exp, &ns.infer_service("iris", "iris", &request).await?)?;
    let report = load.stop().await;
    eprintln!("broken rollout under load: {report:?}");
    ensure!(report.failed == 0, "requests failed while the broken model rolled out: {report:?}");

    // 5. Delete → the children are garbage-collected.
    ns.isvcs().delete("iris", &DeleteParams::background()).await?;
    let (deploys, svcs, pdbs) = (ns.api::<Deployment>(), ns.api::<Service>(), ns.api::<PodDisruptionBudget>());
    eventually("children garbage-collected", Duration::from_secs(120), || async {
        Ok(gone(&ns.isvcs(), "iris").await?
            && gone(&deploys, "iris").await?
            && gone(&svcs, "iris").await?
            && gone(&pdbs, "iris").await?)
    })
    .await?;
    eventually("runtime pods gone", Duration::from_secs(120), || async {
        Ok(ns.api::<k8s_openapi::api::core::v1::Pod>().list(&Default::default()).await?.items.is_empty())
    })
    .await?;
    Ok(())
}

/// The tabular (fraud-score) model with autoscaling, batching and request logging, and the MLP
/// next to it; autoscaling removed again deletes the HPA.
#[tokio::test]
async fn tabular_autoscaling_and_mlp() -> Result<()> {
    if !enabled("tabular_autoscaling_and_mlp") {
        return Ok(());
    }
    let ns = TestNamespace::create("tabular_autoscaling").await?;
    let result = tabular_in(&ns).await;
    ns.finish(result).await
}

async fn tabular_in(ns: &TestNamespace) -> Result<()> {
    let cfg = &ns.config;
    ns.apply(
        "fraud",
        json!({
            "model": { "uri": cfg.model_uri("tabular/1/model.onnx"), "name": "fraud", "storage": cfg.storage() },
            "autoscaling": { "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilization": 70 },
            "batching": { "maxBatchSize": 16, "maxBatchDelayMicros": 2000 },
            "logging": { "uri": format!("s3://{}/e2e/{}/", cfg.log_bucket, ns.name), "sampleRate": 1.0 },
            "resources": { "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "memory": "512Mi" } },
            "runtime": { "image": cfg.runtime_image, "threads": 1 },
        }),
    )
    .await?;
    ns.apply(
        "mlp",
        json!({
            "model": { "uri": cfg.model_uri("mlp/1/model.onnx"), "storage": cfg.storage() },
            "resources": { "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "memory": "512Mi" } },
            "runtime": { "image": cfg.runtime_image },
        }),
    )
    .await?;
    ns.wait_ready("fraud").await?;
    ns.wait_ready("mlp").await?;

    let hpa = ns.api::<HorizontalPodAutoscaler>().get("fraud").await?;
    let spec = hpa.spec.clone().unwrap_or_default();
    ensure!(spec.min_replicas == Some(1) && spec.max_replicas == 3, "HPA bounds: {spec:?}");
    ensure!(
        spec.scale_target_ref.kind == "Deployment" && spec.scale_target_ref.name == "fraud",
        "HPA target: {:?}",
        spec.scale_target_ref
    );
    ensure!(ns.api::<PodDisruptionBudget>().get_opt("fraud").await?.is_none(), "no PDB with minReplicas 1");

    let tabular = expected("tabular")?;
    let mlp = expected("mlp")?;
    for (svc, model, exp) in [("fraud", "fraud", &tabular), ("mlp", "mlp", &mlp)] {
        let pods = ns.ready_pods(svc).await?;
        if pods.is_empty() {
            bail!("no ready pod for {svc}");
        }
        let got = ns.infer_pod(&pods[0].name_any(), model, &infer_request(exp, svc)).await?;
        check_outputs(exp, &got).map_err(|e| anyhow::anyhow!("{svc}: {e}"))?;
    }
    // Concurrent requests go through the batcher and still get their own rows back.
    let request = infer_request(&tabular, "batched");
    let calls = (0..8).map(|_| ns.infer_service("fraud", "fraud", &request));
    for got in futures::future::join_all(calls).await {
        check_outputs(&tabular, &got?)?;
    }

    // Autoscaling off (fixed replicas): the HPA goes away.
    ns.patch_spec("fraud", json!({ "autoscaling": null, "replicas": 1 })).await?;
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    eventually("HPA deleted after autoscaling was removed", Duration::from_secs(60), || async {
        gone(&hpas, "fraud").await
    })
    .await?;
    ns.wait_ready("fraud").await?;
    Ok(())
}

/// Two small models packed into one Deployment (`spec.models`): both Ready in the status, and
/// both answered, by name, by every pod and through the one Service.
#[tokio::test]
async fn two_models_in_one_service() -> Result<()> {
    if !enabled("two_models_in_one_service") {
        return Ok(());
    }
    let ns = TestNamespace::create("two_models").await?;
    let result = two_models_in(&ns).await;
    ns.finish(result).await
}

async fn two_models_in(ns: &TestNamespace) -> Result<()> {
    let cfg = &ns.config;
    ns.apply(
        "pack",
        json!({
            "models": [
                { "name": "iris", "uri": cfg.model_uri("iris/1/model.onnx"), "version": "1", "storage": cfg.storage() },
                { "name": "fraud", "uri": cfg.model_uri("tabular/1/model.onnx"), "version": "2", "storage": cfg.storage() },
            ],
            "replicas": 2,
            "resources": { "requests": { "cpu": "50m", "memory": "64Mi" }, "limits": { "cpu": "1", "memory": "512Mi" } },
            "runtime": { "image": cfg.runtime_image },
        }),
    )
    .await?;
    let isvc = ns.wait_ready("pack").await?;
    let status = isvc.status.clone().unwrap_or_default();
    let models: Vec<(&str, &str, bool)> =
        status.models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.ready)).collect();
    ensure!(models == [("iris", "1", true), ("fraud", "2", true)], "status.models: {:?}", status.models);

    let iris = expected("iris")?;
    let tabular = expected("tabular")?;
    let pods = ns.ready_pods("pack").await?;
    ensure!(pods.len() == 2, "{} ready pods", pods.len());
    for pod in &pods {
        for (model, exp) in [("iris", &iris), ("fraud", &tabular)] {
            let got = ns.infer_pod(&pod.name_any(), model, &infer_request(exp, model)).await?;
            check_outputs(exp, &got).map_err(|e| anyhow::anyhow!("pod {} {model}: {e}", pod.name_any()))?;
        }
    }
    // Through the Service, interleaved: each request reaches its own model.
    for round in 0..4 {
        for (model, exp) in [("iris", &iris), ("fraud", &tabular)] {
            let got = ns.infer_service("pack", model, &infer_request(exp, &format!("{model}-{round}"))).await?;
            check_outputs(exp, &got).map_err(|e| anyhow::anyhow!("service {model}: {e}"))?;
            ensure!(got["model_name"] == model, "answered by {}: {got}", got["model_name"]);
        }
    }
    match ns.infer_service("pack", "nope", &infer_request(&iris, "nope")).await {
        Ok(got) => bail!("an unknown model answered: {got}"),
        Err(e) => {
            let msg = format!("{e:#}");
            ensure!(msg.contains("this server serves 'fraud', 'iris'"), "unknown model: {msg}");
        }
    }
    Ok(())
}

/// The API server itself refuses invalid manifests, with the CRD's message.
#[tokio::test]
async fn invalid_manifests_are_refused_by_the_api_server() -> Result<()> {
    if !enabled("invalid_manifests_are_refused_by_the_api_server") {
        return Ok(());
    }
    let ns = TestNamespace::create("invalid_manifests").await?;
    let result = async {
        let storage = ns.config.storage();
        let uri = ns.config.model_uri("iris/1/model.onnx");
        let cases = [
            (
                json!({ "model": { "uri": uri, "storage": storage }, "replicas": 2,
                        "autoscaling": { "minReplicas": 1, "maxReplicas": 2 } }),
                "not both",
            ),
            (json!({ "model": { "uri": "ftp://models/iris.onnx" } }), "model.uri"),
            (json!({ "model": { "uri": uri }, "autoscaling": { "minReplicas": 5, "maxReplicas": 2 } }), "minReplicas"),
            (json!({ "model": { "uri": uri }, "models": [{ "name": "iris", "uri": uri }] }), "not both"),
            (json!({ "models": [] }), "spec.models must list at least one model"),
            (
                json!({ "models": [{ "name": "iris", "uri": uri }, { "name": "iris", "uri": uri, "version": "2" }] }),
                "spec.models names must be unique",
            ),
        ];
        for (spec, needle) in cases {
            match ns.apply("bad", spec.clone()).await {
                Ok(_) => bail!("accepted an invalid spec: {spec}"),
                Err(e) => {
                    let msg = format!("{e:#}");
                    ensure!(msg.contains(needle), "message {msg:?} does not mention {needle:?}");
                }
            }
        }
        Ok(())
    }
    .await;
    ns.finish(result).await
}
