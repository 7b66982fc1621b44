#!/usr/bin/env bash
# Benchmarks the metrics collector (see BENCHMARKS.md): starts target/release/metrics-collector on
# free loopback ports and runs target/release/collector_bench against it (OTLP ingest in batches
# of 1,000 points, resident memory for 10,000 active series, query latency over them), then
# target/release/collector_memory (the store's resident memory once the windows of 10,000 series
# are full, with simulated time). Called by `make bench` and `make bench-collector`.
# Ingest runs twice, with the state in memory only and kept on disk (--data-dir), and the
# restart of a collector whose data directory holds 10,000 full series is timed.
# Then target/release/rule_eval: one alert-manager evaluation cycle of 1,000 rules over 10,000
# series, and target/release/alert_latency: breach-to-notification latency (needs PostgreSQL).
# Results: target/bench/collector.json, collector-durable.json, collector-memory.json,
# collector-disk.json, collector-restart.json, rule-eval.json, alert-latency.json.
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
# One ingest run: the collector with the extra flags given, fed by collector_bench for $SECS s.
ingest_run() {
    local out=$1
    shift
    grpc_port=$(free_port)
    http_port=$(free_port)
    "$BIN/metrics-collector" --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
        "$@" >"$OUT/collector.log" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    # Ready when /metrics answers (the gRPC server starts first).
    wait_until "the collector" "$pid" "$OUT/collector.log" 30 python3 -c \
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$http_port/metrics')"
    "$BIN/collector_bench" --addr "127.0.0.1:$grpc_port" --pid "$pid" --duration-secs "$SECS" \
        | tee "$out"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
DATA=$OUT/collector-data
# Two rounds, each the state in memory only and then kept on disk (--data-dir: write-ahead log
# and snapshots), so that each pair is measured side by side on a noisy shared machine.
for round in 1 2; do
    say "round $round: ingest for $SECS s, then queries, state in memory only"
    ingest_run "$OUT/collector-round$round.json"
    say "round $round: the same with the state kept on disk (--data-dir)"
    rm -rf "$DATA"
    ingest_run "$OUT/collector-durable-round$round.json" --data-dir "$DATA"
    rm -rf "$DATA"
done
cp "$OUT/collector-round2.json" "$OUT/collector.json"
cp "$OUT/collector-durable-round2.json" "$OUT/collector-durable.json"
python3 - "$OUT" <<'PY' | tee "$OUT/collector-persistence.json"
import json, sys
out = sys.argv[1]
rounds = []
for r in (1, 2):
    off = json.load(open(f"{out}/collector-round{r}.json"))["ingest"]
    on = json.load(open(f"{out}/collector-durable-round{r}.json"))["ingest"]
    rounds.append({
        "memory_only_points_per_second": round(off["points_per_second"]),
        "data_dir_points_per_second": round(on["points_per_second"]),
        "ratio": round(on["points_per_second"] / off["points_per_second"], 3),
        "memory_only_points_per_cpu_second": round(off["points_per_collector_cpu_second"]),
        "data_dir_points_per_cpu_second": round(on["points_per_collector_cpu_second"]),
    })
print(json.dumps({"rounds": rounds}, indent=2))
PY
say "full windows of 10,000 series, simulated time (about 40 s)"
"$BIN/collector_memory" --series 10000 | tee "$OUT/collector-memory.json"
say "restart: the same 10,000 full series kept in a data directory, plus a minute of log after the last snapshot; then a collector process starts on it"
"$BIN/collector_memory" --series 10000 --data-dir "$DATA" | tee "$OUT/collector-disk.json"
grpc_port=$(free_port)
http_port=$(free_port)
began=$(date +%s.%N)
"$BIN/metrics-collector" --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
    --data-dir "$DATA" >"$OUT/collector-restart.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
wait_until "the restarted collector" "$pid" "$OUT/collector-restart.log" 60 python3 -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$http_port/metrics')"
ready=$(date +%s.%N)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
python3 - "$began" "$ready" "$rss_kib" "$OUT/collector-restart.log" <<'PY' | tee "$OUT/collector-restart.json"
import json, re, sys
began, ready, rss, log = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = open(log).read()
restored = re.search(r"state restored.*?replayed=(\d+) seconds=([0-9.]+)", text)
print(json.dumps({
    "series": 10000,
    "start_to_ready_seconds": round(ready - began, 3),
    "restore_seconds": float(restored.group(2)) if restored else None,
    "log_records_replayed": int(restored.group(1)) if restored else None,
    "resident_kib_after_restore": rss,
}, indent=2))
PY
rm -rf "$DATA"
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
