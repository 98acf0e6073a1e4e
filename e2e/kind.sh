#!/usr/bin/env bash
# End-to-end run on a throwaway kind cluster (`make e2e-kind`):
#   1. create a kind cluster (examples/kind/kind-config.yaml)
#   2. build both images with docker and `kind load` them
#   3. deploy the in-cluster S3 store and upload the example models
#   4. `helm install` the chart (charts/kinfer-operator)
#   5. smoke: apply examples/iris-s3.yaml, wait Ready, one prediction over a port-forward
#   6. run the Rust suite: KINFER_E2E=1 cargo test -p kinfer-e2e --test kind -- --test-threads=1
#   7. on failure collect logs into $ARTIFACTS; delete the cluster (unless KEEP_CLUSTER=1)
#
# Needs docker, kind, helm, kubectl and cargo. Env: KIND_CLUSTER (kinfer-e2e), IMAGE_TAG (dev),
# KEEP_CLUSTER=1, SKIP_BUILD=1 (images already built), ARTIFACTS (target/e2e-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CLUSTER="${KIND_CLUSTER:-kinfer-e2e}"
TAG="${IMAGE_TAG:-dev}"
RUNTIME_IMAGE="kinfer/kinfer-runtime:$TAG"
OPERATOR_IMAGE="kinfer/kinfer-operator:$TAG"
ARTIFACTS="${ARTIFACTS:-$ROOT/target/e2e-artifacts}"
CTX="kind-$CLUSTER"
K=(kubectl --context "$CTX")
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }

for tool in docker kind helm kubectl cargo; do
  command -v "$tool" >/dev/null || { echo "kind.sh: $tool is needed" >&2; exit 1; }
done

collect() {
  mkdir -p "$ARTIFACTS"
  echo "kind.sh: collecting logs into $ARTIFACTS" >&2
  "${K[@]}" get all,inferenceservices,hpa,pdb,events -A -o wide >"$ARTIFACTS/objects.txt" 2>&1 || true
  "${K[@]}" get inferenceservices -A -o yaml >"$ARTIFACTS/inferenceservices.yaml" 2>&1 || true
  "${K[@]}" describe pods -A >"$ARTIFACTS/pods-describe.txt" 2>&1 || true
  "${K[@]}" -n kinfer-system logs deploy/kinfer-kinfer-operator --all-containers --tail=-1 >"$ARTIFACTS/operator.log" 2>&1 || true
  "${K[@]}" -n kinfer-s3 logs job/upload-models >"$ARTIFACTS/upload-models.log" 2>&1 || true
  for ns in $("${K[@]}" get ns -l kinfer.dev/e2e -o name 2>/dev/null | cut -d/ -f2) default; do
    for pod in $("${K[@]}" -n "$ns" get pods -o name 2>/dev/null); do
      "${K[@]}" -n "$ns" logs "$pod" --all-containers --previous >"$ARTIFACTS/$ns-${pod#pod/}.previous.log" 2>/dev/null || true
      "${K[@]}" -n "$ns" logs "$pod" --all-containers >"$ARTIFACTS/$ns-${pod#pod/}.log" 2>&1 || true
    done
  done
  kind export logs --name "$CLUSTER" "$ARTIFACTS/kind" >/dev/null 2>&1 || true
}
finish() {
  local rc=$?
  [ "$rc" = 0 ] || collect
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
    echo "kind.sh: keeping cluster $CLUSTER (kubectl --context $CTX ...)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  [ "$rc" = 0 ] && echo "kind.sh: PASS in $(( $(date +%s) - t0 ))s" || echo "kind.sh: FAIL (rc $rc)" >&2
  exit "$rc"
}

step "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config examples/kind/kind-config.yaml --wait 180s
fi
trap finish EXIT

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "docker build $RUNTIME_IMAGE, $OPERATOR_IMAGE"
  docker build -f Dockerfile.runtime -t "$RUNTIME_IMAGE" .
  docker build -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
fi
step "kind load"
kind load docker-image --name "$CLUSTER" "$RUNTIME_IMAGE" "$OPERATOR_IMAGE"

step "in-cluster S3 store + example models"
"${K[@]}" apply -f examples/kind/s3-store.yaml
"${K[@]}" -n kinfer-s3 create configmap example-models \
  --from-file=iris.onnx=examples/models/iris/model.onnx \
  --from-file=tabular.onnx=examples/models/tabular/model.onnx \
  --from-file=mlp.onnx=examples/models/mlp/model.onnx \
  --dry-run=client -o yaml | "${K[@]}" apply -f -
"${K[@]}" -n kinfer-s3 rollout status deployment/s3 --timeout=180s
"${K[@]}" -n kinfer-s3 delete job upload-models --ignore-not-found
"${K[@]}" apply -f examples/kind/upload-models-job.yaml
"${K[@]}" -n kinfer-s3 wait --for=condition=Complete job/upload-models --timeout=300s
"${K[@]}" -n kinfer-s3 logs job/upload-models | tail -8

step "helm install charts/kinfer-operator"
helm --kube-context "$CTX" upgrade --install kinfer charts/kinfer-operator \
  --namespace kinfer-system --create-namespace \
  --set image.repository=kinfer/kinfer-operator --set image.tag="$TAG" \
  --set runtimeImage.repository=kinfer/kinfer-runtime --set runtimeImage.tag="$TAG" \
  --set logLevel=info --set logFormat=text \
  --wait --timeout 180s
"${K[@]}" -n kinfer-system rollout status deployment/kinfer-kinfer-operator --timeout=120s

step "smoke: examples/iris-s3.yaml → Ready → a prediction over a port-forward"
"${K[@]}" apply -f examples/iris-s3.yaml
"${K[@]}" wait --for=condition=Ready inferenceservice/iris --timeout=300s
"${K[@]}" get inferenceservice iris -o wide
"${K[@]}" port-forward svc/iris 18080:80 >/dev/null 2>&1 &
pf=$!
ok=0
for _ in $(seq 30); do
  if out=$(curl -fsS localhost:18080/v2/models/iris/infer -H 'content-type: application/json' \
      -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}' 2>/dev/null); then
    echo "$out"; ok=1; break
  fi
  sleep 1
done
kill "$pf" 2>/dev/null || true
[ "$ok" = 1 ] || { echo "kind.sh: no prediction from the iris example" >&2; exit 1; }
"${K[@]}" delete -f examples/iris-s3.yaml --wait=true

step "Rust e2e suite"
S3_IP="$("${K[@]}" -n kinfer-s3 get svc s3 -o jsonpath='{.spec.clusterIP}')"
KUBECONFIG_FILE="$(mktemp)"
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
KUBECONFIG="$KUBECONFIG_FILE" KINFER_E2E=1 \
  KINFER_E2E_RUNTIME_IMAGE="$RUNTIME_IMAGE" \
  KINFER_E2E_S3_ENDPOINT="http://$S3_IP:9000" \
  KINFER_E2E_OPERATOR=external \
  cargo test -p kinfer-e2e --test kind -- --test-threads=1 --nocapture
