#!/usr/bin/env bash
# Makes, without pulling anything, the public base images that Dockerfile.runtime and
# Dockerfile.operator name, so the same Dockerfiles build with podman on a machine that
# cannot reach an image registry (only Debian's mirror and the package registries):
#
#   docker.io/library/debian:bookworm-slim      debootstrap --variant=minbase bookworm
#   docker.io/library/python:3.11-slim-bookworm that + Debian's python3 (3.11) and pip
#   docker.io/library/rust:1.95-bookworm        that + gcc/libc6-dev + this machine's Rust 1.95
#                                               toolchain (Debian's rustc is too old)
#
# Images that already exist are kept (FORCE=1 remakes them). Needs root, podman, runc and
# debootstrap. On a machine that can pull, none of this is needed: `docker build` pulls the
# official images of the same names.
set -euo pipefail

DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
RUST_IMAGE=docker.io/library/rust:1.95-bookworm
RUST_VERSION=1.95.0
# Debian's mirror: the one this machine's apt uses (or DEBIAN_MIRROR).
host_mirror() {
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' || true
  grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$2 !~ /security/ {print $2; exit}' || true
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror | head -1)}"
[ -n "$MIRROR" ] || { echo "make-base-images: set DEBIAN_MIRROR (no Debian mirror in this machine's apt sources)" >&2; exit 1; }
# The security archive: the host's, else Debian's.
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' || true)}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
FORCE="${FORCE:-0}"
BUILD=(podman build --runtime runc --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

log() { echo "make-base-images: $*" >&2; }
# Images made by an older recipe of this script (label dev.kinfer.base-recipe) are made again:
# recipe 2 writes bookworm-only apt sources (recipe 1 copied the host's).
RECIPE=2
recipe_of() { podman image inspect --format '{{index .Config.Labels "dev.kinfer.base-recipe"}}' "$1" 2>/dev/null || true; }
want() { [ "$FORCE" = 1 ] || [ "$(recipe_of "$1")" != "$RECIPE" ]; }

if want "$DEBIAN_IMAGE"; then
  log "debootstrap bookworm (minbase) -> $DEBIAN_IMAGE"
  rootfs="$(mktemp -d /var/tmp/kinfer-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
  # The image's apt sources: bookworm alone, from the same mirror. Never the host's files: a host
  # with another suite configured (pinned low by a preferences file that would not come along)
  # would turn this "bookworm" image into that suite, and binaries built on it would then need a
  # newer glibc than bookworm-slim has ("GLIBC_2.39 not found").
  rm -f "$rootfs/etc/apt/sources.list" "$rootfs"/etc/apt/sources.list.d/*
  "$(dirname "$0")/bookworm-sources.sh" "$MIRROR" "$SECURITY_MIRROR" >"$rootfs/etc/apt/sources.list.d/debian.sources"
  # Keep it slim like the official image: no apt lists, caches, docs or man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/debconf/*-old
  tar --numeric-owner -C "$rootfs" -c . | podman import -q --change 'CMD ["bash"]' \
    --change "LABEL dev.kinfer.base-recipe=$RECIPE" - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  FORCE=1 # the images below are made from this one
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT

if want "$PYTHON_IMAGE"; then
  log "building $PYTHON_IMAGE from $DEBIAN_IMAGE"
  cat >"$ctx/Containerfile.python" <<CF
FROM docker.io/library/debian:bookworm-slim
LABEL dev.kinfer.base-recipe=$RECIPE
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
CF
  "${BUILD[@]}" -q -f "$ctx/Containerfile.python" -t "$PYTHON_IMAGE" "$ctx" >/dev/null
fi

if want "$RUST_IMAGE"; then
  toolchain="$(rustc +"$RUST_VERSION" --print sysroot 2>/dev/null || rustc --print sysroot)"
  toolchain="$(readlink -f "$toolchain")"
  "$toolchain/bin/rustc" --version | grep -q "rustc $RUST_VERSION" \
    || { log "need Rust $RUST_VERSION on this machine (found $("$toolchain/bin/rustc" --version))"; exit 1; }
  log "building $RUST_IMAGE from $DEBIAN_IMAGE with the toolchain in $toolchain"
  cat >"$ctx/Containerfile.rust" <<CF
FROM docker.io/library/debian:bookworm-slim
LABEL dev.kinfer.base-recipe=$RECIPE
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates git \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=$RUST_VERSION \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN tc=/usr/local/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu \
 && mkdir -p "\$tc" /usr/local/cargo/bin \
 && cp -a /mnt/toolchain/bin /mnt/toolchain/lib "\$tc/" \
 && for b in "\$tc"/bin/*; do ln -s "\$b" /usr/local/cargo/bin/; done \
 && cargo --version && rustc --version
CF
  "${BUILD[@]}" -q --volume "$toolchain:/mnt/toolchain:ro" -f "$ctx/Containerfile.rust" -t "$RUST_IMAGE" "$ctx" >/dev/null
fi

# The build image must have bookworm's glibc, the one the final images run with.
glibc() { podman run --rm --runtime runc --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 "$1" ldd --version | awk 'NR==1 {print $NF}'; }
base_glibc="$(glibc "$DEBIAN_IMAGE")"; build_glibc="$(glibc "$RUST_IMAGE")"
[ "$base_glibc" = "$build_glibc" ] || {
  log "$RUST_IMAGE has glibc $build_glibc but $DEBIAN_IMAGE has $base_glibc: binaries built on it would not run; FORCE=1 remakes the images"
  exit 1
}
log "glibc $base_glibc in $DEBIAN_IMAGE and $RUST_IMAGE"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'debian:bookworm-slim|python:3.11-slim-bookworm|rust:1.95-bookworm' >&2
