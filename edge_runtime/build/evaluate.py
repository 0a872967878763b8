"""Classification metrics from logits: in-scope accuracy, out-of-scope recall, overall accuracy."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict(
    logits: np.ndarray,
    labels: list[str],
    oos_label: str | None = None,
    threshold: float | None = None,
    ood: np.ndarray | None = None,
    ood_threshold: float | None = None,
) -> np.ndarray:
    """Predicted class indices; with a threshold, low-confidence answers become `oos_label`, and with an ood
    threshold so do answers whose out-of-scope score `ood` is above it (as the runtime's postprocess)."""
    predicted = logits.argmax(axis=1)
    if oos_label not in labels:
        return predicted
    if threshold is not None:
        predicted = np.where(softmax(logits).max(axis=1) < threshold, labels.index(oos_label), predicted)
    if ood is not None and ood_threshold is not None:
        predicted = np.where(np.asarray(ood) > ood_threshold, labels.index(oos_label), predicted)
    return predicted


def scores(predicted: np.ndarray, targets: np.ndarray, labels: list[str], oos_label: str | None) -> dict:
    """Percentages, rounded to 2 decimals. Without an OOS class, in-scope accuracy = accuracy."""
    targets = np.asarray(targets)
    correct = predicted == targets
    result = {"accuracy": _pct(correct), "examples": int(len(targets))}
    if oos_label in labels:
        oos = targets == labels.index(oos_label)
        result["in_scope_accuracy"] = _pct(correct[~oos])
        result["oos_recall"] = _pct(correct[oos]) if oos.any() else None
        result["oos_examples"] = int(oos.sum())
    else:
        result["in_scope_accuracy"] = result["accuracy"]
    return result


def _pct(mask: np.ndarray) -> float:
    return round(100.0 * float(mask.mean()), 2) if mask.size else 0.0


def fit_reject_threshold(
    logits: np.ndarray, targets: np.ndarray, labels: list[str], oos_label: str, max_in_scope_drop: float = 0.3
) -> float | None:
    """The max-probability threshold with the best OOS recall costing at most `max_in_scope_drop`
    points of in-scope accuracy (on the data given: fit on val, so the val figures are optimistic)."""
    if oos_label not in labels:
        return None
    base = scores(predict(logits, labels), targets, labels, oos_label)
    if not base.get("oos_examples"):
        return None
    best, best_recall = None, base["oos_recall"]
    max_prob = softmax(logits).max(axis=1)
    argmax, oos_index = logits.argmax(axis=1), labels.index(oos_label)
    for threshold in np.unique(np.round(max_prob, 4)):
        predicted = np.where(max_prob < threshold, oos_index, argmax)
        result = scores(predicted, targets, labels, oos_label)
        if base["in_scope_accuracy"] - result["in_scope_accuracy"] > max_in_scope_drop:
            break  # higher thresholds only reject more in-scope answers
        if result["oos_recall"] > best_recall:
            best, best_recall = float(threshold), result["oos_recall"]
    return best
