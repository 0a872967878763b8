"""The upstream worker: answers escalations from a shared subscription with a responder function.

Start more workers with the same group to split the load (`$share/<group>/edge/+/escalations`).
Answers go to the device's own answer topic with the request's correlation data; a request id
seen recently gets the cached answer again, so device re-sends are harmless.
Whatever a peer sends never stops the worker: a request off the schema gets an error answer when it has
an id or correlation data to answer under (`bad_requests`), is `ignored` when it has neither or names
another answer topic, and is `dropped` when no answer can carry it back; `stats` counts each, and
`edge-runtime upstream` prints them (with the Link's `callback_errors`, if any) when it stops.
With a `dataset` (edge_runtime/flywheel.py), every answered escalation is also kept as a training record;
what cannot be kept is counted (`dataset_rejected`, `dataset_pii`), and the device gets its answer either way.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import escalation
from .mqtt import BrokerConfig, Link, LinkHandlers, Subscription

log = logging.getLogger(__name__)

Responder = Callable[[dict], dict]  # escalation request -> answer body
MAX_REQUEST_ID_CHARS = 128  # devices send 32 hex digits (escalation.new_request_id)


def model_responder(model) -> Responder:
    """The upstream's answer policy: the model's prediction for the request's text. When the model has a
    postprocess.combine section and the request's prediction carries the device's top-k, the label and score
    are the combined ones (edge_runtime/combine.py) and the answer says "combined": true."""
    from .combine import Combination, combine
    from .postprocess import classify

    combination = Combination.from_manifest(model.manifest.raw) if model.task == "text-classification" else None

    def respond(request: dict) -> dict:
        top_k = (request.get("prediction") or {}).get("top_k")
        if combination is None or not top_k:
            prediction = model.predict([request["text"]])[0]
            return prediction.to_dict() if hasattr(prediction, "to_dict") else dict(prediction)
        logits = model.logits([request["text"]])
        answer = classify(logits, model.classification)[0].to_dict()  # the upstream's own top-k, margin, entropy
        answer["label"], answer["score"] = combine(combination, top_k, logits[0], model.labels)
        answer["combined"] = True
        return answer

    return respond


class AnswerCache:
    """LRU of recent answers keyed by (device, request id)."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()

    def get(self, key):
        payload = self._items.get(key)
        if payload is not None:
            self._items.move_to_end(key)
        return payload

    def put(self, key, payload: bytes) -> None:
        self._items[key] = payload
        if len(self._items) > self.size:
            self._items.popitem(last=False)


