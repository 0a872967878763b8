"""Probation: after activation, watch the new model's error and escalation rates against the previous
model's on the same traffic; fail (-> automatic rollback) when they are worse by more than allowed.

Traffic is a file of texts (JSONL with "text", or plain lines): the device's recent requests, or a
sample shipped with the device. Without traffic the probation only waits `duration_s` and checks that
the active model still loads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ProbationError


@dataclass
class ProbationConfig:
    traffic: Path | None = None
    requests: int = 200  # the window: this many texts from the traffic file
    max_escalation_increase: float = 0.10  # absolute, e.g. 0.10 = ten percentage points
    max_error_rate: float = 0.0
    duration_s: float = 0.0
    batch: int = 16


def read_traffic(path: Path, limit: int) -> list[str]:
    texts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["text"] if isinstance(row, dict) else line
        except (ValueError, KeyError):
            text = line
        texts.append(str(text))
        if len(texts) >= limit:
            break
    if not texts:
        raise ProbationError(f"no texts in {path}")
    return texts


def rates(ref: str, root: Path, texts: list[str], batch: int) -> dict:
    """Error and escalation rates of the bundle `ref` on `texts` (routing rules alone, no budget)."""
    from ..model import load
    from ..router import ESCALATE, Router, RoutingPolicy

    model = load(ref, root=root)
    router = Router(RoutingPolicy.from_dict(model.manifest.raw.get("routing")))
    errors = escalated = 0
    for start in range(0, len(texts), batch):
        part = texts[start : start + batch]
        try:
            predictions = model.predict(part)
        except Exception:  # noqa: BLE001 - any failure to answer counts as an error
            errors += len(part)
            continue
        escalated += sum(router.wanted(p)[0] == ESCALATE for p in predictions)
    return {"requests": len(texts), "error_rate": errors / len(texts), "escalation_rate": escalated / len(texts)}


def run(root: Path, new_ref: str, previous_ref: str | None, config: ProbationConfig) -> dict:
    if config.duration_s:
        time.sleep(config.duration_s)
    if config.traffic is None:
        from ..model import load

        load(new_ref, root=root)
        return {"requests": 0, "note": "no traffic file: load check only"}
    texts = read_traffic(config.traffic, config.requests)
    new = rates(new_ref, root, texts, config.batch)
    base = rates(previous_ref, root, texts, config.batch) if previous_ref else None
    result = {**new, "baseline": base}
    if new["error_rate"] > config.max_error_rate:
        raise ProbationError(f"error rate {new['error_rate']:.1%} over {config.max_error_rate:.1%}")
    if base is not None and new["escalation_rate"] > base["escalation_rate"] + config.max_escalation_increase:
        raise ProbationError(
            f"escalation rate {new['escalation_rate']:.1%} vs {base['escalation_rate']:.1%} "
            f"for {previous_ref} (allowed +{config.max_escalation_increase:.0%})"
        )
    return result
