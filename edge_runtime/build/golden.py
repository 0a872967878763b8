"""golden.jsonl: a few validation examples the shipped model gets right, for the on-device self-test.

Expected outputs are computed at batch size 1: dynamic INT8 quantizes activations with a per-batch
scale, so the same text can score slightly differently inside a different batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluate import predict, softmax


def pick_indices(
    targets: np.ndarray,
    logits: np.ndarray,
    labels: list[str],
    oos_label: str | None = None,
    threshold: float | None = None,
    count: int = 12,
    per_label: int = 1,
    ood: np.ndarray | None = None,
    ood_threshold: float | None = None,
) -> list[int]:
    """Right and confident examples of `count` labels spread over the set (+ the OOS label), in file order.
    Right as the device answers: with the reject threshold, and the ood reject threshold when there is one."""
    predicted = predict(logits, labels, oos_label, threshold, ood, ood_threshold)
    confident = softmax(logits).max(axis=1) >= 0.5
    wanted = set(range(0, len(labels), max(1, len(labels) // count)))
    if oos_label in labels:
        wanted.add(labels.index(oos_label))
    taken: dict[int, int] = {}
    chosen = []
    for i, (target, guess) in enumerate(zip(targets, predicted)):
        target = int(target)
        if target in wanted and taken.get(target, 0) < per_label and target == guess and confident[i]:
            taken[target] = taken.get(target, 0) + 1
            chosen.append(i)
    return chosen


def classifier_rows(
    texts: list[str],
    ids: list[list[int]],
    targets: np.ndarray,
    labels: list[str],
    run_single,
    oos_label: str | None = None,
    threshold: float | None = None,
    batch_logits=None,
    batch_ood=None,
    ood_threshold: float | None = None,
) -> list[dict]:
    """Candidates from the batched evaluation, kept only if still right when run alone (`run_single`: token
    ids -> (logits, ood scores or None))."""
    candidates = pick_indices(
        targets, batch_logits, labels, oos_label, threshold, per_label=3, ood=batch_ood, ood_threshold=ood_threshold
    )
    if not candidates:  # a model that gets nothing right with confidence (a few-step smoke build)
        return []
    single, single_ood = run_single([ids[i] for i in candidates])
    subset_targets = np.asarray([targets[i] for i in candidates])
    kept = pick_indices(
        subset_targets, single, labels, oos_label, threshold, per_label=1, ood=single_ood, ood_threshold=ood_threshold
    )
    probs = softmax(single)
    return [
        {
            "text": texts[candidates[k]],
            "label": labels[int(subset_targets[k])],
            "score": round(float(probs[k].max()), 4),
        }
        for k in kept
    ]


def embedding_rows(texts: list[str], embeddings: np.ndarray, count: int = 8) -> list[dict]:
    """For an embedder: texts with their expected embedding (batch 1), compared by cosine on device."""
    return [
        {"text": texts[i], "embedding": [round(float(x), 6) for x in embeddings[i]]}
        for i in range(min(count, len(texts)))
    ]


def write_golden(path: Path, rows: list[dict]) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