class Worker:
    def __init__(
        self,
        broker: BrokerConfig,
        responder: Responder,
        *,
        group: str = "workers",
        device_pattern: str = "+",
        client_id: str | None = None,
        cache_size: int = 10_000,
        answer_expiry_s: int = 86400,
        dataset=None,
        teacher: tuple[str, str] = ("", ""),
    ):
        self.responder = responder
        self.dataset = dataset  # a flywheel.DatasetWriter, or None
        self.teacher = teacher  # the answering bundle's (name, version), recorded with each kept answer
        self.name = client_id or f"worker-{socket.gethostname()}-{os.getpid()}"
        self.subscription = f"$share/{group}/edge/{device_pattern}/escalations"
        self.answer_expiry_s = answer_expiry_s
        self.cache = AnswerCache(cache_size)
        self.stats = collections.Counter()
        # Clean session: while this worker is away its share goes to the others, and devices re-send.
        self.link = Link(
            broker,
            self.name,
            [Subscription(self.subscription, 1)],
            LinkHandlers(on_message=self._on_message),
            clean_start=True,
            session_expiry_s=0,
        )

    def start(self) -> Worker:
        self.link.start()
        return self

    def stop(self) -> None:
        self.link.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.link.wait_ready(timeout)

    def _on_message(self, message: paho.MQTTMessage) -> None:
        # Whatever a peer sends is answered, ignored or dropped here, and counted; what this does not foresee
        # the Link's guard catches (counted in link.callback_errors), so paho's network thread lives on.
        device = escalation.device_of_topic(message.topic)
        response_topic = getattr(message.properties, "ResponseTopic", None)
        if device is None or response_topic != escalation.answer_topic(device):
            # Answers only ever go to the sender's own answer topic.
            log.warning("worker: request on %s with response topic %r ignored", message.topic, response_topic)
            self.stats["ignored"] += 1
            return
        correlation = getattr(message.properties, "CorrelationData", None)
        try:
            request = escalation.decode_request(message.payload)
            request_id = _checked_request_id(request["id"])
        except escalation.EscalationError as error:
            self._refuse(response_topic, correlation, None, str(error))
            return
        if correlation is None:
            correlation = request_id.encode()
        try:
            _check_prediction(request["prediction"])
        except escalation.EscalationError as error:
            self._refuse(response_topic, correlation, request_id, str(error))
            return
        key = (device, request_id)
        payload = self.cache.get(key)
        if payload is None:
            payload = self._answer(request, device)
            self.cache.put(key, payload)
            self.stats["answered"] += 1
        else:
            self.stats["cache_hits"] += 1
        self._publish(response_topic, correlation, payload)

    def _refuse(self, response_topic: str, correlation: bytes | None, request_id: str | None, reason: str) -> None:
        """A request off the schema: an error answer when the sender can match it (its id, or correlation data),
        else nothing; counted either way."""
        if correlation is None:
            log.warning("worker: request for %s ignored (no id to answer): %s", response_topic, reason)
            self.stats["ignored"] += 1
            return
        if request_id is None:
            request_id = correlation.decode(errors="replace")
        try:
            payload = escalation.encode(escalation.build_answer(request_id, None, worker=self.name, error=reason))
        except escalation.EscalationError:  # e.g. 64 KB of correlation data: no answer can carry it back
            log.warning("worker: request for %s dropped: its error answer would exceed the size limit", response_topic)
            self.stats["dropped"] += 1
            return
        self.stats["bad_requests"] += 1
        self._publish(response_topic, correlation, payload)

    def _publish(self, topic: str, correlation: bytes, payload: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        props.MessageExpiryInterval = self.answer_expiry_s
        props.ContentType = "application/json"
        self.link.client.publish(topic, payload, qos=1, properties=props)

    def _answer(self, request: dict, device: str = "") -> bytes:
        try:
            body, error = self.responder(request), None
        except Exception as failure:  # the device gets a reason, not silence
            log.exception("worker: responder failed on %s", request["id"])
            body, error = None, f"{type(failure).__name__}: {failure}"
            self.stats["errors"] += 1
        try:
            payload = escalation.encode(escalation.build_answer(request["id"], body, worker=self.name, error=error))
        except (escalation.EscalationError, TypeError, ValueError) as failure:
            return escalation.encode(
                escalation.build_answer(request["id"], None, worker=self.name, error=f"answer not encodable: {failure}")
            )
        if self.dataset is not None and error is None:
            self._keep(device, request, body)
        return payload

    def _keep(self, device: str, request: dict, body: dict) -> None:
        """The answered escalation into the dataset; one that is off its schema or still holds what the PII
        scanner finds is dropped and counted (its reason logged, never its text)."""
        from .flywheel import LeftoverPII, RecordError, record_from_escalation

        try:
            record = record_from_escalation(device, request, body, teacher=self.teacher)
            if not self.dataset.append(record):
                log.warning("worker: escalation %.128s not kept in the dataset: its queue is full", request["id"])
        except RecordError as reason:
            log.warning("worker: escalation %.128s from %s not kept in the dataset: %s", request["id"], device, reason)
            self.stats["dataset_pii" if isinstance(reason, LeftoverPII) else "dataset_rejected"] += 1
        except Exception:  # whatever else goes wrong here, the device still gets its answer
            log.exception("worker: escalation %.128s not kept in the dataset", request["id"])
            self.stats["dataset_errors"] += 1


def _checked_request_id(request_id: str) -> str:
    """The id goes back in the answer and as correlation data: bounded, and encodable as UTF-8."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise escalation.EscalationError(
            f"request id is {len(request_id)} characters; the limit is {MAX_REQUEST_ID_CHARS}"
        )
    try:
        request_id.encode()
    except UnicodeEncodeError:
        raise escalation.EscalationError("request id is not valid Unicode (a lone surrogate)") from None
    return request_id


def _check_prediction(prediction) -> None:
    """The device's prediction, as escalation.build_request writes it: null, or an object whose top_k (if any)
    is a list of {"label": str, "score": number} (the responder pools them: combine.py)."""
    if prediction is None:
        return
    if not isinstance(prediction, dict):
        raise escalation.EscalationError("escalation.request prediction must be an object or null")
    top_k = prediction.get("top_k")
    if top_k is None:
        return
    if not isinstance(top_k, list) or not all(
        isinstance(item, dict)
        and isinstance(item.get("label"), str)
        and isinstance(item.get("score"), (int, float))
        and not isinstance(item.get("score"), bool)
        and math.isfinite(item["score"])
        for item in top_k
    ):
        raise escalation.EscalationError('escalation.request prediction.top_k must be a list of {"label", "score"}')
