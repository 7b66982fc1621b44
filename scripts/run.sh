#!/usr/bin/env bash
# Runs the mesh's services in the foreground until Ctrl-C or SIGTERM, then stops every process
# it started (SIGTERM first, so each drains its in-flight requests). Never reads standard input.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${MESH_BIN:-target/release}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so}
export MODEL_REPOSITORY=${MODEL_REPOSITORY:-$PWD/models}

# A service that stops on an error prints the error alone (a panic keeps its backtrace when
# RUST_BACKTRACE asks for one).
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}

pids=()
declare -A pid_of=()
watcher=
local_postgres=
stop() {
    local code=${1:-0}
    trap - INT TERM
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    echo "[run] stopping ${#pids[@]} process(es)" >&2
    # In the reverse order of their start: the collector (first started) stops last, so the
    # others' final exports of traces and metrics still reach it.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null
        wait "${pids[i]}" 2>/dev/null
    done
    [ -n "$local_postgres" ] && bash scripts/postgres.sh stop
    echo "[run] stopped" >&2
    exit "$code"
}
trap stop INT TERM

# make does not pass SIGTERM on to its children: when the parent (make) goes away, stop too.
parent=$PPID
( while kill -0 "$parent" 2>/dev/null; do sleep 1; done; kill -TERM $$ 2>/dev/null ) </dev/null &
watcher=$!

# TLS between the services, as in production: a throwaway CA and one certificate per service
# under data/tls (made once; `target/release/mesh-certs --force` makes a new set), laid out as
# cert-manager mounts them. MESH_PLAINTEXT=true runs the mesh without TLS instead.
TLS_DIR=${MESH_TLS_DIR:-data/tls}
case "${MESH_PLAINTEXT:-}" in
    1 | true | yes | on) plaintext=1 ;;
    *) plaintext= ;;
esac
if [ -n "$plaintext" ]; then
    export MESH_PLAINTEXT=true
    scheme=http
    GRPCURL_TLS=(-plaintext)
    echo "[run] MESH_PLAINTEXT: the services talk without TLS" >&2
else
    unset MESH_PLAINTEXT
    scheme=https
    "$BIN/mesh-certs" --out "$TLS_DIR" >&2 || { echo "[run] cannot make the certificates" >&2; exit 1; }
    GRPCURL_TLS=(-cacert "$TLS_DIR/operator/ca.crt" -cert "$TLS_DIR/operator/tls.crt" -key "$TLS_DIR/operator/tls.key")
fi
grpcurl_tls="${GRPCURL_TLS[*]}"

# start NAME ARGS...: starts target/<profile>/NAME with its certificate. AS=KEY names a second
# replica of a service (its pid is kept under KEY).
start() {
    local name=$1; shift
    local key=${AS:-$name}
    local certs=$name
    [ "$name" = traffic ] && certs=operator
    if [ -z "$plaintext" ]; then
        TLS_CERT_FILE=$TLS_DIR/$certs/tls.crt TLS_KEY_FILE=$TLS_DIR/$certs/tls.key \
            TLS_CA_FILE=$TLS_DIR/$certs/ca.crt "$BIN/$name" "$@" </dev/null &
    else
        "$BIN/$name" "$@" </dev/null &
    fi
    pids+=($!)
    pid_of[$key]=$!
    echo "[run] started $key (pid $!)" >&2
}

# MESH_REPLICAS=2 runs two replicas of the gateway (50051, 50061), the inference service (50052,
# 50062) and the alert manager (50054, 50064), as a cluster would: they share the collector and
# PostgreSQL, and agree through them.
replicas=${MESH_REPLICAS:-1}
case "$replicas" in
    1 | 2) ;;
    *) echo "[run] MESH_REPLICAS=$replicas: 1 or 2" >&2; exit 2 ;;
esac

# Demonstration keys for a local run; real deployments give a keys file of SHA-256 digests
# (--api-keys-file, see deploy/api-keys.example.toml).
export GATEWAY_API_KEYS=${GATEWAY_API_KEYS:-demo-client-key:demo-shop:client,demo-admin-key:ops:admin}
# Model loads and unloads on the inference service need its admin key; the gateway (which
# passes them on to every replica) and the alert manager's model actions send it.
export INFERENCE_API_KEYS=${INFERENCE_API_KEYS:-demo-admin-key:ops:admin}
export GATEWAY_INFERENCE_API_KEY=${GATEWAY_INFERENCE_API_KEY:-demo-admin-key}
export ALERT_MANAGER_INFERENCE_API_KEY=${ALERT_MANAGER_INFERENCE_API_KEY:-demo-admin-key}

