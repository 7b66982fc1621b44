#!/usr/bin/env bash
# make bench-anchors: our inference service (directly and through the gateway) against the
# serving anchors, on the same minilm-l6 ONNX file, machine and load:
#
#   triton     Triton Inference Server 2.51 (PyPI nvidia-pytriton 0.7.0, its bundled server),
#              dynamic batching, an onnxruntime session as the model callable
#   mlserver   Seldon MLServer 1.7.1 with a small onnxruntime runtime and adaptive batching
#   plain      a plain Python gRPC server (grpcio + onnxruntime + tokenizers), one request at a
#              time, no batching (bench/plain_server.py)
#   us         target/release/inference
#   gateway    target/release/gateway in front of target/release/inference
#
# and SYSTEM-int8 (us-int8, triton-int8, mlserver-int8, plain-int8): the same server on the
# int8 form of the model (models/minilm-l6/2/model.onnx, as `make model` builds it), so that
# the table shows what the model gains and what the server does.
#
# Each anchor is installed from the registries into its own throwaway environment under
# target/anchors/envs (Triton's from Debian's /usr/bin/python3: the bundled server links
# Debian's libpython). Two load generators, each run REPEATS times per system and concurrency
# (1, 8, 64), the median of the repeats reported:
#
#   perf_analyzer 2.51 (PyPI tritonclient 2.51.0): every system that serves the ModelConfig RPC
#                  it needs (all but MLServer)
#   loadgen        (bench/, Open Inference Protocol ModelInfer only): every system, MLServer
#                  included, so that one load generator covers them all
#
# Plus ONNX Runtime in-process (target/release/inprocess): the ceiling at concurrency 64.
# Results: target/anchors/results.json and table.md; the plot bench/anchors/throughput-p99.png.
# Knobs: ANCHORS_REPEATS (3), ANCHORS_INTERVAL_MS (4000, perf_analyzer's window),
# ANCHORS_SECS (6, loadgen's measured seconds), ANCHORS_SYSTEMS ("us gateway triton mlserver plain
# us-int8 triton-int8 mlserver-int8 plain-int8"),
# ANCHORS_KEEP (1: keep the results already in target/anchors and run only ANCHORS_SYSTEMS),
# ANCHORS_HEAD_TO_HEAD (1: when SYSTEMS has both `us` and `plain`, also run the two at
# concurrency 1 head to head, both up at once and driven in turn; 0 to skip).
set -euo pipefail
cd "$(dirname "$0")/.."
# The services run without TLS here (its cost is measured apart, by scripts/bench_tls.sh).
export MESH_PLAINTEXT=true

BIN=target/release
OUT=target/anchors
ENVS=$OUT/envs
VENV=.venv
MODEL=minilm-l6
TEXTS=bench/product_searches.json
REPEATS=${ANCHORS_REPEATS:-3}
INTERVAL_MS=${ANCHORS_INTERVAL_MS:-4000}
SECS=${ANCHORS_SECS:-6}
SYSTEMS=${ANCHORS_SYSTEMS:-us gateway triton mlserver plain us-int8 triton-int8 mlserver-int8 plain-int8}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.deps/onnxruntime/lib/libonnxruntime.so}

BENCH_TAG=anchors
. scripts/bench_lib.sh

for bin in inference gateway loadgen inprocess; do
    [ -x "$BIN/$bin" ] || die "$BIN/$bin is missing: run \`cargo build --release --workspace --bins --benches\`"
done
[ -f "models/$MODEL/1/model.onnx" ] && [ -f "models/$MODEL/2/model.onnx" ] \
    || die "models/$MODEL is missing its fp32 or int8 version: run \`make model\`"
# The int8 model as a repository of its own, where it is version 1: every server loads
# <model dir>/1/model.onnx.
INT8_REPO=$OUT/int8-models
mkdir -p "$INT8_REPO/$MODEL/1"
cp "models/$MODEL/config.toml" "$INT8_REPO/$MODEL/config.toml"
ln -sf "$PWD/models/$MODEL/tokenizer.json" "$INT8_REPO/$MODEL/tokenizer.json"
ln -sf "$PWD/models/$MODEL/2/model.onnx" "$INT8_REPO/$MODEL/1/model.onnx"
[ -x "$VENV/bin/perf_analyzer" ] || die "perf_analyzer is missing in $VENV: run \`make deps\`"
cuda_lib=$(perf_analyzer_cuda_lib)
mkdir -p "$OUT" "$ENVS"

