# model-rollout — build, test, demo, bench.
#   make test    everything CI runs (installs what is missing on a fresh machine)
#   make demo    Envoy + demo models locally, live split per variant (Ctrl-C stops)
#   make bench   pinned, interleaved wrk benchmark: none / native / noop / floor / ours, mirror vs shadow;
#                then the fleet run (bench/fleet.py; alone: make bench-fleet)
#   make bench-instructions  instructions per request under valgrind's callgrind (load-independent; 10-25 min)
#   make oci     OCI image of the filter, digest pinned into istio/, gateway-api/, envoy-gateway/
#   make fuzz    coverage-guided fuzzing of core's parsers, FUZZ_SECONDS per target (default 300)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)

VENV    := .venv
PY      := $(VENV)/bin/python
ENVOY   := $(VENV)/bin/envoy
WASM    := target/wasm32-wasip1/release/model_rollout.wasm
NOOP    := target/wasm32-wasip1/release/noop_filter.wasm
FLOOR   := target/wasm32-wasip1/release/floor_filter.wasm
NATIVE  := target/native
DEMO    := $(NATIVE)/rollout-demo
WASI_RUNNER := node --no-warnings $(CURDIR)/tools/wasi-run.mjs
CARGO_WASM  := cargo build --release --target wasm32-wasip1

OCI_DIR := target/oci/model-rollout
OCI_TAR := target/oci/model-rollout.tar

.PHONY: all deps rust-deps py-deps node-deps prom-deps ui-deps bench-deps build wasm native \
        test lint unit wasm-unit integration demo bench bench-fleet bench-instructions valgrind-deps clean oci oci-check oci-deps \
        fuzz-deps fuzz-smoke fuzz

all: build

# ---------------------------------------------------------------- dependencies
deps: rust-deps py-deps node-deps prom-deps ui-deps

rust-deps:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

py-deps: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# Node runs rollout-core's test binaries compiled to wasm32-wasip1 (node:wasi).
node-deps:
	@command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs; }

# Prometheus (Debian's package) is a real component of the fleet tests: tests start
# /usr/bin/prometheus on a free loopback port scraping the Envoys they run.
prom-deps:
	@test -x /usr/bin/prometheus || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }

# Debian's chromium and its chromedriver: tests/test_ui.py drives the status page in a
# real headless browser (Selenium, from tests/requirements.txt).
ui-deps:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

bench-deps:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# ---------------------------------------------------------------- build
build: wasm native

# After cargo, tools/wasm-trim removes from the filter the exports of the callbacks
# it does not implement (src/exports.txt): Envoy then does not enter the VM for them.
# Idempotent; it refuses (and leaves the file as cargo made it) when an export the
# filter needs is missing or one is not classified.
wasm: rust-deps
	$(CARGO_WASM) -p model-rollout -p noop-filter -p floor-filter
	cargo run --quiet --profile native -p wasm-trim -- --exports src/exports.txt $(WASM)

native:
	cargo build --profile native -p rollout-demo -p rollout-control -p fleet-load

# ---------------------------------------------------------------- test
test: deps lint unit wasm-unit fuzz-smoke build integration

lint: rust-deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p model-rollout -p rollout-core --target wasm32-wasip1 -- -D warnings

unit:
	cargo test --workspace

# rollout-core's tests, compiled to wasm and run in a wasm engine (Node's WASI).
wasm-unit: rust-deps node-deps
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASI_RUNNER)" \
	  cargo test -p rollout-core --target wasm32-wasip1

# Real Envoy running the built .wasm with the shipped configs.
integration: py-deps prom-deps ui-deps bench-deps build
	$(PY) -m pytest tests -q -rs

# ---------------------------------------------------------------- fuzzing
# cargo-fuzz (libFuzzer, AddressSanitizer) over rollout-core's parsers: the plugin
# configuration and plan, the shadow-answer comparison, the record/assignment
# ingestion (fuzz/fuzz_targets/). It needs a nightly toolchain: the installed one,
# else `rustup toolchain install nightly`, else the stable toolchain with
# RUSTC_BOOTSTRAP=1 (the same compiler flags). `fuzz-smoke` (in `make test`) replays
# the committed corpus (fuzz/corpus/, regressions included) and fuzzes each target
# for FUZZ_SMOKE_SECONDS; new inputs go to target/fuzz-corpus/, never into git.
FUZZ_TARGETS       := config compare ingest
FUZZ_SMOKE_SECONDS ?= 8
FUZZ_SECONDS       ?= 300
FUZZ_TOOLCHAIN      = $(shell rustup toolchain list | grep -q '^nightly' && echo +nightly || echo +stable)
FUZZ_ENV            = $(if $(filter +stable,$(FUZZ_TOOLCHAIN)),RUSTC_BOOTSTRAP=1,)
CARGO_FUZZ          = $(FUZZ_ENV) cargo $(FUZZ_TOOLCHAIN) fuzz

fuzz-deps: rust-deps
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal \
	  || echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

fuzz-smoke: fuzz-deps
	$(CARGO_FUZZ) build -O --fuzz-dir fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  $(CARGO_FUZZ) run -O --fuzz-dir fuzz $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SMOKE_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 \
	    > target/fuzz-$$t.log 2>&1 || { tail -40 target/fuzz-$$t.log; exit 1; }; \
	  echo "fuzz $$t: $$(grep -m1 -o 'Done [0-9]* runs in [0-9]* second(s)' target/fuzz-$$t.log), no crash"; \
	done

fuzz: fuzz-deps
	$(CARGO_FUZZ) build -O --fuzz-dir fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  $(CARGO_FUZZ) run -O --fuzz-dir fuzz $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done

# ---------------------------------------------------------------- demo / bench
demo: py-deps build
	$(PY) tools/demo.py

bench: py-deps bench-deps build
	$(PY) bench/run.py --envoy $(ENVOY)
	$(PY) bench/fleet.py

# Instructions per request of none / noop / floor / ours under callgrind (noise-free;
# needs valgrind; 10-25 minutes).
# valgrind (Debian's package): bench/instructions.py counts instructions under callgrind.
valgrind-deps:
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind; }

bench-instructions: py-deps valgrind-deps build
	$(PY) bench/instructions.py --envoy $(ENVOY)

# Only the fleet run: 20,000 authenticated proxies polling the sidecar every second.
bench-fleet: py-deps build
	$(PY) bench/fleet.py

# OCI image of the filter (Istio's compat layout: one layer holding plugin.wasm), and
# its manifest digest pinned into the manifests of istio/, gateway-api/ and envoy-gateway/
# (Istio and Envoy Gateway check `sha256` against it).
oci: py-deps wasm
	$(PY) tools/oci.py build --wasm $(WASM) --out $(OCI_DIR) --tar $(OCI_TAR)
	$(PY) tools/oci.py pin --wasm $(WASM)

oci-check: py-deps wasm
	$(PY) tools/oci.py pin --wasm $(WASM) --check

# optional: lets tests/test_oci.py also inspect the image with skopeo
oci-deps:
	@command -v skopeo >/dev/null || { apt-get update -qq && apt-get install -y -qq skopeo; }

clean:
	cargo clean
	rm -rf fuzz/target
	rm -rf $(VENV) .run
