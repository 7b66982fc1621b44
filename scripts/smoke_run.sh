#!/usr/bin/env bash
# The smoke test of `make run` (part of `make test`): runs scripts/run.sh as `make run` does
# (with the debug build that `make test` made, and a project-local PostgreSQL), waits for the
# four health checks, sends one call of each kind through the gateway, injects the bad-canary
# fault and follows its incident to resolution, then stops the mesh with SIGTERM and checks that
# no process is left behind.
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${MESH_BIN:-target/debug}
LOG=data/smoke-run.log
mkdir -p data
say() { echo "[smoke] $*" >&2; }
fail() {
    say "FAILED: $*"
    say "errors in $LOG (a service's own, before the shutdown lines below):"
    grep -E "^Error:|^Caused by:|^    [0-9]+: |panicked|ERROR|exited with status" "$LOG" \
        | grep -v ExportError | head -n 20 >&2
    say "last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    [ -n "${run_pid:-}" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
    exit 1
}

for port in 4317 9464 50051 50052 50054; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        say "port $port is in use (is \`make run\` going?): the smoke test needs the mesh's ports"
        exit 1
    fi
done

# The example rules, and a drift rule with windows short enough to be evaluated within the test
# (the dashboard's drift panel needs its gauge).
RULES=data/smoke-rules
rm -rf "$RULES" && mkdir -p "$RULES"
cp deploy/rules/*.yaml "$RULES/"
cat >"$RULES/smoke-drift.yaml" <<'YAML'
rules:
  - name: SmokeScoreDrift
    kind: drift
    metric: gateway.prediction.score
    window: 5s
    baseline: {offset: 10s}
    group_by: [model, model_version]
    psi_above: 100
YAML

# As on a fresh machine: no DATABASE_URL, so run.sh starts the project's own PostgreSQL.
env -u DATABASE_URL MESH_BIN="$BIN" MESH_TRAFFIC_RATE=2 MESH_RULES="$RULES" bash scripts/run.sh >"$LOG" 2>&1 &
run_pid=$!

for _ in $(seq 1 600); do
    grep -q "\[run\] alert-manager is serving" "$LOG" && break
    kill -0 "$run_pid" 2>/dev/null || fail "run.sh exited early"
    sleep 0.2
done
grep -q "\[run\] alert-manager is serving" "$LOG" || fail "the four services were not healthy within 120 s"
say "all four services are serving"

"$BIN/traffic" --once >&2 || fail "one call of each kind through the gateway"
say "one call of each kind went through the gateway"

.venv/bin/python scripts/demo_incident.py --bin "$BIN" --timeout 120 >&2 \
    || fail "the injected fault's incident did not open, get remediated and resolve"
say "the injected fault opened an incident that was diagnosed, remediated and resolved"

# Every metric the dashboard and the recording rules name is exposed by the live collector.
.venv/bin/python scripts/check_dashboard.py --metrics-url http://127.0.0.1:9464/metrics >&2 \
    || fail "the dashboard names metrics that the collector does not expose"

kill -TERM "$run_pid"
wait "$run_pid"
status=$?
[ "$status" = 0 ] || fail "run.sh exited with status $status after SIGTERM"
grep -q "\[run\] stopped" "$LOG" || fail "run.sh did not report a clean stop"
left=$(pgrep -f "$BIN/(gateway|inference|metrics-collector|alert-manager|traffic)( |$)" || true)
[ -z "$left" ] || fail "processes left behind: $left"
if bash -c "ls -d /usr/lib/postgresql/*/bin" >/dev/null 2>&1; then
    pg=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); else as=(); fi
    if "${as[@]}" "$pg/pg_ctl" -D "$PWD/data/postgres" status >/dev/null 2>&1; then
        fail "the project's PostgreSQL was left running"
    fi
fi
say "clean shutdown: no process left behind"
