"""Calibration: temperature scaling on a real small bundle's val logits, thresholds that hit their targets,
and the new signed bundle version that the router and postprocess read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import edge_runtime
from edge_runtime import calibration
from edge_runtime.cli.calibrate import calibrate as calibrate_command
from edge_runtime.datasets import read_jsonl
from edge_runtime.errors import InputError
from edge_runtime.router import Router, RoutingPolicy
from edge_runtime.store import Store


@pytest.fixture(scope="module")
def val_file(small_val_rows, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("val") / "val.jsonl"
    path.write_text("\n".join(small_val_rows) + "\n")
    return path


@pytest.fixture(scope="module")
def model(small_bundle, bundle_home):
    return edge_runtime.load(small_bundle, root=bundle_home)


@pytest.fixture(scope="module")
def val(val_file):
    split = read_jsonl(val_file)
    return split.texts, split.labels


def run(*args, home: Path):
    result = CliRunner().invoke(calibrate_command, [str(a) for a in args], env={"EDGE_RUNTIME_HOME": str(home)})
    return result


@pytest.mark.kernels
def test_temperature_scaling_lowers_nll_and_ece_on_real_logits(model, val):
    texts, gold = val
    result = calibration.calibrate(model.logits(texts), gold, model.labels, target_escalation=0.1)
    assert result.temperature != 1.0
    assert result.nll_after < result.nll_before
    assert result.ece_after < result.ece_before


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(4000, 8))
    probs = calibration.softmax(logits, 2.5)
    targets = np.array([rng.choice(8, p=row) for row in probs])
    assert calibration.fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.1)


def test_ece_is_zero_for_perfect_calibration_and_large_for_overconfidence():
    scores = np.repeat([0.25, 0.75], 400)
    correct = np.concatenate([np.arange(400) < 100, np.arange(400) < 300])
    assert calibration.ece(scores, correct) == pytest.approx(0.0, abs=1e-12)
    assert calibration.ece(np.full(100, 0.99), np.arange(100) < 50) == pytest.approx(0.49)


@pytest.mark.kernels
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.3])
def test_escalation_threshold_hits_the_target_within_one_example(model, val, rate):
    texts, _ = val
    scores = np.array([p.score for p in model.predict(texts)])
    threshold = calibration.escalation_threshold(scores, rate)
    assert abs(int((scores < threshold).sum()) - rate * len(scores)) <= 1


def test_accuracy_threshold_keeps_answers_at_the_target():
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=500)
    correct = rng.uniform(size=500) < scores  # higher score, more often right
    threshold = calibration.accuracy_threshold(scores, correct, 0.9)
    kept = scores >= threshold
    assert correct[kept].mean() >= 0.9
    lower = np.sort(scores[~kept])[-1]  # one more kept answer would miss the target
    assert correct[scores >= lower].mean() < 0.9 or lower == threshold
    assert calibration.accuracy_threshold(scores, np.zeros(500, bool), 0.5) == 1.0


def test_risk_coverage_is_monotone_for_a_ranked_score():
    scores = np.linspace(1, 0, 100)
    correct = np.arange(100) < 80  # the 80 most confident are right
    rows = {round(r["coverage"], 2): r for r in calibration.risk_coverage(scores, correct)}
    assert rows[0.8]["kept_accuracy"] == 1.0 and rows[1.0]["kept_accuracy"] == pytest.approx(0.8)


def test_reject_threshold_raises_oos_recall_within_the_in_scope_budget():
    rng = np.random.default_rng(2)
    n_in, n_oos, classes = 400, 100, 5
    probs = np.full((n_in + n_oos, classes), 0.02)
    targets = np.concatenate([rng.integers(1, classes, n_in), np.zeros(n_oos, int)])
    top = np.where(targets == 0, rng.integers(1, classes, n_in + n_oos), targets)
    probs[np.arange(len(top)), top] = np.where(
        targets == 0, rng.uniform(0.3, 0.6, len(top)), rng.uniform(0.5, 0.99, len(top))
    )
    threshold = calibration.reject_threshold(probs, targets, 0, max_in_scope_drop=0.01)
    assert threshold is not None
    predicted = np.where(probs.max(axis=1) < threshold, 0, probs.argmax(axis=1))
    assert (predicted[targets == 0] == 0).mean() > 0.5
    assert (predicted[targets != 0] == targets[targets != 0]).mean() >= 0.99


@pytest.mark.kernels
def test_calibrate_refuses_unknown_labels_and_two_targets(model, val):
    texts, gold = val
    logits = model.logits(texts[:5])
    with pytest.raises(InputError, match="not in the bundle's labels"):
        calibration.calibrate(logits, ["no_such_intent"] * 5, model.labels, target_escalation=0.1)
    with pytest.raises(InputError, match="exactly one target"):
        calibration.calibrate(logits, gold[:5], model.labels, target_escalation=0.1, target_accuracy=0.9)


@pytest.mark.kernels
def test_cli_writes_a_signed_version_the_router_and_postprocess_read_back(
    small_bundle, bundle_home, build_key, val, val_file, tmp_path
):
    out = tmp_path / "calibrated"
    plot = tmp_path / "rc.png"
    result = run(
        "--bundle",
        small_bundle,
        "--data",
        val_file,
        "--target-escalation",
        "0.1",
        "--key",
        build_key,
        "--out",
        out,
        "--plot",
        plot,
        "--json",
        home=bundle_home,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["new_version"] == "clinc-small@0.1.1" and report["nll_after"] < report["nll_before"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = Store(bundle_home).verify(out)  # signed by a trusted key, hashes match
    assert (manifest.version, manifest.release) == ("0.1.1", 2)
    new = edge_runtime.load(out, root=bundle_home)
    assert new.classification.temperature == pytest.approx(report["temperature"]) != 1.0
    texts, _ = val
    logits = new.logits(texts)
    expected = calibration.softmax(logits, report["temperature"]).max(axis=1)
    predictions = new.predict(texts)
    np.testing.assert_allclose([p.score for p in predictions], expected, atol=1e-5)
    old_scores = [p.score for p in edge_runtime.load(small_bundle, root=bundle_home).predict(texts)]
    assert not np.allclose(old_scores, expected, atol=1e-3)

    policy = RoutingPolicy.from_dict(new.manifest.raw["routing"])
    assert policy.min_confidence == pytest.approx(report["min_confidence"])
    assert policy.min_margin is None and policy.max_entropy is None
    routed = Router(policy).route_all(predictions)
    escalated = sum(p.decision == "escalate" for p in routed)
    assert abs(escalated - 0.1 * len(texts)) <= 1
    assert report["expected_escalation_rate"] == pytest.approx(escalated / len(texts))


@pytest.mark.kernels
def test_cli_accuracy_target_keeps_that_accuracy_on_its_data(
    small_bundle, bundle_home, build_key, val, val_file, tmp_path
):
    out = tmp_path / "calibrated"
    result = run(
        "--bundle",
        small_bundle,
        "--data",
        val_file,
        "--target-accuracy",
        "0.995",
        "--key",
        build_key,
        "--out",
        out,
        "--per-class-min",
        "20",
        "--json",
        home=bundle_home,
    )
    assert result.exit_code == 0, result.output
    new = edge_runtime.load(out, root=bundle_home)
    texts, gold = val
    routed = Router(RoutingPolicy.from_dict(new.manifest.raw["routing"])).route_all(new.predict(texts))
    kept = [(p.label, g) for p, g in zip(routed, gold) if p.decision == "local"]
    assert kept and sum(label == g for label, g in kept) / len(kept) >= 0.995
    assert new.manifest.raw["routing"]["per_class"]  # 20+ predictions per intent here


@pytest.mark.kernels
def test_cli_install_puts_the_new_version_in_the_store(home, val_file):
    from edge_runtime import signing

    key = home / "keys" / "signing" / "local.key"
    signing.save_private_key(key, private := signing.generate_keypair()[0])
    signing.trust_key(home, private.public_key())
    result = run("--data", val_file, "--target-escalation", "0.2", "--install", home=home)
    assert result.exit_code == 0, result.output
    assert [m.version for m in Store(home).versions("clinc-small")] == ["0.1.0", "0.1.1"]
    assert Store(home).active() == ("clinc-small", "0.1.0")  # installed, not activated


def test_cli_usage_errors(small_bundle, bundle_home, val_file):
    both = run(
        "--bundle",
        small_bundle,
        "--data",
        val_file,
        "--target-escalation",
        "0.1",
        "--target-accuracy",
        "0.9",
        home=bundle_home,
    )
    assert both.exit_code == 2 and "exactly one" in both.output
    assert (
        run("--bundle", small_bundle, "--data", val_file, "--target-escalation", "1.5", home=bundle_home).exit_code == 2
    )


# ---------------------------------------------------------------- the out-of-scope score


def _brute_force_best_recall(score, argmax, targets, oos, budget_share):
    """The most OOS caught by any cut `score > t` (or none) losing at most budget_share of the right in-scope
    answers: every cut tried."""
    in_scope = targets != oos
    right = in_scope & (argmax == targets)
    allowed = int(np.floor(budget_share * in_scope.sum() + 1e-9))
    best = int(((argmax == oos) & ~in_scope).sum())
    for t in np.unique(score):
        rejected = score >= t
        if (right & rejected).sum() <= allowed:
            best = max(best, int((((argmax == oos) | rejected) & ~in_scope).sum()))
    return best


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(2, 40), budget=st.sampled_from([0.0, 0.05, 0.2, 0.5]))
def test_ood_reject_threshold_is_the_best_cut_within_the_budget(data, n, budget):
    targets = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    argmax = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    score = np.array(data.draw(st.lists(st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9, 0.95]), min_size=n, max_size=n)))
    cut = calibration.ood_reject_threshold(score, argmax, targets, 0, budget)
    if not (targets == 0).any() or not (targets != 0).any():
        assert cut is None
        return
    best = _brute_force_best_recall(score, argmax, targets, 0, budget)
    baseline = int(((argmax == 0) & (targets == 0)).sum())
    if cut is None:
        assert best == baseline  # no cut helps
        return
    predicted = np.where(score > cut, 0, argmax)
    in_scope = targets != 0
    lost = int(((argmax == targets) & in_scope & (predicted != targets)).sum())
    assert lost <= np.floor(budget * in_scope.sum() + 1e-9)
    assert int((predicted[~in_scope] == 0).sum()) == best > baseline


def test_joint_reject_is_within_budget_and_catches_at_least_what_the_ood_cut_alone_does():
    rng = np.random.default_rng(5)
    n_in, n_oos = 600, 120
    targets = np.concatenate([rng.integers(1, 6, n_in), np.zeros(n_oos, int)])
    argmax = np.where(
        (targets == 0) | (rng.uniform(size=len(targets)) < 0.05), rng.integers(1, 6, len(targets)), targets
    )
    # each signal sees part of the OOS texts: the far ones (ood) and the unsure ones (confidence)
    ood = np.where(targets == 0, rng.uniform(0.3, 1.0, len(targets)), rng.uniform(0.0, 0.7, len(targets)))
    confidence = np.where(targets == 0, rng.uniform(0.2, 0.9, len(targets)), rng.uniform(0.5, 1.0, len(targets)))
    wrong = argmax != targets
    confidence[wrong] = rng.uniform(0.2, 0.6, wrong.sum())
    budget = 0.01
    low, high = calibration.joint_reject_thresholds(confidence, ood, argmax, targets, 0, budget)
    alone = calibration.ood_reject_threshold(ood, argmax, targets, 0, budget)
    rejected = (confidence < low if low is not None else False) | (ood > high if high is not None else False)
    predicted = np.where(rejected, 0, argmax)
    in_scope = targets != 0
    right = (argmax == targets) & in_scope
    assert (right & (predicted != targets)).sum() <= budget * in_scope.sum()
    caught = (predicted[~in_scope] == 0).mean()
    caught_alone = (np.where(ood > alone, 0, argmax)[~in_scope] == 0).mean()
    assert caught >= caught_alone and low is not None  # here the confidence cut adds OOS texts the ood cut misses


@pytest.fixture(scope="module")
def signals(model, val):
    texts, gold = val
    logits, ood = model.logits_and_ood(texts)
    assert ood is not None  # the toolchain now ships the score with every classifier
    return logits, ood, gold


@pytest.mark.kernels
@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_routing_on_ood_alone_or_with_confidence_hits_the_escalation_target(model, signals, rate):
    logits, ood, gold = signals
    alone = calibration.calibrate(logits, gold, model.labels, target_escalation=rate, signal="ood", ood=ood)
    assert alone.max_ood is not None and 0 <= alone.max_ood <= 1 and alone.min_confidence is None
    assert abs((ood > alone.max_ood).sum() - rate * len(gold)) <= 1
    both = calibration.calibrate(logits, gold, model.labels, target_escalation=rate, signal="confidence+ood", ood=ood)
    assert abs(both.expected_escalation_rate * len(gold) - rate * len(gold)) <= 1
    confidence = calibration.calibrate(logits, gold, model.labels, target_escalation=rate, ood=ood)
    # the search includes "all by confidence": on its own data it never keeps worse answers than that
    assert both.kept_accuracy >= confidence.kept_accuracy


@pytest.mark.kernels
def test_an_accuracy_target_on_both_signals_keeps_that_accuracy(model, signals):
    logits, ood, gold = signals
    result = calibration.calibrate(
        logits, gold, model.labels, target_accuracy=0.99, signal="confidence+ood", ood=ood, reject_signal="ood"
    )
    assert result.kept_accuracy >= 0.99 and result.expected_escalation_rate < 1


@pytest.mark.kernels
def test_the_ood_signals_need_a_bundle_that_ships_the_score(model, signals):
    logits, _, gold = signals
    for kwargs in ({"signal": "ood"}, {"signal": "confidence+ood"}, {"reject_signal": "both"}):
        with pytest.raises(InputError, match="no out-of-scope score"):
            calibration.calibrate(logits, gold, model.labels, target_escalation=0.1, **kwargs)
    with pytest.raises(InputError, match="reject signal"):
        calibration.calibrate(logits, gold, model.labels, target_escalation=0.1, reject_signal="entropy")


@pytest.mark.kernels
def test_cli_fits_max_ood_and_the_ood_reject_that_the_router_and_postprocess_read_back(
    small_bundle, bundle_home, build_key, val, val_file, tmp_path
):
    out = tmp_path / "calibrated"
    result = run(
        "--bundle",
        small_bundle,
        "--data",
        val_file,
        "--target-escalation",
        "0.15",
        "--signal",
        "ood",
        "--reject-signal",
        "ood",
        "--key",
        build_key,
        "--out",
        out,
        "--json",
        home=bundle_home,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    new = edge_runtime.load(out, root=bundle_home)
    raw = new.manifest.raw
    assert raw["routing"]["max_ood"] == pytest.approx(report["max_ood"]) and raw["routing"]["min_confidence"] is None
    cut = raw["postprocess"]["ood"]["reject_threshold"]
    assert cut == pytest.approx(report["ood_reject_threshold"]) and raw["postprocess"]["reject_threshold"] is None
    assert raw["postprocess"]["ood"]["file"] == "ood.npz" and "ood.npz" in raw["files"]  # still listed and signed
    texts, gold = val
    predictions = new.predict(texts)
    assert all((p.label == "oos") == (p.ood > cut or p.top_k[0][0] == "oos") for p in predictions)
    routed = Router(RoutingPolicy.from_dict(raw["routing"])).route_all(predictions)
    escalated = [p for p in routed if p.decision == "escalate"]
    assert all(p.reason.startswith("max_ood>") for p in escalated)
    assert abs(len(escalated) - 0.15 * len(texts)) <= 1
    # the fitted reject catches more of val's OOS texts than the bundle without it
    old = edge_runtime.load(small_bundle, root=bundle_home).predict(texts)
    recall = [sum(p.label == "oos" for p, g in zip(ps, gold) if g == "oos") for ps in (old, predictions)]
    assert recall[1] >= recall[0]


@pytest.mark.kernels
def test_cli_keeps_the_reject_signal_the_bundle_was_built_with(
    small_bundle, bundle_home, build_key, val_file, tmp_path
):
    from edge_runtime import signing
    from edge_runtime.bundle import next_version_manifest, write_new_version

    raw = Store(bundle_home).verify(small_bundle).raw
    manifest = next_version_manifest(raw)
    manifest["metrics"] = {**raw["metrics"], "reject_signal": "ood"}  # as `auto` writes it when ood wins
    built = write_new_version(small_bundle, manifest, tmp_path / "ood-built", signing.load_private_key(build_key))
    result = run("--bundle", built, "--data", val_file, "--target-escalation", "0.1", "--json", home=bundle_home)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["reject_signal"] == "ood"
    told = run(
        "--bundle",
        built,
        "--data",
        val_file,
        "--target-escalation",
        "0.1",
        "--reject-signal",
        "confidence",
        "--json",
        home=bundle_home,
    )
    assert json.loads(told.output)["reject_signal"] == "confidence"
    plain = run("--bundle", small_bundle, "--data", val_file, "--target-escalation", "0.1", "--json", home=bundle_home)
    assert json.loads(plain.output)["reject_signal"] == raw["metrics"]["reject_signal"]
