"""A linear head: logistic regression on mean-pooled (optionally L2-normalised) encoder features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearHead:
    weight: np.ndarray  # (classes, hidden) float32
    bias: np.ndarray  # (classes,) float32
    normalize: bool  # features were L2-normalised before the head

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias


def fit_logreg(
    features: np.ndarray, targets: np.ndarray, n_classes: int, c: float = 10.0, max_iter: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (lbfgs: deterministic). Returns (weight, bias) for all classes."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(features, targets)
    weight = np.zeros((n_classes, features.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)  # classes absent from training never win
    weight[model.classes_] = model.coef_
    bias[model.classes_] = model.intercept_
    return weight, bias
