"""Size and batch-1 latency of a model file (one thread: the figure an edge device cares about)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def size_mb(path: Path) -> float:
    return round(Path(path).stat().st_size / 1e6, 2)


def batch1_latency_ms(path: Path, ids: list[int], runs: int = 30, threads: int = 1) -> float:
    """Median `session.run` time for one sequence, after warm-up."""
    from .ortrun import _feeds, session

    sess = session(path, threads=threads)
    input_ids = np.asarray([ids], dtype=np.int64)
    feeds = _feeds(sess, input_ids, np.ones_like(input_ids), np.zeros_like(input_ids))
    for _ in range(3):
        sess.run(None, feeds)
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        sess.run(None, feeds)
        timings.append((time.perf_counter() - began) * 1e3)
    return round(statistics.median(timings), 3)
