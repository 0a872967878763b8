"""Self-test of a staged bundle: its golden.jsonl examples must get their expected labels, one at a
time (the batch the golden labels were computed at), each within a latency budget."""

from __future__ import annotations

import time
from pathlib import Path

from ..datasets import read_jsonl
from .errors import SelfTestError

GOLDEN = "golden.jsonl"


def read_golden(bundle_dir: Path) -> list[dict]:
    path = Path(bundle_dir) / GOLDEN
    if not path.is_file():
        raise SelfTestError(f"the bundle has no {GOLDEN}")
    golden = read_jsonl(path, error=SelfTestError)
    return [{"text": text, "label": label} for text, label in zip(golden.texts, golden.labels)]


def run(bundle_dir: Path, root: Path, latency_budget_ms: float = 1000.0) -> dict:
    """{"examples", "max_latency_ms"}; SelfTestError with the first failure otherwise."""
    from ..model import load

    rows = read_golden(bundle_dir)
    model = load(Path(bundle_dir), root=root)
    if model.task != "text-classification":
        raise SelfTestError(f"golden labels need a text-classification model, not {model.task}")
    model.predict([rows[0]["text"]])  # warm-up: the first run builds the session's buffers
    slowest = 0.0
    for number, row in enumerate(rows, start=1):
        started = time.perf_counter()
        label = model.predict([row["text"]])[0].label
        slowest = max(slowest, (time.perf_counter() - started) * 1000.0)
        if label != row["label"]:
            raise SelfTestError(
                f"golden example {number} ({row['text'][:40]!r}) gave {label!r}, expected {row['label']!r}"
            )
    if slowest > latency_budget_ms:
        raise SelfTestError(f"slowest golden example took {slowest:.0f} ms (budget {latency_budget_ms:.0f} ms)")
    return {"examples": len(rows), "max_latency_ms": round(slowest, 2)}
