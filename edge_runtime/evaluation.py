"""Accuracy figures for intent classification with an out-of-scope label (CLINC150 style).

in_scope_accuracy: accuracy on examples whose gold label is not the OOS label.
oos_recall:        share of OOS examples predicted as OOS.
kept_accuracy:     accuracy of the answers kept on the device (decision local).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .errors import InputError

def read_jsonl(path: Path, text_key: str = "text", label_key: str = "label") -> tuple[list[str], list[str]]:
    texts, labels = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read: {error}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts.append(str(record[text_key]))
            labels.append(str(record[label_key]))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected a JSON object with {text_key!r} and {label_key!r}") from None
    if not texts:
        raise InputError(f"{path}: no examples")
    return texts, labels

def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None

def accuracy_figures(gold: Sequence[str], predicted: Sequence[str], oos_label: str = "oos") -> dict:
    pairs = list(zip(gold, predicted))
    in_scope = [(g, p) for g, p in pairs if g != oos_label]
    oos = [(g, p) for g, p in pairs if g == oos_label]
    return {
        "n": len(pairs),
        "accuracy": _share(sum(g == p for g, p in pairs), len(pairs)),
        "in_scope_accuracy": _share(sum(g == p for g, p in in_scope), len(in_scope)),
        "oos_recall": _share(sum(p == oos_label for _, p in oos), len(oos)),
    }

def per_class(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, dict]:
    labels = sorted(set(gold) | set(predicted))
    report = {}
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return report

def routed_figures(gold: Sequence[str], local: Sequence[str], escalated: Sequence[bool],
                   final: Sequence[str] | None = None, oos_label: str = "oos") -> dict:
    """Figures of a routed run: what stayed local, what went upstream, and the end result."""
    kept = [(g, p) for g, p, e in zip(gold, local, escalated) if not e]
    sent = [(g, p) for g, p, e in zip(gold, local, escalated) if e]
    figures = accuracy_figures(gold, final if final is not None else local, oos_label)
    figures.update({
        "escalation_rate": _share(len(sent), len(gold)) or 0.0,
        "local_share": _share(len(kept), len(gold)) or 0.0,
        "kept_accuracy": _share(sum(g == p for g, p in kept), len(kept)),
        "escalated_local_accuracy": _share(sum(g == p for g, p in sent), len(sent)),
    })
    if final is not None:
        finals = [(g, f) for g, f, e in zip(gold, final, escalated) if e]
        figures["escalated_accuracy"] = _share(sum(g == f for g, f in finals), len(finals))
    return figures
