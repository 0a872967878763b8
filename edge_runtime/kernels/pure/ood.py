"""Out-of-scope score from a pooled sentence embedding: the NumPy twin of kernels/ood.pyx.

The score is the Mahalanobis distance to the nearest in-scope class mean under one covariance shared by all
classes (fitted at build time, edge_runtime/build/ood.py). The build precomputes a whitening matrix W with
W @ W.T = inverse covariance and the class means in whitened coordinates, so a query costs one
vector-matrix product and C squared distances, and the covariance is never inverted on the device.

Rules (both twins follow them exactly):
- `pooled` becomes a C-contiguous float32 (B, d) array; `whiten` float32 (d, r); `centers` float32 (C, r),
  C >= 1. The parameters are trusted: edge_runtime/ood.py checks them (finite) once, when a bundle loads.
- A row of `pooled` that is not finite raises ValueError naming the row. (Finite float32 values cannot
  overflow the float64 products and sums below: |x * w| < 1.2e77.)
- `z = float64(pooled) @ float64(whiten)`; `distance` = the least over classes c of
  sum_j (z_j - centers[c, j])^2, in float64: the squared Mahalanobis distance to the nearest class mean.
- `ood_scores` squashes the distance into 0..1 on a log scale: `1 / (1 + exp(-(ln(distance) - location) /
  scale))` (0 when the distance is 0), rounded to float32 once, at the end. `location` and `scale` are
  finite, `scale` > 0; the build sets them from the training texts' distances (see build/ood.py).
"""

from __future__ import annotations

import math

import numpy as np


def as_pooled(pooled) -> np.ndarray:
    array = np.asarray(pooled)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"pooled must be a real numeric array, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"pooled must be 2-D (batch, hidden), got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def as_parameters(whiten, centers, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 C-contiguous (d, r) and (C, r), checked against the embedding width `hidden`. Shared by both
    twins so their errors read the same."""
    arrays = []
    for name, value in (("whiten", whiten), ("centers", centers)):
        array = np.asarray(value)
        if array.dtype.kind != "f" or array.ndim != 2:
            raise ValueError(f"{name} must be a 2-D float array, got {array.dtype} {array.shape}")
        arrays.append(np.ascontiguousarray(array, dtype=np.float32))
    whiten, centers = arrays
    if whiten.shape[0] != hidden:
        raise ValueError(f"whiten has {whiten.shape[0]} rows, the embedding has {hidden} values")
    if centers.shape[0] < 1 or centers.shape[1] != whiten.shape[1]:
        raise ValueError(f"centers must be (classes >= 1, {whiten.shape[1]}), got {centers.shape}")
    return whiten, centers


def check_squash(location, scale) -> tuple[float, float]:
    location, scale = float(location), float(scale)
    if not (math.isfinite(location) and math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"location must be finite and scale finite and > 0, got {location}, {scale}")
    return location, scale


def nearest_distance(pooled, whiten, centers) -> np.ndarray:
    """float64 (B,): squared Mahalanobis distance of each row to the nearest class mean."""
    x = as_pooled(pooled)
    w, c = as_parameters(whiten, centers, x.shape[1])
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"pooled row {int(np.argmin(finite))} is not finite")
    z = x.astype(np.float64) @ w.astype(np.float64)
    means = c.astype(np.float64)
    out = np.empty(len(x), dtype=np.float64)
    for row in range(len(x)):  # row by row: (C, r) differences, not a (B, C, r) temporary
        difference = means - z[row]
        out[row] = np.einsum("cr,cr->c", difference, difference).min()
    return out


def ood_scores(pooled, whiten, centers, location, scale) -> np.ndarray:
    """float32 (B,) in 0..1: the nearest-class distance on the log scale the build fitted."""
    location, scale = check_squash(location, scale)
    distance = nearest_distance(pooled, whiten, centers)
    with np.errstate(divide="ignore", over="ignore"):
        exponent = -(np.log(distance) - location) / scale  # +inf for a distance of 0: the score is 0
        return (1.0 / (1.0 + np.exp(exponent))).astype(np.float32)
