#!/usr/bin/env bash
# `make test-rust`: every cargo test of the workspace. The operator's integration tests
# (operator/tests/integration.rs) need a real API server: when KINFER_TEST_KUBECONFIG is not set
# and the local Kubernetes kit is there (../shared/k8s beside the repository, or KINFER_K8S_KIT),
# this starts a control plane of its own (kube-apiserver + kube-controller-manager + etcd on
# 127.0.0.1, ports apart from a developer's default cluster), points the tests at it and stops it
# afterwards, also on failure. Without the kit the integration tests skip and say why.
#
# Arguments are cargo test's (default: --workspace --all-targets).
# Env: KINFER_TEST_KUBECONFIG (use that cluster instead), KINFER_K8S_KIT (the kit's folder),
# KINFER_TEST_K8S_HOME (the control plane's state; default ~/.cache/kinfer-test-k8s),
# KINFER_TEST_K8S_{API,ETCD,ETCD_PEER,KCM}_PORT (default 26443, 22379, 22380, 30257; set them to run
# two of these at once).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
KIT="${KINFER_K8S_KIT:-$PWD/../shared/k8s}"
t0=$(date +%s)
log() { echo "test-rust [$(( $(date +%s) - t0 ))s]: $*" >&2; }

if [ -z "${KINFER_TEST_KUBECONFIG:-}" ] && [ -x "$KIT/up.sh" ]; then
  log "starting a control plane for the operator's integration tests ($KIT/up.sh)"
  # shellcheck source=scripts/lib/control-plane.sh
  . scripts/lib/control-plane.sh
  start_control_plane "$KIT" "${KINFER_TEST_K8S_HOME:-$HOME/.cache/kinfer-test-k8s}" \
    "${KINFER_TEST_K8S_API_PORT:-26443}" "${KINFER_TEST_K8S_ETCD_PORT:-22379}" \
    "${KINFER_TEST_K8S_ETCD_PEER_PORT:-22380}" "${KINFER_TEST_K8S_KCM_PORT:-30257}"
  export KINFER_TEST_KUBECONFIG="$CONTROL_PLANE_KUBECONFIG"
  log "control plane up: KINFER_TEST_KUBECONFIG=$KINFER_TEST_KUBECONFIG"
elif [ -z "${KINFER_TEST_KUBECONFIG:-}" ]; then
  log "no Kubernetes kit at $KIT and KINFER_TEST_KUBECONFIG unset: the operator's integration tests will skip"
fi
[ $# -gt 0 ] || set -- --workspace --all-targets
"$CARGO" test "$@"
