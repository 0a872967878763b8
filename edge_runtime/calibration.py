"""Confidence calibration: temperature scaling, ECE, risk-coverage, and the thresholds a bundle ships with.

Everything works on raw logits (N, C) and gold class indices from a labelled validation set:
  fit_temperature  T minimising the negative log-likelihood of softmax(logits / T)
  ece              expected calibration error of the max probability (15 equal-width bins)
  risk_coverage    kept accuracy when only the answers with the highest scores are kept
  escalation_threshold / accuracy_threshold   the min_confidence the router escalates below
  per_class_thresholds                        the same per predicted class, where data allows
  reject_threshold                            below it the device answers the out-of-scope label
  ood_reject_threshold / joint_reject_thresholds   the same on the bundle's out-of-scope score
                                              (edge_runtime/ood.py: above it, the OOS label), or on both
                                              signals at once (either one rejects)
  signal="entropy"                            route on the kernel's normalised entropy (routing.max_entropy)
                                              instead of the top probability (routing.min_confidence)
  signal="ood"                                route on the out-of-scope score (routing.max_ood)
  signal="confidence+ood"                     both: escalate when either is past its cut (joint_escalation)
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


def _best_upper_cut(
    score: np.ndarray,
    argmax: np.ndarray,
    targets: np.ndarray,
    oos_index: int,
    max_in_scope_drop: float,
    already: np.ndarray | None = None,
) -> tuple[float | None, int, int]:
    """The cut t (reject when score > t) that, together with the rows `already` rejected, catches the most OOS
    examples while losing at most `max_in_scope_drop` (a share) of the in-scope answers that were right; ties go
    to the cut that rejects least. Returns (t or None for no cut, OOS caught, in-scope answers lost)."""
    already = np.zeros(len(score), dtype=bool) if already is None else already
    in_scope, oos = targets != oos_index, targets == oos_index
    right = in_scope & (argmax == targets)
    budget = int(np.floor(max_in_scope_drop * in_scope.sum() + 1e-9))  # answers that may be lost
    caught0 = int((oos & ((argmax == oos_index) | already)).sum())
    lost0 = int((right & already).sum())
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    free = ~already[order]
    caught = caught0 + np.cumsum(oos[order] & (argmax[order] != oos_index) & free)
    lost = lost0 + np.cumsum(right[order] & free)
    # a cut may only fall between two different scores: rejecting the first m rows, m in `ends`
    ends = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True)) + 1
    best_m, best_caught, best_lost = 0, caught0, lost0
    for m in ends:
        if lost[m - 1] > budget:
            break  # lower cuts only reject more in-scope answers
        if caught[m - 1] > best_caught:
            best_m, best_caught, best_lost = int(m), int(caught[m - 1]), int(lost[m - 1])
    if best_m == 0:
        return None, best_caught, best_lost
    below = ranked[best_m] if best_m < len(ranked) else ranked[-1] - 1.0
    return float((ranked[best_m - 1] + below) / 2), best_caught, best_lost


def ood_reject_threshold(
    ood: np.ndarray, argmax: np.ndarray, targets: np.ndarray, oos_index: int, max_in_scope_drop: float = 0.003
) -> float | None:
    """The out-of-scope score threshold (above it: the OOS label) with the best OOS recall that costs at most
    `max_in_scope_drop` (a share) of in-scope accuracy; None when none helps. The rule of reject_threshold."""
    if not (targets == oos_index).any() or not (targets != oos_index).any():
        return None
    return _best_upper_cut(np.asarray(ood, dtype=np.float64), argmax, targets, oos_index, max_in_scope_drop)[0]


def joint_reject_thresholds(
    scores: np.ndarray,
    ood: np.ndarray,
    argmax: np.ndarray,
    targets: np.ndarray,
    oos_index: int,
    max_in_scope_drop: float = 0.003,
    grid: int = 101,
) -> tuple[float | None, float | None]:
    """(max-probability threshold, ood threshold): the OOS label when the top probability is below the first
    OR the out-of-scope score above the second, the pair with the best OOS recall costing at most
    `max_in_scope_drop` of in-scope accuracy (ties: the pair that rejects fewer right answers). The
    probability cut is searched over quantiles of `scores` up to the median (`grid` of them), the ood cut
    exactly for each."""
    if not (targets == oos_index).any() or not (targets != oos_index).any():
        return None, None
    scores, ood = np.asarray(scores, dtype=np.float64), np.asarray(ood, dtype=np.float64)
    best = (-1, 0, None, None)  # (caught, -lost, confidence cut, ood cut)
    for cut in [None, *np.unique(np.quantile(scores, np.linspace(0.0, 0.5, grid)))]:
        already = scores < cut if cut is not None else None
        ood_cut, caught, lost = _best_upper_cut(ood, argmax, targets, oos_index, max_in_scope_drop, already)
        if lost > np.floor(max_in_scope_drop * (targets != oos_index).sum() + 1e-9):
            continue  # the probability cut alone is over the budget
        if (caught, -lost) > best[:2]:
            best = (caught, -lost, None if cut is None else float(cut), ood_cut)
    return best[2], best[3]


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
    max_ood: float | None = None
    reject_signal: str = "confidence"
    ood_reject_threshold: float | None = None  # above this out-of-scope score: the reject label
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


SIGNALS = ("confidence", "entropy", "ood", "confidence+ood")
REJECT_SIGNALS = ("confidence", "ood", "both")


def normalised_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The entropy the device computes (the classify kernel's H / ln C), for routing.max_entropy."""
    from . import kernels

    result = kernels.classify.classify_logits(np.ascontiguousarray(logits, dtype=np.float32), temperature, 1, False)
    return np.asarray(result.entropy, dtype=np.float64)


