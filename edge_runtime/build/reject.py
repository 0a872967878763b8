"""The reject cut(s) for the out-of-scope label, fitted on validation data: on the top probability, on the
out-of-scope score (edge_runtime/ood.py), or on both (either one rejects), each by the build's rule (the best OOS
recall costing at most `max_drop` points of in-scope accuracy).

Which signal is best depends on the model: on the fine-tuned default bundle the score catches ~7 more of
CLINC150 val's 100 OOS texts than the top probability at the same in-scope cost, on the logistic-regression head
over frozen features ~16 fewer (benchmarks/crossfit.py, ten half splits). So `auto` measures instead of
assuming: each signal's cut is fitted on one half of val and scored on the other, both ways, over several
stratified half splits, and the signal with the most right answers on the held-out halves wins (ties: the
simpler one, in the order of SIGNALS). Its cut is then fitted on all of val.
"""

from __future__ import annotations

import numpy as np

from ..calibration import joint_reject_thresholds, ood_reject_threshold
from . import evaluate

SIGNALS = ("confidence", "ood", "both")
AUTO = "auto"
AUTO_SPLITS = 5  # half splits `auto` sums over: one split moves OOS recall by several points either way


def halves(labels: list[str], seed: int = 0) -> np.ndarray:
    """0 or 1 for each example: every label split as evenly as it can be between the two halves (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        members = np.flatnonzero(np.asarray(labels) == label)
        rng.shuffle(members)
        fold[members[1::2]] = 1
    return fold


def fit(
    signal: str,
    logits: np.ndarray,
    ood: np.ndarray | None,
    targets: np.ndarray,
    labels: list[str],
    oos_label: str,
    max_drop: float,
) -> tuple[float | None, float | None]:
    """(max-probability threshold, ood threshold) fitted on these rows; `max_drop` in points."""
    if signal == "confidence":  # the build's rule from before the score, unchanged
        return evaluate.fit_reject_threshold(logits, targets, labels, oos_label, max_drop), None
    if ood is None:
        raise ValueError(f"reject signal {signal!r} needs the out-of-scope score")
    argmax, oos_index = logits.argmax(axis=1), labels.index(oos_label)
    if signal == "ood":
        return None, ood_reject_threshold(ood, argmax, targets, oos_index, max_drop / 100)
    if signal == "both":
        top = evaluate.softmax(logits.astype(np.float64)).max(axis=1)
        return joint_reject_thresholds(top, ood, argmax, targets, oos_index, max_drop / 100)
    raise ValueError(f"unknown reject signal {signal!r} (one of {', '.join(SIGNALS)} or {AUTO})")


def held_out_counts(
    signal: str, logits, ood, targets, labels: list[str], oos_label: str, max_drop: float, seeds
) -> dict[str, int]:
    """Right in-scope answers and caught OOS texts on the held-out halves, summed over folds and splits."""
    oos_index = labels.index(oos_label)
    total = {"in_scope_correct": 0, "in_scope": 0, "oos_caught": 0, "oos": 0}
    names = [labels[t] for t in targets]
    for seed in seeds:
        fold = halves(names, seed)
        for fit_on in (0, 1):
            part, held = fold == fit_on, fold != fit_on
            cut, ood_cut = fit(
                signal, logits[part], None if ood is None else ood[part], targets[part], labels, oos_label, max_drop
            )
            predicted = evaluate.predict(
                logits[held], labels, oos_label, cut, None if ood is None else ood[held], ood_cut
            )
            oos = targets[held] == oos_index
            right = predicted == targets[held]
            total["in_scope_correct"] += int(right[~oos].sum())
            total["in_scope"] += int((~oos).sum())
            total["oos_caught"] += int(right[oos].sum())
            total["oos"] += int(oos.sum())
    return total


def choose(
    logits, ood, targets, labels: list[str], oos_label: str, max_drop: float, splits: int = AUTO_SPLITS
) -> tuple[str, dict]:
    """(the signal with the most right held-out answers, {signal: held-out figures in percent})."""
    candidates = SIGNALS if ood is not None else SIGNALS[:1]
    report = {}
    for signal in candidates:
        counts = held_out_counts(signal, logits, ood, targets, labels, oos_label, max_drop, range(splits))
        report[signal] = {
            "in_scope_accuracy": round(100 * counts["in_scope_correct"] / max(1, counts["in_scope"]), 2),
            "oos_recall": round(100 * counts["oos_caught"] / max(1, counts["oos"]), 2),
            "right": counts["in_scope_correct"] + counts["oos_caught"],
        }
    best = max(candidates, key=lambda signal: (report[signal]["right"], -candidates.index(signal)))
    return best, report
