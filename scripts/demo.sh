#!/usr/bin/env bash
# Quick start, command 1: set up, build the default CLINC150 bundle on first use (~10 min, shown
# with progress), then run the main job on it: classify a few requests and evaluate on CLINC150 val.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export EDGE_RUNTIME_HOME=${EDGE_RUNTIME_HOME:-$PWD/.edge-runtime}
DATA=${EDGE_RUNTIME_DATASETS:-$PWD/../shared/datasets}/clinc150

edge-runtime build default
echo "== predict"
edge-runtime predict "what is my checking balance" "how do i say thank you in japanese" \
    "book me a table for two at 7pm" "my card was stolen" "who won the world cup in 1966"
echo "== eval on CLINC150 val"
edge-runtime eval --data "$DATA/val.jsonl"
edge-runtime doctor
