"""What the HTTP routes call: admission, batching, deadlines, escalation answers, status.

It owns the long-lived parts (outbox, uplink, egress, batcher, hot swap, metrics); engines come and go.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from dataclasses import replace

from .. import __version__, kernels, paths
from ..audit import AuditLog
from ..config import privacy_policy, routing_overrides
from ..egress import Egress
from ..errors import EdgeRuntimeError
from ..outbox import Outbox
from ..pii_tagger import load_tagger
from ..pipeline import Pipeline
from ..results import DEFERRED
from ..router import Router, RoutingPolicy
from .batching import Batcher, QueueFull, Stopped
from .errors import RequestError
from .metrics import Metrics
from .swap import Engine, HotSwap

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config):
        self.config = config
        self.started = time.time()
        self.metrics = Metrics()
        self.counters: collections.Counter = collections.Counter()  # texts answered, by decision
        self.rejected: collections.Counter = collections.Counter()  # requests refused, by reason
        self.draining = False
        self.outbox = Outbox(paths.state_dir() / "outbox.sqlite")
        privacy = config["privacy"]
        self.egress = Egress(
            privacy_policy(config),
            audit=AuditLog(paths.state_dir() / "audit.jsonl"),
            tagger=load_tagger(privacy["tagger"], required=privacy["require_tagger"]),
        )
        if privacy["tagger"] and self.egress.tagger is None:
            log.warning(
                "PII tagger %s is not installed: names and addresses in escalations are not redacted "
                "(edge-runtime build pii-tagger)",
                privacy["tagger"],
            )
        uplink_config = config["uplink"]
        self.device_id = uplink_config["device_id"] or socket.gethostname()
        self.uplink = None
        self.swap = HotSwap(self._load_engine, self._active, on_swap=self._on_swap)
        if uplink_config["broker"]:
            self.uplink = _make_uplink(uplink_config, self.device_id, self.outbox, self.swap.current)
            self.swap.current.pipeline.uplink = self.uplink
        self._on_swap(self.swap.current)
        batching = config["batching"]
        self.batcher = Batcher(
            self.swap.run,
            max_batch=batching["max_batch"],
            max_delay_s=batching["max_delay_ms"] / 1000.0,
            max_queue=batching["max_queue"],
            on_batch=self.metrics.on_batch,
        )
        self._wire_gauges()

    # -- engines ---------------------------------------------------------------------------------
    def _active(self):
        from ..store import Store

        return Store().active()

    def _load_engine(self) -> Engine:
        from ..model import load

        model = load(None, threads=self.config["server"]["threads"], max_batch=self.config["batching"]["max_batch"])
        policy = RoutingPolicy.from_dict(model.manifest.raw.get("routing"), routing_overrides(self.config))
        pipeline = Pipeline(
            model,
            Router(policy),
            egress=self.egress,
            uplink=getattr(self, "uplink", None),
            outbox=self.outbox,
            device_id=self.device_id,
            deadline_s=self.config["uplink"]["deadline_ms"] / 1000.0,
        )
        return Engine(pipeline)

    def _on_swap(self, engine: Engine) -> None:
        self.metrics.set_model(engine.name, engine.version, engine.release)
        if self.uplink is not None:
            self.uplink.bundle = (engine.name, engine.version)

    def _wire_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set_function(lambda: self.batcher.depth)
        m.outbox_pending.set_function(lambda: self.outbox.summary()["pending"])
        m.outbox_dead.set_function(lambda: self.outbox.summary()["dead"])
        m.escalation_rate.set_function(lambda: self.swap.current.pipeline.router.escalation_rate)
        m.uptime.set_function(lambda: time.time() - self.started)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher.start(loop)
        if self.uplink is not None:
            self.uplink.start()

    def stop(self) -> None:
        self.batcher.stop(timeout=self.config["server"]["drain_timeout_s"])
        if self.uplink is not None:
            self.uplink.stop()
        self.outbox.close()

    async def reload(self, force: bool = False) -> dict:
        result = await asyncio.to_thread(self.swap.reload, force)
        self.metrics.reloads.labels(result["result"]).inc()
        tagger = await asyncio.to_thread(self._refresh_tagger)
        return {**result, "tagger": tagger.name if tagger else None}

    def _refresh_tagger(self):
        """The configured tagger, loaded anew when it was missing or another version now resolves: `build
        default` installs the tagger after the daemon may have started (`make demo` does just that)."""
        ref, current = self.config["privacy"]["tagger"], self.egress.tagger
        if not ref:
            return current
        from ..store import Store

        try:
            wanted = Store().resolve(ref)
        except EdgeRuntimeError:
            return current  # still not installed: keep what there is
        if current is not None and current.model.path == wanted:
            return current
        tagger = load_tagger(ref)
        if tagger is not None:
            self.egress.tagger = tagger  # one attribute store: the next escalation uses it
            log.info("PII tagger %s loaded", tagger.name)
        return self.egress.tagger

    # -- requests --------------------------------------------------------------------------------
    async def predict(self, texts: list[str]):
        """(engine, predictions) for the texts; RequestError 503 (queue full) or 504 (deadline)."""
        timeout = self.config["server"]["request_timeout_ms"] / 1000.0
        deadline = time.monotonic() + timeout
        try:
            future = self.batcher.submit(texts, deadline)
        except QueueFull as full:
            self.metrics.rejected.labels("queue_full").inc()
            self.rejected["queue_full"] += 1
            raise RequestError(
                503, "busy: the request queue is full, retry later", retry_after=full.retry_after_s
            ) from None
        except Stopped:
            raise RequestError(503, "the daemon is shutting down", retry_after=1) from None
        try:
            outcomes = await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels("deadline").inc()
            self.rejected["deadline"] += 1
            raise RequestError(504, f"deadline exceeded: no answer within {timeout * 1000:g} ms") from None
        predictions = [await self._resolve(outcome, deadline) for outcome in outcomes]
        for prediction in predictions:
            self.metrics.predictions.labels(prediction.decision).inc()
            self.counters[prediction.decision] += 1
        return outcomes[0].engine, predictions

    async def _resolve(self, outcome, deadline: float):
        """Wait (without holding the batcher) for an upstream answer, up to the uplink deadline."""
        if outcome.pending is None:
            return outcome.prediction
        pipeline = outcome.engine.pipeline
        wait = min(pipeline.deadline_s, max(0.0, deadline - time.monotonic()))
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(outcome.pending)), wait)
        except Exception:  # deadline, eviction, broker refusal: answered later
            return replace(outcome.prediction, decision=DEFERRED)
        return pipeline.resolve(outcome.prediction, outcome.pending)  # done: returns at once

    def answer(self, request_id: str) -> tuple[str, dict | None]:
        """("answered", answer) | ("pending", None) | ("unknown", None) for a deferred request."""
        answer = self.swap.current.pipeline.answer(request_id)
        if answer is not None:
            return "answered", answer
        if self.outbox.payload(request_id) is not None:
            return "pending", None
        return "unknown", None

    def status(self) -> dict:
        engine = self.swap.current
        summary = self.outbox.summary()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "model": {
                "name": engine.name,
                "version": engine.version,
                "release": engine.release,
                "task": engine.model.task,
                "loaded_at": engine.loaded_at,
            },
            "uptime_s": round(time.time() - self.started, 3),
            "draining": self.draining,
            "queue": {
                "depth": self.batcher.depth,
                "max": self.batcher.max_queue,
                "max_batch": self.batcher.max_batch,
                "batches": self.batcher.batches,
            },
            "counters": {
                "predictions": dict(self.counters),
                "rejected": dict(self.rejected),
                "reloads": self.swap.reloads,
            },
            "kernels": kernels.IMPLEMENTATION,
            "escalation_rate": engine.pipeline.router.escalation_rate,
            "uplink": None
            if self.uplink is None
            else {
                "device_id": self.device_id,
                "connected": self.uplink.link.connected.is_set(),
                "stats": dict(self.uplink.stats),
            },
            "outbox": {"pending": summary["pending"], "answered": summary["answered"], "dead": summary["dead"]},
            "privacy": {
                "tagger": self.egress.tagger.name if self.egress.tagger else None,
                "policy": self.egress.policy,
            },
        }


def _make_uplink(uplink_config: dict, device_id: str, outbox: Outbox, engine: Engine):
    from ..mqtt import BrokerConfig
    from ..uplink import Uplink

    broker = BrokerConfig.from_url(
        uplink_config["broker"],
        ca_file=uplink_config["ca_file"] or None,
        cert_file=uplink_config["cert_file"] or None,
        key_file=uplink_config["key_file"] or None,
        username=uplink_config["username"] or None,
        password=os.environ.get("EDGE_RUNTIME_MQTT_PASSWORD"),
        tls=True if (uplink_config["ca_file"] or uplink_config["cert_file"]) else None,
    )
    return Uplink(device_id, broker, outbox, bundle=(engine.name, engine.version))
