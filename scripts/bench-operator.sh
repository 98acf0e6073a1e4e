#!/usr/bin/env bash
# `make bench-operator`: benchmarks/operator_scale.py against KINFER_BENCH_KUBECONFIG, or, when it
# is not set and the local Kubernetes kit is there (../shared/k8s or KINFER_K8S_KIT), against a
# control plane of its own (K8S_HOME ~/.cache/kinfer-bench-k8s, API port 36443), stopped and
# wiped afterwards, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT="${KINFER_K8S_KIT:-$PWD/../shared/k8s}"
if [ -z "${KINFER_BENCH_KUBECONFIG:-}" ]; then
  [ -x "$KIT/up.sh" ] || { echo "bench-operator: set KINFER_BENCH_KUBECONFIG (no Kubernetes kit at $KIT)" >&2; exit 2; }
  # shellcheck source=scripts/lib/control-plane.sh
  . scripts/lib/control-plane.sh
  start_control_plane "$KIT" "${KINFER_BENCH_K8S_HOME:-$HOME/.cache/kinfer-bench-k8s}" 36443 32379 32380 40257
  export KINFER_BENCH_KUBECONFIG="$CONTROL_PLANE_KUBECONFIG"
  export KUBECTL="${KUBECTL:-$K8S_HOME/bin/kubectl}"
fi
python3 benchmarks/operator_scale.py
