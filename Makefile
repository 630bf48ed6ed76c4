# model-rollout — build, test, demo, bench.
#   make test    everything CI runs (installs what is missing on a fresh machine)
#   make demo    Envoy + demo models locally, live split per variant (Ctrl-C stops)
#   make bench   pinned, interleaved wrk benchmark: none / native / noop / floor / ours, mirror vs shadow;
#                then the fleet run (bench/fleet.py; alone: make bench-fleet)
#   make oci     OCI image of the filter, digest pinned into istio/, gateway-api/, envoy-gateway/
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

.PHONY: all deps rust-deps py-deps node-deps prom-deps bench-deps build wasm native \
        test lint unit wasm-unit integration demo bench bench-fleet clean oci oci-check oci-deps

all: build

# ---------------------------------------------------------------- dependencies
deps: rust-deps py-deps node-deps prom-deps

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

bench-deps:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

# ---------------------------------------------------------------- build
build: wasm native

wasm: rust-deps
	$(CARGO_WASM) -p model-rollout -p noop-filter -p floor-filter

native:
	cargo build --profile native -p rollout-demo -p rollout-control -p fleet-load

# ---------------------------------------------------------------- test
test: deps lint unit wasm-unit build integration

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
integration: py-deps prom-deps bench-deps build
	$(PY) -m pytest tests -q -rs

# ---------------------------------------------------------------- demo / bench
demo: py-deps build
	$(PY) tools/demo.py

bench: py-deps bench-deps build
	$(PY) bench/run.py --envoy $(ENVOY)
	$(PY) bench/fleet.py

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
	rm -rf $(VENV) .run
