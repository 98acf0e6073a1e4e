//! The operator half of the metric-name check of the chart's dashboard and alerting rules:
//! every `kinfer_operator_*` series they name must be on the operator's real `/metrics`
//! endpoint (its health server on 127.0.0.1, scraped over HTTP) after a reconcile and a
//! failure were recorded. The runtime half is runtime/tests/observability.rs.

#[path = "../../tests/observability/queries.rs"]
mod queries;

use std::sync::{Arc, atomic::AtomicBool};

use kinfer_operator::{
    Error,
    metrics::Metrics,
    server::{Health, router},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn operator_metric(name: &str) -> bool {
    name.starts_with("kinfer_operator_")
}

/// `GET path` over a plain HTTP/1.1 connection; returns the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The operator's health server with a reconcile, a failure and managed objects recorded.
async fn scrape() -> String {
    let metrics = Arc::new(Metrics::new());
    drop(metrics.reconcile_started());
    metrics.reconcile_failed(&Error::InvalidSpec("spec.model.uri is empty".into()));
    metrics.set_managed("ml/iris", Some(vec!["Deployment", "Service"]));
    let app = router(Health { metrics, ready: Arc::new(AtomicBool::new(true)) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, body) = http_get(addr, "/metrics").await;
    server.abort();
    assert!(status.contains(" 200 "), "{status}\n{body}");
    body
}

#[tokio::test]
async fn every_operator_metric_of_the_dashboard_and_the_alerts_is_exported() {
    let scrape = queries::Scrape::parse(&scrape().await);
    assert!(scrape.has("kinfer_operator_reconciliations_total"), "{:?}", scrape.series.keys());

    let dashboard = queries::check(&queries::dashboard_queries(), &scrape, operator_metric);
    let rules = queries::check(&queries::rule_queries(), &scrape, operator_metric);
    let problems: Vec<&String> = dashboard.problems.iter().chain(&rules.problems).collect();
    assert!(problems.is_empty(), "the dashboard or the rules name what the operator does not export:\n{problems:#?}");
    // The panels and the alert really were checked (not skipped as another binary's).
    for name in [
        "kinfer_operator_reconciliations_total",
        "kinfer_operator_reconcile_errors_total",
        "kinfer_operator_reconcile_duration_seconds_bucket",
        "kinfer_operator_managed_resources",
    ] {
        assert!(dashboard.checked.contains(name), "no dashboard panel uses {name}: {:?}", dashboard.checked);
    }
    assert!(rules.checked.contains("kinfer_operator_reconcile_errors_total"), "{:?}", rules.checked);
}

/// The reconcile-errors alert leaves out some error categories by name: each must be one that
/// `Error::category` really returns, or the exclusion silently stops working.
#[test]
fn the_error_categories_the_alert_leaves_out_exist() {
    let rule = queries::rule_queries().into_iter().find(|q| q.source == "rule KinferOperatorReconcileErrors");
    let expr = rule.expect("the KinferOperatorReconcileErrors rule").expr;
    let excluded = expr
        .split("category!~\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no category!~ matcher in {expr}"));
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/error.rs")).expect("error.rs");
    let body = src.split("pub fn category(&self)").nth(1).expect("Error::category in src/error.rs");
    let body = &body[..body.find("\n    }\n").expect("end of Error::category")];
    for c in excluded.split('|') {
        assert!(body.contains(&format!("=> \"{c}\"")), "Error::category never returns {c:?}:{body}");
    }
    assert_eq!(Error::InvalidSpec(String::new()).category(), "invalid_spec");
}

#[tokio::test]
async fn a_misspelt_operator_metric_or_label_is_reported() {
    let scrape = queries::Scrape::parse(&scrape().await);
    let bad = [
        queries::Query {
            source: "typo".into(),
            expr: "rate(kinfer_operator_reconcilations_total[$__rate_interval])".into(),
        },
        queries::Query {
            source: "label".into(),
            expr: "sum by (kind) (rate(kinfer_operator_reconcile_errors_total[5m]))".into(),
        },
        queries::Query { source: "suffix".into(), expr: "rate(kinfer_operator_reconcile_duration_seconds[5m])".into() },
    ];
    let report = queries::check(&bad, &scrape, operator_metric);
    assert_eq!(report.problems.len(), 3, "{:#?}", report.problems);
    assert!(
        report.problems[0].contains("kinfer_operator_reconcilations_total is not exported"),
        "{:?}",
        report.problems
    );
    assert!(report.problems[1].contains("by (kind)"), "{:?}", report.problems);
    assert!(report.problems[2].contains("kinfer_operator_reconcile_duration_seconds is not exported"));
}
