"""`edge-runtime eval --upstream`: the device + upstream hybrid through the real CLI, on the small real bundle
(as both device and upstream: the mechanics and the arithmetic, not the accuracy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge_runtime
from edge_runtime.evaluation import read_jsonl
from edge_runtime.router import Router, RoutingPolicy

REPO = Path(__file__).resolve().parent.parent

def cli(*args, home):
    environment = {**os.environ, "EDGE_RUNTIME_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edge_runtime", *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=300)

@pytest.fixture(scope="module")
def val_file(small_val_rows, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hybrid") / "val.jsonl"
    path.write_text("\n".join(small_val_rows[::2]) + "\n")
    return path

@pytest.fixture(scope="module")
def report(bundle_home, val_file):
    done = cli("eval", "--data", val_file, "--upstream", "clinc-small", "--device-cost", "0.00001",
               "--upstream-cost", "0.002", "--json", home=bundle_home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)

def test_json_has_the_hybrid_keys(report):
    for key in ("in_scope_accuracy", "oos_recall", "accuracy", "escalation_rate", "kept_accuracy", "local_share",
                "escalated_accuracy", "upstream_bytes", "cost_per_1000", "device_only", "all_upstream"):
        assert key in report, key
    for key in ("in_scope_accuracy", "oos_recall", "accuracy", "upstream_bytes", "cost_per_1000"):
        assert key in report["all_upstream"], key

def test_figures_match_an_independent_computation(report, bundle_home, val_file):
    texts, gold = read_jsonl(val_file)
    model = edge_runtime.load(root=bundle_home)
    routed = Router(RoutingPolicy.from_dict(model.manifest.raw["routing"])).route_all(model.predict(texts))
    escalated = [p.decision == "escalate" for p in routed]
    n, sent = len(gold), sum(escalated)
    assert 0 < sent < n                                     # the bundle's routing escalates some
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
    texts, _ = read_jsonl(val_file)
    n, sent = report["n"], report["escalated"]
    assert report["cost_per_1000"] == pytest.approx(1000 * (0.00001 + report["escalation_rate"] * 0.002))
    assert report["all_upstream"]["cost_per_1000"] == pytest.approx(1000 * 0.002)
    assert report["cost_per_1000"] < report["all_upstream"]["cost_per_1000"]
    # every request carries its text plus the JSON envelope; escalations also the device's top-k
    assert report["all_upstream"]["upstream_bytes"] > sum(len(t.encode()) for t in texts) + 150 * n
    assert sent * 300 < report["upstream_bytes"] < report["all_upstream"]["upstream_bytes"]
    assert report["upstream_bytes_per_1000"] == pytest.approx(1000 * report["upstream_bytes"] / n)

def test_text_report_compares_the_three_setups(bundle_home, val_file):
    done = cli("eval", "--data", val_file, "--upstream", "clinc-small", "--upstream-mode", "candidates",
               home=bundle_home)
    assert done.returncode == 0, done.stderr
    for words in ("device only", "hybrid", "all upstream", "cost /1000 requests", "bytes upstream /1000",
                  "mode candidates"):
        assert words in done.stdout

def test_bad_prices_and_unknown_upstream_fail_clearly(bundle_home, val_file):
    negative = cli("eval", "--data", val_file, "--upstream", "clinc-small", "--device-cost", "-1", home=bundle_home)
    assert negative.returncode == 2 and "--device-cost" in negative.stderr
    missing = cli("eval", "--data", val_file, "--upstream", "no-such-model", home=bundle_home)
    assert missing.returncode == 1 and "no-such-model" in missing.stderr
