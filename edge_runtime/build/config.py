"""What a build is asked to make (BuildConfig) and what it made (BuildResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .distill import Distillation
from .finetune import FinetuneConfig

# The oldest runtime that reads the bundles this toolchain writes. Not the package version: a release that
# leaves the bundle format alone must not lock the fleet's older devices out of new models.
MIN_RUNTIME = "0.1.0"
DEFAULT_ROUTING = {
    "min_confidence": 0.5,
    "min_margin": 0.1,
    "max_entropy": 0.6,
    "per_class": {},
    "always_escalate": [],
    "never_escalate": [],
    "private_labels": [],
    "oos_label": None,
}


@dataclass
class BuildConfig:
    model_dir: Path
    name: str
    version: str
    release: int
    out: Path  # a directory, or a path ending in .erb
    max_length: int = 64
    max_drop: float = 1.0  # classifier: points of accuracy fp32 -> int8
    min_cosine: float = 0.98  # embedder: mean cosine int8 vs fp32
    force: bool = False
    quantization: str = "dynamic"  # or "static" (QDQ, activation ranges from training texts): build/quantize.py
    exclude_nodes: list[str] = field(default_factory=list)
    fallback_exclude: list[str] = field(default_factory=list)  # retried when the gate fails
    private_key: object = None  # None: unsigned output
    cache_dir: Path | None = None
    source: dict = field(default_factory=dict)  # provenance written to metrics.source
    # classifier only
    head: str = "logreg"  # logreg | finetune
    logreg_c: float = 10.0
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    oos_label: str = "oos"
    reject_max_in_scope_drop: float = 0.3
    # what answers the OOS label on the device: "ood" (the out-of-scope score, build/ood.py), "confidence" (the
    # top probability), "both" (either), or "auto": the one of them with the most right answers cross-fitted on
    # val (build/reject.py); fitted on val within reject_max_in_scope_drop points of in-scope accuracy
    reject_signal: str = "auto"
    routing: dict = field(default_factory=dict)
    distillation: Distillation | None = None  # a teacher's soft labels mixed into fine-tuning (build/distill.py)
    # the regression gate (build/regression.py): the bundle this one replaces (store ref or path), and the most
    # points of val accuracy the new INT8 bundle may lose against it, both scored by the runtime
    replaces: str | None = None
    max_regression: float = 0.5
    # tagger only
    max_false_share: float = 0.015  # outside_bias: most held-out texts without PII given a false span
    max_outside_bias: float = 6.0  # and never more than this (the held-out negatives are easier than real text)
    # the precision gate: a text file of lines without PII (never trained on), the most of them that may get
    # a span, and the least held-out value recall per kind ({"PERSON": 98.9, ...}; shipped: INT8 with bias)
    technical_negatives: Path | None = None
    max_technical_false_share: float = 0.02
    min_value_recall: dict = field(default_factory=dict)


@dataclass
class BuildResult:
    path: Path
    manifest: dict
    seconds: float
