#!/usr/bin/env bash
# Benchmarks the metrics collector (see BENCHMARKS.md): starts target/release/metrics-collector on
# free loopback ports and runs target/release/collector_bench against it (OTLP ingest in batches
# of 1,000 points, resident memory for 10,000 active series, query latency over them), then
# target/release/collector_memory (the store's resident memory once the windows of 10,000 series
# are full, with simulated time). Called by `make bench` and `make bench-collector`.
# Then target/release/rule_eval: one alert-manager evaluation cycle of 1,000 rules over 10,000
# series, and target/release/alert_latency: breach-to-notification latency (needs PostgreSQL).
# Results: target/bench/collector.json, collector-memory.json, rule-eval.json, alert-latency.json.
#   BENCH_COLLECTOR_SECS (10)  seconds of ingest
set -euo pipefail
cd "$(dirname "$0")/.."
# The services run without TLS here (its cost is measured apart, by scripts/bench_tls.sh).
export MESH_PLAINTEXT=true

BIN=target/release
OUT=target/bench
SECS=${BENCH_COLLECTOR_SECS:-10}
BENCH_TAG=bench-collector
. scripts/bench_lib.sh
for bin in metrics-collector collector_bench collector_memory rule_eval alert_latency; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is missing: run \`cargo build --release --workspace --bins\`"
done
mkdir -p "$OUT"
grpc_port=$(free_port)
http_port=$(free_port)
"$BIN/metrics-collector" --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
    >"$OUT/collector.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
# Ready when /metrics answers (the gRPC server starts first).
wait_until "the collector" "$pid" "$OUT/collector.log" 30 python3 -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$http_port/metrics')"
say "ingest for $SECS s, then queries"
"$BIN/collector_bench" --addr "127.0.0.1:$grpc_port" --pid "$pid" --duration-secs "$SECS" \
    | tee "$OUT/collector.json"
kill "$pid" 2>/dev/null || true
say "full windows of 10,000 series, simulated time (about 40 s)"
"$BIN/collector_memory" --series 10000 | tee "$OUT/collector-memory.json"
say "alert rule evaluation: 1,000 rules over 10,000 series"
"$BIN/rule_eval" | tee "$OUT/rule-eval.json"
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || [ -n "${DATABASE_ADMIN_URL:-}" ]; then
    compare=()
    if command -v prometheus-alertmanager >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        compare=(--compare)
        say "breach-to-notification latency, 40 breaches, ours and Prometheus + Alertmanager (about 4 minutes)"
    else
        say "breach-to-notification latency, 40 breaches (install prometheus-alertmanager to compare)"
    fi
    "$BIN/alert_latency" --trials 40 "${compare[@]}" | tee "$OUT/alert-latency.json"
    if [ ${#compare[@]} -gt 0 ]; then
        say "the same against Prometheus + Alertmanager in their common setting (15 s scrape and evaluation, group_wait 30s; about 3 minutes)"
        "$BIN/alert_latency" --trials 20 --compare --prometheus-setting common \
            | tee "$OUT/alert-latency-common.json"
    fi
else
    say "skipping the alert latency benchmark: no PostgreSQL on 127.0.0.1:5432 (set DATABASE_ADMIN_URL)"
fi
