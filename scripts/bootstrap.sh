#!/usr/bin/env bash
# Sets up everything from nothing: a virtualenv in .venv with the package (Cython core built),
# the [build] toolchain and, with --test, the test tools and the Debian packages the tests use.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EDGE_RUNTIME_VENV:-.venv}
WITH_TESTS=0
[[ "${1:-}" == "--test" ]] && WITH_TESTS=1

if [[ $WITH_TESTS == 1 ]] && ! command -v mosquitto >/dev/null; then
    echo "== Debian packages: mosquitto, openssl, iproute2"
    if [[ $(id -u) == 0 ]]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients openssl iproute2 >/dev/null
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
