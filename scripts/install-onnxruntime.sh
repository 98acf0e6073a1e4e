#!/usr/bin/env bash
# Installs the pinned ONNX Runtime shared library into the project (.tools/onnxruntime/),
# taken from the `onnxruntime` wheel on PyPI. Nothing is installed globally.
# Prints the library path on success. Idempotent.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.tools/onnxruntime"
lib="$dest/libonnxruntime.so.$ORT_VERSION"
if [ -f "$lib" ]; then echo "$lib"; exit 0; fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION" \
  --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp" >&2
whl="$(ls "$tmp"/onnxruntime-"$ORT_VERSION"-*.whl)"
python3 - "$whl" "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base \
                and "providers" not in base:
            with z.open(n) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
test -f "$lib" || { echo "install-onnxruntime: $lib not found in $whl" >&2; exit 1; }
echo "$lib"
