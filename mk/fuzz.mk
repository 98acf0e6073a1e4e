# Fuzzing the runtime's request decoders (v2 JSON/binary, V1 JSON, multipart, image bytes) with
# cargo-fuzz; not part of `make test` (the bounded property test tests/decoders_fuzz.rs is).
# `make fuzz` runs for FUZZ_SECONDS; new inputs go to runtime/fuzz/corpus/ (not committed), the
# committed seeds stay in runtime/fuzz/seeds/decoders, crashes land in runtime/fuzz/artifacts/.
FUZZ_SECONDS ?= 120
CARGO_FUZZ ?= $(or $(shell command -v cargo-fuzz 2>/dev/null),$(TOOLS)/cargo-fuzz/bin/cargo-fuzz)

.PHONY: fuzz fuzz-build
$(CARGO_FUZZ):
	$(CARGO) install cargo-fuzz --locked --root $(TOOLS)/cargo-fuzz

fuzz-build: $(CARGO_FUZZ)
	cd runtime/fuzz && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) build decoders

# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 allows them on the stable toolchain.
fuzz: fuzz-build
	mkdir -p runtime/fuzz/corpus/decoders
	cd runtime/fuzz && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run decoders corpus/decoders seeds/decoders -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=10 \
		-print_final_stats=1
