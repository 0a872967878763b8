#!/usr/bin/env bash
# Sets up everything from nothing: a virtualenv in .venv with the package (Cython core built),
# the [build] toolchain and, with --test, the test tools and the Debian packages the tests use.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EDGE_RUNTIME_VENV:-.venv}
WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1

# nginx: the fleet mirror tests serve archives over HTTP with it (tests/support/nginx.py starts its own;
# the system service the package may start is not needed: `systemctl disable --now nginx`). Both live in
# /usr/sbin, often not on a user's PATH.
installed() { command -v "$1" >/dev/null || [[ -x "/usr/sbin/$1" ]]; }
if [[ $WITH_TESTS == 1 ]] && ! { installed mosquitto && installed nginx; }; then
    echo "== Debian packages: mosquitto, nginx, openssl, iproute2"
    if [[ $(id -u) == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients nginx openssl iproute2 >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== virtualenv $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
fi
PIP="$VENV/bin/pip"

# torch first, pinned: the CPU build lies on this machine's disk; a plain `torch` pulls CUDA (GBs).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "== torch 2.13.0 (CPU)"
    FIND_LINKS=()
    [[ -d /opt/wheels ]] && FIND_LINKS=(--find-links /opt/wheels)
    "$PIP" install -q "${FIND_LINKS[@]}" torch==2.13.0
fi

EXTRAS="build"
[[ $WITH_TESTS == 1 ]] && EXTRAS="build,test,bench"
echo "== edge-runtime[$EXTRAS] (compiles the Cython core)"
"$PIP" install -q "Cython>=3.0" "numpy>=2.0" "setuptools>=77" wheel
"$PIP" install -q --no-build-isolation -e ".[$EXTRAS]"
"$VENV/bin/python" -c "import edge_runtime.kernels as k; print('== kernels:', k.IMPLEMENTATION)"
