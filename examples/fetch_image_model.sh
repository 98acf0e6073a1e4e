#!/usr/bin/env bash
# Fetches the example image model into examples/models/orientation/model.onnx (committed; run
# this only to re-create or verify it).
#
# The model is PaddleOCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls) as shipped in the
# rapidocr-onnxruntime 1.4.4 wheel on PyPI, licensed Apache-2.0 (see
# examples/models/orientation/LICENSE.md). Input x: FP32 [N, 3, 48, 192] (NCHW, RGB,
# (pixel/255 - 0.5)/0.5); output: FP32 [N, 2], softmax over (0°, 180°).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/models/orientation/model.onnx"
SHA256=e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c
PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps -d "$TMP" rapidocr-onnxruntime==1.4.4
unzip -q -j -o "$TMP"/rapidocr_onnxruntime-1.4.4-*.whl \
  'rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx' -d "$TMP"
echo "$SHA256  $TMP/ch_ppocr_mobile_v2.0_cls_infer.onnx" | sha256sum -c --quiet
mkdir -p "$(dirname "$OUT")"
cp "$TMP/ch_ppocr_mobile_v2.0_cls_infer.onnx" "$OUT"
echo "wrote $OUT (sha256 $SHA256)"
