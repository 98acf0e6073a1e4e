"""Static checks of the Dockerfiles (the podman build and run is `make image-test`): the runtime
image carries the same pinned ONNX Runtime as local runs, both build every workspace member
they need, run as non-root, and name the base images scripts/make-base-images.sh makes."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

DOCKERFILES = ["Dockerfile.runtime", "Dockerfile.operator"]


def text(name: str) -> str:
    return (ROOT / name).read_text()


def test_runtime_image_pins_the_same_onnxruntime_as_local_runs():
    pinned = re.search(r"^ORT_VERSION := (\S+)$", text("Makefile"), re.M).group(1)
    assert re.search(rf"^ARG ORT_VERSION={re.escape(pinned)}$", text("Dockerfile.runtime"), re.M)
    assert f'ORT_VERSION="${{ORT_VERSION:-{pinned}}}"' in text("scripts/install-onnxruntime.sh")
    assert "ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.${ORT_VERSION}" in text("Dockerfile.runtime")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_every_workspace_member(dockerfile):
    members = re.search(r"^members = \[(.*?)\]", text("Cargo.toml"), re.M | re.S).group(1)
    members = re.findall(r'"([^"]+)"', members)
    body = text(dockerfile)
    for m in members:
        assert re.search(rf"^COPY {re.escape(m)} {re.escape(m)}$", body, re.M), f"{dockerfile} misses COPY {m}"
    ignore = text(".dockerignore")
    for m in members:
        assert f"!{m}/" in ignore, f".dockerignore excludes workspace member {m}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_shape(dockerfile):
    body = text(dockerfile)
    assert re.search(r"^USER 65532:65532$", body, re.M)
    assert "--release --locked" in body
    assert "org.opencontainers.image.title" in body and "org.opencontainers.image.licenses" in body
    assert re.search(r'^ARG CARGO_HTTP_CAINFO=""$', body, re.M)
    assert "--mount=type=cache,target=/usr/local/cargo/registry" in body
    # The base images scripts/make-base-images.sh makes when none can be pulled.
    bases = text("scripts/make-base-images.sh")
    for arg in re.findall(r"^ARG (?:RUST|PYTHON|BASE)_IMAGE=(\S+)$", body, re.M):
        assert f"docker.io/library/{arg}" in bases, f"{dockerfile}: {arg} is not made by make-base-images.sh"


def test_base_images_name_bookworm_alone():
    """The "bookworm" base image gets bookworm's suites only, never the host's apt sources (a host
    with a newer suite configured made images whose binaries needed GLIBC_2.39)."""
    import subprocess

    out = subprocess.run(
        ["bash", str(ROOT / "scripts/bookworm-sources.sh"), "http://mirror.example/debian", "http://sec.example/ds"],
        check=True, capture_output=True, text=True,
    ).stdout
    suites = [s for line in out.splitlines() if line.startswith("Suites:") for s in line.split()[1:]]
    assert suites == ["bookworm", "bookworm-updates", "bookworm-security"], suites
    assert "URIs: http://mirror.example/debian" in out and "URIs: http://sec.example/ds" in out
    script = text("scripts/make-base-images.sh")
    assert not re.search(r"cp\s+/etc/apt", script), "make-base-images.sh copies the host's apt sources"
    assert "bookworm-sources.sh" in script
    # And it refuses a build image whose glibc differs from the final base image's.
    assert 'ldd --version' in script and '"$base_glibc" = "$build_glibc"' in script


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_cache_is_keyed_by_the_build_images_glibc(dockerfile):
    """The shared target cache must not hand binaries built on another base to this one."""
    body = text(dockerfile)
    assert "id=kinfer-cargo-target" in body
    m = re.search(r'export CARGO_TARGET_DIR="/src/target/([^"]+)"', body)
    assert m and "ldd --version" in m.group(1) and "rustc -V" in m.group(1), "CARGO_TARGET_DIR not keyed by glibc"
    assert '"$CARGO_TARGET_DIR"/release/' in body and " target/release/" not in body
