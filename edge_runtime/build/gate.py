"""The INT8 gate: compare the INT8 model with fp32 on validation data; refuse to emit on a big drop."""

from __future__ import annotations

import numpy as np

from .errors import GateError


def classifier_gate(fp32: dict, int8: dict, max_drop: float, force: bool = False) -> dict:
    """Drop in points of in-scope and overall accuracy; raise GateError beyond `max_drop`."""
    drops = {
        "in_scope_accuracy": round(fp32["in_scope_accuracy"] - int8["in_scope_accuracy"], 2),
        "accuracy": round(fp32["accuracy"] - int8["accuracy"], 2),
    }
    if fp32.get("oos_recall") is not None and int8.get("oos_recall") is not None:
        drops["oos_recall"] = round(fp32["oos_recall"] - int8["oos_recall"], 2)  # reported, not gated: 1 pt/example
    worst = max(drops["in_scope_accuracy"], drops["accuracy"])
    report = {"max_drop": max_drop, "drops": drops, "passed": worst <= max_drop, "forced": False}
    if not report["passed"]:
        if not force:
            raise GateError(
                f"INT8 gate failed: accuracy drop {worst:.2f} points > allowed {max_drop:.2f} "
                f"(fp32 in-scope {fp32['in_scope_accuracy']:.2f}, int8 {int8['in_scope_accuracy']:.2f}); "
                "try --exclude-nodes ffn_down, or --force to emit anyway",
                report,
            )
        report["forced"] = True
    return report


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def embedder_gate(fp32: np.ndarray, int8: np.ndarray, min_cosine: float, force: bool = False) -> dict:
    similarity = cosine(fp32, int8)
    report = {
        "min_mean_cosine": min_cosine,
        "mean_cosine": round(float(similarity.mean()), 5),
        "min_cosine": round(float(similarity.min()), 5),
        "examples": int(len(similarity)),
    }
    report["passed"] = report["mean_cosine"] >= min_cosine
    report["forced"] = False
    if not report["passed"]:
        if not force:
            raise GateError(
                f"INT8 gate failed: mean cosine vs fp32 {report['mean_cosine']:.4f} < {min_cosine:.4f}; "
                "try --exclude-nodes ffn_down, or --force to emit anyway",
                report,
            )
        report["forced"] = True
    return report
