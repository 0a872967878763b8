"""Combined upstream answers: the upstream model's probabilities pooled with the device's top-k.

Every escalation request carries the device's top-k (label, probability) (escalation.py). An upstream
bundle whose manifest has a `postprocess.combine` section answers an escalated request with

    d(l) = device probability of l when l is in the top-k, else max((1 - sum top-k) / (C - k), 1e-6)
    u    = softmax(upstream logits / temperature)
    s(l) = W * log d(l) + (1 - W) * log u(l) + B * [l == oos_label]       (log x is log(x + 1e-12))
    q    = softmax(s) over the upstream's C labels
    answer = oos_label if max q < R else argmax q;  score = max q

W = device_weight, B = oos_bias, R = reject_threshold. `fit_combination` fits them on labelled data for
one device (its temperature and routing fixed): the upstream temperature by NLL on all examples, W on a
0.05 grid by NLL of q on the escalated examples, then B (grid) and R (every cut between two observed max q)
together, minimising the larger share of the two error budgets of the final answers (device answers for the
kept examples, combined answers for the escalated ones): in-scope errors / 2.5% and OOS misses / 20%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .bundle import next_version_manifest
from .calibration import fit_temperature, softmax
from .errors import InputError

FLOOR = 1e-6  # the least probability the device's residual mass gives a label outside its top-k
EPS = 1e-12  # log floor
WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))
BIASES = tuple(0.5 * i for i in range(-2, 9))  # -1.0 .. 4.0
BUDGETS = (0.025, 0.20)  # in-scope error, OOS miss


@dataclass
class Combination:
    device_weight: float  # W
    oos_bias: float  # B, added to the combined log-score of oos_label
    reject_threshold: float  # R: below this combined max probability the answer is oos_label
    temperature: float = 1.0  # the upstream's temperature inside the combination
    oos_label: str | None = "oos"
    device: str | None = None  # name@version of the device it was fitted for (information only)

    @classmethod
    def from_manifest(cls, raw: dict) -> Combination | None:
        """The manifest's postprocess.combine section (a whole manifest or the section itself), or None."""
        section = raw.get("postprocess", {}).get("combine") if "postprocess" in raw else raw
        if not section:
            return None
        try:
            result = cls(
                device_weight=float(section["device_weight"]),
                oos_bias=float(section.get("oos_bias", 0.0)),
                reject_threshold=float(section.get("reject_threshold", 0.0)),
                temperature=float(section.get("temperature", 1.0)),
                oos_label=section.get("oos_label", "oos") or None,
                device=section.get("device"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"postprocess.combine is malformed: {error}") from None
        if not 0.0 <= result.device_weight <= 1.0 or result.temperature <= 0:
            raise InputError("postprocess.combine needs 0 <= device_weight <= 1 and temperature > 0")
        return result

    def to_dict(self) -> dict:
        return asdict(self)


def combine(
    combination: Combination, top_k: Sequence, logits_row: Sequence[float], labels: Sequence[str]
) -> tuple[str, float]:
    """One escalated request: the device's top-k [(label, p)] or [{"label", "score"}] and one row of upstream
    logits (in `labels` order) -> (label, score). The one-row case of combine_many()."""
    answers, scores = combine_many(combination, [top_k], np.asarray(logits_row, dtype=np.float64)[None, :], labels)
    return answers[0], float(scores[0])


def device_matrix(top_ks: Sequence[Sequence], labels: Sequence[str]) -> np.ndarray:
    """(N, C) device distributions as the upstream sees them: top-k probabilities, the residual spread evenly."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.empty((len(top_ks), len(labels)))
    for row, top_k in enumerate(top_ks):
        pairs = [(item["label"], item["score"]) if isinstance(item, dict) else item for item in top_k]
        known = {index[label]: float(score) for label, score in pairs if label in index}
        free = len(labels) - len(known)
        out[row] = max((1.0 - sum(known.values())) / free, FLOOR) if free else FLOOR
        out[row, list(known)] = list(known.values())
    return out


def combined_probs(
    combination: Combination,
    device: np.ndarray,
    logits: np.ndarray,
    labels: Sequence[str],
    temperature: float | None = None,
) -> np.ndarray:
    """q for many rows: `device` from device_matrix, `logits` (N, C) from the upstream."""
    c = combination
    s = c.device_weight * np.log(device + EPS) + (1 - c.device_weight) * np.log(
        softmax(logits, temperature or c.temperature) + EPS
    )
    if c.oos_label in labels:
        s[:, list(labels).index(c.oos_label)] += c.oos_bias
    return softmax(s)


def combine_many(
    combination: Combination, top_ks: Sequence[Sequence], logits: np.ndarray, labels: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """The vectorised combine(): (labels, scores) for many requests."""
    q = combined_probs(combination, device_matrix(top_ks, labels), logits, labels)
    best, score = q.argmax(axis=1), q.max(axis=1)
    reject = combination.oos_label in labels
    answers = [
        combination.oos_label if reject and s < combination.reject_threshold else labels[int(b)]
        for b, s in zip(best, score)
    ]
    return answers, score


@dataclass
class CombinationFit:
    combination: Combination
    n: int
    escalated: int
    nll_escalated: float  # NLL of q on the escalated examples (gold in the upstream's labels)
    in_scope_accuracy: float  # of the final answers on the fitting data (optimistic)
    oos_recall: float | None
    escalated_accuracy: float
    grid: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "combination": self.combination.to_dict()}


def _budget_key(final: np.ndarray, targets: np.ndarray, oos: int | None, budgets) -> tuple:
    in_scope = targets != oos
    errors = 1.0 - float((final[in_scope] == targets[in_scope]).mean()) if in_scope.any() else 0.0
    misses = 1.0 - float((final[~in_scope] == oos).mean()) if (~in_scope).any() else 0.0
    shares = (errors / budgets[0], misses / budgets[1])
    return max(shares), sum(shares)


def fit_combination(
    top_ks: Sequence[Sequence],
    escalated: Sequence[bool],
    device_labels: Sequence[str],
    logits: np.ndarray,
    labels: Sequence[str],
    gold: Sequence[str],
    *,
    oos_label: str | None = "oos",
    weights=WEIGHTS,
    biases=BIASES,
    budgets=BUDGETS,
    device: str | None = None,
) -> CombinationFit:
    """Fit T, W, B, R (see the module docstring) from every example's device top-k, routing decision and
    answer, the upstream's logits and the gold labels."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(gold) - set(index))
    if unknown:
        raise InputError(f"gold label(s) not in the upstream's labels: {', '.join(unknown[:5])}")
    targets = np.array([index[g] for g in gold])
    escalated = np.asarray(escalated, dtype=bool)
    if not escalated.any():
        raise InputError("the device escalates none of these examples: nothing to fit")
    oos = index.get(oos_label) if oos_label else None
    temperature = fit_temperature(np.asarray(logits, dtype=np.float64), targets)
    rows = np.nonzero(escalated)[0]
    device_probs, up_logits, gold_rows = device_matrix([top_ks[i] for i in rows], labels), logits[rows], targets[rows]

    def q_for(w, b):
        return combined_probs(Combination(w, b, 0.0, temperature, oos_label), device_probs, up_logits, labels)

    def nll(q):
        return float(-np.mean(np.log(q[np.arange(len(rows)), gold_rows] + EPS)))

    nlls = {w: nll(q_for(w, 0.0)) for w in weights}
    weight = min(nlls, key=nlls.get)
    base = np.array([index.get(label, -1) for label in device_labels])  # the kept answers, fixed
    best = None
    for bias in biases if oos is not None else (0.0,):
        q = q_for(weight, bias)
        top, argmax = q.max(axis=1), q.argmax(axis=1)
        cuts = np.unique(top)
        for r in np.concatenate([[0.0], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-9]]) if oos is not None else [0.0]:
            final = base.copy()
            final[rows] = np.where(top < r, oos, argmax) if r > 0 else argmax
            key = _budget_key(final, targets, oos, budgets)
            if best is None or key < best[0]:
                best = (key, bias, float(r), final)
    _, bias, reject, final = best
    combination = Combination(weight, bias, round(reject, 6), temperature, oos_label, device)
    in_scope = targets != oos
    return CombinationFit(
        combination=combination,
        n=len(targets),
        escalated=len(rows),
        nll_escalated=nll(q_for(weight, bias)),
        in_scope_accuracy=float((final[in_scope] == targets[in_scope]).mean()),
        oos_recall=float((final[~in_scope] == oos).mean()) if (~in_scope).any() else None,
        escalated_accuracy=float((final[rows] == targets[rows]).mean()),
        grid={
            "weights_nll": {str(w): round(v, 5) for w, v in nlls.items()},
            "biases": list(biases),
            "budgets": list(budgets),
        },
    )


def combined_manifest(raw: dict, fit: CombinationFit) -> dict:
    """A copy of the upstream's manifest for its next version, with postprocess.combine and metrics.combination."""
    manifest = next_version_manifest(raw)
    manifest.setdefault("postprocess", {})["combine"] = fit.combination.to_dict()
    summary = {k: v for k, v in fit.to_dict().items() if k not in ("combination", "grid")}
    summary["combined_from"] = f"{raw['name']}@{raw['version']}"
    manifest.setdefault("metrics", {})["combination"] = summary
    return manifest
