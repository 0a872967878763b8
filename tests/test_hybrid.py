"""`edge-runtime eval --upstream`: the device + upstream hybrid through the real CLI, on the small real bundle
(as both device and upstream: the mechanics and the arithmetic, not the accuracy)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import edge_runtime
from edge_runtime import escalation
from edge_runtime.combine import Combination, combine, combine_many
from edge_runtime.datasets import read_jsonl
from edge_runtime.router import Router, RoutingPolicy
from edge_runtime.store import Store

pytestmark = pytest.mark.kernels  # routing and the figures follow the classify kernel's probabilities

REPO = Path(__file__).resolve().parent.parent


SCANNER_ONLY = {"EDGE_RUNTIME_PRIVACY_TAGGER": ""}  # the small test store has no PII tagger


def cli(*args, home, env=SCANNER_ONLY):
    environment = {**os.environ, "EDGE_RUNTIME_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def val_file(small_val_rows, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hybrid") / "val.jsonl"
    path.write_text("\n".join(small_val_rows[::2]) + "\n")
    return path


@pytest.fixture(scope="module")
def report(bundle_home, val_file):
    done = cli(
        "eval",
        "--data",
        val_file,
        "--upstream",
        "clinc-small",
        "--device-cost",
        "0.00001",
        "--upstream-cost",
        "0.002",
        "--json",
        home=bundle_home,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_json_has_the_hybrid_keys(report):
    for key in (
        "in_scope_accuracy",
        "oos_recall",
        "accuracy",
        "escalation_rate",
        "kept_accuracy",
        "local_share",
        "escalated_accuracy",
        "upstream_bytes",
        "cost_per_1000",
        "device_only",
        "all_upstream",
    ):
        assert key in report, key
    for key in ("in_scope_accuracy", "oos_recall", "accuracy", "upstream_bytes", "cost_per_1000"):
        assert key in report["all_upstream"], key


def test_figures_match_an_independent_computation(report, bundle_home, val_file):
    val = read_jsonl(val_file)
    texts, gold = val.texts, val.labels
    model = edge_runtime.load(root=bundle_home)
    routed = Router(RoutingPolicy.from_dict(model.manifest.raw["routing"])).route_all(model.predict(texts))
    escalated = [p.decision == "escalate" for p in routed]
    n, sent = len(gold), sum(escalated)
    assert 0 < sent < n  # the bundle's routing escalates some
    assert report["n"] == n and report["escalated"] == sent
    assert report["escalation_rate"] == pytest.approx(sent / n)
    assert report["local_share"] + report["escalation_rate"] == pytest.approx(1.0)
    kept = [p.label == g for p, g, e in zip(routed, gold, escalated) if not e]
    assert report["kept_accuracy"] == pytest.approx(sum(kept) / len(kept))
    # the upstream is the same bundle: the hybrid, the device and "all upstream" give the same answers
    assert report["accuracy"] == report["device_only"]["accuracy"] == report["all_upstream"]["accuracy"]
    in_scope = [p.label == g for p, g in zip(routed, gold) if g != "oos"]
    assert report["in_scope_accuracy"] == pytest.approx(sum(in_scope) / len(in_scope))
    # accuracy is the mix of the kept and the escalated answers
    mixed = (report["kept_accuracy"] * (n - sent) + report["escalated_accuracy"] * sent) / n
    assert report["accuracy"] == pytest.approx(mixed)


def test_costs_and_bytes_add_up(report, val_file):
    texts = read_jsonl(val_file).texts
    n, sent = report["n"], report["escalated"]
    assert report["cost_per_1000"] == pytest.approx(1000 * (0.00001 + report["escalation_rate"] * 0.002))
    assert report["all_upstream"]["cost_per_1000"] == pytest.approx(1000 * 0.002)
    assert report["cost_per_1000"] < report["all_upstream"]["cost_per_1000"]
    # every request carries its text plus the JSON envelope; escalations also the device's top-k
    assert report["all_upstream"]["upstream_bytes"] > sum(len(t.encode()) for t in texts) + 150 * n
    assert sent * 300 < report["upstream_bytes"] < report["all_upstream"]["upstream_bytes"]
    assert report["upstream_bytes_per_1000"] == pytest.approx(1000 * report["upstream_bytes"] / n)


def test_text_report_compares_the_three_setups(bundle_home, val_file):
    done = cli(
        "eval", "--data", val_file, "--upstream", "clinc-small", "--upstream-mode", "candidates", home=bundle_home
    )
    assert done.returncode == 0, done.stderr
    for words in (
        "device only",
        "hybrid",
        "all upstream",
        "cost /1000 requests",
        "bytes upstream /1000",
        "mode candidates",
    ):
        assert words in done.stdout


def test_bad_prices_and_unknown_upstream_fail_clearly(bundle_home, val_file):
    negative = cli("eval", "--data", val_file, "--upstream", "clinc-small", "--device-cost", "-1", home=bundle_home)
    assert negative.returncode == 2 and "--device-cost" in negative.stderr
    missing = cli("eval", "--data", val_file, "--upstream", "no-such-model", home=bundle_home)
    assert missing.returncode == 1 and "no-such-model" in missing.stderr


# --- the combined upstream mode (edge_runtime/combine.py) -----------------------------------------------------


@pytest.fixture(scope="module")
def fitted(bundle_home, val_file, build_key, tmp_path_factory):
    """`calibrate --bundle clinc-small --device clinc-small`: the small bundle, combined with itself."""
    out = tmp_path_factory.mktemp("combined") / "upstream"
    done = cli(
        "calibrate",
        "--bundle",
        "clinc-small",
        "--device",
        "clinc-small",
        "--data",
        val_file,
        "--key",
        build_key,
        "--out",
        out,
        "--threads",
        "1",
        "--json",
        home=bundle_home,
    )
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout)


def test_combine_follows_the_formula_on_a_hand_built_case():
    labels = ["a", "b", "c", "oos"]
    top_k = [("a", 0.7), ("b", 0.2)]  # c and oos share the rest: 0.05 each
    logits = [0.0, math.log(4.0), 0.0, 0.0]  # upstream (T=1): 1/7, 4/7, 1/7, 1/7
    device, upstream = [0.7, 0.2, 0.05, 0.05], [1 / 7, 4 / 7, 1 / 7, 1 / 7]

    def expected(w, b):
        s = [
            w * math.log(d) + (1 - w) * math.log(u) + (b if i == 3 else 0.0)
            for i, (d, u) in enumerate(zip(device, upstream))
        ]
        e = [math.exp(v) for v in s]
        return [v / sum(e) for v in e]

    assert combine(Combination(0.0, 0.0, 0.0), top_k, logits, labels) == ("b", pytest.approx(4 / 7))  # upstream
    assert combine(Combination(1.0, 0.0, 0.0), top_k, logits, labels) == ("a", pytest.approx(0.7))  # device
    q = expected(0.5, 0.0)  # sqrt(.7/7)=.316 vs sqrt(.2*4/7)=.338: b wins
    assert combine(Combination(0.5, 0.0, 0.0), top_k, logits, labels) == ("b", pytest.approx(q[1]))
    q = expected(0.7, 0.0)  # more device weight: a wins
    assert combine(Combination(0.7, 0.0, 0.0), top_k, logits, labels) == ("a", pytest.approx(q[0]))
    q = expected(0.5, 3.0)  # the oos bias makes oos the argmax
    assert combine(Combination(0.5, 3.0, 0.0), top_k, logits, labels) == ("oos", pytest.approx(q[3]))
    q = expected(0.5, 0.0)  # below the reject threshold: oos, score max q
    assert combine(Combination(0.5, 0.0, q[1] + 0.01), top_k, logits, labels) == ("oos", pytest.approx(q[1]))
    # the temperature divides the upstream logits: T=2 flattens 4/7 to 2/5
    assert combine(Combination(0.0, 0.0, 0.0, temperature=2.0), top_k, logits, labels)[1] == pytest.approx(2 / 5)
    # wire-format top-k (dicts) give the same answer
    wire = [{"label": label, "score": score} for label, score in top_k]
    assert combine(Combination(0.5, 1.0, 0.3), wire, logits, labels) == combine(
        Combination(0.5, 1.0, 0.3), top_k, logits, labels
    )


def reference_combine(combination: Combination, top_k, logits_row, labels) -> tuple[str, float, list[float]]:
    """combine() as edge_runtime/combine.py's docstring states it, one label at a time in plain floats:
    (answer, score, q). Independent of the module's numpy code, so the vectorised path is checked against it."""
    pairs = [(item["label"], item["score"]) if isinstance(item, dict) else tuple(item) for item in top_k]
    device = {label: float(p) for label, p in pairs}
    free = len(labels) - len(device)
    residual = max((1.0 - sum(device.values())) / free, 1e-6) if free else None
    d = [device.get(label, residual) for label in labels]
    z = [float(x) / combination.temperature for x in logits_row]
    e = [math.exp(v - max(z)) for v in z]
    u = [v / sum(e) for v in e]
    w, bias = combination.device_weight, combination.oos_bias
    s = [
        w * math.log(d_l + 1e-12) + (1 - w) * math.log(u_l + 1e-12) + (bias if label == combination.oos_label else 0.0)
        for label, d_l, u_l in zip(labels, d, u)
    ]
    e = [math.exp(v - max(s)) for v in s]
    q = [v / sum(e) for v in e]
    best = max(range(len(labels)), key=lambda i: q[i])
    rejected = combination.oos_label in labels and q[best] < combination.reject_threshold
    return (combination.oos_label if rejected else labels[best]), q[best], q


