"""The device side of escalation: outbox -> MQTT 5 request -> answer, with deadlines and re-sends.

One pump thread owns the outbox connection and all bookkeeping; paho's network thread only turns
callbacks into events. The pump group-commits new requests (one fsync per batch) before publishing
them, publishes only while connected and at most `max_inflight` unanswered at a time (paho would
flood its whole backlog on reconnect), and re-sends everything unanswered on reconnect and after
`resend_after_s`. Ids make duplicates harmless: a second answer for an id is ignored.

When the outbox cannot store a batch (OutboxUnavailable: a full disk, a corrupt or unwritable file) its
requests are not sent: their futures fail at once with that error, so the caller answers locally
instead of promising a deferred answer that nothing holds. Each future's `settled` event is set once
the request is stored or finished, so a caller whose deadline passed can tell the two apart.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import escalation
from .errors import EdgeRuntimeError
from .mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from .outbox import Outbox, OutboxUnavailable

log = logging.getLogger(__name__)


class UplinkError(EdgeRuntimeError):
    """An escalation failed for good (rejected by the broker, evicted by a budget)."""


class EscalationRejected(UplinkError):
    def __init__(self, request_id: str, reason_code: int, reason: str):
        super().__init__(
            f"escalation {request_id} rejected by the broker: {reason} ({reason_code}); moved to dead letters"
        )
        self.request_id, self.reason_code = request_id, reason_code


class EscalationEvicted(UplinkError):
    pass


class PendingAnswer(Future):
    """The Future of one escalation's answer message, knowing its request id."""

    def __init__(self, request_id: str):
        super().__init__()
        self.request_id = request_id
        self.settled = threading.Event()  # stored in the outbox, or finished (answered or failed)


@dataclass(frozen=True)
class UplinkOptions:
    max_inflight: int = 256  # published and not yet answered
    resend_after_s: float = 30.0  # re-send an unanswered request this long after its last send
    message_expiry_s: int = 3600
    session_expiry_s: int = 86400
    tick_s: float = 0.25  # timer granularity for re-sends and budget checks
    budget_every_s: float = 5.0


