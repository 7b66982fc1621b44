# Helpers of the benchmark scripts, sourced after setting BENCH_TAG (the log prefix) and,
# where perf_analyzer runs, VENV.

say() { printf '[%s] %s\n' "${BENCH_TAG:-bench}" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# Waits (SECS at most) until the command PROBE… succeeds; fails if NAME's PID exits first.
# Usage: wait_until NAME PID LOG SECS PROBE…
wait_until() {
    local name=$1 pid=$2 log=$3 secs=$4
    shift 4
    local deadline=$((SECONDS + secs))
    until "$@" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up; see $log"
        [ "$SECONDS" -lt "$deadline" ] || die "$name was not ready after $secs s; see $log"
        sleep 0.5
    done
}

# A free loopback port.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The folder of the CUDA runtime library that perf_analyzer links (even on the CPU), in $VENV.
perf_analyzer_cuda_lib() {
    local lib
    lib=$(ls -d "$VENV"/lib/python3*/site-packages/nvidia/cuda_runtime/lib 2>/dev/null | head -n 1)
    [ -n "$lib" ] || die "perf_analyzer needs nvidia-cuda-runtime-cu12: run \`bash scripts/deps.sh --bench\`"
    echo "$lib"
}

# perf_analyzer with ARGS… (all but --stability-percentage, --max-trials and -f), its CSV to
# CSV and its output to LOG. On a shared host a window sometimes moves by more than the 20%
# that perf_analyzer calls stable; such a run is tried once more with twice the windows.
# Needs VENV and cuda_lib (perf_analyzer_cuda_lib). Usage: perf_analyzer_stable CSV LOG ARGS…
perf_analyzer_stable() {
    local csv=$1 log=$2 trials
    shift 2
    for trials in 6 12; do
        LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$VENV/bin/perf_analyzer" "$@" \
            --stability-percentage 20 --max-trials "$trials" -f "$csv" >"$log" 2>&1 && return 0
        grep -q "Failed to obtain stable measurement" "$log" || return 1
        say "perf_analyzer found no stable window in $trials tries; once more with $((trials * 2))"
    done
    return 1
}
