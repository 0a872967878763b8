"""In-process inference and the CLI commands that run a model, on a small real INT8 bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from edge_runtime.errors import InputError

pytestmark = pytest.mark.kernels  # predictions, logits and CLI answers come through the kernels

REPO = Path(__file__).resolve().parent.parent


def cli(*args, home=None, stdin=None, env=None):
    environment = {**os.environ, **(env or {})}
    if home is not None:
        environment["EDGE_RUNTIME_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=300,
    )


def golden(bundle_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (bundle_dir / "golden.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model(bundle_home):
    return edge_runtime.load(root=bundle_home)


def test_predict_gives_the_golden_labels_with_consistent_figures(model, small_bundle):
    examples = golden(small_bundle)
    predictions = model.predict([e["text"] for e in examples])
    assert [p.label for p in predictions] == [e["label"] for e in examples]
    for p in predictions:
        probs = [score for _, score in p.top_k]
        assert p.label in model.labels or p.label == p.top_k[0][0]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert p.score == pytest.approx(probs[0])
        assert p.margin == pytest.approx(probs[0] - probs[1], abs=1e-6)
        assert 0.0 <= p.entropy <= 1.0


def test_bucketed_batches_give_the_same_answers_as_single_requests(model):
    from edge_runtime.datasets import read_jsonl

    from support.small_bundle import datasets_dir

    texts = read_jsonl(datasets_dir() / "clinc150" / "val.jsonl").texts
    texts = texts[::37][:70]  # > max_batch: goes through length buckets
    batched = model.predict(texts)
    single = [model.predict([t])[0] for t in texts]
    # Dynamic INT8 quantises activations per tensor, padding included, so a text's figures move a little
    # with its batch, and the small bundle's near-ties (margins under 0.02 are common) may flip. A wrong
    # restore order would scramble the labels entirely: agreement near 1 in 11, not 9 in 10.
    agree = [b.label == s.label for b, s in zip(batched, single)]
    flips = [(s.label, b.label, round(s.margin, 3)) for b, s, a in zip(batched, single, agree) if not a]
    assert sum(agree) >= 0.85 * len(texts), flips
    near = [b.label in [label for label, _ in s.top_k[:3]] for b, s in zip(batched, single)]
    assert all(near), "only near-ties may flip"
    np.testing.assert_allclose(
        [b.score for b, a in zip(batched, agree) if a], [s.score for s, a in zip(single, agree) if a], atol=0.15
    )


def test_logits_match_a_plain_onnxruntime_session(model, small_bundle):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    text = "what is the balance of my checking account"
    tokenizer = Tokenizer.from_file(str(small_bundle / "tokenizer.json"))
    encoding = tokenizer.encode(text)
    feeds = {
        "input_ids": np.array([encoding.ids], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
    }
    session = ort.InferenceSession(str(small_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    expected = session.run(None, feeds)[0]
    np.testing.assert_allclose(model.logits([text]), expected, rtol=1e-4, atol=1e-4)


def test_the_runtime_makes_entities_of_the_kernels_tuples():
    from edge_runtime import postprocess
    from edge_runtime.results import Entity

    labels = ["O", "B-PER", "I-PER"]
    logits = np.zeros((1, 4, 3), dtype=np.float32)
    logits[0, [0, 1, 2, 3], [0, 1, 2, 0]] = 6.0  # O, B-PER, I-PER, O
    offsets = np.array([[[0, 0], [0, 4], [5, 9], [0, 0]]], dtype=np.int64)
    word_ids = np.array([[-1, 0, 1, -1]], dtype=np.int64)
    score = np.exp(6.0) / (np.exp(6.0) + 2)
    rows = postprocess.entities(logits, offsets, word_ids, labels)
    assert rows == [[Entity(0, 9, "PER", pytest.approx(score))]]
    assert type(rows[0][0].start) is int and type(rows[0][0].score) is float


@pytest.mark.parametrize("bad, reason", [([""], "empty"), (["ok", "   "], "text 2: empty"), ([3], "string")])
def test_bad_input_is_refused_with_a_reason(model, bad, reason):
    with pytest.raises(InputError, match=reason):
        model.predict(bad)


def test_cli_predict_json_from_arguments_and_stdin(bundle_home, small_bundle):
    examples = golden(small_bundle)[:3]
    done = cli("predict", "--json", *[e["text"] for e in examples], home=bundle_home)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["label"] for r in rows] == [e["label"] for e in examples]
    for row in rows:
        assert {"label", "score", "top_k", "margin", "entropy", "decision", "reason", "latency_ms"} <= set(row)
        assert row["decision"] in ("local", "escalate") and row["reason"]
    piped = cli("predict", "--json", home=bundle_home, stdin="\n".join(e["text"] for e in examples) + "\n\n")
    assert [json.loads(line)["label"] for line in piped.stdout.splitlines()] == [r["label"] for r in rows]


def test_cli_predict_and_eval_route_as_the_daemon_with_the_same_config(bundle_home, small_bundle, tmp_path):
    """The daemon's [routing] overrides apply to `predict` and `eval` given its --config (one composition
    root): a confidence floor of 1.0 escalates everything."""
    examples = golden(small_bundle)
    config_file = tmp_path / "config.toml"
    config_file.write_text("[routing]\nmin_confidence = 1.0\n")
    texts = [e["text"] for e in examples]
    plain = [json.loads(line) for line in cli("predict", "--json", *texts, home=bundle_home).stdout.splitlines()]
    assert any(row["decision"] == "local" for row in plain)
    done = cli("predict", "--json", "--config", str(config_file), *texts, home=bundle_home)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in plain]
    assert all(r["decision"] == "escalate" and r["reason"].startswith("min_confidence") for r in rows)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    evaluated = cli("eval", "--data", str(data), "--json", "--config", str(config_file), home=bundle_home)
    assert json.loads(evaluated.stdout)["escalation_rate"] == 1.0


def test_cli_eval_reports_the_figures_it_computes(bundle_home, small_bundle, tmp_path):
    examples = golden(small_bundle)
    data = tmp_path / "data.jsonl"
    wrong = dict(examples[0], label="definitely_wrong")
    data.write_text("\n".join(json.dumps(e) for e in examples + [wrong]) + "\n")
    done = cli("eval", "--data", str(data), "--json", home=bundle_home)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    n = len(examples) + 1
    assert figures["n"] == n
    assert figures["accuracy"] == pytest.approx(len(examples) / n)
    for key in ("in_scope_accuracy", "escalation_rate", "kept_accuracy"):
        assert 0.0 <= figures[key] <= 1.0
    assert "oos_recall" in figures


def test_cli_errors_have_exit_codes_and_one_line_reasons(tmp_path, bundle_home):
    empty_home = tmp_path / "empty"
    done = cli("predict", "hello", home=empty_home)
    assert done.returncode == 1 and "no active model" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cli("predict", "--bundle", str(tmp_path / "missing"), "hello", home=bundle_home)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert cli("predict", "--top-k", "9", "hello", home=bundle_home).returncode == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    done = cli("eval", "--data", str(bad), home=bundle_home)
    assert done.returncode == 1 and "bad.jsonl:1" in done.stderr


def test_doctor_reports_kernels_and_store(bundle_home):
    done = cli("doctor", "--json", home=bundle_home)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["kernels"] == edge_runtime.kernels.IMPLEMENTATION
    assert report["store"]["ok"] and report["active_model"]
    assert report["onnxruntime"]["version"]


def test_bench_reports_percentiles(bundle_home):
    done = cli("bench", "--requests", "20", "--json", home=bundle_home)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["batch32_per_s"] > 0


def test_runtime_never_imports_torch_and_writes_nothing_outside_the_state_dir(bundle_home, tmp_path):
    fake_home = tmp_path / "user"
    fake_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "XDG_"))}
    env.update(HOME=str(fake_home), EDGE_RUNTIME_HOME=str(bundle_home), PYTHONPATH=str(REPO))
    script = (
        "import sys, edge_runtime\n"
        "m = edge_runtime.load()\n"
        "m.predict(['what is my balance', 'set an alarm'])\n"
        "heavy = [n for n in ('torch', 'transformers', 'optimum') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = [str(p.relative_to(fake_home)) for p in fake_home.rglob("*")]
    assert written == [], f"inference wrote outside the state dir: {written}"
    assert not (fake_home / ".cache" / "Microsoft").exists()
