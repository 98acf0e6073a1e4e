"""The kinfer-operator Helm chart: lint, render with default and non-default values, and
check what it would install (kinds, labels, RBAC verbs, security context, CRD = crds/).

Helm's own Go SDK does the linting and rendering (PyPI `helm-python-sdk`), so no helm
binary is needed."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from conftest import CHART_DIR, CRD_NAME, NAMESPACE, RELEASE, ROOT, by_kind, helm, one

NON_DEFAULT = {
    "image": {"repository": "registry.example/ml/kinfer-operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "runtimeImage": {"repository": "registry.example/ml/kinfer-runtime", "tag": "1.2.3"},
    "watchNamespaces": ["team-a", "team-b"],
    "replicaCount": 2,
    "logLevel": "debug",
    "logFormat": "text",
    "concurrency": 64,
    "tracing": {"endpoint": "http://otel-collector.observability:4317", "protocol": "grpc", "samplingRatio": 0.25},
    "resources": {"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    "nodeSelector": {"kubernetes.io/os": "linux", "pool": "system"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "commonLabels": {"team": "ml-platform", "cost-center": "42"},
    "podLabels": {"sidecar.istio.io/inject": "false"},
    "imagePullSecrets": [{"name": "regcred"}],
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
}

# Verbs allowed on each (apiGroup, resource) and nothing else.
CHILD_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
READ_ONLY = {"get", "list", "watch"}
EXPECTED_WORKLOAD_RULES = {
    ("serving.kinfer.dev", "inferenceservices"): {"get", "list", "watch", "patch", "update"},
    ("serving.kinfer.dev", "inferenceservices/status"): {"get", "patch", "update"},
    ("serving.kinfer.dev", "inferenceservices/finalizers"): {"update"},
    ("apps", "deployments"): CHILD_VERBS,
    ("", "services"): CHILD_VERBS,
    ("autoscaling", "horizontalpodautoscalers"): CHILD_VERBS,
    ("policy", "poddisruptionbudgets"): CHILD_VERBS,
    ("", "pods"): READ_ONLY,
    ("apps", "replicasets"): READ_ONLY,
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEADER_RULES = {
    ("coordination.k8s.io", "leases"): CHILD_VERBS,
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def rule_map(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"], f"wildcard verb in {role['metadata']['name']}"
        for group in rule["apiGroups"]:
            assert group != "*", "wildcard apiGroup"
            for res in rule["resources"]:
                assert res != "*", "wildcard resource"
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def env_of(deploy: dict) -> dict[str, dict]:
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in c["env"]}


# ---------------------------------------------------------------- lint


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_chart_lints_without_errors_or_warnings(values):
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["name"] == "kinfer-operator"
    assert meta["apiVersion"] == "v2"
    assert chart.schema is not None, "values.schema.json is shipped"


# ---------------------------------------------------------------- default render


def test_default_render_has_the_expected_kinds(render):
    kinds = sorted(o["kind"] for o in render())
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"]
    )


def test_every_object_has_standard_labels_and_the_release_namespace(render):
    for o in render():
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "kinfer-operator", o["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "kinfer"
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]


def test_cluster_role_is_least_privilege(render):
    objs = render()
    role = one(objs, "ClusterRole")
    assert rule_map(role) == EXPECTED_WORKLOAD_RULES
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]


def test_no_access_to_secrets_or_cluster_wide_writes_beyond_the_list(render):
    for o in render(NON_DEFAULT) + render():
        if o["kind"] in ("ClusterRole", "Role"):
            resources = {res for _, res in rule_map(o)}
            assert "secrets" not in resources and "configmaps" not in resources
            assert "nodes" not in resources and "namespaces" not in resources


def test_leader_election_role_is_namespaced_to_the_release(render):
    objs = render()
    roles = by_kind(objs, "Role")
    assert len(roles) == 1
    assert roles[0]["metadata"]["namespace"] == NAMESPACE
    assert rule_map(roles[0]) == LEADER_RULES
    rb = one(objs, "RoleBinding")
    assert rb["roleRef"]["name"] == roles[0]["metadata"]["name"]


def test_rbac_plural_matches_the_crd():
    crd = yaml.safe_load((ROOT / "crds" / CRD_NAME).read_text()) if (ROOT / "crds" / CRD_NAME).exists() else None
    if crd is None:
        pytest.skip("crds/ not generated yet")
    assert crd["spec"]["group"] == "serving.kinfer.dev"
    plural = crd["spec"]["names"]["plural"]
    assert ("serving.kinfer.dev", plural) in EXPECTED_WORKLOAD_RULES


def test_operator_deployment_defaults(render):
    d = one(render(), "Deployment")
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert d["spec"]["replicas"] == 1
    assert c["image"] == "ghcr.io/kinfer/kinfer-operator:0.1.0"  # appVersion when no tag is given
    env = env_of(d)
    assert env["KINFER_RUNTIME_IMAGE"]["value"] == "ghcr.io/kinfer/kinfer-runtime:0.1.0"
    assert env["KINFER_LEADER_ELECTION"]["value"] == "true"
    assert env["KINFER_WATCH_NAMESPACES"]["value"] == ""
    assert env["KINFER_LOG_LEVEL"]["value"] == "info"
    assert env["KINFER_CONCURRENCY"]["value"] == "16"
    assert env["KINFER_HEALTH_ADDR"]["value"] == "0.0.0.0:8081"
    assert env["KINFER_LEASE_NAME"]["value"] == "kinfer-kinfer-operator"
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert not [n for n in env if n.startswith("OTEL_")], "no traces without tracing.endpoint"
    assert pod["serviceAccountName"] == one(render(), "ServiceAccount")["metadata"]["name"]
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 8081, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The selector must keep matching the pod labels.
    for k, v in d["spec"]["selector"]["matchLabels"].items():
        assert d["spec"]["template"]["metadata"]["labels"][k] == v


def test_operator_pod_meets_the_restricted_pod_security_standard(render):
    for values in (None, NON_DEFAULT):
        pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "add" not in sc["capabilities"]
            assert sc["readOnlyRootFilesystem"] is True
            assert not sc.get("privileged", False)
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert all("hostPath" not in v for v in pod.get("volumes", []))


def test_metrics_service_selects_the_operator_pods(render):
    objs = render()
    svc = one(objs, "Service")
    d = one(objs, "Deployment")
    assert svc["spec"]["ports"][0]["targetPort"] == "http-metrics"
    for k, v in svc["spec"]["selector"].items():
        assert d["spec"]["template"]["metadata"]["labels"][k] == v


# ---------------------------------------------------------------- non-default render


def test_watch_namespaces_gives_one_role_per_namespace_and_no_cluster_role(render):
    objs = render(NON_DEFAULT)
    assert by_kind(objs, "ClusterRole") == [] and by_kind(objs, "ClusterRoleBinding") == []
    workload_roles = {r["metadata"]["namespace"]: r for r in by_kind(objs, "Role") if not r["metadata"]["name"].endswith("leader-election")}
    assert set(workload_roles) == {"team-a", "team-b"}
    for ns, role in workload_roles.items():
        assert rule_map(role) == EXPECTED_WORKLOAD_RULES
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in by_kind(objs, "RoleBinding")}
    for ns, role in workload_roles.items():
        assert (ns, role["metadata"]["name"]) in bindings
    for b in by_kind(objs, "RoleBinding"):
        assert b["subjects"][0]["namespace"] == NAMESPACE
    env = env_of(one(objs, "Deployment"))
    assert env["KINFER_WATCH_NAMESPACES"]["value"] == "team-a,team-b"


def test_non_default_values_reach_the_deployment(render):
    objs = render(NON_DEFAULT)
    d = one(objs, "Deployment")
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert d["spec"]["replicas"] == 2
    assert c["image"] == "registry.example/ml/kinfer-operator:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    env = env_of(d)
    assert env["KINFER_RUNTIME_IMAGE"]["value"] == "registry.example/ml/kinfer-runtime:1.2.3"
    assert env["KINFER_LOG_LEVEL"]["value"] == "debug"
    assert env["KINFER_LOG_FORMAT"]["value"] == "text"
    assert env["KINFER_CONCURRENCY"]["value"] == "64"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"
    assert c["resources"] == NON_DEFAULT["resources"]
    assert pod["nodeSelector"] == NON_DEFAULT["nodeSelector"]
    assert pod["tolerations"] == NON_DEFAULT["tolerations"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert d["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"


def test_common_labels_are_on_every_object(render):
    for o in render(NON_DEFAULT):
        labels = o["metadata"]["labels"]
        assert labels["team"] == "ml-platform" and labels["cost-center"] == "42", o["kind"]


def test_service_monitor_is_optional(render):
    assert by_kind(render(), "ServiceMonitor") == []
    sm = one(render(NON_DEFAULT), "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "http-metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_leader_election_can_be_turned_off(render):
    objs = render({"leaderElection": {"enabled": False}})
    assert by_kind(objs, "Role") == []
    assert env_of(one(objs, "Deployment"))["KINFER_LEADER_ELECTION"]["value"] == "false"


def test_existing_service_account_and_no_rbac(render):
    objs = render({"serviceAccount": {"create": False, "name": "ops"}, "rbac": {"create": False}})
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Service"]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_notes_tell_the_user_what_to_do_next(chart):
    notes = chart.render({"watchNamespaces": ["ml"]}, name=RELEASE, namespace=NAMESPACE)
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert "rollout status deployment/kinfer-kinfer-operator" in text
    assert "It reconciles InferenceServices in: ml." in text
    assert "kubectl apply -f examples/" in text


# ---------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "two"},
        {"replicaCount": -1},
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"watchNamespaces": "team-a"},
        {"logFormat": "xml"},
        {"image": {"repository": ""}},
        {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
        {"imagTypo": {}},
        {"metrics": {"serviceMonitor": {"interval": "soon"}}},
        {"commonLabels": {"n": 1}},
        {"tracing": {"endpoint": "otel-collector:4317"}},
        {"tracing": {"protocol": "http/json"}},
        {"tracing": {"samplingRatio": 2}},
    ],
    ids=lambda v: next(iter(v)),
)
def test_values_schema_refuses_bad_values(chart, bad):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmError):
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)


def test_values_schema_accepts_the_non_default_values(chart):
    chart.validate_schema(NON_DEFAULT)
    chart.validate_schema({})


# ---------------------------------------------------------------- the CRD


def test_chart_crd_is_byte_identical_to_crds_folder(chart):
    top = ROOT / "crds" / CRD_NAME
    if not top.exists():
        pytest.skip(f"{top.relative_to(ROOT)} is not generated yet (operator crdgen)")
    in_chart = CHART_DIR / "crds" / CRD_NAME
    assert in_chart.exists(), f"copy {top.relative_to(ROOT)} to {in_chart.relative_to(ROOT)} (make chart-crd)"
    assert in_chart.read_bytes() == top.read_bytes(), (
        f"{in_chart.relative_to(ROOT)} differs from {top.relative_to(ROOT)}: run `make chart-crd`"
    )
    names = [c.get("filename") or c.get("name") for c in chart.crds]
    assert any(CRD_NAME in n for n in names), names
    crd = yaml.safe_load(in_chart.read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "inferenceservices.serving.kinfer.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert versions["v1alpha1"]["served"] and versions["v1alpha1"]["storage"]
    assert "status" in versions["v1alpha1"].get("subresources", {})


def test_the_crd_is_not_templated(chart):
    # CRDs in crds/ are installed before the templates and never templated.
    assert not any("CustomResourceDefinition" in t["data"].decode() if isinstance(t["data"], bytes) else "CustomResourceDefinition" in t["data"] for t in chart.templates)


def test_chart_packages(chart, tmp_path):
    archive = pathlib.Path(chart.save(str(tmp_path)))
    assert archive.name == "kinfer-operator-0.1.0.tgz" and archive.stat().st_size > 0
