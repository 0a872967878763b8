"""The label list of a training split, labels as class indices, and a reproducible per-label subsample."""

from __future__ import annotations

from ..datasets import Split
from .errors import BuildError


def label_list(train: Split) -> list[str]:
    """Sorted, so the class order does not depend on the order of the file."""
    labels = sorted(set(train.labels))
    if len(labels) < 2:
        raise BuildError(f"need at least 2 labels in the training data, found {len(labels)}")
    return labels


def encode_labels(split: Split, labels: list[str], where: str) -> list[int]:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(split.labels) - index.keys())
    if unknown:
        raise BuildError(f"{where} has labels not in the training data: {', '.join(unknown[:5])}")
    return [index[label] for label in split.labels]


def subsample(split: Split, labels: list[str], per_label: int, seed: int) -> Split:
    """Up to `per_label` examples of each of `labels`, picked reproducibly."""
    import random

    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {label: [] for label in labels}
    for i, label in enumerate(split.labels):
        if label in by_label:
            by_label[label].append(i)
    keep = []
    for label in labels:
        indices = by_label[label]
        keep.extend(sorted(rng.sample(indices, min(per_label, len(indices)))))
    return split.subset(sorted(keep))
