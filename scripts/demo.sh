#!/usr/bin/env bash
# Quick start, command 1: set up, serve a first model within minutes, build the fine-tuned default bundle
# and the PII tagger while the daemon serves, hot-swap them in, then run the main job on them: the daemon
# over its HTTP APIs, then the CLI. Progress is shown throughout.
#
#   make demo                            # ~2 min to the first answer, ~13 min to full quality (2 cores)
#   EDGE_RUNTIME_DEMO_QUICK=1 make demo  # the same steps with a few training steps (CI's smoke run)
#
# Environment: EDGE_RUNTIME_HOME (default ./.edge-runtime, or ./.edge-runtime-quick in quick mode),
# EDGE_RUNTIME_VENV (default .venv), EDGE_RUNTIME_DEMO_PORT (default 8080), EDGE_RUNTIME_DATASETS.
set -euo pipefail
cd "$(dirname "$0")/.."
STARTED=$(date +%s)
elapsed() { echo "$(( $(date +%s) - STARTED ))"; }
banner() { echo; echo "== [$(elapsed) s] $*"; }

QUICK=${EDGE_RUNTIME_DEMO_QUICK:-0}
VARIANT=()
if [[ $QUICK == 1 ]]; then
    VARIANT=(--variant quick)  # never mixed with real bundles: a home of its own
    export EDGE_RUNTIME_HOME=${EDGE_RUNTIME_HOME:-$PWD/.edge-runtime-quick}
fi
scripts/bootstrap.sh
VENV=$(cd "${EDGE_RUNTIME_VENV:-.venv}" && pwd)
export PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export EDGE_RUNTIME_HOME=${EDGE_RUNTIME_HOME:-$PWD/.edge-runtime}
DATA=${EDGE_RUNTIME_DATASETS:-$PWD/datasets}/clinc150
PORT=${EDGE_RUNTIME_DEMO_PORT:-8080}
URL=http://127.0.0.1:$PORT
MODEL=clinc150-minilm-int8

banner "a first model: logistic regression on frozen MiniLM features (skipped once a fine-tuned one is installed)"
edge-runtime build default --variant fast --no-tagger
edge-runtime models list

banner "the daemon: edge-runtime serve --port $PORT (log: $EDGE_RUNTIME_HOME/demo-serve.log)"
edge-runtime serve --port "$PORT" > "$EDGE_RUNTIME_HOME/demo-serve.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 150); do
    curl -sf "$URL/v2/health/ready" >/dev/null && break
    kill -0 $DAEMON 2>/dev/null || { cat "$EDGE_RUNTIME_HOME/demo-serve.log"; exit 1; }
    sleep 0.2
done
curl -sf "$URL/v2/health/ready" >/dev/null || { echo "the daemon did not become ready" >&2; exit 1; }

show() { echo; echo "\$ $*"; "$@"; echo; }
ask() {
    show curl -sf "$URL/v1/predict" -H 'content-type: application/json' \
        -d '{"texts": ["what is my checking balance", "my card was stolen", "who won the world cup in 1966"]}'
}
served_model() {
    curl -sf "$URL/v1/status" | python3 -c 'import json, sys; m = json.load(sys.stdin)["model"]; print(m["name"] + "@" + m["version"])'
}
ask
banner "first answer served by $(served_model)"

banner "the fine-tuned bundle and the PII tagger (the daemon keeps serving meanwhile)"
edge-runtime build default "${VARIANT[@]}"

banner "hot swap: POST /v1/admin/reload (SIGHUP does the same)"
show curl -sf -X POST "$URL/v1/admin/reload"
served=$(served_model)
active=$(edge-runtime models list --json | python3 -c \
    'import json, sys; m = json.load(sys.stdin)["active"]; print(m["name"] + "@" + m["version"])')
[[ $served == "$active" ]] || { echo "the daemon serves $served, the store's active model is $active" >&2; exit 1; }
ask
show curl -sf "$URL/v2/models/$MODEL/infer" -H 'content-type: application/json' \
    -d '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["book a table for two at 7pm"]}]}'
show edge-runtime status --url "$URL"
curl -sf "$URL/metrics" | grep -E '^edge_runtime_(predictions_total|model_info|batch_size_count)' || true
if [[ $QUICK == 1 ]]; then banner "served by $served (quick mode: a few training steps, not the real quality)"
else banner "full quality served by $served"; fi

banner "the CLI, offline"
edge-runtime predict "how do i say thank you in japanese" "set an alarm for 6 am"
echo "== what an escalation may carry: personal data redacted on the device"
echo "Hi, this is Maria Gonzalez, send the card to 14 Elm Street, Leeds LS6 2AB or mail maria.g@example.com" \
    | edge-runtime redact
banner "eval on CLINC150 val (3,100 queries)"
edge-runtime eval --data "$DATA/val.jsonl"
edge-runtime doctor
banner "done"
echo "Run the daemon yourself: EDGE_RUNTIME_HOME=$EDGE_RUNTIME_HOME $VENV/bin/edge-runtime serve --port $PORT"
