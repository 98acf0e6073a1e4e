# `make bench`: kinfer-runtime vs the in-process floor vs a FastAPI + uvicorn + onnxruntime baseline.
# One command on a fresh machine: installs ONNX Runtime (.tools/onnxruntime), the baseline's venv
# (.tools/bench-venv, from PyPI), wrk (Debian) when missing, builds the release runtime and the
# `floor` example, then runs benchmarks/bench.py (≈ 15 min; BENCH_QUICK=1 for a ≈ 2 min smoke run).
# Benchmarks, not tests: nothing here is part of `make test`. Results: benchmarks/results/.
# Knobs (environment): BENCH_QUICK, BENCH_REPEAT, BENCH_DURATION, BENCH_WARMUP, BENCH_MODELS,
# BENCH_SECTIONS, BENCH_WORKERS, BENCH_WRK_THREADS, BENCH_OUT (see benchmarks/bench.py).
BENCH_VENV := $(TOOLS)/bench-venv

.PHONY: bench bench-quick bench-setup bench-build bench-venv bench-wrk bench-cold
bench: bench-setup bench-build
	python3 benchmarks/bench.py

bench-quick: bench-setup bench-build
	BENCH_QUICK=1 python3 benchmarks/bench.py

bench-setup: setup-ort bench-venv bench-wrk

bench-venv: $(BENCH_VENV)/.installed
$(BENCH_VENV)/.installed: benchmarks/requirements.txt
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r benchmarks/requirements.txt
	touch $@

bench-wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

bench-build:
	$(CARGO) build --release -p kinfer-runtime --bin kinfer-runtime --example floor --example grpc_load

# Cold start (issue 10): a 500 MB object from the local S3 test server through the store, one
# stream vs parallel ranged GETs (and `aws s3 cp` when installed); time to ready cold vs warm.
bench-cold: setup-ort
	$(CARGO) build --release -p kinfer-runtime --bin kinfer-runtime --example fetch --example s3_server
	benchmarks/cold.sh
