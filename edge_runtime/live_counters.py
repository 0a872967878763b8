"""What one loaded model has done since it started serving: the texts it routed, how many it escalated,
and how often the upstream's answer agreed with its own top label, on its escalations (hard cases, a biased
sample) and on its samples (routing.sample_rate: a random share of the texts it answered itself).

The daemon keeps one set per loaded bundle (a reload starts a fresh set), shows it in /v1/status, and the
update agent's probation reads it: the escalation rate and the agreement of the new model against the
ones the previous model had before the swap, on the device's own traffic.
"""

from __future__ import annotations

import threading


class LiveCounters:
    def __init__(self):
        self._lock = threading.Lock()  # batches and upstream answers arrive on different threads
        self.texts = 0
        self.escalated = 0
        self.upstream_answers = 0
        self.agreed = 0
        self.samples = 0  # answers to samples (routing.sample_rate): a random share of the confident texts
        self.samples_agreed = 0

    def routed(self, texts: int, escalated: int) -> None:
        """`escalated`: the texts the routing rules escalated, before the escalation budget (which would
        hide a model that escalates more than its predecessor)."""
        with self._lock:
            self.texts += texts
            self.escalated += escalated

    def upstream_answered(self, device_label: str, upstream_label: str) -> None:
        with self._lock:
            self.upstream_answers += 1
            self.agreed += device_label == upstream_label

    def sample_answered(self, device_label: str, upstream_label: str) -> None:
        with self._lock:
            self.samples += 1
            self.samples_agreed += device_label == upstream_label

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "texts": self.texts,
                "escalated": self.escalated,
                "escalation_rate": self.escalated / self.texts if self.texts else None,
                "upstream_answers": self.upstream_answers,
                "agreed": self.agreed,
                "agreement": self.agreed / self.upstream_answers if self.upstream_answers else None,
                "samples": self.samples,
                "sample_agreement": self.samples_agreed / self.samples if self.samples else None,
            }
