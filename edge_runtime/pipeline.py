"""The request path, end to end: model (preprocess -> session -> postprocess) -> router ->
answer locally, or redact (egress) -> outbox -> uplink.

`route` decides; `dispatch` decides and sends every escalation without waiting (the daemon's batches);
`predict` dispatches and waits up to the deadline for the answers (a blocking caller). Without an uplink
(no broker configured) escalations are written to the outbox and answered `deferred` at once: they go
out when a broker is reachable. Without an outbox they stay local.

With `routing.sample_rate`, a random share of the texts the model answers itself also goes upstream as a
sample (reason `sample`), redacted the same way, while the device's answer stands: see `_sample`.

An escalation the outbox cannot store (OutboxUnavailable: a full disk, a corrupt or unwritable file)
stays local with reason `outbox_unavailable:<rule>` and no request id: `deferred` always names a
request the outbox holds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from dataclasses import replace

from . import escalation
from .egress import Egress, PrivacyUnavailable
from .escalation import EscalationError
from .live_counters import LiveCounters
from .outbox import OutboxUnavailable
from .redaction import PrivacyRefused
from .results import DEFERRED, ESCALATE, LOCAL, Prediction
from .router import BUDGET_EXHAUSTED, Router

SAMPLE = "sample"  # the reason of a sample: a text the device answered itself, sent to learn from and to measure
STORE_WAIT_S = 5.0  # how long a caller whose deadline passed waits to learn whether its request was stored


class Pipeline:
    def __init__(
        self,
        model,
        router: Router,
        *,
        egress: Egress | None = None,
        uplink=None,
        outbox=None,
        device_id: str = "local",
        deadline_s: float = 2.0,
    ):
        self.model = model
        self.router = router
        self.egress = egress or Egress()
        self.uplink = uplink
        self.outbox = outbox if outbox is not None else getattr(uplink, "outbox", None)
        self.device_id = device_id
        self.deadline_s = deadline_s
        self.counters = LiveCounters()  # this model's own record, for the update agent's probation
        self._random = random.Random()  # which confident texts go upstream as samples

    def route(self, texts: Sequence[str], top_k: int | None = None) -> list[Prediction]:
        """Each text's prediction with its routing decision (`local` or `escalate`); nothing is sent."""
        predictions = self.router.route_all(self.model.predict(texts, top_k=top_k))
        wanted = sum(p.decision == ESCALATE or p.reason.startswith(BUDGET_EXHAUSTED) for p in predictions)
        self.counters.routed(len(predictions), wanted)
        return predictions

    def dispatch(self, texts: Sequence[str]) -> list[tuple[Prediction, Future | None]]:
        """Route the texts and send every escalation, redacted, without waiting: (prediction, the Future of
        its upstream answer or None). Offline, a batch's escalations go into the outbox in one commit."""
        predictions = self.route(texts)
        if self.uplink is not None and self.router.policy.sample_rate:
            self._sample(texts, predictions)
        if not any(p.decision == ESCALATE for p in predictions):
            return [(p, None) for p in predictions]
        one_commit = self.outbox.transaction() if self.outbox is not None and self.uplink is None else nullcontext()
        sent: list[tuple[Prediction, Future | None]] = []
        try:
            with one_commit:
                for text, prediction in zip(texts, predictions):
                    sent.append(self.send(text, prediction) if prediction.decision == ESCALATE else (prediction, None))
        except OutboxUnavailable:  # the batch's commit failed: none of its escalations is stored
            done = [p for p, _ in sent] + predictions[len(sent) :]
            return [(self._unstored(p) if p.decision in (DEFERRED, ESCALATE) else p, None) for p in done]
        return sent

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """`dispatch`, then each upstream answer as it arrives within the deadline (else `deferred`)."""
        return [
            prediction if pending is None else self.resolve(prediction, pending, self.deadline_s)
            for prediction, pending in self.dispatch(texts)
        ]

    def send(self, text: str, prediction: Prediction):
        """Escalate one routed prediction without waiting: (prediction, Future | None).

        The redacted text goes to the uplink (a Future of the answer back) or, offline, to the
        outbox (decision `deferred`, no Future). A privacy refusal, or a required PII tagger that is not
        loaded, keeps the answer local."""
        request_id = escalation.new_request_id()
        if self.uplink is None and self.outbox is None:
            return replace(prediction, decision=LOCAL, reason=f"no_uplink:{prediction.reason}"), None
        try:
            outgoing = self.egress.prepare(request_id, text, prediction.reason)
        except PrivacyRefused:
            return replace(prediction, decision=LOCAL, reason=f"privacy_refused:{prediction.reason}"), None
        except PrivacyUnavailable:
            return replace(prediction, decision=LOCAL, reason=f"privacy_unavailable:{prediction.reason}"), None
        prediction = replace(prediction, request_id=request_id)
        if self.uplink is not None:
            return prediction, self.uplink.submit(outgoing, prediction, request_id=request_id, reason=prediction.reason)
        message = escalation.build_request(
            outgoing,
            prediction,
            device_id=self.device_id,
            request_id=request_id,
            reason=prediction.reason,
            bundle=(self.model.name, self.model.version),
        )
        self.outbox.add([(request_id, escalation.encode(message))])  # OutboxUnavailable: see dispatch
        return replace(prediction, decision=DEFERRED), None

    def _sample(self, texts: Sequence[str], predictions: list[Prediction]) -> None:
        """Send a random `routing.sample_rate` share of the texts the model answered itself ("confident":
        not kept local by a privacy rule, the budget or never_escalate) upstream as well, redacted like any
        escalation, reason "sample", without waiting: the device's answer stands. The answer, when it comes,
        counts in `counters` (sample agreement, an unbiased estimate of the model's accuracy) and lands in the
        upstream's flywheel dataset like any other. Only with an uplink (a broker configured): while the broker
        is away samples wait in the outbox like escalations, under its budgets; without one none are kept."""
        rate = self.router.policy.sample_rate
        for text, prediction in zip(texts, predictions):
            if prediction.decision != LOCAL or prediction.reason != "confident" or self._random.random() >= rate:
                continue
            request_id = escalation.new_request_id()
            try:
                outgoing = self.egress.prepare(request_id, text, SAMPLE)
            except (PrivacyRefused, PrivacyUnavailable):
                continue
            self.egress.forget(request_id)  # nothing comes back to re-identify: the device answered already
            try:
                future = self.uplink.submit(outgoing, prediction, request_id=request_id, reason=SAMPLE)
            except (OutboxUnavailable, EscalationError):
                continue
            future.add_done_callback(lambda done, mine=prediction.label: self._sample_answered(mine, done))

    def _sample_answered(self, device_label: str, future) -> None:
        # runs on the uplink's thread: never raise there
        try:
            label = (future.result().get("answer") or {}).get("label")
        except Exception:  # noqa: BLE001 - dead-lettered, evicted: no answer, nothing to count
            return
        if isinstance(label, str) and label:
            self.counters.sample_answered(device_label, label)

    def _unstored(self, prediction: Prediction) -> Prediction:
        """An escalation the outbox could not store: answered locally, its mapping forgotten."""
        if prediction.request_id:
            self.egress.forget(prediction.request_id)
        return replace(prediction, decision=LOCAL, reason=f"outbox_unavailable:{prediction.reason}", request_id=None)

    def resolve(self, prediction: Prediction, future, timeout: float | None = 0.0) -> Prediction:
        """The upstream answer (re-identified) if the Future resolves within `timeout`, else `deferred` when
        the request is stored, else local (`outbox_unavailable`)."""
        try:
            message = future.result(timeout=timeout)
        except OutboxUnavailable:
            return self._unstored(prediction)
        except FutureTimeout:
            settled = getattr(future, "settled", None)
            if settled is not None and not settled.wait(STORE_WAIT_S):
                return self._unstored(prediction)  # not known to be stored: promise nothing
            if future.done():
                return self.resolve(prediction, future, 0.0)
            return replace(prediction, decision=DEFERRED)
        except Exception:  # the request was dead-lettered (refused by the broker, evicted by a budget)
            return replace(prediction, decision=DEFERRED)
        answer = self.egress.reidentify(prediction.request_id, message.get("answer") or {})
        if not answer.get("label"):
            return replace(prediction, decision=DEFERRED)
        self.counters.upstream_answered(prediction.label, answer["label"])
        return replace(
            prediction, label=answer["label"], score=float(answer.get("score", prediction.score)), decision=ESCALATE
        )

    def answer(self, request_id: str):
        """A deferred request's upstream answer, re-identified, or None while it is pending."""
        if self.outbox is None:
            return None
        message = self.outbox.answer(request_id)
        if message is None:
            return None
        return self.egress.reidentify(request_id, message.get("answer") or message)
