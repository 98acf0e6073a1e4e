//! `spec.canary` on a real cluster: the split measured through the Service (the version that
//! answered is in the runtime's `x-kinfer-model-version` header), sticky A/B, a promotion under
//! load with zero failed requests, and a canary whose model does not load reported in the
//! status while every request still succeeds.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, ensure};
use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kinfer_e2e::{TestNamespace, check_outputs, enabled, eventually, expected, infer_request};
use kinfer_operator::InferenceService;
use serde_json::{Value, json};

use super::gone;

/// Requests sent to measure the split.
const SPLIT_REQUESTS: usize = 400;
/// Requests in flight at once while measuring.
const CONCURRENCY: usize = 8;

fn spec(ns: &TestNamespace, stable: &str, stable_version: &str, canary: Value) -> Value {
    json!({
        "model": { "uri": ns.config.model_uri(stable), "version": stable_version, "storage": ns.config.storage() },
        "replicas": 2,
        "resources": {
            "requests": { "cpu": "50m", "memory": "64Mi" },
            "limits": { "cpu": "1", "memory": "512Mi" }
        },
        "runtime": { "image": ns.config.runtime_image },
        "canary": canary,
    })
}

fn canary_model(ns: &TestNamespace, path: &str, version: &str) -> Value {
    json!({ "uri": ns.config.model_uri(path), "version": version, "storage": ns.config.storage() })
}

