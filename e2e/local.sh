#!/usr/bin/env bash
# End-to-end run on a real single-node Kubernetes from the local kit (`make e2e-local`; CI runs it
# after `make image-test`). No Docker, no kind, no registry:
#   1. ../shared/k8s/up.sh --node --pod-api: kube-apiserver, controller-manager, scheduler,
#      kubelet + containerd + runc, kube-proxy; pods can reach the API server
#   2. load the runtime and operator images (podman, built by `make image-test`) onto the node
#   3. the S3 test server (runtime/examples/s3_server) on the node's bridge address 10.244.0.1,
#      holding the example models as the suite expects them (iris/1, iris/2, iris/broken, tabular/1,
#      tabular/2, mlp/1 in bucket `models`; bucket `inference-logs`)
#   4. the Rust suite with the operator in-process (KINFER_E2E_OPERATOR=in-process)
#   5. the chart rendered through Helm's SDK (scripts/render-chart.py) and applied: the operator
#      runs as a pod with its own ServiceAccount and RBAC; a smoke test of examples/iris-s3.yaml
#      through the Service's ClusterIP; then the suite again (KINFER_E2E_OPERATOR=external)
#   6. on failure: operator and pod logs, events, resources and status under $ARTIFACTS
#      (printed); the cluster is always stopped and wiped unless KEEP_CLUSTER=1
#
# Needs root, podman and cargo. Env: KINFER_K8S_KIT (../shared/k8s), K8S_HOME
# (~/.cache/kinfer-e2e-k8s), RUNTIME_IMAGE / OPERATOR_IMAGE (image-test's tags), E2E_MODES
# ("in-process chart"), ARTIFACTS (target/e2e-local-artifacts), KEEP_CLUSTER=1, E2E_TEST_ARGS
# (extra cargo test filter/arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
KIT="${KINFER_K8S_KIT:-$ROOT/../shared/k8s}"
export K8S_HOME="${K8S_HOME:-$HOME/.cache/kinfer-e2e-k8s}"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-localhost/kinfer/kinfer-runtime:test}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-localhost/kinfer/kinfer-operator:test}"
MODES="${E2E_MODES:-in-process chart}"
ARTIFACTS="${ARTIFACTS:-$ROOT/target/e2e-local-artifacts}"
BRIDGE=10.244.0.1
S3_AK=kinfer-e2e S3_SK=kinfer-e2e-secret
OP_NS=kinfer-system
t0=$(date +%s)
step() { echo "== e2e-local [$(( $(date +%s) - t0 ))s] $*"; }
die() { echo "e2e-local: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (a node: containerd, kubelet, iptables)"
[ -x "$KIT/up.sh" ] || die "no Kubernetes kit at $KIT (set KINFER_K8S_KIT); users with Docker: make e2e-kind"
command -v podman >/dev/null || die "podman is needed for the images (make image-test installs it)"
for img in "$RUNTIME_IMAGE" "$OPERATOR_IMAGE"; do
  podman image exists "$img" || die "image $img not found: run make image-test (or make images) first"
done

# kubelet evicts every pod and taints the node (DiskPressure) when the filesystem holding its state
# has less than 15% of its size free (imagefs.available<15%): refuse to start rather than fail later.
mkdir -p "$K8S_HOME"
free_pct() { df -P "$K8S_HOME" | awk 'NR==2 {printf "%d", $4 * 100 / $2}'; }
if [ "$(free_pct)" -lt 20 ]; then
  echo "e2e-local: only $(free_pct)% of $(df -P "$K8S_HOME" | awk 'NR==2 {print $6}') free; removing dangling podman images" >&2
  podman image prune -f >/dev/null 2>&1 || true
fi
[ "$(free_pct)" -ge 17 ] || die "only $(free_pct)% of the filesystem holding $K8S_HOME is free: kubelet evicts pods below 15% \
(DiskPressure); free some space (old target/ folders, podman images) and run again"

s3_pid=""
K=()
collect() {
  rm -rf "$ARTIFACTS"; mkdir -p "$ARTIFACTS"
  if [ ${#K[@]} -gt 0 ]; then
    "${K[@]}" get all,inferenceservices,hpa,pdb,endpoints -A -o wide >"$ARTIFACTS/objects.txt" 2>&1 || true
    "${K[@]}" get events -A --sort-by=.lastTimestamp >"$ARTIFACTS/events.txt" 2>&1 || true
    "${K[@]}" get inferenceservices -A -o yaml >"$ARTIFACTS/inferenceservices.yaml" 2>&1 || true
    "${K[@]}" get deployments -A -o yaml >"$ARTIFACTS/deployments.yaml" 2>&1 || true
    "${K[@]}" describe pods -A >"$ARTIFACTS/pods-describe.txt" 2>&1 || true
    "${K[@]}" -n "$OP_NS" logs deploy/kinfer-kinfer-operator --all-containers --tail=-1 >"$ARTIFACTS/operator.log" 2>&1 || true
    for ns in $("${K[@]}" get ns -o name 2>/dev/null | cut -d/ -f2 | grep -E '^(kinfer|default)'); do
      for pod in $("${K[@]}" -n "$ns" get pods -o name 2>/dev/null); do
        "${K[@]}" -n "$ns" logs "$pod" --all-containers --previous >"$ARTIFACTS/$ns-${pod#pod/}.previous.log" 2>/dev/null || true
        "${K[@]}" -n "$ns" logs "$pod" --all-containers >"$ARTIFACTS/$ns-${pod#pod/}.log" 2>&1 || true
      done
    done
  fi
  cp "$WORK/s3.log" "$ARTIFACTS/s3.log" 2>/dev/null || true
  cp "$WORK"/suite-*.log "$ARTIFACTS/" 2>/dev/null || true
  for f in kube-apiserver kube-controller-manager; do tail -n 300 "$K8S_HOME/run/logs/$f.log" >"$ARTIFACTS/$f.log" 2>/dev/null || true; done
  for f in kubelet kube-scheduler containerd; do tail -n 300 "$K8S_HOME/node/run/logs/$f.log" >"$ARTIFACTS/$f.log" 2>/dev/null || true; done
  echo "e2e-local: logs of the failed run (operator, pods, events, status) are in $ARTIFACTS" >&2
}
WORK="$(mktemp -d)"
finish() {
  local rc=$?
  [ "$rc" = 0 ] || collect
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null || true
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "e2e-local: keeping the cluster (KUBECONFIG=$K8S_HOME/kubeconfig; stop: K8S_HOME=$K8S_HOME $KIT/down.sh --wipe)"
  else
    "$KIT/down.sh" --wipe >/dev/null 2>&1 || echo "e2e-local: down.sh failed" >&2
  fi
  rm -rf "$WORK"
  if [ "$rc" = 0 ]; then echo "e2e-local: PASS in $(( $(date +%s) - t0 ))s"; else echo "e2e-local: FAIL (rc $rc) after $(( $(date +%s) - t0 ))s" >&2; fi
  exit "$rc"
}
trap finish EXIT

step "real cluster: $KIT/up.sh --node --pod-api (K8S_HOME=$K8S_HOME)"
KUBECONFIG="$("$KIT/up.sh" --node --pod-api)"
export KUBECONFIG
K=("$K8S_HOME/bin/kubectl")

step "loading $RUNTIME_IMAGE and $OPERATOR_IMAGE onto the node"
"$KIT/load-image.sh" "$RUNTIME_IMAGE" "$OPERATOR_IMAGE" >&2

step "S3 test server on $BRIDGE with the example models"
cargo build -q -p kinfer-runtime --example s3_server
s3_port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$BRIDGE',0)); print(s.getsockname()[1])")
root="$WORK/s3"
mkdir -p "$root/models/iris/1" "$root/models/iris/2" "$root/models/iris/broken" "$root/models/tabular/1" \
  "$root/models/tabular/2" "$root/models/mlp/1" "$root/inference-logs"
cp examples/models/iris/model.onnx "$root/models/iris/1/model.onnx"
cp examples/models/iris/model.onnx "$root/models/iris/2/model.onnx"
cp examples/models/tabular/model.onnx "$root/models/tabular/1/model.onnx"
cp examples/models/tabular/model.onnx "$root/models/tabular/2/model.onnx"
cp examples/models/mlp/model.onnx "$root/models/mlp/1/model.onnx"
echo "this is not an ONNX model" >"$root/models/iris/broken/model.onnx"
"${CARGO_TARGET_DIR:-target}/debug/examples/s3_server" --root "$root" --addr "$BRIDGE:$s3_port" \
  --access-key "$S3_AK" --secret-key "$S3_SK" >"$WORK/s3.log" 2>&1 &
s3_pid=$!
for _ in $(seq 100); do grep -q listening "$WORK/s3.log" && break; sleep 0.1; done
grep -q listening "$WORK/s3.log" || { cat "$WORK/s3.log" >&2; die "the S3 test server did not start"; }
S3_ENDPOINT="http://$BRIDGE:$s3_port"

export KINFER_E2E=1 KINFER_E2E_RUNTIME_IMAGE="$RUNTIME_IMAGE" KINFER_E2E_S3_ENDPOINT="$S3_ENDPOINT" \
  KINFER_E2E_S3_ACCESS_KEY="$S3_AK" KINFER_E2E_S3_SECRET_KEY="$S3_SK" KINFER_E2E_READY_TIMEOUT=180
step "building the e2e suite"
cargo test -q --workspace --test kind --no-run 2>&1 | tail -3 >&2

suite() { # suite <mode>: the Rust e2e suite, one test at a time
  local mode=$1 s; s=$(date +%s)
  step "e2e suite, operator $mode"
  # shellcheck disable=SC2086
  KINFER_E2E_OPERATOR="$2" cargo test -q --workspace --test kind -- --test-threads=1 --nocapture \
    ${E2E_TEST_ARGS:-} 2>&1 | tee "$WORK/suite-$mode.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || die "e2e suite with the operator $mode failed"
  step "e2e suite, operator $mode: passed in $(( $(date +%s) - s ))s"
}

for mode in $MODES; do
  case "$mode" in
    in-process)
      suite in-process in-process
      ;;
    chart)
      step "the chart (rendered by Helm's SDK) applied: the operator as a pod"
      "${K[@]}" create namespace "$OP_NS" --dry-run=client -o yaml | "${K[@]}" apply -f - >/dev/null
      "${K[@]}" label namespace "$OP_NS" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
      make -s venv >/dev/null
      .tools/venv/bin/python scripts/render-chart.py --release kinfer --namespace "$OP_NS" \
        --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
        --set image.pullPolicy=Never \
        --set runtimeImage.repository="${RUNTIME_IMAGE%:*}" --set runtimeImage.tag="${RUNTIME_IMAGE##*:}" \
        --set logLevel=info --set logFormat=text >"$WORK/chart.yaml"
      "${K[@]}" apply --server-side -f "$WORK/chart.yaml" >&2
      "${K[@]}" wait --for=condition=Established crd/inferenceservices.serving.kinfer.dev --timeout=60s >&2
      "${K[@]}" -n "$OP_NS" rollout status deployment/kinfer-kinfer-operator --timeout=180s >&2

      step "smoke: examples/iris-s3.yaml (endpoint → the test server) Ready, a prediction through the Service"
      "${K[@]}" create namespace kinfer-smoke --dry-run=client -o yaml | "${K[@]}" apply -f - >/dev/null
      sed -e "s#http://s3.kinfer-s3.svc.cluster.local:9000#$S3_ENDPOINT#" \
          -e "s#AWS_ACCESS_KEY_ID: .*#AWS_ACCESS_KEY_ID: $S3_AK#" -e "s#AWS_SECRET_ACCESS_KEY: .*#AWS_SECRET_ACCESS_KEY: $S3_SK#" \
          examples/iris-s3.yaml >"$WORK/iris-s3.yaml"
      grep -q "$S3_ENDPOINT" "$WORK/iris-s3.yaml" || die "examples/iris-s3.yaml no longer names the kind S3 endpoint"
      "${K[@]}" -n kinfer-smoke apply -f "$WORK/iris-s3.yaml" >&2
      "${K[@]}" -n kinfer-smoke wait --for=condition=Ready inferenceservice/iris --timeout=180s >&2
      "${K[@]}" -n kinfer-smoke get inferenceservice iris -o wide >&2
      ip="$("${K[@]}" -n kinfer-smoke get svc iris -o jsonpath='{.spec.clusterIP}')"
      ok=0
      for _ in $(seq 30); do
        if out=$(curl -fsS "http://$ip/v2/models/iris/infer" -H 'content-type: application/json' \
            -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}' 2>&1); then
          echo "$out"; ok=1; break
        fi
        sleep 1
      done
      [ "$ok" = 1 ] || die "no prediction from examples/iris-s3.yaml through its Service ($ip): $out"
      "${K[@]}" -n kinfer-smoke delete -f "$WORK/iris-s3.yaml" --wait=true >&2

      suite chart external
      ;;
    *) die "E2E_MODES: unknown mode $mode (in-process, chart)" ;;
  esac
done