def unambiguous(combination: Combination, q: list[float]) -> bool:
    """No near-tie for the argmax and no max q on the reject threshold: float rounding cannot flip the answer."""
    first, second = sorted(q, reverse=True)[:2]
    return first - second > 1e-9 and abs(first - combination.reject_threshold) > 1e-9


@st.composite
def escalations(draw):
    """A label set (with or without oos), a combination, and 1-6 escalated requests: the device's top-k (k distinct
    labels, probabilities from one distribution, as tuples or wire-format dicts) and a row of upstream logits."""
    n_labels = draw(st.integers(2, 8))
    labels = [f"intent_{i}" for i in range(n_labels - 1)] + [draw(st.sampled_from(["oos", "other"]))]
    combination = Combination(
        device_weight=draw(st.floats(0.0, 1.0)),
        oos_bias=draw(st.floats(-2.0, 5.0)),
        reject_threshold=draw(st.floats(0.0, 1.0)),
        temperature=draw(st.floats(0.05, 5.0)),
        oos_label="oos",
    )
    requests = []
    for _ in range(draw(st.integers(1, 6))):
        weights = draw(st.lists(st.floats(0.0, 10.0), min_size=n_labels, max_size=n_labels))
        probs = [(x + 1e-3) / (sum(weights) + 1e-3 * n_labels) for x in weights]
        order = draw(st.permutations(range(n_labels)))[: draw(st.integers(1, n_labels))]
        wire = draw(st.booleans())
        top_k = [{"label": labels[i], "score": probs[i]} if wire else (labels[i], probs[i]) for i in order]
        logits = draw(st.lists(st.floats(-20.0, 20.0), min_size=n_labels, max_size=n_labels))
        requests.append((top_k, logits))
    return labels, combination, requests


