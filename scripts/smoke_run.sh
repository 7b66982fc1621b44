#!/usr/bin/env bash
# The smoke test of `make run` (part of `make test`): runs scripts/run.sh as `make run` does
# (with the debug build that `make test` made, and a project-local PostgreSQL), waits for the
# four health checks, sends one call of each kind through the gateway, injects the bad-canary
# fault and follows its incident to resolution, then stops the mesh with SIGTERM and checks that
# no process is left behind.
#
# As root it runs from a copy of the project in a private folder (mode 0700, as /root is for a
# fresh machine's root user), where PostgreSQL's own user cannot enter: the layout in which
# `make run` once failed at its last step. SMOKE_IN_PLACE=1 runs it in the project itself.
set -uo pipefail
cd "$(dirname "$0")/.."

# The mesh's fixed ports lie in Linux's ephemeral range (32768-60999): a client socket of the
# mesh itself (the gateway connecting to 50052 before the inference service listens) can be
# given one of them as its own port, and the service then cannot bind it (seen once in CI). As
# root, the test reserves them for its run (the second replicas' 50061, 50062 and 50064 too,
# since it runs two of each) and puts the previous reservation back after.
reserved=/proc/sys/net/ipv4/ip_local_reserved_ports
if [ "$(id -u)" = 0 ] && [ -z "${SMOKE_IN_PLACE:-}" ] && [ -w "$reserved" ]; then
    previous_reserved=$(cat "$reserved")
    echo "${previous_reserved:+$previous_reserved,}4317,9464,50051,50052,50054,50061,50062,50064,55432" >"$reserved" \
        || unset previous_reserved
fi
restore_reserved() {
    if [ -n "${previous_reserved+set}" ]; then echo "$previous_reserved" >"$reserved"; fi
}
trap restore_reserved EXIT

if [ "$(id -u)" = 0 ] && [ -z "${SMOKE_IN_PLACE:-}" ] && git rev-parse --git-dir >/dev/null 2>&1; then
    private=$(mktemp -d)
    # However the run ends: the port reservation is undone, and the copy's PostgreSQL cluster
    # (outside the copy) and the copy go.
    trap 'restore_reserved; (cd "$private/mesh" 2>/dev/null && bash scripts/postgres.sh remove); rm -rf "$private"' EXIT
    chmod 700 "$private"
    copy=$private/mesh
    mkdir -p "$copy" data
    echo "[smoke] running from a copy of the project in the private folder $copy" >&2
    # The project's files as they are now (committed or not), and its build outputs and
    # installed tools by link: what runs is the same, only the project's path is private.
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
        [ -e "$file" ] && printf '%s\0' "$file"
    done | tar -cf - --null -T - | tar -xf - -C "$copy"
    for built in target .venv .venv-otel .venv-deploy .deps models; do
        [ -e "$built" ] && ln -s "$PWD/$built" "$copy/$built"
    done
    SMOKE_IN_PLACE=1 bash "$copy/scripts/smoke_run.sh"
    status=$?
    cp "$copy/data/smoke-run.log" data/smoke-run.log 2>/dev/null
    exit "$status"
fi

BIN=${MESH_BIN:-target/debug}
LOG=data/smoke-run.log
mkdir -p data
say() { echo "[smoke] $*" >&2; }
fail() {
    say "FAILED: $*"
    say "errors in $LOG (a service's own, before the shutdown lines below):"
    grep -E "^Error:|^Caused by:|^    [0-9]+: |^    [A-Za-z]|panicked|ERROR|WARN.*port in use|exited with status" "$LOG" \
        | grep -v ExportError | head -n 20 >&2
    say "last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    [ -n "${run_pid:-}" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
    exit 1
}

MESH_REPLICAS=2 bash scripts/preflight.sh --ports || { say "the smoke test needs the mesh's ports"; exit 1; }

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

# As on a fresh machine: no DATABASE_URL, so run.sh starts the project's own PostgreSQL. Two
# replicas of the gateway, inference and alert manager (MESH_REPLICAS=2), as a cluster runs
# them: the default of one is the same script with the second ones left out.
env -u DATABASE_URL MESH_BIN="$BIN" MESH_TRAFFIC_RATE=2 MESH_RULES="$RULES" MESH_REPLICAS=2 \
    bash scripts/run.sh >"$LOG" 2>&1 &
run_pid=$!

for _ in $(seq 1 900); do
    grep -q "\[run\] alert-manager-2 is serving" "$LOG" && break
    kill -0 "$run_pid" 2>/dev/null || fail "run.sh exited early"
    sleep 0.2
done
grep -q "\[run\] alert-manager-2 is serving" "$LOG" || fail "the services were not healthy within 180 s"
say "all four services are serving, two replicas of three of them"
python3 - <<'PY' || fail "the collector keeps no state on disk (no collector_disk_bytes above 0 on /metrics)"
import re, sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9464/metrics").read().decode()
found = re.search(r"^collector_disk_bytes (\d+)", text, re.M)
sys.exit(0 if found and int(found.group(1)) > 0 else 1)
PY
say "the collector keeps its state in data/collector"

# Over TLS, as a recommender service would call: trusting the mesh's CA, no certificate of its own.
"$BIN/traffic" --once --gateway https://127.0.0.1:50051 --tls-ca data/tls/operator/ca.crt >&2 \
    || fail "one call of each kind through the gateway"
"$BIN/traffic" --once --gateway https://127.0.0.1:50061 --tls-ca data/tls/operator/ca.crt >&2 \
    || fail "one call of each kind through the second gateway"
say "one call of each kind went through each gateway"
# The banner tells a user how to call the mesh; a shell error in it once printed nothing of it.
grep -q "^\[run\] tls:       the mesh's CA and certificates" "$LOG" && grep -q "^\[run\] stop: Ctrl-C" "$LOG" \
    && ! grep -q "bad substitution" "$LOG" || fail "run.sh did not print its banner (how to call the mesh)"
say "run.sh printed its banner"

.venv/bin/python scripts/demo_incident.py --bin "$BIN" --timeout 120 \
    --inference 127.0.0.1:50052,127.0.0.1:50062 >&2 \
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
if bash scripts/postgres.sh status; then
    fail "the project's PostgreSQL was left running"
fi
say "clean shutdown: no process left behind"
