#!/usr/bin/env bash
# Quick start, command 2 (and CI): install everything from nothing, lint, then run the whole suite,
# once with the compiled Cython core and once more (the kernel-dependent tests) on the pure twins.
# Everything a test needs is installed here, so a skipped test fails (EDGE_RUNTIME_REQUIRE_ALL=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export EDGE_RUNTIME_REQUIRE_ALL=${EDGE_RUNTIME_REQUIRE_ALL:-1}
export EDGE_RUNTIME_TEST_CACHE=${EDGE_RUNTIME_TEST_CACHE:-$PWD/.test-cache}   # the PII tagger's fine-tuning, shared by both runs
PY=.venv/bin/python
$PY -c "import edge_runtime.kernels as k; assert k.IMPLEMENTATION == 'cython', 'the Cython core did not build'"
echo "== lint: ruff check, ruff format --check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== test suite (kernels: cython)"
$PY -m pytest -q -p no:cacheprovider --durations=30 "$@"   # the slowest tests: what the 40-minute CI budget goes on
echo "== kernel-dependent tests (marker kernels; kernels: python, EDGE_RUNTIME_PURE_PYTHON=1)"
EDGE_RUNTIME_PURE_PYTHON=1 $PY -m pytest -q -p no:cacheprovider -m "kernels and not slow"