@settings(max_examples=300, deadline=None)
@given(escalations())
def test_combine_and_combine_many_agree_with_a_scalar_reference(case):
    labels, combination, requests = case
    expected = [reference_combine(combination, top_k, logits, labels) for top_k, logits in requests]
    assume(all(unambiguous(combination, q) for _, _, q in expected))
    answers, scores = combine_many(
        combination, [top_k for top_k, _ in requests], np.array([logits for _, logits in requests]), labels
    )
    assert answers == [answer for answer, _, _ in expected]
    assert list(map(float, scores)) == pytest.approx([score for _, score, _ in expected], rel=1e-9, abs=1e-12)
    for (top_k, logits), (answer, score, _) in zip(requests, expected):
        assert combine(combination, top_k, logits, labels) == (answer, pytest.approx(score, rel=1e-9, abs=1e-12))


def test_combine_many_agrees_with_the_reference_on_the_real_model(bundle_home, val_file):
    """The same check on the small real bundle's top-5 and logits over the val subset."""
    texts = read_jsonl(val_file).texts
    model = edge_runtime.load("clinc-small", root=bundle_home, threads=1)
    predictions, logits = model.predict(texts), model.logits(texts)
    combination = Combination(0.4, 1.5, 0.45, temperature=0.8)
    labels, scores = combine_many(combination, [p.top_k for p in predictions], logits, model.labels)
    expected = [reference_combine(combination, p.top_k, row, model.labels) for p, row in zip(predictions, logits)]
    assert all(unambiguous(combination, q) for _, _, q in expected)
    assert labels == [answer for answer, _, _ in expected]
    assert list(map(float, scores)) == pytest.approx([score for _, score, _ in expected], rel=1e-9)
    assert "oos" in labels and len(set(labels)) > 3  # the reject and several labels are exercised


