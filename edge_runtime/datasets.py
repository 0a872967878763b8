"""Labelled JSONL: one {"text": ..., "label": ...} object per line (CLINC150's layout).

The one reader for training data, evaluation data and a bundle's golden examples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError


@dataclass
class Split:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, keep) -> Split:
        return Split([self.texts[i] for i in keep], [self.labels[i] for i in keep])


def read_jsonl(path: Path, need_labels: bool = True, error: type[Exception] = InputError) -> Split:
    """Every non-blank line; `error` (an EdgeRuntimeError) names the file and line of the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no such file: {path}")
    texts, labels = [], []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as bad:
                    raise error(f"{path}:{number}: not JSON ({bad.msg})") from None
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise error(f"{path}:{number}: needs a non-empty string field 'text'")
                label = row.get("label")
                if need_labels and (not isinstance(label, str) or not label):
                    raise error(f"{path}:{number}: needs a string field 'label'")
                texts.append(text)
                labels.append(label)
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8") from None
    if not texts:
        raise error(f"{path}: no examples")
    return Split(texts, labels)
