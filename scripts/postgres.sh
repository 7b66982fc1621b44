#!/usr/bin/env bash
# A project-local PostgreSQL for the alert manager's incidents: one cluster under data/postgres,
# listening on 127.0.0.1:${MESH_PG_PORT:-55432} only, kept between runs.
#
#   scripts/postgres.sh start   initialise the cluster if needed, start it unless it runs; prints its URL
#   scripts/postgres.sh stop    stop it (the data stays for the next start)
#   scripts/postgres.sh url     print its URL
#
# Debian's postgresql package is installed when initdb is missing (without creating Debian's own
# cluster on port 5432). Every command is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${MESH_PG_PORT:-55432}
DATA=$PWD/data/postgres
URL=postgres://postgres@127.0.0.1:$PORT/postgres

say() { echo "[postgres] $*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
sudo_if_needed() { if is_root; then "$@"; else sudo "$@"; fi; }

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install() {
    [ -n "$(bin_dir)" ] && [ -x "$(bin_dir)/initdb" ] && return
    say "installing Debian's postgresql package"
    # Debian's package would create and start a cluster of its own on 5432: not wanted here.
    sudo_if_needed mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" | sudo_if_needed tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
}

# PostgreSQL refuses to run as root: as root, its tools run as the postgres user.
as_owner() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

running() {
    [ -f "$DATA/PG_VERSION" ] && as_owner "$(bin_dir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
    install
    local bin
    bin=$(bin_dir)
    if running; then
        say "reusing the cluster in data/postgres (port $PORT)"
        echo "$URL"
        return
    fi
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
        say "port $PORT is taken by another server: set MESH_PG_PORT to a free port, or DATABASE_URL"
        exit 1
    fi
    mkdir -p "$DATA"
    if is_root; then chown -R postgres:postgres "$PWD/data/postgres"; fi
    chmod 700 "$DATA"
    if [ ! -f "$DATA/PG_VERSION" ]; then
        say "initialising a cluster in data/postgres"
        as_owner "$bin/initdb" -D "$DATA" -A trust -U postgres --no-sync >/dev/null
    fi
    as_owner "$bin/pg_ctl" -D "$DATA" -w -l "$DATA/server.log" \
        -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1" start >/dev/null
    say "started on 127.0.0.1:$PORT (log: data/postgres/server.log)"
    echo "$URL"
}

stop() {
    [ -n "$(bin_dir)" ] || return 0
    if running; then
        as_owner "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        say "stopped (data kept in data/postgres)"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
