#!/usr/bin/env bash
# make bench-mesh: the served model at concurrency 64 as users run it, `make run`'s mesh up
# (TLS between the services, the collector, the alert manager, PostgreSQL, the shoppers'
# traffic at MESH_TRAFFIC_RATE actions a second), against ONNX Runtime in-process measured in
# the same minutes with the mesh still up; then the same on a bare inference service with
# nothing else running, so that both figures come from one run of the script.
#
# Each round, with the mesh up: perf_analyzer at concurrency 64 against the mesh's inference
# service (its TLS port, the operator's client certificate), the in-process ceiling (batch 32
# and 64), loadgen at concurrency 64 against the inference service (the 64 product searches of
# 26 to 36 tokens, then only the ceiling's own 32-token text: like for like, no padding), and
# perf_analyzer through the gateway (the recommender services' door). Then the mesh stops and a bare inference
# service (plaintext, as `make bench-anchors` runs it) gets the same rounds.
#
# A mesh already running (inference answering on 127.0.0.1:50052, started by `make run`) is
# measured as it is and left running; otherwise the script starts one (scripts/run.sh) and
# stops it. Results: target/bench/mesh/ (summary.md, results.json).
# Knobs: MESH_BENCH_ROUNDS (3), MESH_BENCH_INTERVAL_MS (4000, perf_analyzer's window),
# MESH_BENCH_SECS (6, loadgen's measured seconds), MESH_TRAFFIC_RATE (run.sh's default, 4).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
OUT=target/bench/mesh
VENV=.venv
MODEL=minilm-l6
TEXTS=bench/product_searches.json
ROUNDS=${MESH_BENCH_ROUNDS:-3}
INTERVAL_MS=${MESH_BENCH_INTERVAL_MS:-4000}
SECS=${MESH_BENCH_SECS:-6}
TLS_DIR=${MESH_TLS_DIR:-data/tls}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so}

BENCH_TAG=bench-mesh
. scripts/bench_lib.sh

