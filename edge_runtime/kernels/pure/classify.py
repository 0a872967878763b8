"""Logits -> probabilities, top-k, margin and entropy: the NumPy twin of kernels/classify.pyx.

Rules (both twins follow them exactly):
- `logits` becomes a C-contiguous float32 (B, C) array, C >= 1; `z = float64(logits) / temperature`.
  A row with a non-finite `z` raises ValueError naming the row.
- Probabilities are a stable softmax in float64: `e = exp(z - max)`, `s = 1 + sum of e over the other
  classes`, `p = e / s`; outputs are rounded to float32 once, at the end.
- `top_indices` sorts by logit, highest first, ties lowest index first; `k = min(top_k, C)`, 1 <= top_k <= 5.
- `margin` = p(top1) - p(top2) (= max_prob when C == 1); `entropy` = (log1p(s - 1) + sum(e * (max - z)) / s)
  / log(C), clipped to 0..1 (0 when C == 1). `probs` is the full float32 softmax when `full_softmax`, else None.
"""

from __future__ import annotations

import math
import operator

import numpy as np

MAX_TOP_K = 5
FIELDS = ("argmax", "top_indices", "top_probs", "max_prob", "margin", "entropy", "probs")


class ClassifyResult:
    """Per-row classification statistics; every field is a NumPy array (probs may be None)."""

    __slots__ = FIELDS

    def __init__(self, argmax, top_indices, top_probs, max_prob, margin, entropy, probs):
        self.argmax = argmax
        self.top_indices = top_indices
        self.top_probs = top_probs
        self.max_prob = max_prob
        self.margin = margin
        self.entropy = entropy
        self.probs = probs

    def __repr__(self) -> str:
        return f"ClassifyResult(batch={len(self.argmax)}, k={self.top_indices.shape[1]})"


def check_arguments(temperature, top_k) -> tuple[float, int]:
    """Shared by both twins so their errors read the same."""
    if isinstance(top_k, bool):
        raise TypeError("top_k must be an int, got bool")
    top_k = operator.index(top_k)
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature, top_k


def as_logits(logits) -> np.ndarray:
    array = np.asarray(logits)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"logits must be a real numeric array, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {array.shape}")
    if array.shape[1] < 1:
        raise ValueError("logits must have at least one class")
    return np.ascontiguousarray(array, dtype=np.float32)


def classify_logits(logits, temperature=1.0, top_k=5, full_softmax=False):
    """Fused softmax statistics for float32 (B, C) logits; see the module docstring for the rules."""
    temperature, top_k = check_arguments(temperature, top_k)
    x = as_logits(logits)
    batch, classes = x.shape
    k = min(top_k, classes)
    z = x.astype(np.float64) / temperature
    finite = np.isfinite(z).all(axis=1)
    if not finite.all():
        raise ValueError(f"logits row {int(np.argmin(finite))} is not finite (after temperature scaling)")
    rows = np.arange(batch)[:, None]
    order = np.argsort(-z, axis=1, kind="stable")[:, : max(k, min(2, classes))]
    top = order[:, 0]
    peak = z[rows[:, 0], top][:, None]
    e = np.exp(z - peak)
    others = e.copy()
    others[rows[:, 0], top] = 0.0
    rest = others.sum(axis=1)
    total = 1.0 + rest
    p_top = e[rows, order] / total[:, None]
    if classes > 1:
        margin = p_top[:, 0] - p_top[:, 1]
        entropy = (np.log1p(rest) + (e * (peak - z)).sum(axis=1) / total) / math.log(classes)
        entropy = np.clip(entropy, 0.0, 1.0)
    else:
        margin = p_top[:, 0]
        entropy = np.zeros(batch)
    probs = (e / total[:, None]).astype(np.float32) if full_softmax else None
    return ClassifyResult(
        argmax=top.astype(np.int64),
        top_indices=order[:, :k].astype(np.int64),
        top_probs=p_top[:, :k].astype(np.float32),
        max_prob=p_top[:, 0].astype(np.float32),
        margin=margin.astype(np.float32),
        entropy=entropy.astype(np.float32),
        probs=probs,
    )