# The collector first, without an OTLP endpoint of its own (it would export to itself); the
# other services send their traces and metrics to it.
# Only senders with its key may write into it (OTLP, records, baseline pins); each service sends
# the key the standard way, in OTEL_EXPORTER_OTLP_HEADERS, and the gateway's records with it.
export COLLECTOR_API_KEYS=${COLLECTOR_API_KEYS:-demo-sender-key:mesh:client}
# Its windows, join and baselines are kept in data/collector, so a restart of the mesh carries
# on from them (COLLECTOR_DATA_DIR= keeps them in memory only).
export COLLECTOR_DATA_DIR=${COLLECTOR_DATA_DIR-data/collector}
[ -n "$COLLECTOR_DATA_DIR" ] || unset COLLECTOR_DATA_DIR
OTEL_EXPORTER_OTLP_ENDPOINT= start metrics-collector
export OTEL_EXPORTER_OTLP_ENDPOINT=${OTEL_EXPORTER_OTLP_ENDPOINT:-$scheme://127.0.0.1:4317}
export OTEL_EXPORTER_OTLP_HEADERS=${OTEL_EXPORTER_OTLP_HEADERS:-authorization=Bearer%20demo-sender-key}
export GATEWAY_RECORDS_API_KEY=${GATEWAY_RECORDS_API_KEY:-demo-sender-key}
# The alert manager keeps incidents, and the gateways what is deployed (canary splits), in
# PostgreSQL: DATABASE_URL, or else a project-local cluster (scripts/postgres.sh, port 55432),
# started now and stopped with the rest.
if [ -z "${DATABASE_URL:-}" ]; then
    if ! DATABASE_URL=$(bash scripts/postgres.sh start); then
        echo "[run] no PostgreSQL: set DATABASE_URL, or see the errors above" >&2
        stop 1
    fi
    export DATABASE_URL
    local_postgres=1
fi
export GATEWAY_DATABASE_URL=${GATEWAY_DATABASE_URL:-$DATABASE_URL}
inference_replicas=127.0.0.1:50052
start inference
if [ "$replicas" = 2 ]; then
    AS=inference-2 start inference --listen 127.0.0.1:50062
    inference_replicas=127.0.0.1:50052,127.0.0.1:50062
fi
start gateway --inference "$inference_replicas" --records-endpoint "$scheme://127.0.0.1:4317"
if [ "$replicas" = 2 ]; then
    AS=gateway-2 start gateway --listen 127.0.0.1:50061 --inference "$inference_replicas" \
        --records-endpoint "$scheme://127.0.0.1:4317"
fi

export ALERT_MANAGER_API_KEYS=${ALERT_MANAGER_API_KEYS:-demo-admin-key:ops:admin}
inference_urls=$scheme://${inference_replicas//,/,$scheme://}
start_alert_manager() {
    start alert-manager --rules "${MESH_RULES:-deploy/rules}" --collector "$scheme://127.0.0.1:4317" \
        --gateway "$scheme://127.0.0.1:50051" --gateway-api-key "${ALERT_MANAGER_GATEWAY_API_KEY:-demo-admin-key}" \
        --inference "$inference_urls" "$@"
}
start_alert_manager --spill-dir "${ALERT_MANAGER_SPILL_DIR:-data/alert-manager}"
if [ "$replicas" = 2 ]; then
    AS=alert-manager-2 start_alert_manager --listen 127.0.0.1:50064 \
        --spill-dir "${ALERT_MANAGER_SPILL_DIR:-data/alert-manager}-2"
fi
alerts_line="[run] alerts:    grpc 127.0.0.1:50054 (monitoring.alerts.v1), rules in ${MESH_RULES:-deploy/rules}"

# Every service answers its health check before the traffic starts. 90 s: a service whose
# port a closing connection still holds waits up to 65 s for it (TIME_WAIT), then starts.
GRPCURL=.venv/bin/grpcurl
wait_healthy() {
    local name=$1 address=$2 deadline=$((SECONDS + 90))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
            wait "${pid_of[$name]}"
            echo "[run] $name exited with status $? before it was serving (its error is above)" >&2
            stop 1
        fi
        if "$GRPCURL" "${GRPCURL_TLS[@]}" -max-time 1 "$address" grpc.health.v1.Health/Check 2>/dev/null \
            | grep -q '"SERVING"'; then
            echo "[run] $name is serving on $address" >&2
            return 0
        fi
        sleep 0.2
    done
    echo "[run] $name did not become healthy on $address within 90 s" >&2
    stop 1
}
wait_healthy metrics-collector 127.0.0.1:4317
wait_healthy inference 127.0.0.1:50052
wait_healthy gateway 127.0.0.1:50051
wait_healthy alert-manager 127.0.0.1:50054
if [ "$replicas" = 2 ]; then
    wait_healthy inference-2 127.0.0.1:50062
    wait_healthy gateway-2 127.0.0.1:50061
    wait_healthy alert-manager-2 127.0.0.1:50064
fi

# Shoppers (MESH_TRAFFIC_RATE actions a second; 0 for none), see tools/traffic.
if [ "${MESH_TRAFFIC_RATE:-4}" != 0 ]; then
    start traffic --gateway "$scheme://127.0.0.1:50051" --rate "${MESH_TRAFFIC_RATE:-4}" --report-every 30
    if [ "$replicas" = 2 ]; then
        AS=traffic-2 start traffic --gateway "$scheme://127.0.0.1:50061" --rate "${MESH_TRAFFIC_RATE:-4}" --report-every 30
    fi
fi

replicas_note="one of each (MESH_REPLICAS=2 for two)"
demo_note=
if [ "$replicas" = 2 ]; then
    replicas_note="two of the gateway, inference and alert manager (the second ones on 50061, 50062, 50064)"
    demo_note=$'\n[run]            (two replicas: DEMO_INFERENCE=127.0.0.1:50052,127.0.0.1:50062 make demo-incident)'
fi
if [ -n "$plaintext" ]; then
    tls_note="off (MESH_PLAINTEXT)"
else
    tls_note="the mesh's CA and certificates in $TLS_DIR (a client needs only ca.crt for the gateway)"
fi
cat >&2 <<MSG
[run] gateway:   grpc 127.0.0.1:50051 (ecommerce.gateway.v1 + Open Inference Protocol), API keys
[run]            demo-client-key (role client) and demo-admin-key (role admin)
[run] inference: grpc 127.0.0.1:50052 (Open Inference Protocol + serving.inference.v1)
$alerts_line
[run] metrics:   OTLP + monitoring.metrics.v1 queries on 127.0.0.1:4317, Prometheus text on
[run]            http://127.0.0.1:9464/metrics; e.g. the gateway's request rate:
[run]   .venv/bin/grpcurl $grpcurl_tls \\
[run]     -d '{"selector": {"metric": "gateway.requests"},
[run]     "function": "FUNCTION_RATE", "window_seconds": 60, "group_by": ["rpc"]}' \\
[run]     127.0.0.1:4317 monitoring.metrics.v1.MetricsQuery/Query
[run] try:  .venv/bin/grpcurl $grpcurl_tls \\
[run]         -H 'authorization: Bearer demo-client-key' \\
[run]         -d '{"texts": ["wireless headphones"]}' 127.0.0.1:50051 ecommerce.gateway.v1.Gateway/Embed
[run] incidents: .venv/bin/grpcurl $grpcurl_tls \\
[run]              -d '{}' 127.0.0.1:50054 monitoring.alerts.v1.AlertManager/ListIncidents
[run] tls:       $tls_note
[run] traffic:   ${MESH_TRAFFIC_RATE:-4} shopper actions a second (tools/traffic; MESH_TRAFFIC_RATE=0 for none)
[run] a fault:   make demo-incident (in another terminal): a bad canary, caught, undone and resolved$demo_note
[run] replicas:  $replicas_note
[run] stop: Ctrl-C
MSG

# Exit (and stop the rest) as soon as any service exits on its own.
wait -n "${pids[@]}"
status=$?
echo "[run] a service exited with status $status" >&2
stop 1