def _upper_cut(ood: np.ndarray, m: int) -> float | None:
    """A cut escalating (ood > cut) the `m` highest of `ood` (sorted descending), fewer when scores tie at the
    cut (as escalation_threshold); None for m = 0."""
    if m <= 0:
        return None
    below = ood[m] if m < len(ood) else ood[-1] - 1.0
    return float((ood[m - 1] + below) / 2) if ood[m - 1] > below else float(ood[m - 1])


def joint_escalation(
    scores: np.ndarray,
    ood: np.ndarray,
    correct: np.ndarray,
    target_escalation: float | None = None,
    target_accuracy: float | None = None,
    grid: int = 21,
) -> tuple[float | None, float | None]:
    """(min_confidence, max_ood): escalate when the top probability is below the first OR the out-of-scope
    score above the second. For a target escalation share R: the split of R between the two signals (on a
    grid of `grid` shares) that keeps the most accurate answers; for a target kept accuracy A: the pair that
    reaches A escalating least (probability cuts at quantiles up to the median, the ood cut exact for each).
    (1.0, None) (escalate everything) when no pair reaches A."""
    scores, ood = np.asarray(scores, dtype=np.float64), np.asarray(ood, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    best = None  # (key, min_confidence, max_ood)
    if target_escalation is not None:
        wanted = int(round(target_escalation * n))
        cuts = [escalation_threshold(scores, share * wanted / n) for share in np.linspace(0.0, 1.0, grid)]
    else:
        cuts = [0.0, *np.unique(np.quantile(scores, np.linspace(0.0, 0.5, 101)))]
    for cut in cuts:
        by_confidence = scores < cut
        rest = np.flatnonzero(~by_confidence)
        order = rest[np.argsort(-ood[rest], kind="stable")]
        ranked = ood[order]
        if target_escalation is not None:
            m = max(0, wanted - int(by_confidence.sum()))
        else:
            # escalating the first m of `order` keeps order[m:]; m = 0, or a cut between two different scores
            kept_right = correct[order][::-1].cumsum()[::-1]
            kept = len(order) - np.arange(len(order))
            cuttable = np.concatenate([[True], ranked[1:] < ranked[:-1]])[: len(order)]
            reaching = np.flatnonzero(cuttable & (kept_right / np.maximum(kept, 1) >= target_accuracy - 1e-12))
            if reaching.size == 0:
                continue
            m = int(reaching[0])
        ood_cut = _upper_cut(ranked, m)
        escalated = by_confidence | (ood > ood_cut if ood_cut is not None else False)
        kept_accuracy = float(correct[~escalated].mean()) if (~escalated).any() else 0.0
        if target_escalation is not None:
            key = (-kept_accuracy, int(escalated.sum()))
        else:
            key = (int(escalated.sum()), -kept_accuracy)
        if best is None or key < best[0]:
            best = (key, float(cut) if cut > 0 else None, ood_cut)
    if best is None:
        return 1.0, None
    return best[1], best[2]


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
    ood: np.ndarray | None = None,
    reject_signal: str = "confidence",
) -> Calibration:
    """Fit T, the reject threshold(s) and routing thresholds for one target (escalation share or kept accuracy).

    signal "confidence": the cut is routing.min_confidence on the top probability; "entropy": the cut is
    routing.max_entropy on the normalised entropy (fitted as 1 - entropy, so the same code finds both cuts;
    no per-class thresholds); "ood": routing.max_ood on the out-of-scope score `ood` (fitted as 1 - ood);
    "confidence+ood": both cuts together (joint_escalation). reject_signal "confidence": reject_threshold on
    the top probability; "ood": ood_reject_threshold on `ood`; "both": joint_reject_thresholds."""
    if (target_escalation is None) == (target_accuracy is None):
        raise InputError("give exactly one target: an escalation rate or a kept accuracy")
    if signal not in SIGNALS:
        raise InputError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    if reject_signal not in REJECT_SIGNALS:
        raise InputError(f"reject signal must be one of {', '.join(REJECT_SIGNALS)}, got {reject_signal!r}")
    if ood is None and ("ood" in signal or (fit_reject and reject_signal != "confidence")):
        raise InputError(
            "the bundle has no out-of-scope score (postprocess.ood and a `pooled` output): "
            "rebuild it with this toolchain, or use the confidence signal"
        )
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(gold) - set(index))
    if unknown:
        raise InputError(f"gold label(s) not in the bundle's labels: {', '.join(unknown[:5])}")
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.array([index[g] for g in gold])
    _check(logits, targets)
    if ood is not None:
        ood = np.asarray(ood, dtype=np.float64)
        if ood.shape != (len(targets),) or not np.isfinite(ood).all():
            raise InputError("calibration needs one finite out-of-scope score per example")
    before = softmax(logits, current_temperature)
    temperature = fit_temperature(logits, targets)
    probs = softmax(logits, temperature)
    argmax, scores = probs.argmax(axis=1), probs.max(axis=1)
    oos_index = index.get(oos_label) if oos_label else None
    reject, ood_reject = None, None
    if fit_reject and oos_index is not None:
        if reject_signal == "confidence":
            reject = reject_threshold(probs, targets, oos_index, max_in_scope_drop)
        elif reject_signal == "ood":
            ood_reject = ood_reject_threshold(ood, argmax, targets, oos_index, max_in_scope_drop)
        else:
            reject, ood_reject = joint_reject_thresholds(scores, ood, argmax, targets, oos_index, max_in_scope_drop)
    rejected = np.zeros(len(targets), dtype=bool)
    if reject is not None:
        rejected |= scores < reject
    if ood_reject is not None:
        rejected |= ood > ood_reject
    predicted = np.where(rejected, oos_index, argmax) if oos_index is not None else argmax
    correct = predicted == targets
    per_class: dict[str, float] = {}
    min_confidence = max_entropy = max_ood = None
    if signal == "confidence+ood":
        min_confidence, max_ood = joint_escalation(scores, ood, correct, target_escalation, target_accuracy)
        escalated = (scores < min_confidence) if min_confidence is not None else np.zeros(len(scores), dtype=bool)
        if max_ood is not None:
            escalated |= ood > max_ood
        curve_rows = []  # two cuts: no single score to rank by
    else:
        routed = {
            "confidence": lambda: scores,
            "entropy": lambda: 1.0 - normalised_entropy(logits, temperature),
            "ood": lambda: 1.0 - ood,
        }[signal]()
        if target_escalation is not None:
            threshold = escalation_threshold(routed, target_escalation)
        else:
            threshold = accuracy_threshold(routed, correct, target_accuracy)
            if per_class_min > 0 and signal == "confidence":
                per_class = per_class_thresholds(scores, correct, argmax, labels, target_accuracy, per_class_min)
        limits = np.array([per_class.get(labels[i], threshold) for i in argmax])
        escalated = routed < limits
        curve_rows = risk_coverage(routed, correct)
        if signal == "confidence":
            min_confidence = round(threshold, 6)
        elif signal == "entropy":
            max_entropy = round(1.0 - threshold, 6)
        else:
            # not rounded: high scores crowd near 1, and 6 decimals could move the cut past one of them
            max_ood = 1.0 - threshold
    return Calibration(
        temperature=temperature,
        nll_before=nll(logits, targets, current_temperature),
        nll_after=nll(logits, targets, temperature),
        ece_before=ece(before.max(axis=1), before.argmax(axis=1) == targets),
        ece_after=ece(scores, argmax == targets),
        reject_threshold=reject,
        reject_label=oos_label if (reject is not None or ood_reject is not None) else None,
        min_confidence=min_confidence,
        per_class=per_class,
        target={"escalation": target_escalation} if target_escalation is not None else {"accuracy": target_accuracy},
        expected_escalation_rate=float(escalated.mean()),
        kept_accuracy=float(correct[~escalated].mean()) if (~escalated).any() else None,
        accuracy=float(correct.mean()),
        risk_coverage=curve_rows,
        n=len(targets),
        signal=signal,
        max_entropy=max_entropy,
        max_ood=max_ood,
        reject_signal=reject_signal,
        ood_reject_threshold=ood_reject,
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
    if isinstance(post.get("ood"), dict):
        post["ood"] = {**post["ood"], "reject_threshold": result.ood_reject_threshold}
    routing = manifest.setdefault("routing", {})
    routing.update(
        min_confidence=result.min_confidence,
        min_margin=None,
        max_entropy=result.max_entropy,
        max_ood=result.max_ood,
        per_class=dict(result.per_class),
    )
    summary = {k: v for k, v in result.to_dict().items() if k != "risk_coverage"}
    summary["calibrated_from"] = f"{raw['name']}@{raw['version']}"
    manifest.setdefault("metrics", {})["calibration"] = summary
    return manifest
