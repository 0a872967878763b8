"""One request, end to end: model (preprocess -> session -> postprocess) -> router ->
answer locally, or redact (egress) -> outbox -> uplink and wait up to the deadline.

Without an uplink (no broker configured) escalations are written to the outbox and answered
`deferred` at once: they go out when a broker is reachable. Without an outbox they stay local.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from . import escalation
from .egress import Egress
from .redaction import PrivacyRefused
from .results import DEFERRED, ESCALATE, LOCAL, Prediction
from .router import Router


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

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        predictions = self.router.route_all(self.model.predict(texts))
        pending = []
        for index, (text, prediction) in enumerate(zip(texts, predictions)):
            if prediction.decision == ESCALATE:
                predictions[index], future = self.send(text, prediction)
                if future is not None:
                    pending.append((index, future))
        for index, future in pending:
            predictions[index] = self.resolve(predictions[index], future, self.deadline_s)
        return predictions

    def send(self, text: str, prediction: Prediction):
        """Escalate one routed prediction without waiting: (prediction, Future | None).

        The redacted text goes to the uplink (a Future of the answer back) or, offline, to the
        outbox (decision `deferred`, no Future). A privacy refusal keeps the answer local."""
        request_id = escalation.new_request_id()
        if self.uplink is None and self.outbox is None:
            return replace(prediction, decision=LOCAL, reason=f"no_uplink:{prediction.reason}"), None
        try:
            outgoing = self.egress.prepare(request_id, text, prediction.reason)
        except PrivacyRefused:
            return replace(prediction, decision=LOCAL, reason=f"privacy_refused:{prediction.reason}"), None
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
        self.outbox.add([(request_id, escalation.encode(message))])
        return replace(prediction, decision=DEFERRED), None

    def resolve(self, prediction: Prediction, future, timeout: float | None = 0.0) -> Prediction:
        """The upstream answer (re-identified) if the Future resolves within `timeout`, else `deferred`."""
        try:
            message = future.result(timeout=timeout)
        except Exception:  # deadline passed or the request was dead-lettered
            return replace(prediction, decision=DEFERRED)
        answer = self.egress.reidentify(prediction.request_id, message.get("answer") or {})
        if not answer.get("label"):
            return replace(prediction, decision=DEFERRED)
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
