"""The build's reject cut for the out-of-scope label (edge_runtime/build/reject.py): each signal's fit, and `auto`
picking the signal that gets the most held-out answers right, on data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.build import reject
from edge_runtime.build.evaluate import predict

LABELS = ["oos", "a", "b", "c", "d"]


def dataset(seed: int, ood_sees_oos: bool, n_in: int = 800, n_oos: int = 120):
    """Logits and scores where one signal sees the OOS texts and the other is noise: `ood_sees_oos` decides."""
    rng = np.random.default_rng(seed)
    targets = np.concatenate([rng.integers(1, 5, n_in), np.zeros(n_oos, dtype=int)])
    guess = np.where(targets == 0, rng.integers(1, 5, len(targets)), targets)
    informative = np.where(targets == 0, rng.uniform(0.5, 1.0, len(targets)), rng.uniform(0.0, 0.6, len(targets)))
    noise = rng.uniform(0.0, 1.0, len(targets))
    ood = informative if ood_sees_oos else noise
    margin = 4.0 * (1.0 - (noise if ood_sees_oos else informative))  # a low margin = an unsure softmax
    logits = rng.normal(0.0, 0.1, (len(targets), len(LABELS)))
    logits[np.arange(len(targets)), guess] += margin
    logits[:, 0] -= 5.0  # the model never answers oos by itself
    return logits, ood, targets


@pytest.mark.parametrize("ood_sees_oos, expected", [(True, "ood"), (False, "confidence")])
def test_auto_picks_the_signal_that_sees_the_oos_texts(ood_sees_oos, expected):
    logits, ood, targets = dataset(1, ood_sees_oos)
    chosen, report = reject.choose(logits, ood, targets, LABELS, "oos", max_drop=1.0)
    assert set(report) == set(reject.SIGNALS)
    assert report[expected]["oos_recall"] > report[{"ood": "confidence", "confidence": "ood"}[expected]]["oos_recall"]
    assert chosen in (expected, "both")  # both contains the winner's cut, and may tie or edge it
    if chosen == "both":
        assert report["both"]["right"] > report[expected]["right"]  # ties go to the simpler signal


def test_auto_without_a_score_can_only_pick_confidence():
    logits, _, targets = dataset(2, False)
    chosen, report = reject.choose(logits, None, targets, LABELS, "oos", max_drop=1.0)
    assert chosen == "confidence" and list(report) == ["confidence"]


def test_held_out_counts_score_every_example_once_per_split():
    logits, ood, targets = dataset(3, True)
    counts = reject.held_out_counts("ood", logits, ood, targets, LABELS, "oos", 0.5, seeds=range(3))
    assert counts["in_scope"] == 3 * int((targets != 0).sum()) and counts["oos"] == 3 * int((targets == 0).sum())
    assert 0 <= counts["oos_caught"] <= counts["oos"] and 0 <= counts["in_scope_correct"] <= counts["in_scope"]


def test_each_fit_keeps_its_cut_within_the_budget_on_its_data():
    logits, ood, targets = dataset(4, True)
    argmax = logits.argmax(axis=1)
    base = (argmax == targets)[targets != 0].mean()
    for signal in reject.SIGNALS:
        cut, ood_cut = reject.fit(signal, logits, ood, targets, LABELS, "oos", max_drop=1.0)
        assert {"confidence": ood_cut is None, "ood": cut is None and ood_cut is not None, "both": True}[signal]
        predicted = predict(logits, LABELS, "oos", cut, ood, ood_cut)
        assert base - (predicted == targets)[targets != 0].mean() <= 0.01 + 1e-12
    with pytest.raises(ValueError, match="needs the out-of-scope score"):
        reject.fit("ood", logits, None, targets, LABELS, "oos", 1.0)


def test_halves_split_every_label_evenly():
    labels = ["a"] * 7 + ["b"] * 4 + ["c"]
    fold = reject.halves(labels, seed=5)
    for label in "abc":
        members = fold[np.asarray(labels) == label]
        assert abs(int(members.sum()) - (len(members) - int(members.sum()))) <= 1
    assert np.array_equal(fold, reject.halves(labels, seed=5))  # the same split for the same seed
