"""Local or escalate: the routing policy, applied to each prediction, with the rule that decided.

Rules, first match wins:
  1. private label            -> local   (its input may never leave the device): the top-1 label, or any
                                          label of the top-k with probability >= private_label_floor
  2. never-escalate label     -> local
  3. always-escalate label    -> escalate
  4. max ood                  -> escalate when the out-of-scope score (edge_runtime/ood.py) is above it: a
                                 text far from every class the device knows, however confident its softmax
  5. per-class min confidence -> escalate when the score is below the class's threshold
  6. min confidence / min margin / max entropy -> escalate when any is violated
  7. otherwise                -> local ("confident")
A prediction without an ood score (a bundle that ships none) passes rule 4.
An escalation budget caps the share of escalations over a sliding window; past it the answer stays
local and its reason says which rule wanted to escalate ("budget_exhausted:<rule>").
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace

from .errors import ConfigError
from .results import ESCALATE, LOCAL, Prediction

BUDGET_EXHAUSTED = "budget_exhausted"  # the reason prefix of an escalation the budget kept local


@dataclass(frozen=True)
class RoutingPolicy:
    min_confidence: float | None = None
    min_margin: float | None = None
    max_entropy: float | None = None
    max_ood: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)
    always_escalate: frozenset[str] = frozenset()
    never_escalate: frozenset[str] = frozenset()
    private_labels: frozenset[str] = frozenset()
    # A text that is plausibly private stays: a 10% chance that it is a medical query is reason enough.
    private_label_floor: float = 0.05
    budget: float | None = None  # max share of escalations over the window, 0..1
    budget_window: int = 1000
    # Share of the texts the device answers itself ("confident") that also go upstream as a sample, the
    # device's answer standing: the flywheel then learns from the whole traffic, not only the hard cases,
    # and agreement on a random sample estimates the model's accuracy (pipeline.Pipeline.dispatch).
    sample_rate: float | None = None

    @classmethod
    def from_dict(cls, routing: dict | None, overrides: dict | None = None) -> RoutingPolicy:
        merged = dict(routing or {})
        merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f for f in cls.__dataclass_fields__}
        values = {}
        for key, value in merged.items():
            if key not in known:
                continue  # manifests may carry fields for other components (oos_label, ...)
            if key in ("always_escalate", "never_escalate", "private_labels"):
                value = frozenset(value or ())
            elif key == "per_class":
                value = {str(k): float(v) for k, v in (value or {}).items()}
            elif key == "budget_window":
                value = int(value)
            elif value is not None:
                value = float(value)
            values[key] = value
        policy = cls(**values)
        policy.validate()
        return policy

    def validate(self) -> None:
        for name in (
            "min_confidence",
            "min_margin",
            "max_entropy",
            "max_ood",
            "budget",
            "private_label_floor",
            "sample_rate",
        ):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"routing.{name} must be between 0 and 1, got {value}")
        for label, value in self.per_class.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"routing.per_class.{label} must be between 0 and 1, got {value}")
        if self.budget_window < 1:
            raise ConfigError("routing.budget_window must be at least 1")


class Router:
    def __init__(self, policy: RoutingPolicy):
        self.policy = policy
        self._window: deque[bool] = deque(maxlen=policy.budget_window)
        self._escalated_in_window = 0
        self._lock = threading.Lock()

    def wanted(self, prediction: Prediction) -> tuple[str, str]:
        """The decision and reason by the rules alone, before the budget."""
        policy = self.policy
        top = prediction.top_k[0][0] if prediction.top_k else prediction.label
        if policy.private_labels:
            plausible = {label for label, p in prediction.top_k if p >= policy.private_label_floor}
            private = ({prediction.label, top} | plausible) & policy.private_labels
            if private:
                return LOCAL, f"private_label:{sorted(private)[0]}"
        if top in policy.never_escalate:
            return LOCAL, f"never_escalate:{top}"
        if top in policy.always_escalate:
            return ESCALATE, f"always_escalate:{top}"
        if policy.max_ood is not None and prediction.ood is not None and prediction.ood > policy.max_ood:
            return ESCALATE, f"max_ood>{policy.max_ood:g}"
        threshold = policy.per_class.get(top)
        if threshold is not None:
            if prediction.score < threshold:
                return ESCALATE, f"per_class_confidence:{top}<{threshold:g}"
            return LOCAL, "confident"
        if policy.min_confidence is not None and prediction.score < policy.min_confidence:
            return ESCALATE, f"min_confidence<{policy.min_confidence:g}"
        if policy.min_margin is not None and prediction.margin < policy.min_margin:
            return ESCALATE, f"min_margin<{policy.min_margin:g}"
        if policy.max_entropy is not None and prediction.entropy > policy.max_entropy:
            return ESCALATE, f"max_entropy>{policy.max_entropy:g}"
        return LOCAL, "confident"

    def route(self, prediction: Prediction) -> Prediction:
        decision, reason = self.wanted(prediction)
        with self._lock:
            if decision == ESCALATE and self._over_budget():
                decision, reason = LOCAL, f"{BUDGET_EXHAUSTED}:{reason}"
            self._record(decision == ESCALATE)
        return replace(prediction, decision=decision, reason=reason)

    def route_all(self, predictions: list[Prediction]) -> list[Prediction]:
        return [self.route(p) for p in predictions]

    def _over_budget(self) -> bool:
        budget = self.policy.budget
        if budget is None:
            return False
        # would this escalation push the window's share above the budget?
        size = min(len(self._window) + 1, self._window.maxlen)
        dropped = 1 if len(self._window) == self._window.maxlen and self._window[0] else 0
        return (self._escalated_in_window - dropped + 1) / size > budget

    def _record(self, escalated: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._escalated_in_window -= 1
        self._window.append(escalated)
        self._escalated_in_window += escalated

    @property
    def escalation_rate(self) -> float:
        with self._lock:
            return self._escalated_in_window / len(self._window) if self._window else 0.0
