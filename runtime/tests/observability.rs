//! The chart's Grafana dashboard (charts/kinfer-operator/dashboards/kinfer.json) and alerting
//! rules (charts/kinfer-operator/rules/kinfer-rules.yaml) name only metrics the runtime
//! exports: the real binary serves a model with the request log on (to the test S3 server),
//! answers a request on every protocol and an error, and every `kinfer_*` series and label
//! the PromQL names must be in its `/metrics`. `kinfer_operator_*` series are checked against
//! the operator in operator/tests/observability.rs.

mod support;

#[path = "../../tests/observability/queries.rs"]
mod queries;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const ROW: [f64; 4] = [5.1, 3.5, 1.4, 0.2];

/// The runtime's series, less the canary's: a runtime exports those only with a canary
/// configured, and tests/canary.rs checks them against a stable runtime routing to one.
fn runtime_metric(name: &str) -> bool {
    !name.starts_with("kinfer_operator_") && !is_canary_metric(name)
}

fn is_canary_metric(name: &str) -> bool {
    name.starts_with("kinfer_canary_") || name.starts_with("kinfer_shadow_")
}

/// A runtime with the request log on, after a request on each protocol and a refused one.
async fn scrape() -> String {
    let s3 = S3::start().await;
    s3.bucket("logs");
    let rt = s3
        .runtime(&model_path("iris").display().to_string(), ACCESS_KEY, SECRET_KEY)
        .arg("--model-name", "iris")
        .arg("--model-version", "7")
        .arg("--log-uri", "s3://logs/audit/")
        .arg("--log-flush-interval-ms", "100")
        // The prediction cache's series exist only when it is on (the rows repeat: V1 and
        // /predict hit the v2 request's entry, and still count as requests and log records).
        .arg("--cache-max-entries", "100")
        .ready()
        .await;
    let v2 = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]});
    assert_eq!(rt.post_json("/v2/models/iris/infer", &v2).await.0, 200);
    assert_eq!(rt.post_json("/v1/models/iris:predict", &json!({"instances": [ROW]})).await.0, 200);
    assert_eq!(rt.post_json("/predict", &json!({"instances": [ROW]})).await.0, 200);
    assert_eq!(rt.post_json("/predict", &json!({"instances": [[1, 2]]})).await.0, 400);
    // The four records reach S3, so the request-log series have moved, not just been registered.
    let start = Instant::now();
    loop {
        let m = rt.metrics().await;
        if m.lines().any(|l| l == "kinfer_request_log_records_total 4") {
            return m;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "request log records not uploaded:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runtime_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let text = scrape().await;
    for p in ["v2", "v1", "predict"] {
        let series = format!("kinfer_requests_total{{code=\"200\",model=\"iris\",protocol=\"{p}\",version=\"7\"}} 1");
        assert!(text.contains(&series), "no {series}:\n{text}");
    }
    assert!(text.contains("kinfer_model_ready{model=\"iris\",version=\"7\"} 1"), "{text}");
    let scrape = queries::Scrape::parse(&text);

    let dashboard = queries::check(&queries::dashboard_queries(), &scrape, runtime_metric);
    let rules = queries::check(&queries::rule_queries(), &scrape, runtime_metric);
    let problems: Vec<&String> = dashboard.problems.iter().chain(&rules.problems).collect();
    assert!(problems.is_empty(), "the dashboard or the rules name what the runtime does not export:\n{problems:#?}");

    // What the issue asks the dashboard to show is really on it (and was checked above).
    for name in [
        "kinfer_requests_total",
        "kinfer_request_duration_seconds_bucket",
        "kinfer_queue_duration_seconds_bucket",
        "kinfer_inference_duration_seconds_bucket",
        "kinfer_batch_size_bucket",
        "kinfer_requests_in_flight",
        "kinfer_model_ready",
        "kinfer_model_load_duration_seconds",
        "kinfer_request_log_dropped_total",
        "kinfer_request_log_upload_failures_total",
        "kinfer_request_log_queue_depth",
    ] {
        assert!(dashboard.checked.contains(name), "no dashboard panel uses {name}: {:?}", dashboard.checked);
    }
    for name in [
        "kinfer_requests_total",
        "kinfer_request_duration_seconds_bucket",
        "kinfer_model_ready",
        "kinfer_request_log_dropped_total",
    ] {
        assert!(rules.checked.contains(name), "no alert uses {name}: {:?}", rules.checked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_metric_or_label_is_reported() {
    let scrape = queries::Scrape::parse(&scrape().await);
    let bad = |expr: &str| queries::Query { source: "test".into(), expr: expr.into() };
    let cases = [
        // A typo in the metric name.
        (
            bad(r#"sum by (model) (rate(kinfer_request_total{model=~"$model"}[$__rate_interval]))"#),
            "kinfer_request_total is not exported",
        ),
        // A histogram without its sample suffix: no such series.
        (
            bad("rate(kinfer_request_duration_seconds[5m]) > $threshold"),
            "kinfer_request_duration_seconds is not exported",
        ),
        // A label the metric does not have (in-flight is not per model).
        (bad(r#"kinfer_requests_in_flight{model=~"$model"}"#), "kinfer_requests_in_flight has no label [\"model\"]"),
        (bad("sum by (route) (rate(kinfer_requests_total[5m]))"), "by (route)"),
        // Not a kinfer metric: nothing could check it.
        (bad("rate(http_requests_total[5m])"), "http_requests_total is not a kinfer metric"),
        (bad("sum(rate(kinfer_requests_total[5m]"), "does not parse"),
    ];
    for (q, want) in cases {
        let report = queries::check(std::slice::from_ref(&q), &scrape, runtime_metric);
        assert!(
            report.problems.len() == 1 && report.problems[0].contains(want),
            "{}: want one problem with {want:?}, got {:#?}",
            q.expr,
            report.problems
        );
    }
}

#[test]
fn grafana_variables_and_thresholds_are_substituted() {
    assert_eq!(
        queries::substitute(r#"rate(x{a=~"$model",b="${namespace}",c=~"5..$"}[$__rate_interval]) > $threshold"#),
        r#"rate(x{a=~"1",b="1",c=~"5..$"}[5m]) > 1"#
    );
}