# A throwaway environment: NAME PYTHON PACKAGES… (reused while its package list is unchanged).
make_env() {
    local name=$1 python=$2; shift 2
    local dir=$ENVS/$name stamp="$*"
    if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "installing $name: $*"
        rm -rf "$dir"
        "$python" -m venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check "$@"
        echo "$stamp" >"$dir/.stamp"
    fi
}
# Triton's environment comes from Debian's Python, whose venv module is a package of its own.
if [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 \
    || ! ldconfig -p | grep -q 'libpython3\.11\.so\.1'; then
    say "installing Debian's python3 and python3-venv (Triton's bundled server links Debian's libpython)"
    sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
    "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv python3-dev >/dev/null
fi
ORT=onnxruntime==1.31.1
TOKENIZERS=tokenizers==0.22.1
case " $SYSTEMS " in *" triton "*) make_env triton /usr/bin/python3 nvidia-pytriton==0.7.0 "$ORT" "$TOKENIZERS" ;; esac
case " $SYSTEMS " in *" mlserver "*) make_env mlserver python3 mlserver==1.7.1 "$ORT" "$TOKENIZERS" ;; esac
make_env plot python3 matplotlib==3.9.2

# Whether the system at ADDR says minilm-l6 is ready (Open Inference Protocol: every system
# serves it, with or without grpc.health.v1).
model_ready() {
    "$VENV/bin/python" - "$1" <<'PY'
import sys
import tritonclient.grpc as g
sys.exit(0 if g.InferenceServerClient(sys.argv[1]).is_model_ready("minilm-l6") else 1)
PY
}
# Waits (120 s at most) until the system NAME at ADDR is ready; fails if PID exits.
wait_ready() {
    wait_until "$1" "$3" "$4" 120 model_ready "$2"
}

# perf_analyzer at one concurrency: ADDR CONCURRENCY CSV LOG.
perf_analyzer_run() {
    perf_analyzer_stable "$3" "$4" -m "$MODEL" -i grpc -u "$1" -b 1 --shape TEXT:1 \
        --input-data "$TEXTS" --concurrency-range "$2" --measurement-interval "$INTERVAL_MS"
}

pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Starts SYSTEM; sets addr (host:port) and pa (whether perf_analyzer can drive it).
start_system() {
    local system=$1 log=$OUT/$1-server.log
    local port repo=models
    port=$(free_port)
    addr=127.0.0.1:$port
    pa=1
    case $system in *-int8) repo=$INT8_REPO ;; esac
    local model_dir=$repo/$MODEL
    case ${system%-int8} in
        us)
            "$BIN/inference" --listen "$addr" --model-repository "$repo" --models "$MODEL" \
                </dev/null >"$log" 2>&1 &
            pids+=($!) ;;
        gateway)
            local inner
            inner=127.0.0.1:$(free_port)
            "$BIN/inference" --listen "$inner" --model-repository models --models "$MODEL" \
                </dev/null >"$OUT/gateway-inference.log" 2>&1 &
            pids+=($!)
            wait_ready "the inference service behind the gateway" "$inner" "${pids[-1]}" "$OUT/gateway-inference.log"
            "$BIN/gateway" --listen "$addr" --inference "$inner" --api-keys bench-key:bench:client \
                --anonymous-tenant perf --rate-limit 1000000 --rate-burst 1000000 \
                </dev/null >"$log" 2>&1 &
            pids+=($!) ;;
        triton)
            "$ENVS/triton/bin/python" bench/anchors/triton_server.py --grpc-port "$port" \
                --http-port "$(free_port)" --metrics-port "$(free_port)" --model-dir "$model_dir" \
                </dev/null >"$log" 2>&1 &
            pids+=($!) ;;
        mlserver)
            pa=0
            local dir=$OUT/mlserver-models
            rm -rf "$dir" && mkdir -p "$dir/minilm-l6"
            cp bench/anchors/mlserver/runtime.py bench/anchors/mlserver/settings.json "$dir/"
            sed "s|MODEL_DIR|$(realpath "$model_dir")|" bench/anchors/mlserver/model-settings.json.in \
                >"$dir/minilm-l6/model-settings.json"
            cp bench/anchors/mlserver/runtime.py "$dir/minilm-l6/"
            local http_port metrics_port
            http_port=$(free_port)
            metrics_port=$(free_port)
            (cd "$dir" && MLSERVER_GRPC_PORT=$port MLSERVER_HTTP_PORT=$http_port \
                MLSERVER_METRICS_PORT=$metrics_port exec "$PWD/../envs/mlserver/bin/mlserver" start . \
                </dev/null >"$PWD/../mlserver-server.log" 2>&1) &
            pids+=($!) ;;
        plain)
            "$VENV/bin/python" bench/plain_server.py --port "$port" --model-dir "$model_dir" \
                </dev/null >"$log" 2>&1 &
            pids+=($!) ;;
        *) die "unknown system $system" ;;
    esac
    wait_ready "$system" "$addr" "${pids[-1]}" "$log"
}

