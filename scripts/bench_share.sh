#!/usr/bin/env bash
# The gateway's own share of its added latency at concurrency 1 (issue 19's goal: ≤ 0.1 ms; see
# BENCHMARKS.md). One inference service and three hops in front of it, all up at once:
#
#   gateway    the gateway as `make bench` runs it (shared state in PostgreSQL when one answers
#              on 127.0.0.1:5432, no OTLP endpoint);
#   grpcrelay  the gateway's server and client libraries relaying ModelInfer, nothing else;
#   h2relay    a bare HTTP/2 relay: what one hop costs on this host.
#
# Each round runs `loadgen --versus` against each hop in turn (requests alternating between the
# service directly and the hop), so the host's drift cancels within a run and the rounds
# interleave the hops. The share is the gateway's added p50 less the relay's, per round; the
# summary gives the medians. Then the same without a model run (ModelMetadata).
#
# Raw results go to target/bench/share/. BENCH_SHARE_ROUNDS (8) rounds, BENCH_SECS (5) measured
# seconds per run; about 20 s per round.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release
OUT=target/bench/share
MODEL=minilm-l6
ROUNDS=${BENCH_SHARE_ROUNDS:-8}
SECS=${BENCH_SECS:-5}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so}
export MESH_PLAINTEXT=true OTEL_EXPORTER_OTLP_ENDPOINT=
BENCH_TAG=bench-share
. scripts/bench_lib.sh

for bin in inference gateway h2relay grpcrelay loadgen; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is missing: run \`cargo build --release --workspace --bins\`"
done
[ -f "models/$MODEL/1/model.onnx" ] || die "models/$MODEL is missing: run \`make model\`"
[ -x .venv/bin/grpcurl ] || die "grpcurl missing in .venv: run \`make deps\`"
rm -rf "$OUT"
mkdir -p "$OUT"

pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
listening() { bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}"; }

service=127.0.0.1:$(free_port)
say "starting the inference service on $service"
"$BIN/inference" --listen "$service" --model-repository models --models "$MODEL" \
    </dev/null >"$OUT/inference.log" 2>&1 &
pids+=($!)
serving() { .venv/bin/grpcurl -plaintext -max-time 2 "$1" grpc.health.v1.Health/Check | grep -q '"SERVING"'; }
wait_until "inference service" "$!" "$OUT/inference.log" 120 serving "$service"

state=()
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    # Created once and kept (the benchmark sets no split); used only when it can be reached.
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE mesh_bench" >/dev/null 2>&1 || true
    if psql -q -h 127.0.0.1 -U postgres -d mesh_bench -c "SELECT 1" >/dev/null 2>&1; then
        state=(--database-url "postgres://postgres@127.0.0.1:5432/mesh_bench")
    else
        say "PostgreSQL at 127.0.0.1:5432 refused the database mesh_bench: the gateway runs without shared state"
    fi
else
    say "no PostgreSQL at 127.0.0.1:5432: the gateway runs without shared state"
fi
gateway=127.0.0.1:$(free_port)
grpcrelay=127.0.0.1:$(free_port)
h2relay=127.0.0.1:$(free_port)
"$BIN/gateway" --listen "$gateway" --inference "$service" --api-keys bench-key:bench:client \
    --anonymous-tenant perf --rate-limit 1000000 --rate-burst 1000000 "${state[@]}" \
    </dev/null >"$OUT/gateway.log" 2>&1 &
pids+=($!); wait_until gateway "$!" "$OUT/gateway.log" 60 serving "$gateway"
"$BIN/grpcrelay" --listen "$grpcrelay" --upstream "$service" </dev/null >"$OUT/grpcrelay.log" 2>&1 &
pids+=($!); wait_until grpcrelay "$!" "$OUT/grpcrelay.log" 30 listening "$grpcrelay"
"$BIN/h2relay" --listen "$h2relay" --upstream "$service" </dev/null >"$OUT/h2relay.log" 2>&1 &
pids+=($!); wait_until h2relay "$!" "$OUT/h2relay.log" 30 listening "$h2relay"
echo "${state[*]:-none}" >"$OUT/gateway-state.txt"

versus() {
    local api=$1 hop=$2 addr=$3 round=$4
    "$BIN/loadgen" --addr "$service" --duration-secs "$SECS" --warmup-secs 1 --texts-per-request 1 \
        --concurrency 1 --api "$api" --versus "$addr" --api-key bench-key \
        >"$OUT/$api-$hop-$round.json" 2>>"$OUT/loadgen.log" || die "loadgen against $hop: see $OUT/loadgen.log"
}
# grpcrelay relays ModelInfer only (it answers every other method UNIMPLEMENTED).
for api in oip metadata; do
    rounds=$ROUNDS hops=(gateway grpcrelay h2relay)
    [ "$api" = oip ] || { rounds=$(((ROUNDS + 1) / 2)); hops=(gateway h2relay); }
    for round in $(seq 1 "$rounds"); do
        say "$api, round $round of $rounds"
        for hop in "${hops[@]}"; do versus "$api" "$hop" "${!hop}" "$round"; done
    done
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
def added(api, hop):
    runs = sorted(out.glob(f"{api}-{hop}-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [json.loads(p.read_text())["added_ms"]["p50"] for p in runs]
state = (out / "gateway-state.txt").read_text().strip()
print(f"# The gateway's own share at concurrency 1\n")
print(f"Shared state: {'PostgreSQL' if state != 'none' else 'none (no PostgreSQL answered)'}. "
      "Added p50 of each hop against the service directly (ms), per round:\n")
for api, call in (("oip", "ModelInfer"), ("metadata", "ModelMetadata (no model run)")):
    gw, grpc, h2 = added(api, "gateway"), added(api, "grpcrelay"), added(api, "h2relay")
    share = [g - r for g, r in zip(gw, h2)]
    columns = [("gateway", gw)] + ([("grpcrelay", grpc)] if grpc else []) + [("h2relay", h2)]
    columns.append(("share (gateway − h2relay)", share))
    print(f"## {call}\n")
    print("| round | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for i, row in enumerate(zip(*(values for _, values in columns)), 1):
        print(f"| {i} | " + " | ".join(f"{v:+.3f}" for v in row) + " |")
    medians = [statistics.median(values) for _, values in columns]
    print("| median | " + " | ".join(f"{m:+.3f}" for m in medians[:-1])
          + f" | **{medians[-1]:+.3f}** |\n")
    if grpc:
        libs = [g - r for g, r in zip(grpc, h2)]
        print(f"The server and client libraries alone (grpcrelay − h2relay): median "
              f"{statistics.median(libs):+.3f} ms.")
    print(f"Goal for the share: ≤ 0.1 ms: {'met' if medians[-1] <= 0.1 else 'missed'} "
          "(median of the rounds' shares).\n")
PY
