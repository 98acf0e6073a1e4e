# Shipping: Helm chart tests, container images (podman), kind e2e.
# Included by the top-level Makefile (`-include mk/*.mk`) before its `test:` rule.

CHART_DIR := charts/kinfer-operator
CRD_FILE := inferenceservices.serving.kinfer.dev.yaml

TEST_TARGETS += test-chart

.PHONY: test-chart chart-test chart-crd image-test images e2e-kind e2e-local

# Chart tests: lint + render through Helm's Go SDK (PyPI helm-python-sdk), no helm binary.
# Also checks examples/*.yaml against the CRD schema.
test-chart chart-test: venv
	$(PY) -m pytest -q tests/chart

# Copies the generated CRD into the chart (the chart test fails while they differ).
chart-crd:
	cp crds/$(CRD_FILE) $(CHART_DIR)/crds/$(CRD_FILE)

# Builds both images from the real Dockerfiles with podman and runs them (needs root + podman/runc).
image-test:
	scripts/image-test.sh

# Builds both images with podman only (same as image-test's first half).
images:
	IMAGE_TEST_BUILD_ONLY=1 scripts/image-test.sh

# End-to-end run on a real single-node Kubernetes from ../shared/k8s (no Docker; needs root and the
# images of `make image-test`): the suite with the operator in-process, then the chart's operator
# as a pod. CI runs it after image-test.
e2e-local:
	e2e/local.sh

# Full end-to-end run on a throwaway kind cluster (needs docker, kind, helm, kubectl).
e2e-kind:
	e2e/kind.sh
