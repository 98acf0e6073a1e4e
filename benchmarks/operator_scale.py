#!/usr/bin/env python3
"""kinfer-operator at scale, against a real control plane (`make bench-operator`).

Creates BENCH_N InferenceServices (the iris example, examples/iris-s3.yaml) in a fresh
namespace while no operator runs, starts the operator binary for that namespace only, and
reports:

- time from the operator's start until every Deployment and every Service exists;
- time until settled (every resource has a status for its generation and no reconcile ran for
  BENCH_SETTLE_S seconds), reconciles/s up to then;
- the operator's peak RSS (VmHWM);
- a quiet minute: the API requests the whole control plane received (from kube-apiserver's
  `apiserver_request_total`), writes by group/resource/verb, and reads. The operator runs with
  `--resync-seconds BENCH_RESYNC_S` (default 45) so that every resource is resynced inside that
  minute: its writes are what a resync writes.

Pods are never scheduled when the control plane has no node: only the control plane is measured.

Environment: KINFER_BENCH_KUBECONFIG (required), BENCH_N (1000), BENCH_NS (kinfer-bench),
BENCH_CONCURRENCY (operator default), BENCH_RESYNC_S (45), BENCH_QUIET_S (60), BENCH_SETTLE_S
(10), OPERATOR_BIN (target/release/kinfer-operator), KUBECTL (kubectl), BENCH_KEEP=1 keeps the
namespace afterwards. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "inferenceservices.serving.kinfer.dev.yaml"
EXAMPLE = ROOT / "examples" / "iris-s3.yaml"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}

KUBECONFIG = os.environ.get("KINFER_BENCH_KUBECONFIG", "")
N = int(os.environ.get("BENCH_N", "1000"))
NS = os.environ.get("BENCH_NS", "kinfer-bench")
CONCURRENCY = os.environ.get("BENCH_CONCURRENCY", "")
RESYNC_S = int(os.environ.get("BENCH_RESYNC_S", "45"))
QUIET_S = int(os.environ.get("BENCH_QUIET_S", "60"))
SETTLE_S = int(os.environ.get("BENCH_SETTLE_S", "10"))
BIN = os.environ.get("OPERATOR_BIN", str(ROOT / "target" / "release" / "kinfer-operator"))
KUBECTL = os.environ.get("KUBECTL", "kubectl")
HEALTH = os.environ.get("BENCH_HEALTH_ADDR", "127.0.0.1:18481")
TIMEOUT_S = int(os.environ.get("BENCH_TIMEOUT_S", "600"))


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    res = subprocess.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, *args],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if check and res.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def count(path: str) -> int:
    """Objects in a collection, from one item and `remainingItemCount`."""
    body = json.loads(kubectl("get", "--raw", f"{path}?limit=1"))
    return len(body.get("items", [])) + int(body.get("metadata", {}).get("remainingItemCount") or 0)


def unsettled() -> int:
    """InferenceServices without a status for their generation."""
    body = json.loads(kubectl("get", "--raw", f"/apis/serving.kinfer.dev/v1alpha1/namespaces/{NS}/inferenceservices"))
    return sum(
        1
        for i in body["items"]
        if (i.get("status") or {}).get("observedGeneration") != i["metadata"].get("generation")
    )


def operator_metric(name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://{HEALTH}/metrics", timeout=5).read().decode()
    except OSError:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


REQ = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def apiserver_requests() -> Counter:
    out: Counter = Counter()
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        m = REQ.match(line)
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'\w+="[^"]*"', m["labels"]))
        labels = {k: v.strip('"') for k, v in labels.items()}
        sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
        group = labels.get("group") or "core"
        out[(labels["verb"], f"{group}/{labels['resource']}{sub}")] += float(m["value"])
    return out


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def manifests() -> str:
    text, items, dec, pos = kubectl("create", "--dry-run=client", "-o", "json", "-f", str(EXAMPLE)), [], json.JSONDecoder(), 0
    while pos < len(text.rstrip()):
        doc, end = dec.raw_decode(text, pos)
        items += doc["items"] if doc.get("kind") == "List" else [doc]
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    secret = next(i for i in items if i["kind"] == "Secret")
    isvc = next(i for i in items if i["kind"] == "InferenceService")
    secret["metadata"].pop("namespace", None)
    objs = [secret]
    for n in range(N):
        o = json.loads(json.dumps(isvc))
        o["metadata"] = {"name": f"iris-{n:04d}", "labels": isvc["metadata"].get("labels", {})}
        objs.append(o)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})


def main() -> None:
    if not KUBECONFIG:
        sys.exit("set KINFER_BENCH_KUBECONFIG to the kubeconfig of a control plane (e.g. shared/k8s/up.sh)")
    if not Path(BIN).is_file():
        sys.exit(f"{BIN}: build it first (cargo build --release -p kinfer-operator)")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} before the run")

    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/inferenceservices.serving.kinfer.dev", "--timeout=60s")
    kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=300s")
    kubectl("create", "namespace", NS)
    t = time.monotonic()
    kubectl("create", "-n", NS, "-f", "-", stdin=manifests())
    print(f"created {N} InferenceServices in {time.monotonic() - t:.1f} s (operator not running)")

    args = [
        BIN,
        "--namespaces", NS,
        "--leader-election=false",
        "--health-addr", HEALTH,
        "--log-level", "warn",
        "--resync-seconds", str(RESYNC_S),
    ]
    if CONCURRENCY:
        args += ["--concurrency", CONCURRENCY]
    log = open(os.environ.get("BENCH_LOG", "/tmp/kinfer-operator-bench.log"), "w")
    env = dict(os.environ, KUBECONFIG=KUBECONFIG)
    t0 = time.monotonic()
    op = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = t0 + TIMEOUT_S
        t_children = None
        while time.monotonic() < deadline:
            d = count(f"/apis/apps/v1/namespaces/{NS}/deployments")
            s = count(f"/api/v1/namespaces/{NS}/services")
            if d >= N and s >= N:
                t_children = time.monotonic() - t0
                break
            if op.poll() is not None:
                sys.exit(f"operator exited with {op.returncode}; see {log.name}")
            time.sleep(0.5)
        if t_children is None:
            sys.exit(f"not every child after {TIMEOUT_S} s: {d} Deployments, {s} Services")
        rec_children = operator_metric("kinfer_operator_reconciliations_total")
        print(f"all {N} Deployments and Services: {t_children:.1f} s after the operator started"
              f" ({rec_children:.0f} reconciles, {rec_children / t_children:.0f}/s)")

        # Settled: every status written for its generation, then no API write (leases aside:
        # the controller-manager renews its own) for SETTLE_S.
        def writes_now() -> float:
            return sum(v for (verb, res), v in apiserver_requests().items()
                       if verb in WRITE_VERBS and not res.endswith("/leases"))

        last, quiet_since = -1.0, time.monotonic()
        while time.monotonic() < deadline:
            w = writes_now()
            if w != last:
                last, quiet_since = w, time.monotonic()
            if time.monotonic() - quiet_since >= SETTLE_S and unsettled() == 0:
                break
            time.sleep(1)
        t_settled = quiet_since - t0
        rec = operator_metric("kinfer_operator_reconciliations_total")
        print(f"settled (every status written, then {SETTLE_S} s without an API write): {t_settled:.1f} s,"
              f" {rec:.0f} reconciles, {rec / t_settled:.0f} reconciles/s")

        before, rec_before = apiserver_requests(), operator_metric("kinfer_operator_reconciliations_total")
        time.sleep(QUIET_S)
        after, rec_after = apiserver_requests(), operator_metric("kinfer_operator_reconciliations_total")
        diff = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
        writes = {k: v for k, v in diff.items() if k[0] in WRITE_VERBS}
        reads = sum(v for k, v in diff.items() if k[0] not in WRITE_VERBS and k[0] != "WATCH")
        print(f"quiet minute ({QUIET_S} s, resync every {RESYNC_S} s: {rec_after - rec_before:.0f} reconciles):"
              f" {sum(writes.values()):.0f} API writes, {reads:.0f} reads (whole control plane)")
        for (verb, res), v in sorted(writes.items(), key=lambda kv: -kv[1]):
            print(f"  write {verb:6} {res:55} {v:.0f}")
        print(f"operator RSS: peak {rss_kb(op.pid, 'VmHWM') / 1024:.1f} MB, now {rss_kb(op.pid, 'VmRSS') / 1024:.1f} MB")
    finally:
        op.terminate()
        op.wait(timeout=30)
        if os.environ.get("BENCH_KEEP") != "1":
            kubectl("delete", "namespace", NS, "--wait=false", check=False)


if __name__ == "__main__":
    main()
