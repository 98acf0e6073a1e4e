#!/usr/bin/env bash
# `make image-test`: builds the runtime and operator images from the real Dockerfiles with
# podman (no Docker daemon needed), then
#   - runs the runtime image read-only, as uid 65532, on the host network, against a real
#     S3-compatible server on 127.0.0.1 holding examples/models/iris/model.onnx, waits for
#     readiness and checks a prediction against examples/models/iris/expected.json;
#   - runs the operator image's crdgen and compares its output with crds/;
#   - prints both image sizes and the build times.
# Base images are made locally (scripts/make-base-images.sh) since none can be pulled here.
# Env: IMAGE_TEST_BUILD_ONLY=1 stops after the builds; RUNTIME_IMAGE / OPERATOR_IMAGE name the tags;
# IMAGES="runtime" or IMAGES="operator" builds and checks only that one (default: both).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME_IMAGE="${RUNTIME_IMAGE:-localhost/kinfer/kinfer-runtime:test}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-localhost/kinfer/kinfer-operator:test}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CRD_FILE=crds/inferenceservices.serving.kinfer.dev.yaml
IMAGES="${IMAGES:-runtime operator}"
want() { [[ " $IMAGES " == *" $1 "* ]]; }
rt_secs=-; op_secs=-
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
t0=$(date +%s)
log() { echo "image-test [$(( $(date +%s) - t0 ))s]: $*"; }
die() { echo "image-test: FAIL: $*" >&2; exit 1; }

# ---- tools ------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (rootful podman)"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing podman runc debootstrap (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
scripts/make-base-images.sh

case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
# ---- build ------------------------------------------------------------------------------------
build() { # build <Dockerfile> <tag>
  local extra=()
  if [ -f "$CA_BUNDLE" ]; then
    # The machine's CA bundle (for a TLS-intercepting proxy); the Dockerfiles take its path as
    # build args that are empty by default.
    extra=(--volume "$CA_BUNDLE:/run/host-ca.crt:ro" --build-arg CARGO_HTTP_CAINFO=/run/host-ca.crt
           --build-arg PIP_CERT=/run/host-ca.crt)
  fi
  local s st; s=$(date +%s)
  set +e
  podman build --runtime runc --network host "${LIMITS[@]}" "${extra[@]}" \
    --build-arg TARGETARCH="$arch" --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || true)" \
    -f "$1" -t "$2" . 2>&1 | grep --line-buffered -v -E '^\s+(Downloaded|Downloading) ' | sed -u "s/^/  [$1] /" >&2
  st=${PIPESTATUS[0]}
  set -e
  [ "$st" = 0 ] || die "podman build -f $1 failed"
  echo $(( $(date +%s) - s ))
}
if want runtime; then
  log "building $RUNTIME_IMAGE from Dockerfile.runtime"
  rt_secs=$(build Dockerfile.runtime "$RUNTIME_IMAGE")
fi
if want operator; then
  log "building $OPERATOR_IMAGE from Dockerfile.operator"
  op_secs=$(build Dockerfile.operator "$OPERATOR_IMAGE")
fi

size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1e6}'; }
report() {
  echo "image-test: build time: runtime ${rt_secs}s, operator ${op_secs}s"
  want runtime && echo "image-test: image size: $RUNTIME_IMAGE $(size "$RUNTIME_IMAGE")"
  want operator && echo "image-test: image size: $OPERATOR_IMAGE $(size "$OPERATOR_IMAGE")"
  return 0
}
# The build stages' images are left dangling by each build (about 1.2 GB each); drop them so
# repeated runs do not fill the disk (the cargo caches are mounts and stay).
podman image prune -f >/dev/null 2>&1 || true
if [ "${IMAGE_TEST_BUILD_ONLY:-0}" = 1 ]; then report; exit 0; fi

# ---- static checks of both images ---------------------------------------------------------------
for img in $(want runtime && echo "$RUNTIME_IMAGE") $(want operator && echo "$OPERATOR_IMAGE"); do
  user=$(podman image inspect --format '{{.Config.User}}' "$img")
  [ "$user" = "65532:65532" ] || die "$img runs as '$user', want 65532:65532"
  title=$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.title"}}' "$img")
  [ -n "$title" ] || die "$img has no OCI title label"
done

