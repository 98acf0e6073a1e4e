"""Shared helpers for the chart tests: load the chart once, render it to objects."""

from __future__ import annotations

import pathlib

import helm_python as helm  # PyPI helm-python-sdk: Helm's Go SDK, no helm binary
import pytest
import yaml


ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "kinfer-operator"
CRD_NAME = "inferenceservices.serving.kinfer.dev.yaml"
RELEASE = "kinfer"
NAMESPACE = "kinfer-system"


@pytest.fixture(scope="session")
def chart():
    return helm.Chart.load(str(CHART_DIR))


def objects_of(manifests: dict[str, str]) -> list[dict]:
    """Parse every rendered template (NOTES.txt excluded) into Kubernetes objects."""
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template", path)
                out.append(doc)
    return out


@pytest.fixture(scope="session")
def render(chart):
    def _render(values: dict | None = None, namespace: str = NAMESPACE) -> list[dict]:
        return objects_of(chart.render(values or {}, name=RELEASE, namespace=namespace))

    return _render


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
