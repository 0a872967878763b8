"""Probation: after activation, watch the new model's escalation rate (and errors) against the previous
model's; fail (-> automatic rollback) when it is worse by more than allowed.

Two sources of evidence:
- the daemon's live counters (`live`, when the agent knows the daemon's URL and has no traffic file): the
  texts the new model routes on the device's real traffic and how many it escalated, against the same
  counters of the previous model, read just before the swap; and, once each has `min_samples` answers to
  samples (routing.sample_rate: a random share of the texts it answered itself, also sent upstream), how
  often the upstream agreed with it on them: an unbiased estimate of its accuracy. Agreement on
  escalations is reported, not judged: each model escalates its own hardest texts, so a better model,
  escalating fewer and harder ones, agrees less on them (the flywheel simulation saw 55.6% against 65.9%
  for a model that halved its escalations);
- a traffic file (`run`): JSONL with "text", or plain lines, run through both models offline.
Without either, the probation only waits `duration_s` and checks that the active model still loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
    # live counters only
    max_wait_s: float = 3600.0  # give up waiting for `requests` texts after this; the model is kept
    # agreement with the upstream on samples (routing.sample_rate): a random share of the confident texts
    max_agreement_drop: float = 0.05  # absolute
    min_samples: int = 30  # sample answers each model needs before theirs are compared
    poll_s: float = 1.0


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


def serving_ref(model: dict) -> str:
    """NAME@VERSION of the `model` part of the daemon's /v1/status."""
    return f"{model.get('name')}@{model.get('version')}"


def live(
    read_status: Callable[[], dict],
    target_ref: str,
    baseline: dict | None,
    config: ProbationConfig,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Judge the new model by the daemon's own counters once it has routed `config.requests` texts.

    `read_status` returns the daemon's /v1/status (raises OSError while it cannot be reached); `baseline`
    is the previous model's `live` counters read before the swap (None when unknown). A window not reached
    within `max_wait_s` keeps the model with a note: too little traffic is no evidence against it, and its
    self-test passed."""
    deadline = clock() + config.max_wait_s
    counters: dict = {}
    while True:
        try:
            model = read_status().get("model") or {}
        except OSError as error:
            if clock() >= deadline:
                raise ProbationError(f"the daemon did not answer for {config.max_wait_s:.0f} s: {error}") from None
            sleep(config.poll_s)
            continue
        serving = serving_ref(model)
        if serving != target_ref:
            raise ProbationError(f"the daemon serves {serving}, not {target_ref} (its reload failed?)")
        counters = model.get("live") or {}
        if counters.get("texts", 0) >= config.requests or clock() >= deadline:
            break
        sleep(config.poll_s)
    result = {"source": "daemon", **counters, "baseline": baseline}
    if counters.get("texts", 0) < config.requests:
        return {**result, "note": f"{counters.get('texts', 0)} texts in {config.max_wait_s:.0f} s: too few to judge"}
    if baseline and baseline.get("texts", 0) >= config.requests:
        new, old = counters["escalation_rate"], baseline["escalation_rate"]
        if new > old + config.max_escalation_increase:
            raise ProbationError(
                f"escalation rate {new:.1%} on {counters['texts']} texts vs {old:.1%} for the previous model "
                f"(allowed +{config.max_escalation_increase:.0%})"
            )
    if baseline and min(counters.get("samples", 0), baseline.get("samples", 0)) >= config.min_samples:
        new, old = counters["sample_agreement"], baseline["sample_agreement"]
        if new < old - config.max_agreement_drop:
            raise ProbationError(
                f"agreement with the upstream on samples {new:.1%} ({counters['samples']}) vs {old:.1%} for the "
                f"previous model (allowed -{config.max_agreement_drop:.0%})"
            )
    return result
