"""Confidence calibration: temperature scaling, ECE, risk-coverage, and the thresholds a bundle ships with.

Everything works on raw logits (N, C) and gold class indices from a labelled validation set:
  fit_temperature  T minimising the negative log-likelihood of softmax(logits / T)
  ece              expected calibration error of the max probability (15 equal-width bins)
  risk_coverage    kept accuracy when only the answers with the highest scores are kept
  escalation_threshold / accuracy_threshold   the min_confidence the router escalates below
  per_class_thresholds                        the same per predicted class, where data allows
  reject_threshold                            below it the device answers the out-of-scope label
  signal="entropy"                            route on the kernel's normalised entropy (routing.max_entropy)
                                              instead of the top probability (routing.min_confidence)
Figures fitted on data are optimistic on that same data: evaluate on held-out examples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .bundle import next_version_manifest
from .errors import InputError

ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0
COVERAGES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(targets)), targets]))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, tol: float = 1e-4) -> float:
    """Golden-section search over log T (the NLL is convex in 1/T, unimodal in log T)."""
    _check(logits, targets)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, targets, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, targets, math.exp(b))
    return round(math.exp((lo + hi) / 2), 4)


def ece(scores: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by bin share."""
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if scores.size == 0:
        return 0.0
    which = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - scores[members].mean())
    return float(total)


def risk_coverage(scores: np.ndarray, correct: np.ndarray, coverages=COVERAGES) -> list[dict]:
    """For each coverage: the score threshold keeping that share (highest scores first) and their accuracy."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranked_scores, ranked_correct = np.asarray(scores)[order], np.asarray(correct, dtype=np.float64)[order]
    hits = np.cumsum(ranked_correct)
    n = len(order)
    rows = []
    for coverage in coverages:
        kept = max(1, int(round(coverage * n)))
        rows.append(
            {
                "coverage": kept / n,
                "threshold": float(ranked_scores[kept - 1]),
                "kept_accuracy": float(hits[kept - 1] / kept),
                "risk": float(1 - hits[kept - 1] / kept),
            }
        )
    return rows


def curve(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The full risk-coverage curve (coverage, risk) for plotting."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    kept = np.arange(1, len(order) + 1)
    return kept / len(order), 1 - hits / kept


def _between(low: float, high: float) -> float:
    """A threshold strictly above `low` and at most `high` (scores below it escalate)."""
    return float(min(1.0, (low + high) / 2 if high > low else np.nextafter(low, 2.0)))


def escalation_threshold(scores: np.ndarray, rate: float) -> float:
    """min_confidence escalating round(rate * N) of these scores (fewer when scores tie at the cut)."""
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"target escalation rate must be between 0 and 1, got {rate}")
    ranked = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(round(rate * len(ranked)))
    if k == 0:
        return 0.0
    if k >= len(ranked):
        return _between(ranked[-1], 1.0)
    return _between(ranked[k - 1], ranked[k])


def accuracy_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest min_confidence whose kept answers (score >= it) are at least `target` accurate;
    1.0 (escalate all) when no cut reaches it."""
    if not 0.0 < target <= 1.0:
        raise InputError(f"target accuracy must be in (0, 1], got {target}")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    kept = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(np.asarray(correct, dtype=np.float64)[order]) / kept
    # cut only between distinct scores, so "score >= threshold" keeps exactly the first m
    valid = np.append(ranked[1:] < ranked[:-1], True)
    good = np.nonzero((accuracy >= target - 1e-12) & valid)[0]
    if good.size == 0:
        return 1.0
    m = int(good[-1]) + 1
    return 0.0 if m == len(ranked) else _between(ranked[m], ranked[m - 1])


def per_class_thresholds(
    scores: np.ndarray,
    correct: np.ndarray,
    predicted: np.ndarray,
    labels: list[str],
    target: float,
    min_examples: int = 20,
) -> dict[str, float]:
    """accuracy_threshold per predicted class that has at least `min_examples` predictions."""
    result = {}
    for index in np.unique(predicted):
        members = predicted == index
        if members.sum() >= max(1, min_examples):
            result[labels[int(index)]] = round(accuracy_threshold(scores[members], correct[members], target), 6)
    return result


def reject_threshold(probs: np.ndarray, targets: np.ndarray, oos_index: int, max_in_scope_drop: float = 0.003):
    """The max-probability threshold (below it: the OOS label) with the best OOS recall that costs at most
    `max_in_scope_drop` (a share, 0.003 = 0.3 points) of in-scope accuracy; None when none helps."""
    in_scope, oos = targets != oos_index, targets == oos_index
    if not oos.any() or not in_scope.any():
        return None
    argmax, score = probs.argmax(axis=1), probs.max(axis=1)
    base_in = float((argmax[in_scope] == targets[in_scope]).mean())
    best, best_recall = None, float((argmax[oos] == oos_index).mean())
    for threshold in np.unique(np.round(score, 4)):
        predicted = np.where(score < threshold, oos_index, argmax)
        if base_in - float((predicted[in_scope] == targets[in_scope]).mean()) > max_in_scope_drop + 1e-12:
            break  # higher thresholds only reject more in-scope answers
        recall = float((predicted[oos] == oos_index).mean())
        if recall > best_recall:
            best, best_recall = float(threshold), recall
    return best


