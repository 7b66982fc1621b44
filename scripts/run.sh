#!/usr/bin/env bash
# Runs the mesh's services in the foreground until Ctrl-C or SIGTERM, then stops every process
# it started (SIGTERM first, so each drains its in-flight requests). Never reads standard input.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so}
export MODEL_REPOSITORY=${MODEL_REPOSITORY:-$PWD/models}

pids=()
watcher=
stop() {
    trap - INT TERM
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    echo "[run] stopping ${#pids[@]} process(es)" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    echo "[run] stopped" >&2
    exit 0
}
trap stop INT TERM

# make does not pass SIGTERM on to its children: when the parent (make) goes away, stop too.
parent=$PPID
( while kill -0 "$parent" 2>/dev/null; do sleep 1; done; kill -TERM $$ 2>/dev/null ) </dev/null &
watcher=$!

start() {
    local name=$1; shift
    "$BIN/$name" "$@" </dev/null &
    pids+=($!)
    echo "[run] started $name (pid $!)" >&2
}

# Demonstration keys for a local run; real deployments give a keys file of SHA-256 digests
# (--api-keys-file, see deploy/api-keys.example.toml).
export GATEWAY_API_KEYS=${GATEWAY_API_KEYS:-demo-client-key:demo-shop:client,demo-admin-key:ops:admin}

# The collector first, without an OTLP endpoint of its own (it would export to itself); the
# other services send their traces and metrics to it.
OTEL_EXPORTER_OTLP_ENDPOINT= start metrics-collector
export OTEL_EXPORTER_OTLP_ENDPOINT=${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4317}
start inference
start gateway --inference 127.0.0.1:50052 --records-endpoint http://127.0.0.1:4317

# The alert manager keeps incidents in PostgreSQL: DATABASE_URL, or the server on
# 127.0.0.1:5432 when one answers there.
if [ -z "${DATABASE_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 \
    && pg_isready -q -h 127.0.0.1 -p 5432; then
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
fi
if [ -n "${DATABASE_URL:-}" ]; then
    export ALERT_MANAGER_API_KEYS=${ALERT_MANAGER_API_KEYS:-demo-admin-key:ops:admin}
    start alert-manager --rules deploy/rules --gateway http://127.0.0.1:50051 \
        --gateway-api-key "${ALERT_MANAGER_GATEWAY_API_KEY:-demo-admin-key}" --inference http://127.0.0.1:50052
    alerts_line="[run] alerts:    grpc 127.0.0.1:50054 (monitoring.alerts.v1), rules in deploy/rules/"
else
    alerts_line="[run] alerts:    not started: set DATABASE_URL (no PostgreSQL answers on 127.0.0.1:5432)"
fi

cat >&2 <<MSG
[run] gateway:   grpc 127.0.0.1:50051 (ecommerce.gateway.v1 + Open Inference Protocol), API keys
[run]            demo-client-key (role client) and demo-admin-key (role admin)
[run] inference: grpc 127.0.0.1:50052 (Open Inference Protocol + serving.inference.v1)
$alerts_line
[run] metrics:   OTLP + monitoring.metrics.v1 queries on 127.0.0.1:4317, Prometheus text on
[run]            http://127.0.0.1:9464/metrics; e.g. the gateway's request rate:
[run]   .venv/bin/grpcurl -plaintext -d '{"selector": {"metric": "gateway.requests"},
[run]     "function": "FUNCTION_RATE", "window_seconds": 60, "group_by": ["rpc"]}' \\
[run]     127.0.0.1:4317 monitoring.metrics.v1.MetricsQuery/Query
[run] try:  .venv/bin/grpcurl -plaintext -H 'authorization: Bearer demo-client-key' \\
[run]         -d '{"texts": ["wireless headphones"]}' 127.0.0.1:50051 ecommerce.gateway.v1.Gateway/Embed
[run] stop: Ctrl-C
MSG

# Exit (and stop the rest) as soon as any service exits on its own.
wait -n "${pids[@]}"
status=$?
echo "[run] a service exited with status $status" >&2
stop
