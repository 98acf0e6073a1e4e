#!/usr/bin/env bash
# The `cold` benchmark (issue 10, cold start): a 500 MB object in the local S3 test server
# (runtime/examples/s3_server.rs, s3s-fs on 127.0.0.1) downloaded through the runtime's store
# (runtime/examples/fetch.rs → store::fetch): one stream vs parallel ranged GETs, the cache hit,
# `aws s3 cp` when the aws CLI is installed; then time to ready of the runtime for a real ~256 MB
# ONNX model (benchmarks/make_big_onnx.py) from S3: cold (one stream), cold (parallel), warm cache.
# Usage: benchmarks/cold.sh  (after `cargo build --release -p kinfer-runtime --bin kinfer-runtime
# --example fetch --example s3_server`). Temporary files live in a mktemp dir, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
SIZE=${COLD_BYTES:-500000000}
REPS=${COLD_REPS:-2}
N=${COLD_MODEL_N:-8192}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.tools/onnxruntime/libonnxruntime.so.1.31.1}
TMP=$(mktemp -d /tmp/kinfer-cold.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/') cores=$(nproc)"
mkdir -p "$TMP/root/bench"
head -c "$SIZE" /dev/urandom > "$TMP/big.bin"
SHA=$(sha256sum "$TMP/big.bin" | cut -d' ' -f1)
python3 benchmarks/make_big_onnx.py "$TMP/model.onnx" "$N"
MSHA=$(sha256sum "$TMP/model.onnx" | cut -d' ' -f1)
MODEL_BYTES=$(stat -c %s "$TMP/model.onnx")
"$BIN/examples/s3_server" --root "$TMP/root" --addr "127.0.0.1:$PORT" > "$TMP/s3.log" 2>&1 &
SRV=$!
for _ in $(seq 100); do grep -q listening "$TMP/s3.log" && break; sleep 0.05; done
EP="http://127.0.0.1:$PORT"
# Uploaded with PutObject (not copied into the directory): see `--put` in runtime/examples/fetch.rs.
for o in big.bin model.onnx; do
    "$BIN/examples/fetch" --endpoint "$EP" --uri "s3://bench/$o" --cache-dir "$TMP/cache" --put "$TMP/$o"
    rm "$TMP/$o"
done

fetch() { # label part_bytes concurrency [keep-cache]
    [ "${4:-}" = keep ] || rm -rf "$TMP/cache"
    "$BIN/examples/fetch" --endpoint "$EP" --uri s3://bench/big.bin --sha256 "$SHA" \
        --part-bytes "$2" --concurrency "$3" --cache-dir "$TMP/cache" --label "$1"
}
for _ in $(seq "$REPS"); do
    fetch single-stream 1099511627776 1
    fetch parallel-16MiBx8 16777216 8
    fetch parallel-8MiBx16 8388608 16
    fetch parallel-16MiBx4 16777216 4
done
fetch cache-hit 16777216 8 keep
rm -rf "$TMP/cache"

if command -v aws > /dev/null; then
    for _ in $(seq "$REPS"); do
        rm -f "$TMP/aws.bin"
        t0=$(date +%s.%N)
        AWS_ACCESS_KEY_ID=kinfer AWS_SECRET_ACCESS_KEY=kinfer-secret AWS_DEFAULT_REGION=us-east-1 \
            aws --endpoint-url "$EP" s3 cp --only-show-errors s3://bench/big.bin "$TMP/aws.bin"
        t1=$(date +%s.%N)
        sha256sum "$TMP/aws.bin" | grep -q "$SHA"
        t2=$(date +%s.%N)
        python3 -c "import sys; s,a,b=map(float,sys.argv[1:4]); n=$SIZE; print('{\"label\": \"aws s3 cp (then sha256sum)\", \"seconds\": %.3f, \"mb_per_s\": %.1f, \"with_sha256sum_s\": %.3f}' % (a-s, n/1e6/(a-s), b-s))" "$t0" "$t1" "$t2"
    done
    rm -f "$TMP/aws.bin"
else
    echo '{"label": "aws s3 cp", "skipped": "no aws CLI"}'
fi

ready() { # label cache-dir [env...]
    local label=$1 cache=$2
    shift 2
    local p=$((PORT + 1))
    t0=$(date +%s.%N)
    env AWS_ENDPOINT_URL_S3="$EP" AWS_ACCESS_KEY_ID=kinfer AWS_SECRET_ACCESS_KEY=kinfer-secret \
        KINFER_S3_PATH_STYLE=true KINFER_LOG=warn "$@" "$BIN/kinfer-runtime" --model-uri s3://bench/model.onnx \
        --model-sha256 "$MSHA" --cache-dir "$cache" --port "$p" --grpc-port 0 \
        --termination-log "$TMP/termination-log" > "$TMP/rt.log" 2>&1 &
    local rt=$!
    until curl -sf -o /dev/null "http://127.0.0.1:$p/v2/health/ready"; do
        kill -0 "$rt" 2>/dev/null || { cat "$TMP/rt.log"; exit 1; }
        sleep 0.02
    done
    t1=$(date +%s.%N)
    kill "$rt"; wait "$rt" 2>/dev/null || true
    python3 -c "import sys; print('{\"label\": \"ready: %s\", \"model_bytes\": %d, \"seconds\": %.3f}' % (sys.argv[1], int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])))" \
        "$label" "$MODEL_BYTES" "$t0" "$t1"
}
for _ in $(seq "$REPS"); do
    rm -rf "$TMP/rc"; ready "cold, one stream" "$TMP/rc" KINFER_DOWNLOAD_PART_BYTES=1099511627776
    rm -rf "$TMP/rc"; ready "cold, parallel 16 MiB x 8" "$TMP/rc"
    ready "warm cache (sha256 of the cached file)" "$TMP/rc"
done
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/')"
