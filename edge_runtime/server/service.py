"""What the HTTP routes call: admission, batching, deadlines, escalation answers, status.

It owns the long-lived parts (outbox, uplink, egress, batcher, hot swap, metrics); engines come and go.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from .. import __version__, kernels
from ..device import Device
from ..errors import EdgeRuntimeError
from .batching import Batcher, QueueFull, Stopped
from .errors import RequestError
from .memory_budget import fit_max_batch, resident_mb, tagger_reserve_mb
from .metrics import Metrics
from .swap import Engine, HotSwap

log = logging.getLogger(__name__)

# the reasons (pipeline.send) for which an escalation stayed on the device to protect personal data
KEPT_LOCAL_FOR_PRIVACY = ("privacy_refused", "privacy_unavailable")


class Service:
    def __init__(self, config, device: Device | None = None):
        self.config = config
        self.device = device or Device(config)
        self.started = time.time()
        self.metrics = Metrics()
        self.draining = False
        # The long-lived parts first, then the engine: every engine's pipeline gets the same ones.
        self.outbox = self.device.outbox()
        self.egress = self.device.egress(tagger=self.device.tagger(lazy=True))
        self.uplink = self.device.uplink(self.outbox)
        batching = config["batching"]
        self.max_batch = batching["max_batch"]
        self.swap = HotSwap(self._load_engine, self._active, on_swap=self._on_swap)
        self.memory_budget = self._fit_memory_budget(batching["max_memory_mb"])
        self._on_swap(self.swap.current)
        self.batcher = Batcher(
            self.swap.run,
            max_batch=self.max_batch,
            max_delay_s=batching["max_delay_ms"] / 1000.0,
            max_queue=batching["max_queue"],
            on_batch=self.metrics.on_batch,
            workers=batching["workers"],
        )
        self._summary: tuple[float, dict] = (float("-inf"), {})
        self._wire_gauges()

    # -- engines ---------------------------------------------------------------------------------
    def _active(self):
        from ..store import Store

        return Store().active()

    def _load_engine(self) -> Engine:
        model = self.device.load_model(max_batch=self.max_batch)
        return Engine(self.device.pipeline(model, egress=self.egress, outbox=self.outbox, uplink=self.uplink))

    def _fit_memory_budget(self, budget_mb: int) -> dict | None:
        """Cap the batch so the resident set stays under `budget_mb` (measured with the model loaded at
        start; a later hot swap keeps the cap)."""
        if not budget_mb:
            return None
        model = self.swap.current.model
        fitted = fit_max_batch(model, budget_mb, tagger_reserve_mb(self.egress.tagger), self.max_batch)
        self.max_batch = model.max_batch = fitted["max_batch"]
        log.info("batch capped at %d texts for a %d MB memory budget", self.max_batch, budget_mb, extra=fitted)
        return fitted

    def _on_swap(self, engine: Engine) -> None:
        self.metrics.set_model(engine.name, engine.version, engine.release)
        if self.uplink is not None:
            self.uplink.bundle = (engine.name, engine.version)  # what the escalations say they came from

    def _wire_gauges(self) -> None:
        m = self.metrics
        m.queue_depth.set_function(lambda: self.batcher.depth)
        m.outbox_pending.set_function(lambda: self._outbox_summary()["pending"])
        m.outbox_dead.set_function(lambda: self._outbox_summary()["dead"])
        m.outbox_available.set_function(lambda: int(self.outbox.health()["state"] != "unavailable"))
        m.outbox_recovered.set_function(lambda: int(self.outbox.health()["moved_aside"] is not None))
        m.outbox_failures.set_function(lambda: self.outbox.health()["write_failures"])
        m.escalation_rate.set_function(lambda: self.swap.current.pipeline.router.escalation_rate)
        m.uptime.set_function(lambda: time.time() - self.started)
        m.privacy_available.set_function(lambda: self.egress.unavailable is None)
        m.tagger_loaded.set_function(lambda: int(self._tagger_loaded()))

    def _tagger_loaded(self) -> bool:
        tagger = self.egress.tagger
        return tagger is not None and getattr(tagger, "loaded", True)  # an eager PiiTagger is always loaded

    def unload_idle_tagger(self) -> bool:
        """Drop a lazy tagger's session when it has been idle long enough (the daemon calls this
        periodically); True when it did."""
        unload = getattr(self.egress.tagger, "unload_if_idle", None)
        return bool(unload and unload())

    def _outbox_summary(self) -> dict:
        """The outbox's counts, scanned at most once a second: one scrape reads two gauges from one scan.
        Called from worker threads only (/metrics and /v1/status render off the event loop)."""
        taken_at, summary = self._summary
        if time.monotonic() - taken_at > 1.0:
            summary = self.outbox.summary()
            self._summary = (time.monotonic(), summary)
        return summary

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
        if current is not None and current.path == wanted:
            return current
        tagger = self.device.tagger(required=False, lazy=True)  # a bad new tagger must not stop the serving one
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
            raise RequestError(
                503, "busy: the request queue is full, retry later", retry_after=full.retry_after_s
            ) from None
        except Stopped:
            raise RequestError(503, "the daemon is shutting down", retry_after=1) from None
        try:
            # Awaited directly: a wait_for around a shield costs two more event-loop turns per request. At the
            # deadline the future is cancelled, and the batcher skips (or does not deliver to) a done future.
            async with asyncio.timeout(timeout):
                outcomes = await future
        except TimeoutError:
            self.metrics.rejected.labels("deadline").inc()
            raise RequestError(504, f"deadline exceeded: no answer within {timeout * 1000:g} ms") from None
        predictions = [await self._resolve(outcome, deadline) for outcome in outcomes]
        for prediction in predictions:
            self.metrics.predictions.labels(prediction.decision).inc()
            if prediction.reason.startswith(KEPT_LOCAL_FOR_PRIVACY):
                self.metrics.kept_local.labels(prediction.reason.partition(":")[0]).inc()
        return outcomes[0].engine, predictions

    async def _resolve(self, outcome, deadline: float):
        """Wait (without holding the batcher) for an upstream answer, up to the uplink deadline."""
        if outcome.pending is None:
            return outcome.prediction
        pipeline = outcome.engine.pipeline
        wait = min(pipeline.deadline_s, max(0.0, deadline - time.monotonic()))
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(outcome.pending)), wait)
        except Exception:  # deadline (deferred, if stored), eviction, broker refusal, outbox unavailable
            if not outcome.pending.done():  # may wait for the uplink to store it: off the event loop
                return await asyncio.to_thread(pipeline.resolve, outcome.prediction, outcome.pending)
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
        summary = self._outbox_summary()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "model": {
                "name": engine.name,
                "version": engine.version,
                "release": engine.release,
                "task": engine.model.task,
                "loaded_at": engine.loaded_at,
                "live": engine.pipeline.counters.snapshot(),  # since this model was loaded
            },
            "uptime_s": round(time.time() - self.started, 3),
            "draining": self.draining,
            "memory": {"resident_mb": round(resident_mb(), 1), "budget": self.memory_budget},
            "queue": {
                "depth": self.batcher.depth,
                "max": self.batcher.max_queue,
                "max_batch": self.batcher.max_batch,
                "batches": self.batcher.batches,
            },
            "counters": {
                "predictions": self.metrics.totals(self.metrics.predictions),
                "rejected": self.metrics.totals(self.metrics.rejected),
                "reloads": self.swap.reloads,
            },
            "kernels": kernels.IMPLEMENTATION,
            "escalation_rate": engine.pipeline.router.escalation_rate,
            "uplink": None
            if self.uplink is None
            else {
                "device_id": self.uplink.device_id,
                "connected": self.uplink.connected,
                "stats": dict(self.uplink.stats),
            },
            "outbox": {
                "pending": summary["pending"],
                "answered": summary["answered"],
                "dead": summary["dead"],
                **self.outbox.health(),
            },
            "privacy": {
                "tagger": self.egress.tagger.name if self.egress.tagger else None,
                "tagger_loaded": self._tagger_loaded(),
                "tagger_loads": getattr(self.egress.tagger, "loads", None),  # a lazy tagger's loads since start
                "required_tagger": self.egress.required_tagger or None,
                "escalations_allowed": self.egress.unavailable is None,
                "unavailable": self.egress.unavailable,
                "kept_local": self.metrics.totals(self.metrics.kept_local),
                "policy": self.egress.policy,
            },
        }
