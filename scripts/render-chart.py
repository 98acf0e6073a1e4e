#!/usr/bin/env python3
"""Renders charts/kinfer-operator through Helm's Go SDK (PyPI helm-python-sdk, the same renderer
the chart tests use; no helm binary) and prints the manifests as one multi-document YAML stream,
ready for `kubectl apply`. The chart's CRD (charts/kinfer-operator/crds/) is printed first, as
`helm install` installs it first.

    render-chart.py [--release kinfer] [--namespace kinfer-system] [--set key.path=value ...]

`--set` takes dotted paths like helm's (values parsed as YAML scalars: true, 3, "text").
"""

import argparse
import pathlib
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(__file__).resolve().parents[1] / "charts" / "kinfer-operator"


def set_path(values: dict, dotted: str) -> None:
    if "=" not in dotted:
        sys.exit(f"render-chart: --set {dotted!r}: expected key.path=value")
    key, raw = dotted.split("=", 1)
    node = values
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(raw) if raw else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--release", default="kinfer")
    ap.add_argument("--namespace", default="kinfer-system")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    values: dict = {}
    for s in args.sets:
        set_path(values, s)
    chart = helm.Chart.load(str(CHART))
    docs = [p.read_text() for p in sorted((CHART / "crds").glob("*.yaml"))]
    for path, text in sorted(chart.render(values, name=args.release, namespace=args.namespace).items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        docs.append(f"# Source: {path}\n{text}")
    print("\n---\n".join(d.strip() for d in docs))


if __name__ == "__main__":
    main()