@dataclass
class Calibration:
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reject_threshold: float | None
    reject_label: str | None
    min_confidence: float | None
    per_class: dict[str, float] = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    expected_escalation_rate: float = 0.0
    kept_accuracy: float | None = None
    accuracy: float = 0.0
    risk_coverage: list[dict] = field(default_factory=list)
    n: int = 0
    signal: str = "confidence"
    max_entropy: float | None = None
    # per example, for a risk-coverage plot: the top probability after T, and whether the answer is right
    scores: np.ndarray | None = field(default=None, repr=False)
    correct: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key not in ("scores", "correct")}


def _check(logits: np.ndarray, targets: np.ndarray) -> None:
    if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0:
        raise InputError("calibration needs logits (N, C) and N gold labels, N > 0")
    if not np.isfinite(logits).all():
        raise InputError("calibration logits hold NaN or infinity")


SIGNALS = ("confidence", "entropy")


def normalised_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The entropy the device computes (the classify kernel's H / ln C), for routing.max_entropy."""
    from . import kernels

    result = kernels.classify.classify_logits(np.ascontiguousarray(logits, dtype=np.float32), temperature, 1, False)
    return np.asarray(result.entropy, dtype=np.float64)


def calibrate(
    logits: np.ndarray,
    gold: list[str],
    labels: list[str],
    *,
    target_escalation: float | None = None,
    target_accuracy: float | None = None,
    current_temperature: float = 1.0,
    oos_label: str | None = "oos",
    fit_reject: bool = True,
    max_in_scope_drop: float = 0.003,
    per_class_min: int = 20,
    signal: str = "confidence",
) -> Calibration:
    """Fit T, the reject threshold and routing thresholds for one target (escalation share or kept accuracy).

    signal "confidence": the cut is routing.min_confidence on the top probability; "entropy": the cut is
    routing.max_entropy on the normalised entropy (fitted as 1 - entropy, so the same code finds both cuts;
    no per-class thresholds)."""
    if (target_escalation is None) == (target_accuracy is None):
        raise InputError("give exactly one target: an escalation rate or a kept accuracy")
    if signal not in SIGNALS:
        raise InputError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(gold) - set(index))
    if unknown:
        raise InputError(f"gold label(s) not in the bundle's labels: {', '.join(unknown[:5])}")
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.array([index[g] for g in gold])
    _check(logits, targets)
    before = softmax(logits, current_temperature)
    temperature = fit_temperature(logits, targets)
    probs = softmax(logits, temperature)
    argmax, scores = probs.argmax(axis=1), probs.max(axis=1)
    oos_index = index.get(oos_label) if oos_label else None
    reject = (
        reject_threshold(probs, targets, oos_index, max_in_scope_drop) if fit_reject and oos_index is not None else None
    )
    predicted = np.where(scores < reject, oos_index, argmax) if reject is not None else argmax
    correct = predicted == targets
    per_class: dict[str, float] = {}
    routed = scores if signal == "confidence" else 1.0 - normalised_entropy(logits, temperature)
    if target_escalation is not None:
        threshold = escalation_threshold(routed, target_escalation)
    else:
        threshold = accuracy_threshold(routed, correct, target_accuracy)
        if per_class_min > 0 and signal == "confidence":
            per_class = per_class_thresholds(scores, correct, argmax, labels, target_accuracy, per_class_min)
    limits = np.array([per_class.get(labels[i], threshold) for i in argmax])
    escalated = routed < limits
    return Calibration(
        temperature=temperature,
        nll_before=nll(logits, targets, current_temperature),
        nll_after=nll(logits, targets, temperature),
        ece_before=ece(before.max(axis=1), before.argmax(axis=1) == targets),
        ece_after=ece(scores, argmax == targets),
        reject_threshold=reject,
        reject_label=oos_label if reject is not None else None,
        min_confidence=round(threshold, 6) if signal == "confidence" else None,
        per_class=per_class,
        target={"escalation": target_escalation} if target_escalation is not None else {"accuracy": target_accuracy},
        expected_escalation_rate=float(escalated.mean()),
        kept_accuracy=float(correct[~escalated].mean()) if (~escalated).any() else None,
        accuracy=float(correct.mean()),
        risk_coverage=risk_coverage(routed, correct),
        n=len(targets),
        signal=signal,
        max_entropy=round(1.0 - threshold, 6) if signal == "entropy" else None,
        scores=scores,
        correct=correct,
    )


def calibrated_manifest(raw: dict, result: Calibration) -> dict:
    """A copy of a manifest for the next version, carrying the fitted temperature and thresholds."""
    manifest = next_version_manifest(raw)
    post = manifest.setdefault("postprocess", {})
    post["temperature"] = result.temperature
    post["reject_threshold"] = result.reject_threshold
    post["reject_label"] = result.reject_label
    routing = manifest.setdefault("routing", {})
    routing.update(
        min_confidence=result.min_confidence,
        min_margin=None,
        max_entropy=result.max_entropy,
        per_class=dict(result.per_class),
    )
    summary = {k: v for k, v in result.to_dict().items() if k != "risk_coverage"}
    summary["calibrated_from"] = f"{raw['name']}@{raw['version']}"
    manifest.setdefault("metrics", {})["calibration"] = summary
    return manifest
