"""Dashboards and alerts in the chart: the Grafana dashboard ConfigMap, the runtime PodMonitor and
the PrometheusRule are off by default; when on, the dashboard parses and carries the sidecar
label, and the prometheus-operator objects match a compact schema of the monitoring.coreos.com/v1
fields the chart uses. That every metric the dashboard and the rules name is really exported is
checked by the Rust tests runtime/tests/observability.rs and operator/tests/observability.rs."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from conftest import CHART_DIR, NAMESPACE, ROOT, by_kind, helm, one

MONITORING_SCHEMA = json.loads((ROOT / "tests" / "chart" / "monitoring-coreos-v1.schema.json").read_text())
DASHBOARD_FILE = CHART_DIR / "dashboards" / "kinfer.json"
RULES_FILE = CHART_DIR / "rules" / "kinfer-rules.yaml"
ALL_ON = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def values_yaml() -> dict:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def validate_monitoring(obj: dict) -> None:
    jsonschema.validate(obj, MONITORING_SCHEMA, cls=jsonschema.Draft202012Validator)


def rules_of(objs: list[dict]) -> dict[str, dict]:
    rule = one(objs, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


# ---------------------------------------------------------------- on and off


def test_dashboards_and_alerts_are_off_by_default(render):
    objs = render()
    for kind in ("ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"):
        assert by_kind(objs, kind) == [], kind
    defaults = values_yaml()["metrics"]
    assert not defaults["dashboard"]["enabled"]
    assert not defaults["podMonitor"]["enabled"]
    assert not defaults["prometheusRule"]["enabled"]


@pytest.mark.parametrize("which", ["podMonitor", "prometheusRule", "dashboard"])
def test_each_is_rendered_on_its_own(render, which):
    objs = render({"metrics": {which: {"enabled": True}}})
    kind = {"podMonitor": "PodMonitor", "prometheusRule": "PrometheusRule", "dashboard": "ConfigMap"}[which]
    assert len(by_kind(objs, kind)) == 1
    others = {"PodMonitor", "PrometheusRule", "ConfigMap"} - {kind}
    assert [o["kind"] for o in objs if o["kind"] in others] == []


def test_chart_lints_with_everything_on():
    report = helm.lint(str(CHART_DIR), ALL_ON, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_monitoring_objects_match_the_schema(render):
    objs = render(ALL_ON)
    found = [o for o in objs if o["kind"] in MONITORING_KINDS]
    assert sorted(o["kind"] for o in found) == sorted(MONITORING_KINDS)
    for o in found:
        validate_monitoring({k: v for k, v in o.items() if k != "__template"})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o["spec"].update(podMetricEndpoints=o["spec"].pop("podMetricsEndpoints")),
        lambda o: o["spec"]["podMetricsEndpoints"][0].update(interval="30 seconds"),
        lambda o: o["spec"]["podMetricsEndpoints"][0].pop("port"),
        lambda o: o.update(apiVersion="monitoring.coreos.com/v1beta1"),
    ],
    ids=["misspelt-field", "bad-duration", "no-port", "wrong-version"],
)
def test_the_monitoring_schema_refuses_broken_objects(render, mutate):
    pm = {k: v for k, v in one(render(ALL_ON), "PodMonitor").items() if k != "__template"}
    validate_monitoring(pm)
    mutate(pm)
    with pytest.raises(jsonschema.ValidationError):
        validate_monitoring(pm)


# ---------------------------------------------------------------- dashboard


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard(render):
    cm = one(render(ALL_ON), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert cm["metadata"]["name"] == "kinfer-kinfer-operator-dashboard"
    assert list(cm["data"]) == ["kinfer.json"]
    dash = json.loads(cm["data"]["kinfer.json"])
    assert dash == json.loads(DASHBOARD_FILE.read_text())


def test_dashboard_label_namespace_and_annotations_are_configurable(render):
    cm = one(
        render(
            {
                "metrics": {
                    "dashboard": {
                        "enabled": True,
                        "label": "grafana.example/dashboard",
                        "labelValue": "kinfer",
                        "namespace": "monitoring",
                        "labels": {"team": "ml"},
                        "annotations": {"grafana_folder": "kinfer"},
                    }
                }
            }
        ),
        "ConfigMap",
    )
    labels = cm["metadata"]["labels"]
    assert labels["grafana.example/dashboard"] == "kinfer" and "grafana_dashboard" not in labels
    assert labels["team"] == "ml"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "kinfer"}


def test_dashboard_is_a_grafana_dashboard_with_datasource_namespace_and_model_variables():
    dash = json.loads(DASHBOARD_FILE.read_text())
    assert dash["uid"] == "kinfer-overview"  # stable: links and provisioning refer to it
    assert 36 <= dash["schemaVersion"] <= 41
    assert "id" not in dash or dash["id"] is None  # Grafana assigns it on import
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "model"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["multi"], name
        assert v["datasource"]["uid"] == "${datasource}", name
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].strip(), p["title"]
            # Runtime panels follow the namespace variable; the operator's own metrics do not
            # (the operator runs in its release namespace, not the models' namespaces).
            if "kinfer_operator_" not in t["expr"]:
                assert 'namespace=~"$namespace"' in t["expr"], (p["title"], t["expr"])
            if "[" in t["expr"]:
                assert "$__rate_interval" in t["expr"], (p["title"], t["expr"])


def test_dashboard_covers_what_issue_12_asks_for():
    dash = json.loads(DASHBOARD_FILE.read_text())
    exprs = "\n".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, model) (rate(kinfer_request_duration_seconds_bucket" in exprs, q
    for needle in (
        'code=~"5.."',
        "by (model, protocol)",
        "kinfer_queue_duration_seconds_bucket",
        "kinfer_batch_size_",
        "kinfer_request_log_dropped_total",
        "kinfer_model_ready",
        "kinfer_operator_reconciliations_total",
        "kinfer_operator_reconcile_errors_total",
        "kinfer_requests_in_flight",
        "kinfer_model_load_duration_seconds",
        "kinfer_cache_hits_total",
        "kinfer_cache_evictions_total",
        "kinfer_cache_bytes",
    ):
        assert needle in exprs, needle
    # Readiness by version, and the A/B comparison of a canary (issue 13): rate, errors and
    # latency by version, routing, fallbacks and shadow agreement.
    assert any("by (model, version)" in t["expr"] for p in dash["panels"] for t in p.get("targets", []))


def test_dashboard_compares_versions_and_shows_the_canary():
    dash = json.loads(DASHBOARD_FILE.read_text())
    exprs = "\n".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for needle in (
        "sum by (model, version) (rate(kinfer_requests_total",
        "histogram_quantile(0.99, sum by (le, model, version) (rate(kinfer_request_duration_seconds_bucket",
        "kinfer_canary_requests_total",
        "kinfer_canary_fallbacks_total",
        'kinfer_shadow_agreement_total{namespace=~"$namespace", model=~"$model", result="same"}',
        "kinfer_shadow_abs_diff_bucket",
        "kinfer_shadow_dropped_total",
    ):
        assert needle in exprs, needle


# ---------------------------------------------------------------- PodMonitor


def operator_constant(name: str) -> str:
    src = (ROOT / "operator" / "src" / "build" / "mod.rs").read_text()
    m = re.search(rf'pub const {name}: &str = "([^"]+)";', src)
    assert m, f"{name} not found in operator/src/build/mod.rs"
    return m.group(1)


def test_pod_monitor_selects_the_runtime_pods_the_operator_creates(render):
    pm = one(render(ALL_ON), "PodMonitor")
    assert pm["spec"]["selector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": operator_constant("APP_NAME"),
            "app.kubernetes.io/managed-by": operator_constant("MANAGED_BY"),
        }
    }
    # The runtime container's port is named `http` (operator/src/build/deployment.rs) and the
    # runtime serves /metrics on it.
    assert 'name: Some("http".into())' in (ROOT / "operator" / "src" / "build" / "deployment.rs").read_text()
    assert '.route("/metrics"' in (ROOT / "runtime" / "src" / "server.rs").read_text()
    ep = pm["spec"]["podMetricsEndpoints"]
    # A canary's pods (operator/src/build/canary.rs) carry the same two selector labels, so they
    # are scraped like the stable ones; their `track` label and the InferenceService become
    # target labels (the request metrics themselves carry the model `version`).
    canary_rs = (ROOT / "operator" / "src" / "build" / "canary.rs").read_text()
    assert 'TRACK_LABEL: &str = "serving.kinfer.dev/track"' in canary_rs
    assert ep == [{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s",
                   "relabelings": [
                       {"sourceLabels": ["__meta_kubernetes_pod_label_serving_kinfer_dev_inferenceservice"],
                        "targetLabel": "inferenceservice"},
                       {"sourceLabels": ["__meta_kubernetes_pod_label_serving_kinfer_dev_track"],
                        "targetLabel": "track"},
                   ]}]
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["metadata"]["namespace"] == NAMESPACE


def test_pod_monitor_namespaces_follow_watch_namespaces_or_the_explicit_selector(render):
    pm = one(render({"watchNamespaces": ["team-a", "team-b"], "metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    pm = one(
        render(
            {
                "watchNamespaces": ["team-a"],
                "metrics": {
                    "podMonitor": {
                        "enabled": True,
                        "namespaceSelector": {"matchNames": ["ml"]},
                        "interval": "15s",
                        "labels": {"release": "prometheus"},
                    }
                },
            }
        ),
        "PodMonitor",
    )
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    assert pm["metadata"]["labels"]["release"] == "prometheus"
    validate_monitoring({k: v for k, v in pm.items() if k != "__template"})


# ---------------------------------------------------------------- PrometheusRule

EXPECTED_ALERTS = {
    "errorRatio": "KinferHighErrorRatio",
    "latencyP99": "KinferHighLatencyP99",
    "modelNotReady": "KinferModelNotReady",
    "requestLogDrops": "KinferRequestLogDropping",
    "canaryFallbacks": "KinferCanaryFallingBack",
    "reconcileErrors": "KinferOperatorReconcileErrors",
}


def test_rules_file_and_values_name_the_same_alerts():
    rules = yaml.safe_load(RULES_FILE.read_text())
    assert {r["key"]: r["alert"] for r in rules} == EXPECTED_ALERTS
    assert set(values_yaml()["metrics"]["prometheusRule"]["alerts"]) == set(EXPECTED_ALERTS)


def test_prometheus_rule_renders_the_rules_file_with_the_default_thresholds(render):
    alerts = values_yaml()["metrics"]["prometheusRule"]["alerts"]
    rendered = rules_of(render(ALL_ON))
    assert set(rendered) == set(EXPECTED_ALERTS.values())
    for source in yaml.safe_load(RULES_FILE.read_text()):
        cfg = alerts[source["key"]]
        r = rendered[source["alert"]]
        want = source["expr"].strip()
        if "threshold" in cfg:
            want = want.replace("$threshold", str(cfg["threshold"]))
        assert r["expr"] == want
        assert "$threshold" not in json.dumps(r)
        assert r["for"] == cfg["for"]
        assert r["labels"] == {"severity": cfg["severity"]}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
    assert rendered["KinferHighErrorRatio"]["expr"].endswith("> 0.05")
    assert rendered["KinferHighLatencyP99"]["expr"].endswith("> 1")


def test_thresholds_durations_and_labels_come_from_the_values(render):
    objs = render(
        {
            "metrics": {
                "prometheusRule": {
                    "enabled": True,
                    "labels": {"release": "prometheus"},
                    "alertLabels": {"team": "ml-platform"},
                    "alerts": {
                        "errorRatio": {"enabled": True, "threshold": 0.01, "for": "2m", "severity": "critical"},
                        "latencyP99": {"enabled": True, "threshold": 0.25, "for": "5m", "severity": "warning"},
                        "requestLogDrops": {"enabled": False, "threshold": 0, "for": "5m", "severity": "warning"},
                    },
                }
            }
        }
    )
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    validate_monitoring({k: v for k, v in rule.items() if k != "__template"})
    rendered = rules_of(objs)
    assert "KinferRequestLogDropping" not in rendered
    e = rendered["KinferHighErrorRatio"]
    assert e["expr"].endswith("> 0.01") and e["for"] == "2m"
    assert e["labels"] == {"severity": "critical", "team": "ml-platform"}
    assert "0.01" in e["annotations"]["summary"]
    assert rendered["KinferHighLatencyP99"]["expr"].endswith("> 0.25")
    assert rendered["KinferModelNotReady"]["for"] == "15m"  # untouched alerts keep their defaults


@pytest.mark.parametrize(
    "bad",
    [
        {"metrics": {"prometheusRule": {"alerts": {"errorRatio": {"enabled": True, "threshold": "high", "for": "5m", "severity": "warning"}}}}},
        {"metrics": {"prometheusRule": {"alerts": {"errorRatio": {"enabled": True, "threshold": 5, "for": "5m", "severity": "warning"}}}}},
        {"metrics": {"prometheusRule": {"alerts": {"latencyP99": {"enabled": True, "threshold": 1, "for": "soon", "severity": "warning"}}}}},
        # null deletes the default: an alert whose expression compares with $threshold needs one.
        {"metrics": {"prometheusRule": {"alerts": {"latencyP99": {"threshold": None}}}}},
        {"metrics": {"prometheusRule": {"alerts": {"errorRate": {"enabled": True, "for": "5m", "severity": "warning"}}}}},
        {"metrics": {"podMonitor": {"interval": "often"}}},
        {"metrics": {"podMonitor": {"namespaceSelector": {"matchNames": ["Not_A_Namespace"]}}}},
        {"metrics": {"dashboard": {"label": "not a label"}}},
        {"metrics": {"dashboard": {"labelValue": 1}}},
    ],
    ids=["threshold-type", "ratio-over-1", "for-duration", "no-threshold", "unknown-alert", "pm-interval", "pm-namespace", "dash-label", "dash-value"],
)
def test_values_schema_refuses_bad_monitoring_values(chart, bad):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)


def test_values_schema_accepts_everything_on(chart):
    chart.validate_schema(ALL_ON)