def test_fitting_writes_a_signed_upstream_version_with_the_section(fitted, bundle_home):
    out, report = fitted
    manifest = Store(bundle_home).verify(out)  # hashes and signature against the trusted key
    assert manifest.raw["version"] == "0.1.1" and report["new_version"] == "clinc-small@0.1.1"
    section = manifest.raw["postprocess"]["combine"]
    assert section == report["combination"]
    assert set(section) >= {"device_weight", "oos_bias", "reject_threshold", "temperature", "oos_label"}
    assert section["device"] == "clinc-small@0.1.0"
    assert 0 < report["escalated"] < report["n"]
    assert manifest.raw["metrics"]["combination"]["combined_from"] == "clinc-small@0.1.0"
    assert Combination.from_manifest(manifest.raw).device_weight == section["device_weight"]


def test_eval_combined_mode_end_to_end(fitted, bundle_home, val_file):
    out, _ = fitted
    done = cli(
        "eval",
        "--data",
        val_file,
        "--upstream",
        out,
        "--upstream-mode",
        "combined",
        "--threads",
        "1",
        "--json",
        home=bundle_home,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["upstream_mode"] == "combined" and report["upstream"] == "clinc-small@0.1.1"
    # independently: route on the device, combine the escalated ones with the fitted section
    val = read_jsonl(val_file)
    texts, gold = val.texts, val.labels
    device = edge_runtime.load("clinc-small", root=bundle_home, threads=1)
    upstream = edge_runtime.load(out, root=bundle_home, threads=1)
    routed = Router(RoutingPolicy.from_dict(device.manifest.raw["routing"])).route_all(device.predict(texts))
    combination = Combination.from_manifest(upstream.manifest.raw)
    final = [
        combine(combination, p.top_k, row, upstream.labels)[0] if p.decision == "escalate" else p.label
        for p, row in zip(routed, upstream.logits(texts))
    ]
    in_scope = [f == g for f, g in zip(final, gold) if g != "oos"]
    oos = [f == "oos" for f, g in zip(final, gold) if g == "oos"]
    assert report["in_scope_accuracy"] == pytest.approx(sum(in_scope) / len(in_scope))
    assert report["oos_recall"] == pytest.approx(sum(oos) / len(oos))
    assert report["escalated"] == sum(p.decision == "escalate" for p in routed)


def test_eval_combined_needs_the_section(bundle_home, val_file):
    done = cli("eval", "--data", val_file, "--upstream", "clinc-small", "--upstream-mode", "combined", home=bundle_home)
    assert done.returncode == 1 and "no postprocess.combine section" in done.stderr


def test_worker_responder_uses_the_device_top_k(fitted, bundle_home, build_key, tmp_path):
    from edge_runtime.worker import model_responder

    def bundle_responder(ref):
        return model_responder(edge_runtime.load(ref, root=bundle_home, threads=1))

    out, report = fitted
    respond = bundle_responder(str(out))
    plain = bundle_responder("clinc-small")
    device = edge_runtime.load("clinc-small", root=bundle_home, threads=1)
    upstream = edge_runtime.load(out, root=bundle_home, threads=1)
    combination = Combination.from_manifest(upstream.manifest.raw)
    text = "how do i change my pin"
    prediction = device.predict([text])[0]
    request = json.loads(escalation.encode(escalation.build_request(text, prediction, device_id="d1")))
    answer = respond(request)
    assert answer["combined"] is True
    assert (answer["label"], answer["score"]) == pytest.approx(
        combine(combination, prediction.top_k, upstream.logits([text])[0], upstream.labels)
    )
    # a signed version weighting the device at 0.9: a device top-k certain of another label wins
    from edge_runtime import signing
    from edge_runtime.bundle import write_new_version

    manifest = {k: v for k, v in upstream.manifest.raw.items() if k not in ("files", "created")}
    manifest["postprocess"] = {
        **manifest["postprocess"],
        "combine": {**manifest["postprocess"]["combine"], "device_weight": 0.9},
    }
    strong = write_new_version(upstream.path, manifest, tmp_path / "strong", signing.load_private_key(build_key))
    other = next(label for label in upstream.labels if label not in (answer["label"], "oos"))
    forced = {**request, "prediction": {**request["prediction"], "top_k": [{"label": other, "score": 0.999}]}}
    assert bundle_responder(str(strong))(forced)["label"] == other
    # without a device prediction, or from a bundle without the section: the plain prediction
    bare = respond({**request, "prediction": None})
    assert "combined" not in bare and bare == plain({**request, "prediction": None}) | {
        "latency_ms": bare["latency_ms"]
    }
    assert "combined" not in plain(request)


def test_calibrate_can_route_on_entropy(bundle_home, val_file, build_key, tmp_path):
    out = tmp_path / "entropy"
    done = cli(
        "calibrate",
        "--bundle",
        "clinc-small",
        "--data",
        val_file,
        "--target-escalation",
        "0.2",
        "--signal",
        "entropy",
        "--key",
        build_key,
        "--out",
        out,
        "--threads",
        "1",
        "--json",
        home=bundle_home,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    routing = report["routing"]
    assert routing["min_confidence"] is None and routing["per_class"] == {} and 0 < routing["max_entropy"] < 1
    texts = read_jsonl(val_file).texts
    model = edge_runtime.load(out, root=bundle_home, threads=1)
    routed = Router(RoutingPolicy.from_dict(model.manifest.raw["routing"])).route_all(model.predict(texts))
    escalated = [p.decision == "escalate" for p in routed]
    assert sum(escalated) == round(0.2 * len(texts))  # the cut escalates exactly the target share
    assert all(p.reason.startswith("max_entropy>") for p in routed if p.decision == "escalate")


def test_the_upstream_reads_the_redacted_text_and_kept_local_escalations_are_not_counted_as_sent(
    bundle_home, small_val_rows, tmp_path
):
    rows = [json.loads(line) for line in small_val_rows[1::4]]
    for k, row in enumerate(rows[::3]):
        row["text"] += f" mail me at someone{k}@example.org"
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = cli("eval", "--data", data, "--upstream", "clinc-small", "--json", home=bundle_home)
    assert done.returncode == 0, done.stderr
    scanner = json.loads(done.stdout)
    assert scanner["redaction"] == {"tagger": None, "texts_changed": len(rows[::3]), "kept_local_for_privacy": 0}
    assert scanner["escalated"] > 0

    # the shipped config names a PII tagger; this store has none: every escalation stays on the device
    done = cli("eval", "--data", data, "--upstream", "clinc-small", "--json", home=bundle_home, env={})
    assert done.returncode == 0, done.stderr
    closed = json.loads(done.stdout)
    assert closed["escalated"] == 0 and closed["escalation_rate"] == 0
    assert closed["redaction"]["kept_local_for_privacy"] == scanner["escalated"]
    assert closed["accuracy"] == closed["device_only"]["accuracy"]
