"""The copy-and-apply manifests in examples/: every InferenceService validates against the CRD's
OpenAPI schema (the same one the API server enforces, CEL rules aside), the kind store's
manifests are sound, and every model uri the examples use is one the upload Job puts there."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import yaml

from conftest import CRD_NAME, ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KIND_MANIFESTS = sorted((ROOT / "examples" / "kind").glob("*.yaml"))


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def isvcs():
    return [(p.name, d) for p in EXAMPLES for d in docs(p) if d["kind"] == "InferenceService"]


def models_of(spec):
    """Every model an InferenceService names: `model` or each of `models`, and a canary's."""
    found = [spec["model"]] if "model" in spec else list(spec.get("models", []))
    if "model" in spec.get("canary", {}):
        found.append(spec["canary"]["model"])
    return found


def to_jsonschema(node):
    """OpenAPI v3 (as in a CRD) to JSON Schema: `nullable` becomes a null type, the
    Kubernetes extensions are dropped."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


@pytest.fixture(scope="module")
def crd_schema():
    path = ROOT / "crds" / CRD_NAME
    if not path.exists() or not path.read_text().strip():
        pytest.skip("crds/ not generated yet")
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"iris-s3.yaml", "fraud-autoscaling.yaml", "gpu.yaml"} <= names
    assert len(isvcs()) >= 3


@pytest.mark.parametrize("name,obj", isvcs(), ids=[n for n, _ in isvcs()])
def test_example_validates_against_the_crd_schema(crd_schema, name, obj):
    assert obj["apiVersion"] == "serving.kinfer.dev/v1alpha1"
    validator = jsonschema.Draft7Validator(crd_schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_is_not_vacuous(crd_schema):
    bad = copy.deepcopy(isvcs()[0][1])
    bad["spec"]["replicas"] = "two"
    models_of(bad["spec"])[0]["sha256"] = "not-a-digest"
    assert len(list(jsonschema.Draft7Validator(crd_schema).iter_errors(bad))) >= 2


def test_examples_follow_the_cel_rules_too():
    for name, o in isvcs():
        spec = o["spec"]
        assert not ("replicas" in spec and "autoscaling" in spec), name
        assert ("model" in spec) != ("models" in spec), f"{name}: set spec.model or spec.models"
        names = [m.get("name", name) for m in spec.get("models", [])]
        assert len(names) == len(set(names)), f"{name}: spec.models names must be unique"
        for m in models_of(spec):
            uri = m["uri"]
            assert re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^/].*$", uri), (name, uri)
        if "autoscaling" in spec:
            a = spec["autoscaling"]
            assert a.get("minReplicas", 1) <= a["maxReplicas"], name
            assert spec["resources"]["requests"]["cpu"], f"{name}: autoscaling on CPU needs a CPU request"


def test_every_secret_an_example_references_is_defined_in_examples():
    secrets = {d["metadata"]["name"] for p in EXAMPLES for d in docs(p) if d["kind"] == "Secret"}
    for name, o in isvcs():
        for m in models_of(o["spec"]):
            ref = m.get("storage", {}).get("secretRef")
            if ref:
                assert ref["name"] in secrets, f"{name} references Secret {ref['name']}"


def test_examples_use_models_the_upload_job_puts_in_the_store():
    job = next(d for d in docs(ROOT / "examples" / "kind" / "upload-models-job.yaml") if d["kind"] == "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    uploaded = set(re.findall(r"(s3://\S+)", script))
    for name, o in isvcs():
        for m in models_of(o["spec"]):
            assert m["uri"] in uploaded, f"{name}: {m['uri']} is not uploaded"
        log = o["spec"].get("logging", {}).get("uri")
        if log:
            bucket = log.split("/")[2]
            assert f"s3://{bucket}" in uploaded, f"{name}: bucket {bucket} is not made"
    # The files the Job reads are the committed models.
    for key in re.findall(r"/models/(\w+)\.onnx", script):
        assert (ROOT / "examples" / "models" / key / "model.onnx").exists(), key


def test_example_credentials_match_the_demo_store():
    store = {d["kind"] + "/" + d["metadata"]["name"]: d for d in docs(ROOT / "examples" / "kind" / "s3-store.yaml")}
    root = store["Secret/s3-root"]["stringData"]
    example = next(d for d in docs(ROOT / "examples" / "iris-s3.yaml") if d["kind"] == "Secret")["stringData"]
    assert example == root
    svc = store["Service/s3"]
    endpoint = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    for name, o in isvcs():
        for m in models_of(o["spec"]):
            assert m["storage"]["endpoint"] == endpoint, name


@pytest.mark.parametrize("path", KIND_MANIFESTS, ids=[p.name for p in KIND_MANIFESTS])
def test_kind_manifests_pin_images_and_run_restricted(path):
    for d in docs(path):
        if d["kind"] not in ("Deployment", "Job"):
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            image = c["image"]
            assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), image
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "limits" in c["resources"]