if [ "${ANCHORS_KEEP:-0}" = 1 ] && [ -s "$OUT/inprocess.json" ]; then
    say "keeping the earlier results of $OUT (ANCHORS_KEEP=1)"
else
    rm -f "$OUT"/pa-*.csv "$OUT"/pa-*.log "$OUT"/loadgen-*.json "$OUT"/inprocess-adjacent-*.json
    say "ONNX Runtime in-process: the ceiling"
    "$BIN/inprocess" >"$OUT/inprocess.json" 2>"$OUT/inprocess.log" || die "inprocess: see $OUT/inprocess.log"
    say "ONNX Runtime in-process on the int8 model"
    "$BIN/inprocess" --model "models/$MODEL/2/model.onnx" >"$OUT/inprocess-int8.json" 2>>"$OUT/inprocess.log" \
        || die "inprocess: see $OUT/inprocess.log"
fi

for system in $SYSTEMS; do
    say "starting $system"
    start_system "$system"
    for c in 1 8 64; do
        for r in $(seq 1 "$REPEATS"); do
            say "$system c=$c run $r: loadgen ($((SECS + 2)) s)"
            "$BIN/loadgen" --addr "$addr" --concurrency "$c" --duration-secs "$SECS" --warmup-secs 2 \
                --texts-per-request 1 >"$OUT/loadgen-$system-c$c-r$r.json" 2>>"$OUT/loadgen.log" \
                || die "loadgen against $system: see $OUT/loadgen.log"
            if [ "$pa" = 1 ]; then
                say "$system c=$c run $r: perf_analyzer"
                perf_analyzer_run "$addr" "$c" "$OUT/pa-$system-c$c-r$r.csv" "$OUT/pa-$system-c$c-r$r.log" \
                    || die "perf_analyzer against $system at $c: see $OUT/pa-$system-c$c-r$r.log"
            fi
            if { [ "$system" = us ] || [ "$system" = us-int8 ]; } && [ "$c" = 64 ]; then
                # The ceiling again, right after this run: the machine drifts by more than
                # the gap between the two over a whole run of the harness.
                say "in-process ceiling after run $r (batch 32 and 64)"
                "$BIN/inprocess" --batch-sizes 32,64 --secs-per-batch 4 --latency-runs 10 \
                    >"$OUT/inprocess-adjacent-${system}-r$r.json" 2>>"$OUT/inprocess.log" \
                    || die "inprocess: see $OUT/inprocess.log"
            fi
        done
    done
    stop_all
done

# Concurrency 1, ours against the plain server, head to head: both servers up at once and
# driven in turn, so that the host's drift (larger than the gap between the two) cancels.
# loadgen alternates request by request (--versus); perf_analyzer alternates runs, the order
# swapped each round.
if [ "${ANCHORS_HEAD_TO_HEAD:-1}" = 1 ] && [[ " $SYSTEMS " == *" us "* ]] && [[ " $SYSTEMS " == *" plain "* ]]; then
    rm -f "$OUT"/h2h-*
    say "head to head at concurrency 1: ours and the plain server up at once"
    start_system plain
    plain_addr=$addr
    start_system us
    us_addr=$addr
    for r in $(seq 1 "$REPEATS"); do
        say "head to head run $r: loadgen, requests alternating ($((SECS + 2)) s)"
        "$BIN/loadgen" --addr "$plain_addr" --versus "$us_addr" --concurrency 1 --duration-secs "$SECS" \
            --warmup-secs 2 --texts-per-request 1 >"$OUT/h2h-loadgen-r$r.json" 2>>"$OUT/loadgen.log" \
            || die "loadgen head to head: see $OUT/loadgen.log"
        order="us plain"
        [ $((r % 2)) = 0 ] && order="plain us"
        for system in $order; do
            target=$us_addr
            [ "$system" = plain ] && target=$plain_addr
            say "head to head run $r: perf_analyzer against $system"
            perf_analyzer_run "$target" 1 "$OUT/h2h-pa-$system-r$r.csv" "$OUT/h2h-pa-$system-r$r.log" \
                || die "perf_analyzer head to head against $system: see $OUT/h2h-pa-$system-r$r.log"
        done
    done
    stop_all
fi

"$ENVS/plot/bin/python" bench/anchors/summarize.py --results "$OUT" \
    --systems "${ANCHORS_REPORT:-$SYSTEMS}" --card "models/$MODEL/2/card.json" \
    --plot bench/anchors/throughput-p99.png
