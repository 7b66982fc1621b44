#!/usr/bin/env bash
# A project-local PostgreSQL for the alert manager's incidents: one cluster of this project's,
# listening on 127.0.0.1:${MESH_PG_PORT:-55432} only, kept between runs.
#
#   scripts/postgres.sh start    initialise the cluster if needed, start it unless it runs; prints its URL
#   scripts/postgres.sh stop     stop it (the data stays for the next start)
#   scripts/postgres.sh url      print its URL
#   scripts/postgres.sh dir      print the folder that holds the cluster
#   scripts/postgres.sh status   exit 0 when the cluster runs
#   scripts/postgres.sh check    say whether `start` can work here, without installing or starting anything
#   scripts/postgres.sh remove   stop it and delete its data
#
# Where the cluster lives: PostgreSQL refuses to run as root, so as root its tools run as the
# `postgres` user, who cannot reach a project under a private folder (mode 0700, as /root is).
# As root the cluster therefore lives in that user's own home, in a folder named after the
# project's path (/var/lib/postgresql/mesh/<name>-<hash of the path>), so two clones never share
# one. As any other user it lives under the project, in data/postgres. A cluster that an older
# version of this script made in data/postgres as root is still used where it is.
#
# Debian's postgresql package is installed when initdb is missing (without creating Debian's own
# cluster on port 5432). Every command is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${MESH_PG_PORT:-55432}
URL=postgres://postgres@127.0.0.1:$PORT/postgres

say() { echo "[postgres] $*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
sudo_if_needed() { if is_root; then "$@"; else sudo "$@"; fi; }

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
installed() { [ -n "$(bin_dir)" ] && [ -x "$(bin_dir)/initdb" ]; }

install() {
    installed && return
    say "installing Debian's postgresql package"
    # Debian's package would create and start a cluster of its own on 5432: not wanted here.
    sudo_if_needed mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" | sudo_if_needed tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
}

# PostgreSQL refuses to run as root: as root, its tools run as the postgres user, from a folder
# that user can enter (the project's may be private). Every path given to them is absolute.
as_owner() {
    if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# The folder of this project's cluster (see the top of this file).
cluster_dir() {
    local legacy=$PWD/data/postgres
    if ! is_root || [ -f "$legacy/PG_VERSION" ]; then
        echo "$legacy"
        return
    fi
    local home name hash
    home=$(getent passwd postgres | cut -d: -f6)
    home=${home:-/var/lib/postgresql}
    name=$(basename "$PWD" | tr -c 'A-Za-z0-9._\n-' '_' | cut -c1-24)
    hash=$(printf '%s' "$PWD" | sha256sum | cut -c1-12)
    echo "$home/mesh/$name-$hash"
}

running() {
    installed || return 1
    local data
    data=$(cluster_dir)
    [ -f "$data/PG_VERSION" ] && as_owner "$(bin_dir)/pg_ctl" -D "$data" status >/dev/null 2>&1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# What `start` needs, checked before anything is installed or built: a way to install
# PostgreSQL, a free port, and a cluster folder its owner can write. Prints what to do otherwise.
check() {
    if running; then return 0; fi
    if port_in_use; then
        say "port $PORT is taken by another server: set MESH_PG_PORT to a free port, or DATABASE_URL to use that server"
        return 1
    fi
    if ! installed; then
        if is_root; then
            command -v apt-get >/dev/null || { say "PostgreSQL is not installed and there is no apt-get: install PostgreSQL, or set DATABASE_URL"; return 1; }
        elif ! sudo -n true 2>/dev/null; then
            say "PostgreSQL is not installed and installing it needs root: run 'sudo apt-get install postgresql', or set DATABASE_URL"
            return 1
        fi
        return 0
    fi
    local data parent
    data=$(cluster_dir)
    parent=$data
    while [ ! -e "$parent" ]; do parent=$(dirname "$parent"); done
    if ! as_owner test -w "$parent" -a -x "$parent"; then
        say "the cluster's folder $data cannot be created or written by $(is_root && echo the postgres user || id -un): fix the permissions of $parent, or set DATABASE_URL"
        return 1
    fi
}

start() {
    install
    local bin data
    bin=$(bin_dir)
    data=$(cluster_dir)
    if running; then
        say "reusing the cluster in $data (port $PORT)"
        echo "$URL"
        return
    fi
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
        say "port $PORT is taken by another server: set MESH_PG_PORT to a free port, or DATABASE_URL"
        exit 1
    fi
    if is_root && [ "$data" != "$PWD/data/postgres" ]; then
        runuser -u postgres -- mkdir -p "$data"
    else
        mkdir -p "$data"
        if is_root; then chown -R postgres:postgres "$data"; fi
    fi
    chmod 700 "$data"
    if [ ! -f "$data/PG_VERSION" ]; then
        say "initialising a cluster in $data"
        as_owner "$bin/initdb" -D "$data" -A trust -U postgres --no-sync >/dev/null
    fi
    as_owner "$bin/pg_ctl" -D "$data" -w -l "$data/server.log" \
        -o "-p $PORT -k $data -c listen_addresses=127.0.0.1" start >/dev/null
    say "started on 127.0.0.1:$PORT (data and log: $data)"
    echo "$URL"
}

stop() {
    if running; then
        as_owner "$(bin_dir)/pg_ctl" -D "$(cluster_dir)" -m fast -w stop >/dev/null
        say "stopped (data kept in $(cluster_dir))"
    fi
}

remove() {
    stop
    installed || return 0
    local data
    data=$(cluster_dir)
    if [ -d "$data" ]; then
        rm -rf "$data"
        say "removed $data"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL" ;;
    dir) cluster_dir ;;
    status) running ;;
    check) check ;;
    remove) remove ;;
    *) echo "usage: $0 start|stop|url|dir|status|check|remove" >&2; exit 2 ;;
esac
