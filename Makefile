# kinfer — two commands on a fresh machine: `make run` and `make test`.
# Everything is installed into .tools/ (project-local); nothing global, nothing but package registries.
SHELL := bash
.DEFAULT_GOAL := help
ORT_VERSION := 1.31.1
TOOLS := $(CURDIR)/.tools
export ORT_DYLIB_PATH ?= $(TOOLS)/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
VENV := $(TOOLS)/venv
PY := $(VENV)/bin/python
export KINFER_TEST_PYTHON ?= $(PY)
CARGO ?= cargo

# Each area's fragment appends its own test targets to TEST_TARGETS.
TEST_TARGETS := test-rust
-include mk/*.mk

.PHONY: help setup setup-ort venv run build test test-rust lint fmt models clean-tools
help:
	@echo "make run    build and serve the example iris model on 127.0.0.1:8080"
	@echo "make test   install test dependencies into .tools/ and run every test"
	@echo "make lint   cargo fmt --check and clippy -D warnings"

setup: setup-ort venv

setup-ort: $(ORT_DYLIB_PATH)
$(ORT_DYLIB_PATH):
	ORT_VERSION=$(ORT_VERSION) scripts/install-onnxruntime.sh

venv: $(VENV)/.installed
$(VENV)/.installed: scripts/requirements-test.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
	touch $@

build:
	$(CARGO) build --release -p kinfer-runtime -p kinfer-operator

run: setup-ort
	$(CARGO) build --release -p kinfer-runtime
	./target/release/kinfer-runtime --model-uri examples/models/iris/model.onnx --model-name iris --host 127.0.0.1 --port 8080

test: $(TEST_TARGETS)

# The operator's integration tests get a real control plane from ../shared/k8s when it is there
# (scripts/test-rust.sh starts and stops it); without it they skip and say why.
test-rust: setup
	CARGO="$(CARGO)" scripts/test-rust.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerates the example models and their expected outputs (needs scikit-learn; not part of `make test`).
models:
	python3 -m venv $(TOOLS)/modelgen
	$(TOOLS)/modelgen/bin/pip install --quiet -r examples/requirements-models.txt
	$(TOOLS)/modelgen/bin/python examples/make_models.py

clean-tools:
	rm -rf $(TOOLS)
