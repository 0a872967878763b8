"""Sentence-embedding pooling: the NumPy twin of kernels/pooling.pyx.

Rules (both twins follow them exactly):
- `hidden` becomes C-contiguous float32; sums, means and norms are taken in float64 and rounded to float32
  once, at the end.
- `mean_pool`: a token counts when its mask value is non-zero; the mean is the sum times 1 / count; a row
  with no counted token pools to zeros. With `normalize`, the float64 mean is multiplied by 1 / its L2 norm.
- `l2_normalize` works along the last axis (x * (1 / norm), in float64); a zero vector stays zero.
- `cls_pool` takes token 0 of every row (T >= 1).
"""

from __future__ import annotations

import numpy as np


def as_float32(array, ndim: int, name: str) -> np.ndarray:
    values = np.asarray(array)
    if values.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got {values.dtype}")
    if values.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {values.shape}")
    return np.ascontiguousarray(values, dtype=np.float32)


def as_mask(mask, batch: int, tokens: int) -> np.ndarray:
    values = np.asarray(mask)
    if values.dtype.kind not in "iub":
        raise TypeError(f"mask must hold integers or booleans, got {values.dtype}")
    if values.shape != (batch, tokens):
        raise ValueError(f"mask must have shape {(batch, tokens)}, got {values.shape}")
    return values


def _normalize64(values: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.square(values).sum(axis=-1, keepdims=True))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0.0)
    return values * scale


def mean_pool(hidden, mask, normalize=False):
    """Masked mean over tokens of float32 (B, T, H) -> float32 (B, H)."""
    states = as_float32(hidden, 3, "hidden")
    batch, tokens, _ = states.shape
    keep = as_mask(mask, batch, tokens) != 0
    counts = keep.sum(axis=1)
    sums = np.einsum("bth,bt->bh", states, keep.astype(np.float64))
    means = sums * (1.0 / np.maximum(counts, 1))[:, None]
    if normalize:
        means = _normalize64(means)
    return means.astype(np.float32)


def cls_pool(hidden, normalize=False):
    """Token 0 of every row of float32 (B, T, H) -> float32 (B, H)."""
    states = as_float32(hidden, 3, "hidden")
    if states.shape[1] < 1:
        raise ValueError("hidden has no tokens to pool")
    first = states[:, 0, :]
    if normalize:
        return _normalize64(first.astype(np.float64)).astype(np.float32)
    return first.copy()


def l2_normalize(x):
    """Divide every vector along the last axis by its L2 norm; zero vectors stay zero."""
    values = np.asarray(x)
    if values.dtype.kind not in "fiu":
        raise TypeError(f"x must be a real numeric array, got {values.dtype}")
    if values.ndim < 1:
        raise ValueError("x must have at least one axis")
    values = np.ascontiguousarray(values, dtype=np.float32)
    return _normalize64(values.astype(np.float64)).astype(np.float32)