# ---- runtime image against a real S3 server on 127.0.0.1 ----------------------------------------
work="$(mktemp -d)"
s3_pid=""
rt_name="kinfer-image-test-runtime-$$"
cleanup() {
  podman rm -f "$rt_name" >/dev/null 2>&1 || true
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if want runtime; then
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(free_port); RT_PORT=$(free_port); GRPC_PORT=$(free_port)
AK=kinfer-image-test; SK=kinfer-image-test-secret
mkdir -p "$work/s3/models"
log "starting the test S3 server (s3s-fs) on 127.0.0.1:$S3_PORT"
cargo build -q -p kinfer-runtime --example s3_server
"${CARGO_TARGET_DIR:-target}/debug/examples/s3_server" --root "$work/s3" --addr "127.0.0.1:$S3_PORT" \
  --access-key "$AK" --secret-key "$SK" >"$work/s3.log" 2>&1 &
s3_pid=$!
for _ in $(seq 100); do grep -q "listening" "$work/s3.log" && break; sleep 0.1; done
grep -q "listening" "$work/s3.log" || { cat "$work/s3.log"; die "S3 server did not start"; }
# Upload the model with a real SigV4-signed PUT (the same path a user's `aws s3 cp` takes).
python3 scripts/s3_put.py "http://127.0.0.1:$S3_PORT" "$AK" "$SK" models iris/model.onnx \
  examples/models/iris/model.onnx || die "upload to the S3 server failed"

log "running $RUNTIME_IMAGE --read-only --user 65532 --network host (port $RT_PORT)"
podman run -d --name "$rt_name" --runtime runc --network host --read-only --user 65532 "${LIMITS[@]}" \
  -e AWS_ACCESS_KEY_ID="$AK" -e AWS_SECRET_ACCESS_KEY="$SK" -e AWS_REGION=us-east-1 \
  -e AWS_ENDPOINT_URL_S3="http://127.0.0.1:$S3_PORT" -e KINFER_S3_PATH_STYLE=true \
  -e KINFER_HTTP_HOST=127.0.0.1 -e KINFER_HTTP_PORT="$RT_PORT" -e KINFER_GRPC_PORT="$GRPC_PORT" \
  "$RUNTIME_IMAGE" --model-uri s3://models/iris/model.onnx --model-name iris >/dev/null
ready=0
for _ in $(seq 120); do
  if curl -fsS "http://127.0.0.1:$RT_PORT/v2/health/ready" >/dev/null 2>&1; then ready=1; break; fi
  [ "$(podman inspect -f '{{.State.Running}}' "$rt_name")" = true ] || break
  sleep 0.5
done
if [ "$ready" != 1 ]; then podman logs "$rt_name" | tail -30; die "runtime container never became ready"; fi
log "ready; checking a prediction against examples/models/iris/expected.json"
python3 - "http://127.0.0.1:$RT_PORT" examples/models/iris/expected.json <<'PY' || { podman logs "$rt_name" | tail -30; die "prediction check failed"; }
import json, math, sys, urllib.request
base, path = sys.argv[1], sys.argv[2]
exp = json.load(open(path))
req = urllib.request.Request(f"{base}/v2/models/iris/infer", data=json.dumps({"id": "image-test", "inputs": exp["inputs"]}).encode(),
                             headers={"content-type": "application/json"})
got = json.load(urllib.request.urlopen(req, timeout=10))
assert got.get("id") == "image-test", got
outs = {o["name"]: o for o in got["outputs"]}
for want in exp["outputs"]:
    o = outs[want["name"]]
    assert list(o["shape"]) == want["shape"], (want["name"], o["shape"], want["shape"])
    for a, b in zip(o["data"], want["data"]):
        assert (a == b) if isinstance(b, (str, int)) and not isinstance(b, bool) and want["datatype"] != "FP32" \
            else math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), (want["name"], a, b)
print("image-test: prediction matches expected.json:", {k: outs[k]["data"][:6] for k in outs})
PY
metrics="$(curl -fsS "http://127.0.0.1:$RT_PORT/metrics")" || die "GET /metrics failed"
grep -q '^# TYPE' <<<"$metrics" || die "/metrics has no Prometheus metrics"
podman exec "$rt_name" sh -c 'touch /probe' 2>/dev/null && die "root filesystem is writable"
log "runtime image OK (read-only root, uid $(podman exec "$rt_name" id -u))"

fi

if want operator; then
# ---- operator image: crdgen == crds/ ------------------------------------------------------------
podman run --rm --runtime runc --network none --read-only --user 65532 "${LIMITS[@]}" \
  --entrypoint /usr/local/bin/crdgen "$OPERATOR_IMAGE" >"$work/crd.yaml"
if [ -f "$CRD_FILE" ]; then
  diff -u "$CRD_FILE" "$work/crd.yaml" >&2 || die "the operator image's crdgen differs from $CRD_FILE"
  log "operator image's crdgen output equals $CRD_FILE"
else
  die "$CRD_FILE is missing"
fi
podman run --rm --runtime runc --network none --read-only --user 65532 "${LIMITS[@]}" \
  "$OPERATOR_IMAGE" --help >/dev/null || die "kinfer-operator --help failed in the image"

fi

report
echo "image-test: PASS"
