# kinfer-operator: regenerate the CRD and run the operator against the current kubeconfig.
OPERATOR_CRD := crds/inferenceservices.serving.kinfer.dev.yaml
OPERATOR_ARGS ?= --leader-election=false

.PHONY: crds run-operator
crds:
	$(CARGO) run -q -p kinfer-operator --bin crdgen > $(OPERATOR_CRD).tmp
	mv $(OPERATOR_CRD).tmp $(OPERATOR_CRD)

run-operator:
	kubectl apply --server-side -f $(OPERATOR_CRD)
	$(CARGO) run -p kinfer-operator --bin kinfer-operator -- $(OPERATOR_ARGS)

# Only the operator's integration tests, against KINFER_TEST_KUBECONFIG or a control plane started
# from ../shared/k8s for the run (`make test` runs them with everything else).
.PHONY: test-operator-integration
test-operator-integration:
	CARGO="$(CARGO)" scripts/test-rust.sh -p kinfer-operator --test integration -- --nocapture

# kinfer-operator at scale against a real control plane (docs/benchmarks.md, "Operator at scale"):
# BENCH_N InferenceServices (default 1000), time to all children, reconciles/s, peak RSS, API
# writes in a quiet minute. Against KINFER_BENCH_KUBECONFIG, or a control plane started from
# ../shared/k8s for the run (scripts/bench-operator.sh).
.PHONY: bench-operator
bench-operator:
	$(CARGO) build --release -p kinfer-operator --bin kinfer-operator
	scripts/bench-operator.sh
