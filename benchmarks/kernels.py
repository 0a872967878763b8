"""Cython kernels vs their NumPy/Python twins, measured in one run on the same inputs.

    python benchmarks/kernels.py            # table: kernel | shape | twin | cython | ratio | target
    python benchmarks/kernels.py --json     # the same rows as JSON

Times are medians of many repeats (time.perf_counter). Speed is only ever reported as a ratio against a
baseline measured in the same run, never as an absolute pass/fail in tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.kernels import compiled_module, pure_module

SAMPLES = 21
SAMPLE_SECONDS = 0.004  # each sample loops long enough to swamp timer overhead


def _loops(fn) -> int:
    """How many calls make one sample last SAMPLE_SECONDS."""
    fn()
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start >= SAMPLE_SECONDS:
            return loops
        loops *= 2


def _sample(fn, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def paired_medians(baseline, cython) -> tuple[float, float]:
    """Median seconds per call of both, their samples interleaved so both see the same machine load."""
    base_loops, cy_loops = _loops(baseline), _loops(cython)
    base, cy = [], []
    for _ in range(SAMPLES):
        base.append(_sample(baseline, base_loops))
        cy.append(_sample(cython, cy_loops))
    return statistics.median(base), statistics.median(cy)


def row(kernel: str, shape: str, baseline_name: str, baseline, cython, target: float | None) -> dict:
    base_s, cy_s = paired_medians(baseline, cython)
    ratio = base_s / cy_s
    verdict = "" if target is None else ("PASS" if ratio >= target else "MISS")
    return {
        "kernel": kernel,
        "shape": shape,
        "baseline": baseline_name,
        "twin_us": base_s * 1e6,
        "cython_us": cy_s * 1e6,
        "ratio": ratio,
        "target": target,
        "verdict": verdict,
    }


def classify_rows(rng) -> list[dict]:
    pure, compiled = pure_module("classify"), compiled_module("classify")
    one = rng.normal(0, 3, size=(1, 151)).astype(np.float32)
    many = rng.normal(0, 3, size=(32, 151)).astype(np.float32)
    return [
        row(
            "classify_logits",
            "(1,151)",
            "NumPy twin",
            lambda: pure.classify_logits(one),
            lambda: compiled.classify_logits(one),
            5.0,
        ),
        row(
            "classify_logits",
            "(32,151)",
            "NumPy twin",
            lambda: pure.classify_logits(many),
            lambda: compiled.classify_logits(many),
            None,
        ),
    ]


def batching_rows(rng) -> list[dict]:
    pure, compiled = pure_module("batching"), compiled_module("batching")
    sequences = [rng.integers(0, 30522, int(n)).tolist() for n in rng.integers(5, 41, 32)]
    lengths = rng.integers(5, 200, 256)
    return [
        row(
            "pad_batch",
            "32 rows, len 5..40",
            "NumPy twin",
            lambda: pure.pad_batch(sequences, 512),
            lambda: compiled.pad_batch(sequences, 512),
            4.0,
        ),
        row(
            "length_buckets",
            "256 lengths",
            "NumPy twin",
            lambda: pure.length_buckets(lengths, 32, 4096),
            lambda: compiled.length_buckets(lengths, 32, 4096),
            None,
        ),
    ]


def einsum_pool_f32(hidden, mask):
    """The usual sentence-transformers pooling in NumPy: float32 einsum, divide, L2 (no float64 sums)."""
    weights = mask.astype(np.float32)
    sums = np.einsum("bth,bt->bh", hidden, weights)
    means = sums / np.maximum(weights.sum(axis=1), 1.0)[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return means / np.maximum(norms, 1e-12)


def pooling_rows(rng) -> list[dict]:
    pure, compiled = pure_module("pooling"), compiled_module("pooling")
    hidden = rng.normal(size=(32, 48, 384)).astype(np.float32)
    mask = (np.arange(48) < rng.integers(5, 49, 32)[:, None]).astype(np.int64)
    return [
        row(
            "mean_pool+L2",
            "(32,48,384)",
            "einsum twin (f64 sums)",
            lambda: pure.mean_pool(hidden, mask, True),
            lambda: compiled.mean_pool(hidden, mask, True),
            2.0,
        ),
        row(
            "mean_pool+L2",
            "(32,48,384)",
            "einsum f32 (info)",
            lambda: einsum_pool_f32(hidden, mask),
            lambda: compiled.mean_pool(hidden, mask, True),
            None,
        ),
    ]


def ood_rows(rng) -> list[dict]:
    """The default bundle's shapes: a 384-d pooled embedding, 384 x 384 whitening, 150 in-scope classes."""
    pure, compiled = pure_module("ood"), compiled_module("ood")
    whiten = (rng.normal(size=(384, 384)) / 20).astype(np.float32)
    centers = rng.normal(size=(150, 384)).astype(np.float32)
    one = rng.normal(size=(1, 384)).astype(np.float32)
    many = rng.normal(size=(32, 384)).astype(np.float32)
    return [
        row(
            "ood_scores",
            "(1,384) x 150 means",
            "NumPy twin",
            lambda: pure.ood_scores(one, whiten, centers, 7.0, 0.35),
            lambda: compiled.ood_scores(one, whiten, centers, 7.0, 0.35),
            2.0,
        ),
        row(
            "ood_scores",
            "(32,384) x 150 means",
            "NumPy twin",
            lambda: pure.ood_scores(many, whiten, centers, 7.0, 0.35),
            lambda: compiled.ood_scores(many, whiten, centers, 7.0, 0.35),
            None,
        ),
    ]


NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def tokencls_rows(rng) -> list[dict]:
    pure, compiled = pure_module("tokencls"), compiled_module("tokencls")
    batch, tokens = 32, 128
    logits = rng.normal(size=(batch, tokens, len(NER_LABELS))).astype(np.float32)
    logits[..., 0] += 2.0  # mostly O, as real NER output is
    word_ids = np.full((batch, tokens), -1, dtype=np.int64)
    offsets = np.zeros((batch, tokens, 2), dtype=np.int64)
    for b, length in enumerate(rng.integers(16, tokens + 1, batch)):
        word_ids[b, 1 : length - 1] = np.cumsum(rng.random(length - 2) < 0.75) - 1
        starts = np.arange(length - 2) * 5
        offsets[b, 1 : length - 1, 0], offsets[b, 1 : length - 1, 1] = starts, starts + 4
    args = (logits, offsets, word_ids, NER_LABELS)
    return [
        row(
            "decode_entities simple",
            "(32,128,9)",
            "Python loop twin",
            lambda: pure.decode_entities(*args),
            lambda: compiled.decode_entities(*args),
            20.0,
        ),
        row(
            "decode_entities average",
            "(32,128,9)",
            "Python loop twin",
            lambda: pure.decode_entities(*args, strategy="average"),
            lambda: compiled.decode_entities(*args, strategy="average"),
            None,
        ),
    ]


# ---- PII row: kernels/pii.pyx and pure/pii.py belong to the PII helper, who may extend this section ----
PII_WORDS = [
    "the",
    "order",
    "shipped",
    "to",
    "alice@example.com",
    "call",
    "+44 20 7946 0958",
    "card",
    "4111 1111 1111 1111",
    "from",
    "10.0.0.7",
    "and",
    "DE89 3704 0044 0532 0130 00",
    "thanks",
]
# the same values as people type them outside ASCII, among accented and CJK words
PII_WORDS_UNICODE = [
    "Grüße",
    "für",
    "die",
    "Lieferung",
    "al\u200bice@example.com",
    "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ",
    "Anruf",
    "+44\u202f20\u202f7946\u202f0958",
    "Karte",
    "4111\u00a01111\u00a01111\u00a01111",
    "４１１１ １１１１ １１１１ １１１１",
    "電話",
    "１０．０．０．７",
    "de89 3704 0044 0532 0130 00",
    "Passwort: Sonne2024",
    "danke",
    "Straße",
    "señor",
]


def pii_rows(rng) -> list[dict]:
    """pure vs compiled `scan`, plus the `re`-based reference in benchmarks/pii_reference.py if it exists, on ASCII
    text and on text with no-break spaces, full-width and zero-width characters (the normalised view)."""
    reference_path = Path(__file__).with_name("pii_reference.py")
    compiled = compiled_module("pii")
    if compiled is None or not reference_path.exists():
        return []
    spec = importlib.util.spec_from_file_location("pii_reference", reference_path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    pure = pure_module("pii")
    rows = []
    for label, words in (("ascii", PII_WORDS), ("non-ascii", PII_WORDS_UNICODE)):
        text = " ".join(rng.choice(words, 400).tolist())
        shape = f"{label} text {len(text)} chars"
        rows += [
            row("pii scan", shape, "pure twin", lambda t=text: pure.scan(t), lambda t=text: compiled.scan(t), None),
            row(
                "pii scan", shape, "re reference", lambda t=text: reference.scan(t), lambda t=text: compiled.scan(t), 10
            ),
        ]
    return rows


# ---- end of PII section ----


def print_table(rows: list[dict]) -> None:
    head = ["kernel", "shape", "baseline", "twin (NumPy/Python)", "cython", "ratio", "target"]
    lines = [
        [
            r["kernel"],
            r["shape"],
            r["baseline"],
            f"{r['twin_us']:.1f} us",
            f"{r['cython_us']:.1f} us",
            f"{r['ratio']:.1f}x",
            "" if r["target"] is None else f">= {r['target']:g}x {r['verdict']}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(head, *lines)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*head))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt.format(*line))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    missing = [name for name in ("batching", "classify", "pooling", "tokencls", "ood") if compiled_module(name) is None]
    if missing:
        print(
            f"error: Cython kernels not built: {', '.join(missing)} (pip install -e . --no-build-isolation)",
            file=sys.stderr,
        )
        return 1
    rng = np.random.default_rng(0)
    rows = classify_rows(rng) + batching_rows(rng) + pooling_rows(rng) + ood_rows(rng)
    rows += tokencls_rows(rng) + pii_rows(rng)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
