"""Knowledge distillation: a larger teacher bundle's soft labels for the texts a student is trained on.

The student learns from the teacher's whole distribution over the labels (softened by a temperature), not
only from the gold label: which intents a query resembles, and how unsure the teacher is. That carries what
the teacher knows to a smaller model, and lets the student learn from texts nobody labelled (`--unlabelled`):
their only target is the teacher's.

The teacher is any installed text-classification bundle with the student's labels (for example the upstream
reference, clinc150-mpnet-upstream). Its logits are cached by content (the teacher's verified model hash and
the texts), so a rebuild, or a second student, does not run the teacher again.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write_bytes
from .errors import BuildError


@dataclass(frozen=True)
class Distillation:
    teacher: str  # a store name, name@version, or a bundle directory / .erb
    temperature: float = 2.0
    weight: float = 0.5  # share of the loss on the teacher's soft labels; the rest on the gold labels
    unlabelled: Path | None = None  # extra texts, one per line, trained on the teacher's labels only

    def __post_init__(self):
        if not self.teacher:
            raise BuildError("distillation needs a teacher bundle")
        if self.temperature <= 0:
            raise BuildError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.weight <= 1.0:
            raise BuildError(f"distillation weight must be between 0 and 1, got {self.weight}")


@dataclass
class Teaching:
    """What the student trains on: the teacher's probabilities at the distillation temperature for every text
    (labelled ones first, then unlabelled), and where they came from (for the bundle's provenance)."""

    soft: np.ndarray  # (texts, student labels), float32, rows sum to 1
    unlabelled_texts: list[str]
    provenance: dict


def read_unlabelled(path: Path) -> list[str]:
    """Non-empty lines of a text file (or the "text" of each line of a .jsonl file), de-duplicated in order."""
    return _read_unlabelled(path)[0]


def _read_unlabelled(path: Path) -> tuple[list[str], str]:
    """(the texts, as read_unlabelled), and the sha256 of the very bytes they were read from."""
    try:
        data = Path(path).read_bytes()
        raw = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BuildError(f"unlabelled texts {path}: {error}") from None
    if Path(path).suffix == ".jsonl":
        try:
            lines = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
        except (ValueError, KeyError, TypeError) as error:
            raise BuildError(f"unlabelled texts {path}: each line must be a JSON object with a text: {error}") from None
    else:
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
    return list(dict.fromkeys(lines)), hashlib.sha256(data).hexdigest()


def teach(
    distillation: Distillation, texts: list[str], labels: list[str], cache_dir: Path | None, progress, root=None
) -> Teaching:
    """The teacher's soft labels for `texts` plus the distillation's unlabelled texts, in the student's label
    order. Refuses a teacher that is not a classifier or lacks one of the student's labels."""
    from ..errors import EdgeRuntimeError
    from ..model import load

    unlabelled, unlabelled_sha256 = _read_unlabelled(distillation.unlabelled) if distillation.unlabelled else ([], "")
    known = set(texts)
    unlabelled = [text for text in unlabelled if text not in known]  # a labelled text keeps its gold label
    try:
        teacher = load(distillation.teacher, root=root, threads=0, max_batch=64)
    except EdgeRuntimeError as error:
        raise BuildError(f"teacher {distillation.teacher}: {error}") from None
    if teacher.task != "text-classification":
        raise BuildError(f"teacher {teacher.name} is a {teacher.task} model, not a text classifier")
    missing = [label for label in labels if label not in teacher.labels]
    if missing:
        raise BuildError(f"teacher {teacher.name} lacks the labels {', '.join(missing[:5])}")
    everything = texts + unlabelled
    model_sha = teacher.manifest.files[teacher.manifest.model_file]["sha256"]
    key = hashlib.sha256(json.dumps([teacher.name, teacher.version, model_sha, everything]).encode()).hexdigest()[:20]
    logits = _cached_logits(teacher, everything, cache_dir, key, progress)
    order = [teacher.labels.index(label) for label in labels]
    scale = float(teacher.classification.temperature) * distillation.temperature
    soft = _softmax(logits[:, order] / scale)
    provenance = {
        "teacher": f"{teacher.name}@{teacher.version}",
        "teacher_model_sha256": model_sha,
        "temperature": distillation.temperature,
        "weight": distillation.weight,
        "unlabelled_texts": len(unlabelled),
        **(
            {"unlabelled_file": str(distillation.unlabelled), "unlabelled_sha256": unlabelled_sha256}
            if distillation.unlabelled
            else {}
        ),
        "teacher_logits_key": key,
    }
    return Teaching(soft.astype(np.float32), unlabelled, provenance)


def _cached_logits(teacher, texts: list[str], cache_dir: Path | None, key: str, progress) -> np.ndarray:
    path = Path(cache_dir) / "teacher" / f"{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts):
                progress.log(f"teacher logits: reusing {path}")
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed and replaced
    chunk = 256
    parts = []
    with progress.bar(f"teacher {teacher.name} logits", len(texts)) as advance:
        for start in range(0, len(texts), chunk):
            parts.append(teacher.logits(texts[start : start + chunk]))
            advance(len(parts[-1]))
    logits = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, len(teacher.labels)), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, logits, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
