"""`[batching] max_memory_mb`: the largest batch that keeps the daemon's resident memory within a budget.

Measured at start, not guessed: with the model loaded, the daemon reads its resident set, runs the model
on one and then on PROBE_TEXTS texts of the model's full length, and takes the growth per text (the
arena's activations, which grow with the batch). Room is left for the PII tagger, which a lazy daemon
loads on its first escalation: TAGGER_RESIDENT_FACTOR times the size of its model file (a 23 MB INT8
tagger adds 42 MB resident and 46 MB at its peak, benchmarks/memory.py), and SERVING_HEADROOM_MB for
what serving itself allocates. Real texts are shorter than the full length, so the cap errs on the safe
side. A budget the model cannot fit in at batch 1, or that loading the model already went past, is a
configuration error, reported at start.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError
from ..session import release_free_memory

PROBE_TEXTS = 8
TAGGER_RESIDENT_FACTOR = 2.0
# The daemon's own allocations while it serves (request bodies, JSON, encodings, Python objects), which the
# probe through the model alone does not see: 2.6 MB above the fitted figure in a run of batch-32 requests.
SERVING_HEADROOM_MB = 4.0
MIN_MB_PER_TEXT = 0.05  # below this the measurement is noise: one text never costs less


def resident_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A process's resident set (or, with "VmHWM", its peak) in MB, from /proc (this one by default); NaN
    where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def tagger_reserve_mb(tagger) -> float:
    """What loading `tagger` (a LazyTagger not loaded yet, or None) will add to the resident set."""
    if tagger is None or getattr(tagger, "loaded", True):
        return 0.0  # none, or already loaded (and measured in the resident set)
    model_file = Path(tagger.path) / "model.onnx"
    return TAGGER_RESIDENT_FACTOR * model_file.stat().st_size / 2**20


def fit_max_batch(model, budget_mb: float, reserve_mb: float, configured: int) -> dict:
    """The largest batch (at most `configured`) whose run keeps the resident set under `budget_mb`, with
    `reserve_mb` kept free. Returns the cap and the figures it came from; ConfigError when not even one
    text fits."""
    full = " ".join(["word"] * model.preprocessor.max_length)  # truncated to exactly max_length tokens
    release_free_memory()
    loaded = resident_mb()
    model.predict([full])
    one = resident_mb()
    model.predict([full] * PROBE_TEXTS)
    many = resident_mb()
    model.predict(["ok"])  # a small run after a large one: the arena is handed back (session.py)
    per_text = max((many - one) / (PROBE_TEXTS - 1), MIN_MB_PER_TEXT)
    fixed = loaded + max(one - loaded, 0.0) + reserve_mb + SERVING_HEADROOM_MB
    figures = {
        "budget_mb": budget_mb,
        "resident_mb": round(loaded, 1),
        "reserve_mb": round(reserve_mb, 1),
        "headroom_mb": SERVING_HEADROOM_MB,
        "mb_per_text": round(per_text, 2),
    }
    if math.isnan(loaded):
        return {**figures, "max_batch": configured, "measured": False}
    peak = resident_mb("VmHWM")  # loading the model (parsing, optimising) already reached this
    if peak > budget_mb:
        raise ConfigError(
            f"batching.max_memory_mb = {budget_mb:g}: loading the model took the daemon to {peak:.0f} MB; "
            f"give at least {math.ceil(max(peak, fixed))} MB"
        )
    fits = math.floor((budget_mb - fixed) / per_text) + 1  # `one` already holds the first text
    if fits < 1:
        need = math.ceil(fixed)
        raise ConfigError(
            f"batching.max_memory_mb = {budget_mb:g}: the model holds {loaded:.0f} MB"
            + (f" and the PII tagger needs {reserve_mb:.0f} MB more" if reserve_mb else "")
            + f"; give at least {need} MB"
        )
    return {**figures, "max_batch": max(1, min(configured, fits)), "measured": True}
