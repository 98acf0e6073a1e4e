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
