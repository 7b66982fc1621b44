#!/usr/bin/env bash
# What `make run` needs from this machine, checked in seconds before the long install and build:
# the tools to start from, a project folder this user can write, enough disk, the mesh's ports
# free, and a PostgreSQL the alert manager can use (DATABASE_URL reachable, or a project-local
# cluster that scripts/postgres.sh can install and start). Each failure says what to do; all
# of them are listed, then it exits 1.
#
#   scripts/preflight.sh          the checks of `make run`
#   scripts/preflight.sh --ports  only the ports (the smoke test of `make test`)
set -uo pipefail
cd "$(dirname "$0")/.."

# The mesh's ports: gateway, inference, alert manager, collector (OTLP + queries, /metrics),
# and with MESH_REPLICAS=2 the second gateway, inference service and alert manager.
PORTS=(50051 50052 50054 4317 9464)
[ "${MESH_REPLICAS:-1}" = 2 ] && PORTS+=(50061 50062 50064)
MIN_FREE_GIB=${MESH_MIN_FREE_GIB:-6}

problems=0
problem() { echo "[preflight] $*" >&2; problems=$((problems + 1)); }

port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

check_ports() {
    local port
    for port in "${PORTS[@]}"; do
        if port_in_use 127.0.0.1 "$port"; then
            problem "port $port is in use (is \`make run\` already going? \`ss -ltnp 'sport = :$port'\` names the process): stop it first"
        fi
    done
}

check_tools() {
    command -v cargo >/dev/null 2>&1 || problem "cargo is missing: install Rust (https://rustup.rs), then run again"
    command -v python3 >/dev/null 2>&1 || problem "python3 is missing: install it (Debian: apt-get install python3), then run again"
}

check_folder() {
    local probe
    probe=$(mktemp -p . .preflight.XXXXXX 2>/dev/null) \
        || { problem "cannot write in $PWD as $(id -un): run as the folder's owner, or fix its permissions"; return; }
    rm -f "$probe"
    local dir
    for dir in data target .venv .deps models; do
        if [ -e "$dir" ] && [ ! -w "$dir" ]; then
            problem "$PWD/$dir is not writable by $(id -un): fix its permissions (or remove it to have it made again)"
        fi
    done
    local free_kib
    free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
    if [ -n "$free_kib" ] && [ ! -d target/release ] && [ "$free_kib" -lt $((MIN_FREE_GIB * 1024 * 1024)) ]; then
        problem "only $((free_kib / 1024 / 1024)) GiB free under $PWD: the build and the Python tools need about $MIN_FREE_GIB GiB (MESH_MIN_FREE_GIB to change)"
    fi
}

check_database() {
    if [ -n "${DATABASE_URL:-}" ]; then
        # postgres://user[:password]@host[:port]/database?options: host and port only.
        local rest host port
        rest=${DATABASE_URL#*://}
        rest=${rest#*@}
        rest=${rest%%[/?]*}
        host=${rest%:*}
        port=5432
        [ "$host" != "$rest" ] && port=${rest##*:}
        host=${host#[}
        host=${host%]}
        if [ -z "$host" ] || ! port_in_use "$host" "$port"; then
            problem "DATABASE_URL names ${host:-no host}:$port, where no server answers: start it, fix DATABASE_URL, or unset it to use a project-local PostgreSQL"
        fi
        return
    fi
    bash scripts/postgres.sh check || problem "no PostgreSQL for the alert manager (see the line above)"
}

check_ports
if [ "${1:-}" != "--ports" ]; then
    check_tools
    check_folder
    check_database
fi
if [ "$problems" -gt 0 ]; then
    echo "[preflight] $problems problem(s) found before building: nothing was installed or started" >&2
    exit 1
fi
echo "[preflight] ok" >&2
