#!/usr/bin/env bash
# Quick start, command 1: set up, build the default CLINC150 bundle and the PII tagger on first use
# (~17 min on 2 cores, with progress), then run the main job on it: the daemon, queried over its HTTP APIs, plus the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export EDGE_RUNTIME_HOME=${EDGE_RUNTIME_HOME:-$PWD/.edge-runtime}
DATA=${EDGE_RUNTIME_DATASETS:-$PWD/datasets}/clinc150
PORT=${EDGE_RUNTIME_DEMO_PORT:-8080}
URL=http://127.0.0.1:$PORT

edge-runtime build default
edge-runtime models list

echo "== the daemon: edge-runtime serve --port $PORT"
edge-runtime serve --port "$PORT" > "$EDGE_RUNTIME_HOME/demo-serve.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "$URL/v2/health/ready" >/dev/null && break
    kill -0 $DAEMON 2>/dev/null || { cat "$EDGE_RUNTIME_HOME/demo-serve.log"; exit 1; }
    sleep 0.2
done

show() { echo; echo "\$ $*"; "$@"; echo; }
show curl -s "$URL/v1/predict" -H 'content-type: application/json' \
    -d '{"texts": ["what is my checking balance", "my card was stolen", "who won the world cup in 1966"]}'
show curl -s "$URL/v2/models/clinc150-minilm-int8/infer" -H 'content-type: application/json' \
    -d '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["book a table for two at 7pm"]}]}'
show edge-runtime status --url "$URL"
curl -s "$URL/metrics" | grep -E '^edge_runtime_(predictions_total|model_info|batch_size_count)' || true

echo "== the CLI, offline"
edge-runtime predict "how do i say thank you in japanese" "set an alarm for 6 am"
echo "== what an escalation may carry: personal data redacted on the device"
echo "Hi, this is Maria Gonzalez, send the card to 14 Elm Street, Leeds LS6 2AB or mail maria.g@example.com" \
    | edge-runtime redact
echo "== eval on CLINC150 val (3,100 queries)"
edge-runtime eval --data "$DATA/val.jsonl"
edge-runtime doctor
echo
echo "Run the daemon yourself: EDGE_RUNTIME_HOME=$EDGE_RUNTIME_HOME .venv/bin/edge-runtime serve --port $PORT"
