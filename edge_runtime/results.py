"""What the runtime returns: plain dataclasses that serialise to the JSON the CLI and daemon print."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

LOCAL = "local"
ESCALATE = "escalate"
DEFERRED = "deferred"


@dataclass
class Prediction:
    label: str
    score: float  # probability of `label` after temperature scaling
    top_k: list[tuple[str, float]] = field(default_factory=list)
    margin: float = 0.0  # top-1 minus top-2 probability
    entropy: float = 0.0  # normalised to 0..1
    ood: float | None = None  # out-of-scope score 0..1 from the pooled embedding; None: the bundle has none
    decision: str = LOCAL  # local | escalate | deferred
    reason: str = ""  # the routing rule that decided
    latency_ms: float = 0.0
    request_id: str | None = None

    def to_dict(self) -> dict:
        # not dataclasses.asdict: its deep copy took 30 of the daemon's ~400 us per request; the fields
        # are immutable but top_k, which is rebuilt anyway
        data = {name: getattr(self, name) for name in _PREDICTION_FIELDS}
        data["top_k"] = [{"label": label, "score": score} for label, score in self.top_k]
        return data


_PREDICTION_FIELDS = tuple(item.name for item in fields(Prediction))


@dataclass
class Entity:
    start: int
    end: int
    label: str
    score: float