class Uplink:
    def __init__(
        self,
        device_id: str,
        broker: BrokerConfig,
        outbox: Outbox | None = None,
        *,
        bundle: tuple[str, str] = ("", ""),
        options: UplinkOptions = UplinkOptions(),
        on_answer: Callable[[str, dict], None] | None = None,
        client_id: str | None = None,
    ):
        self.device_id = escalation.check_device_id(device_id)
        self.outbox = outbox if outbox is not None else Outbox()
        self.bundle, self.options, self.on_answer = bundle, options, on_answer
        self.topic = escalation.escalation_topic(device_id)
        self.answers = escalation.answer_topic(device_id)
        self.link = Link(
            broker,
            client_id or f"edge-{device_id}",
            [Subscription(self.answers, 1)],
            LinkHandlers(
                on_message=self._on_message,
                on_connected=self._on_connected,
                on_disconnected=self._on_disconnected,
                on_publish=self._on_publish,
            ),
            clean_start=False,
            session_expiry_s=options.session_expiry_s,
        )
        self.stats = collections.Counter()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._futures: dict[str, PendingAnswer] = {}
        self._deferred: set[str] = set()
        # pump-thread state
        self._ready: collections.deque[str] = collections.deque()
        self._known: set[str] = set()  # ready or in flight
        self._inflight: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._payloads: dict[str, bytes] = {}
        self._mids: dict[int, str] = {}
        self._mid_of: dict[str, int] = {}
        self._sent: list[str] = []
        self._connected = False
        self._thread: threading.Thread | None = None

    # -- public API ------------------------------------------------------------------------------
    def start(self) -> Uplink:
        for request_id in self.outbox.pending_ids():  # unanswered from before: re-send, same id
            self._enqueue(request_id)
        self._thread = threading.Thread(target=self._pump, name=f"uplink-{self.device_id}", daemon=True)
        self._thread.start()
        self.link.start()
        return self

    def stop(self) -> None:
        if self._thread:
            self._events.put(("stop",))
            self._thread.join()
            self._thread = None
        self.link.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.link.wait_ready(timeout)

    def submit(self, text: str, prediction=None, *, request_id: str | None = None, reason: str = "") -> PendingAnswer:
        """Queue an escalation; the Future resolves to the answer message (a dict), exactly once."""
        message = escalation.build_request(
            text, prediction, device_id=self.device_id, request_id=request_id, reason=reason, bundle=self.bundle
        )
        payload = escalation.encode(message)  # refuses > 128 KB with a clear error
        request_id = message["id"]
        with self._lock:
            future = self._futures.get(request_id)
            if future is not None:
                return future
            future = PendingAnswer(request_id)
            self._futures[request_id] = future
        self._events.put(("submit", request_id, payload))
        return future

    def escalate(
        self, text: str, prediction=None, *, deadline_s: float, request_id: str | None = None, reason: str = ""
    ) -> dict | None:
        """The answer message within `deadline_s`, else None (deferred: the answer is stored later
        in the outbox, see `answer(request_id)`)."""
        future = self.submit(text, prediction, request_id=request_id, reason=reason)
        try:
            return future.result(timeout=deadline_s)
        except FutureTimeout:
            with self._lock:
                if future.request_id in self._futures:
                    self._deferred.add(future.request_id)
                    self.stats["deferred"] += 1
                    return None
            return future.result()  # answered while we took the lock

    def answer(self, request_id: str) -> dict | None:
        return self.outbox.answer(request_id)

    # -- paho network thread: callbacks become events --------------------------------------------
    def _on_message(self, message: paho.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        self._events.put(("answer", correlation, message.payload))

    def _on_connected(self, session_present: bool) -> None:
        self._events.put(("connected", session_present))

    def _on_disconnected(self) -> None:
        self._events.put(("disconnected",))

    def _on_publish(self, mid: int, reason_code: int, reason: str) -> None:
        if reason_code >= 0x80:  # < 0x80 (incl. 16 "no matching subscribers") is success
            self._events.put(("rejected", mid, reason_code, reason))

    # -- pump thread -----------------------------------------------------------------------------
    def _pump(self) -> None:
        next_tick = next_budget = time.monotonic()
        running = True
        while running:
            try:
                batch = [self._events.get(timeout=max(0.0, next_tick - time.monotonic()))]
            except queue.Empty:
                batch = []
            while len(batch) < 4096:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            try:
                running = self._handle(batch)
                now = time.monotonic()
                if now >= next_tick:
                    self._resend_overdue(now)
                    next_tick = now + self.options.tick_s
                if now >= next_budget:
                    self._check_budgets()
                    next_budget = now + self.options.budget_every_s
                if running:
                    self._dispatch()
            except OutboxUnavailable as error:  # budgets or re-sends could not read it: counted, try again later
                log.warning("uplink: %s", error)
                time.sleep(0.1)
            except Exception:  # keep the pump alive; state is in SQLite
                log.exception("uplink pump error")
                time.sleep(0.1)
        if self._sent:
            self.outbox.mark_sent(self._sent)

    def _handle(self, batch: list[tuple]) -> bool:
        running = True
        submits, answers, rejected = [], [], []
        for event in batch:
            kind = event[0]
            if kind == "submit":
                submits.append(event[1:])
            elif kind == "answer":
                answers.append(event[1:])
            elif kind == "rejected":
                rejected.append(event[1:])
            elif kind == "connected":
                self._connected = True
                self._requeue_inflight()
            elif kind == "disconnected":
                self._connected = False
                self.stats["disconnects"] += 1
            elif kind == "stop":
                running = False
        if not (submits or answers or rejected or self._sent):
            return running
        decoded = self._decode_answers(answers)
        rejected_ids = [(self._mids.pop(mid, None), code, reason) for mid, code, reason in rejected]
        try:
            with self.outbox.transaction(durable=bool(submits or rejected)):
                added = self.outbox.add([(rid, payload) for rid, payload in submits]) if submits else None
                fresh = self.outbox.record_answers([(rid, raw) for rid, raw, _ in decoded]) if decoded else []
                dead = [
                    (rid, code, reason)
                    for rid, code, reason in rejected_ids
                    if rid and self.outbox.dead_letter(rid, f"broker refused: {reason} ({code})")
                ]
                if self._sent:
                    self.outbox.mark_sent(self._sent)
        except OutboxUnavailable as error:
            self._outbox_failed(submits, decoded, error)
            return running
        finally:
            self._sent = []  # attempt counts are informative: not worth holding memory for
        if added:
            payloads = dict(submits)
            for request_id in added.new:
                self._payloads[request_id] = payloads[request_id]
                self._enqueue(request_id)
                self._settle(request_id)
            for request_id, raw in added.already_answered.items():
                self._finish(request_id, result=escalation.decode_answer(raw))
            for request_id, reason in added.evicted:
                self._finish(request_id, error=EscalationEvicted(f"escalation {request_id} {reason}"))
                self.stats["evicted"] += 1
        self._deliver(decoded, set(fresh))
        for request_id, code, reason in dead:
            self.stats["rejected"] += 1
            self._finish(request_id, error=EscalationRejected(request_id, code, reason))
        return running

    def _outbox_failed(self, submits, decoded, error: OutboxUnavailable) -> None:
        """Nothing of the batch was stored: fail its new requests (sent nowhere, kept local by the caller)
        and still hand the answers that arrived to whoever waits for them."""
        for request_id, _ in submits:
            self.stats["outbox_unavailable"] += 1
            self._finish(request_id, error=OutboxUnavailable(f"escalation {request_id} not stored: {error}"))
        waiting = {request_id for request_id, _, _ in decoded if request_id in self._futures}
        self._deliver([d for d in decoded if d[0] in waiting], waiting, store_late=False)

    def _settle(self, request_id: str) -> None:
        with self._lock:
            future = self._futures.get(request_id)
        if future is not None:
            future.settled.set()

    def _decode_answers(self, answers: list[tuple]) -> list[tuple[str, bytes, dict]]:
        decoded = []
        for correlation, raw in answers:
            try:
                message = escalation.decode_answer(raw)
            except escalation.EscalationError as error:
                log.warning("uplink: ignoring a malformed answer: %s", error)
                self.stats["bad_answers"] += 1
                continue
            if correlation is not None and correlation != message["id"].encode():
                log.warning("uplink: answer %s has correlation data %r; ignored", message["id"], correlation)
                self.stats["bad_answers"] += 1
                continue
            decoded.append((message["id"], raw, message))
        return decoded

    def _deliver(self, decoded, fresh: set[str], store_late: bool = True) -> None:
        late = 0
        for request_id, _, message in decoded:
            if request_id not in fresh:
                self.stats["duplicate_answers"] += 1
                continue
            fresh.discard(request_id)  # a second copy in the same batch is a duplicate
            self.stats["answered"] += 1
            late += self._finish(request_id, result=message)
            if self.on_answer:
                self.on_answer(request_id, message)
        if late:
            self.stats["answers_after_deadline"] += late
            if store_late:
                self.outbox.bump("answers_after_deadline", late)

    def _finish(self, request_id: str, *, result=None, error=None) -> int:
        """Resolve the caller's future once and forget the request; returns 1 if it was deferred."""
        self._known.discard(request_id)
        self._inflight.pop(request_id, None)
        self._payloads.pop(request_id, None)
        mid = self._mid_of.pop(request_id, None)
        if mid is not None:
            self._mids.pop(mid, None)
        with self._lock:
            future = self._futures.pop(request_id, None)
            was_deferred = request_id in self._deferred
            self._deferred.discard(request_id)
            if future is not None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
                future.settled.set()
        return int(was_deferred)

    def _enqueue(self, request_id: str) -> None:
        if request_id not in self._known:
            self._known.add(request_id)
            self._ready.append(request_id)

    def _requeue_inflight(self) -> None:
        """After a (re)connect everything unanswered goes out again, oldest first."""
        self._ready.extendleft(reversed(self._inflight))
        self.stats["resent"] += len(self._inflight)
        self._inflight.clear()
        self._mids.clear()
        self._mid_of.clear()

    def _resend_overdue(self, now: float) -> None:
        overdue = []
        for request_id, sent_at in self._inflight.items():
            if now - sent_at < self.options.resend_after_s:
                break
            overdue.append(request_id)
        for request_id in overdue:
            del self._inflight[request_id]
        self._ready.extendleft(reversed(overdue))
        self.stats["resent"] += len(overdue)

    def _check_budgets(self) -> None:
        for request_id, reason in self.outbox.enforce_budgets():
            self.stats["evicted"] += 1
            self._finish(request_id, error=EscalationEvicted(f"escalation {request_id} {reason}"))
        for request_id in self.outbox.pending_ids():  # e.g. `outbox retry` from another process
            self._enqueue(request_id)

    def _properties(self, request_id: str) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.answers
        props.CorrelationData = request_id.encode()
        props.MessageExpiryInterval = self.options.message_expiry_s
        props.ContentType = "application/json"
        props.UserProperty = [
            ("schema", str(escalation.SCHEMA_VERSION)),
            ("bundle", self.bundle[0]),
            ("bundle-version", self.bundle[1]),
        ]
        return props

    def _dispatch(self) -> None:
        if not (self._connected and self.link.connected.is_set()):
            return
        client = self.link.client
        while self._ready and len(self._inflight) < self.options.max_inflight:
            request_id = self._ready.popleft()
            if request_id not in self._known or request_id in self._inflight:
                continue
            payload = self._payloads.get(request_id) or self.outbox.payload(request_id)
            if payload is None:  # answered or purged meanwhile
                self._known.discard(request_id)
                continue
            info = client.publish(self.topic, payload, qos=1, properties=self._properties(request_id))
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                self._ready.appendleft(request_id)
                break
            old = self._mid_of.pop(request_id, None)
            if old is not None:
                self._mids.pop(old, None)
            self._mids[info.mid] = request_id
            self._mid_of[request_id] = info.mid
            self._inflight[request_id] = time.monotonic()
            self._sent.append(request_id)
            self.stats["published"] += 1
            self.stats["bytes_published"] += len(payload)  # the escalation's JSON, resends included
            if info.rc == paho.MQTT_ERR_NO_CONN:  # paho keeps it and sends on reconnect
                break