for bin in inference gateway loadgen inprocess; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is missing: run \`cargo build --release --workspace --bins --benches\`"
done
[ -x "$VENV/bin/perf_analyzer" ] || die "perf_analyzer is missing in $VENV: run \`bash scripts/deps.sh --bench\`"
cuda_lib=$(perf_analyzer_cuda_lib)
rm -rf "$OUT"
mkdir -p "$OUT"

mesh_pid=
bare_pid=
cleanup() {
    for pid in $bare_pid $mesh_pid; do
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Whether the inference service at ADDR (https with the operator's certificate when TLS=1)
# answers its health check with SERVING.
serving() {
    local addr=$1 tls=$2 args=(-plaintext)
    [ "$tls" = 1 ] && args=(-cacert "$TLS_DIR/operator/ca.crt" -cert "$TLS_DIR/operator/tls.crt" -key "$TLS_DIR/operator/tls.key")
    "$VENV/bin/grpcurl" "${args[@]}" -max-time 1 "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'
}

# perf_analyzer at concurrency 64: NAME ADDR [perf_analyzer flags...]
perf64() {
    local name=$1 addr=$2
    shift 2
    perf_analyzer_stable "$OUT/$name.csv" "$OUT/$name.log" -m "$MODEL" -i grpc -u "$addr" -b 1 \
        --shape TEXT:1 --input-data "$TEXTS" --concurrency-range 64 \
        --measurement-interval "$INTERVAL_MS" "$@" || die "perf_analyzer ($name): see $OUT/$name.log"
}

# The ceiling right after a served run, in the same conditions: NAME
ceiling() {
    "$BIN/inprocess" --batch-sizes 32,64 --secs-per-batch 4 --latency-runs 10 \
        >"$OUT/$1.json" 2>>"$OUT/inprocess.log" || die "inprocess: see $OUT/inprocess.log"
}

# ROUNDS rounds against one setting (mesh or bare): SETTING INFERENCE_URL (https: with the
# operator's certificate, as the mesh's services present theirs)
rounds() {
    local setting=$1 url=$2; shift 2
    local addr=${url#*://}
    local pa_tls=() lg_tls=()
    if [[ $url == https://* ]]; then
        pa_tls=(--ssl-grpc-use-ssl --ssl-grpc-root-certifications-file "$TLS_DIR/operator/ca.crt"
            --ssl-grpc-certificate-chain-file "$TLS_DIR/operator/tls.crt"
            --ssl-grpc-private-key-file "$TLS_DIR/operator/tls.key")
        lg_tls=(--tls-ca "$TLS_DIR/operator/ca.crt" --tls-cert "$TLS_DIR/operator/tls.crt"
            --tls-key "$TLS_DIR/operator/tls.key")
    fi
    for r in $(seq 1 "$ROUNDS"); do
        say "$setting round $r: perf_analyzer at concurrency 64 against the inference service"
        perf64 "$setting-pa-r$r" "$addr" "${pa_tls[@]}"
        say "$setting round $r: the in-process ceiling right after"
        ceiling "$setting-ceiling-r$r"
        say "$setting round $r: loadgen at concurrency 64 ($((SECS + 2)) s)"
        "$BIN/loadgen" --addr "$url" --concurrency 64 --duration-secs "$SECS" --warmup-secs 2 \
            "${lg_tls[@]}" >"$OUT/$setting-loadgen-r$r.json" 2>>"$OUT/loadgen.log" \
            || die "loadgen ($setting): see $OUT/loadgen.log"
        say "$setting round $r: loadgen at concurrency 64, the ceiling's own 32-token text only ($((SECS + 2)) s)"
        "$BIN/loadgen" --addr "$url" --concurrency 64 --duration-secs "$SECS" --warmup-secs 2 --texts 1 \
            "${lg_tls[@]}" >"$OUT/$setting-loadgen-uniform-r$r.json" 2>>"$OUT/loadgen.log" \
            || die "loadgen ($setting): see $OUT/loadgen.log"
        if [ "$setting" = mesh ]; then
            say "mesh round $r: perf_analyzer at concurrency 64 through the gateway"
            perf64 "mesh-gateway-pa-r$r" 127.0.0.1:50051 "${pa_tls[@]}" \
                -H "authorization:Bearer ${MESH_BENCH_API_KEY:-demo-client-key}"
        fi
    done
}

# 1. The mesh, as `make run` runs it.
mesh_url=https://127.0.0.1:50052
if serving 127.0.0.1:50052 1; then
    say "a mesh is running: measuring it as it is (and leaving it running)"
elif serving 127.0.0.1:50052 0; then
    say "a mesh is running without TLS (MESH_PLAINTEXT): measuring it as it is (and leaving it running)"
    mesh_url=http://127.0.0.1:50052
else
    say "starting the mesh (scripts/run.sh; its log: $OUT/run.log)"
    unset MESH_PLAINTEXT
    bash scripts/run.sh >"$OUT/run.log" 2>&1 </dev/null &
    mesh_pid=$!
    deadline=$((SECONDS + 180))
    # run.sh prints its banner once every service is healthy and the traffic has started.
    until grep -q '^\[run\] gateway:   grpc' "$OUT/run.log" 2>/dev/null; do
        kill -0 "$mesh_pid" 2>/dev/null || die "the mesh stopped during start-up; see $OUT/run.log"
        [ "$SECONDS" -lt "$deadline" ] || die "the mesh was not up after 180 s; see $OUT/run.log"
        sleep 1
    done
    serving 127.0.0.1:50052 1 || die "the mesh's inference service does not answer over TLS; see $OUT/run.log"
    say "the mesh is up; 10 s of its traffic before measuring"
    sleep 10
fi
rounds mesh "$mesh_url"
if [ -n "$mesh_pid" ]; then
    say "stopping the mesh"
    kill -TERM "$mesh_pid" 2>/dev/null || true
    wait "$mesh_pid" 2>/dev/null || true
    mesh_pid=
fi

# 2. A bare inference service, nothing else running.
port=$(free_port)
say "starting a bare inference service on 127.0.0.1:$port"
MESH_PLAINTEXT=true "$BIN/inference" --listen "127.0.0.1:$port" --model-repository models --models "$MODEL" \
    </dev/null >"$OUT/bare-inference.log" 2>&1 &
bare_pid=$!
wait_until "the bare inference service" "$bare_pid" "$OUT/bare-inference.log" 120 serving "127.0.0.1:$port" 0
rounds bare "http://127.0.0.1:$port"

"$VENV/bin/python" - "$OUT" "$ROUNDS" "$mesh_url" <<'PY'
import csv, json, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
mesh_tls = "with TLS" if sys.argv[3].startswith("https://") else "without TLS (MESH_PLAINTEXT)"


def pa(name):
    with open(f"{out}/{name}.csv", newline="") as f:
        return float(next(csv.DictReader(f))["Inferences/Second"])


def ceiling(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)["best"]["sentences_per_sec"]


def loadgen(name):
    with open(f"{out}/{name}.json") as f:
        r = json.load(f)
    return None if r["errors"] else r["requests_per_sec"]


def share(value, best):
    return f"{value:.1f} ({100 * value / best:.1f}%)" if value else "errors"


results, lines = {}, []
lines.append("| setting | round | ceiling right after | perf_analyzer, product searches | loadgen, product searches | loadgen, the 32-token text | through the gateway (perf_analyzer) |")
lines.append("|---|---|---|---|---|---|---|")
for setting in ("mesh", "bare"):
    ratios = {"perf_analyzer": [], "loadgen": [], "loadgen_uniform": []}
    for r in range(1, rounds + 1):
        best = ceiling(f"{setting}-ceiling-r{r}")
        row = {"ceiling": best, "perf_analyzer": pa(f"{setting}-pa-r{r}"),
               "loadgen": loadgen(f"{setting}-loadgen-r{r}"),
               "loadgen_uniform": loadgen(f"{setting}-loadgen-uniform-r{r}"),
               "gateway": pa(f"mesh-gateway-pa-r{r}") if setting == "mesh" else None}
        for key in ratios:
            if row[key]:
                ratios[key].append(row[key] / best)
        results.setdefault(setting, []).append(row)
        lines.append(f"| {setting} | {r} | {best:.1f} | {share(row['perf_analyzer'], best)} | {share(row['loadgen'], best)} | "
                     f"{share(row['loadgen_uniform'], best)} | " + (share(row["gateway"], best) if row["gateway"] else "") + " |")
    results[f"{setting}_median_ratio"] = {k: statistics.median(v) if v else None for k, v in ratios.items()}
for setting, label in (("mesh", f"with `make run`'s mesh up ({mesh_tls}) and its traffic on"),
                       ("bare", "bare, nothing else running")):
    m = results[f"{setting}_median_ratio"]
    pct = lambda v: f"**{100 * v:.1f}%**" if v else "errors"
    lines.append(f"\nfp32 at concurrency 64 against in-process's best, {label} (medians; goal ≥ 90%): "
                 f"product searches {pct(m['perf_analyzer'])} (perf_analyzer), {pct(m['loadgen'])} (loadgen); "
                 f"the ceiling's own 32-token text {pct(m['loadgen_uniform'])} (loadgen).")
text = "\n".join(lines) + "\n"
open(f"{out}/summary.md", "w").write(text)
json.dump(results, open(f"{out}/results.json", "w"), indent=2)
print(text)
PY
