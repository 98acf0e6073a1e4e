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