fn canary_condition(i: &InferenceService) -> Option<(String, String, String)> {
    i.condition("Canary").map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the canary serves its share as the current spec says (`Canary=True` for the
/// current generation, the split in effect described as `traffic`).
async fn wait_canary_serving(ns: &TestNamespace, name: &str, traffic: &str) -> Result<InferenceService> {
    ns.wait_for(name, &format!("Canary=True with {traffic}"), ns.config.ready_timeout, |i| {
        i.condition("Canary").is_some_and(|c| {
            c.status == "True" && c.reason == "CanaryServing" && c.observed_generation == i.metadata.generation
        }) && i.status.as_ref().and_then(|s| s.canary.as_ref()).and_then(|c| c.traffic.as_deref()) == Some(traffic)
    })
    .await
}

/// Sends `n` predictions through the Service (`headers(i)` on request `i`) and returns the
/// version that answered each, checking every answer's outputs.
async fn versions(
    ns: &TestNamespace,
    service: &str,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> Result<Vec<String>> {
    let exp = expected("iris")?;
    let request = infer_request(&exp, "canary");
    let calls = (0..n).map(|i| {
        let (exp, request, h) = (&exp, &request, headers(i));
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (got, version) = ns.infer_service_version(service, "iris", request, &h).await?;
            check_outputs(exp, &got)?;
            Ok::<_, anyhow::Error>(version)
        }
    });
    stream::iter(calls).buffered(CONCURRENCY).collect::<Vec<_>>().await.into_iter().collect()
}

/// `k` of `n` answers from the canary is within 4 standard deviations of `n × p` (a false
/// failure about once in 15,000 runs).
fn within_binomial_tolerance(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 4.0 * sd
}

/// A 20 % split measured through the Service; sticky A/B by `x-user-id`; then the canary
/// promoted while a client keeps sending requests: none fails, the canary is deleted only after
/// the stable pods run the new version, and every answer then comes from it.
#[tokio::test]
async fn canary_split_sticky_ab_and_promotion_under_load() -> Result<()> {
    if !enabled("canary_split_sticky_ab_and_promotion_under_load") {
        return Ok(());
    }
    let ns = TestNamespace::create("canary_split").await?;
    let result = split_and_promotion_in(&ns).await;
    ns.finish(result).await
}

async fn split_and_promotion_in(ns: &TestNamespace) -> Result<()> {
    let canary = json!({ "model": canary_model(ns, "iris/2/model.onnx", "2"), "trafficPercent": 20 });
    ns.apply("iris", spec(ns, "iris/1/model.onnx", "1", canary)).await?;
    ns.wait_ready("iris").await?;
    let isvc = wait_canary_serving(ns, "iris", "20% split").await?;
    let st = isvc.status.clone().unwrap_or_default().canary.unwrap_or_default();
    ensure!(st.version.as_deref() == Some("2") && st.ready_replicas == Some(1), "status.canary: {st:?}");
    ensure!(st.traffic_percent == Some(20), "status.canary: {st:?}");
    // The user-facing Service does not select the canary's pods.
    let svc = ns.api::<Service>().get("iris").await?;
    let canary_deploy = ns.api::<Deployment>().get("iris-canary").await?;
    let canary_labels = canary_deploy.spec.and_then(|s| s.template.metadata).and_then(|m| m.labels).unwrap_or_default();
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    ensure!(
        !selector.iter().all(|(k, v)| canary_labels.get(k) == Some(v)),
        "the Service {selector:?} selects canary pods {canary_labels:?}"
    );
    ns.wait_endpoints("iris-canary", std::time::Instant::now() + ns.config.ready_timeout).await?;

    // 1. The split through the Service.
    let answered = versions(ns, "iris", SPLIT_REQUESTS, |_| Vec::new()).await?;
    let mut by_version: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &answered {
        *by_version.entry(v.as_str()).or_default() += 1;
    }
    let canary_share = by_version.get("2").copied().unwrap_or(0);
    eprintln!(
        "20% split over {SPLIT_REQUESTS} requests through the Service: {by_version:?} ({:.1}% canary)",
        100.0 * canary_share as f64 / SPLIT_REQUESTS as f64
    );
    ensure!(by_version.keys().all(|v| *v == "1" || *v == "2"), "unexpected versions: {by_version:?}");
    ensure!(
        within_binomial_tolerance(canary_share, SPLIT_REQUESTS, 0.2),
        "{canary_share} of {SPLIT_REQUESTS} answers from the canary: not a 20% split ({by_version:?})"
    );

    // 2. Sticky A/B: the same x-user-id always gets the same version; users go to both.
    ns.patch_spec("iris", json!({ "canary": { "trafficPercent": 30, "stickyHeader": "x-user-id" } })).await?;
    wait_canary_serving(ns, "iris", "30% split (sticky x-user-id)").await?;
    let (users, repeats) = (40, 3);
    let answered =
        versions(ns, "iris", users * repeats, |i| vec![("x-user-id".to_string(), format!("user-{}", i % users))])
            .await?;
    let mut per_user: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (i, v) in answered.iter().enumerate() {
        per_user.entry(i % users).or_default().push(v);
    }
    for (user, seen) in &per_user {
        ensure!(seen.iter().all(|v| *v == seen[0]), "user-{user} got versions {seen:?}");
    }
    let on_canary = per_user.values().filter(|seen| seen[0] == "2").count();
    eprintln!("sticky 30% split: {on_canary} of {users} users on the canary");
    ensure!(on_canary > 0 && on_canary < users, "{on_canary} of {users} users on the canary");

    // 3. Promotion under load: zero failed requests; the canary goes after the stable rollout.
    let exp = expected("iris")?;
    let load = ns.start_load("iris", "iris", infer_request(&exp, "promotion"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let uri = ns.config.model_uri("iris/2/model.onnx");
    ns.patch_spec("iris", json!({ "model": { "uri": uri, "version": "2" }, "canary": null })).await?;
    let isvc = ns.wait_ready("iris").await?;
    ensure!(
        isvc.status.as_ref().and_then(|s| s.model_uri.as_deref()) == Some(uri.as_str()),
        "status.modelUri after the promotion: {:?}",
        isvc.status
    );
    let (deploys, svcs) = (ns.api::<Deployment>(), ns.api::<Service>());
    eventually("the canary deleted after the promotion", Duration::from_secs(120), || async {
        Ok(gone(&deploys, "iris-canary").await? && gone(&svcs, "iris-canary").await?)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop().await;
    eprintln!("promotion under load: {report:?}");
    ensure!(report.failed == 0, "requests failed during the promotion: {report:?}");
    ensure!(report.ok >= 10, "too few requests went through: {report:?}");
    let isvc = ns.isvcs().get("iris").await?;
    ensure!(
        isvc.status.as_ref().is_some_and(|s| s.canary.is_none()) && isvc.condition("Canary").is_none(),
        "status after the canary was deleted: {:?}",
        isvc.status
    );
    let answered = versions(ns, "iris", 20, |_| Vec::new()).await?;
    ensure!(answered.iter().all(|v| v == "2"), "after the promotion: {answered:?}");
    Ok(())
}

/// A canary whose model is not an ONNX file: `Canary=False` with the runtime's message in the
/// status, no request fails meanwhile and every answer comes from the stable model; removing
/// `spec.canary` (the rollback) deletes it.
#[tokio::test]
async fn a_broken_canary_is_reported_while_all_traffic_succeeds() -> Result<()> {
    if !enabled("a_broken_canary_is_reported_while_all_traffic_succeeds") {
        return Ok(());
    }
    let ns = TestNamespace::create("canary_broken").await?;
    let result = broken_canary_in(&ns).await;
    ns.finish(result).await
}

async fn broken_canary_in(ns: &TestNamespace) -> Result<()> {
    let exp = expected("iris")?;
    ns.apply("iris", spec(ns, "iris/1/model.onnx", "1", json!(null))).await?;
    ns.wait_ready("iris").await?;
    let load = ns.start_load("iris", "iris", infer_request(&exp, "broken-canary"));
    let canary = json!({ "model": canary_model(ns, "iris/broken/model.onnx", "broken"), "trafficPercent": 50 });
    ns.patch_spec("iris", json!({ "canary": canary })).await?;
    let failed = ns
        .wait_for("iris", "Canary=False CanaryLoadFailed", ns.config.ready_timeout, |i| {
            canary_condition(i).is_some_and(|(s, r, _)| s == "False" && r == "CanaryLoadFailed")
        })
        .await?;
    let (_, _, message) = canary_condition(&failed).unwrap_or_default();
    let st = failed.status.clone().unwrap_or_default().canary.unwrap_or_default();
    eprintln!("broken canary reported as: {message}\nstatus.canary: {st:?}");
    ensure!(st.message.as_deref().is_some_and(|m| m.len() > 10), "no runtime message in status.canary: {st:?}");
    ensure!(st.traffic.as_deref() == Some("none"), "a canary that never loaded got traffic: {st:?}");
    ensure!(failed.condition("Ready").is_some_and(|c| c.status == "True"), "Ready changed: {:?}", failed.status);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let answered = versions(ns, "iris", 40, |_| Vec::new()).await?;
    ensure!(answered.iter().all(|v| v == "1"), "answers while the canary is broken: {answered:?}");
    let report = load.stop().await;
    eprintln!("broken canary under load: {report:?}");
    ensure!(report.failed == 0, "requests failed while the canary was broken: {report:?}");
    ensure!(report.ok >= 10, "too few requests went through: {report:?}");

    // Rollback.
    ns.patch_spec("iris", json!({ "canary": null })).await?;
    let (deploys, svcs) = (ns.api::<Deployment>(), ns.api::<Service>());
    eventually("the canary deleted after the rollback", Duration::from_secs(120), || async {
        Ok(gone(&deploys, "iris-canary").await? && gone(&svcs, "iris-canary").await?)
    })
    .await?;
    Ok(())
}
