"""Hot swap: the active bundle is loaded in the background and replaces the serving one atomically.

A batch takes `HotSwap.current` once when it starts, so in-flight batches finish on the old engine;
the old session is freed when its last batch drops it. A load that fails leaves the old one serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..pipeline import Pipeline

log = logging.getLogger(__name__)

WARM_UP = ["what is my account balance", "set an alarm for seven tomorrow morning"]


@dataclass
class Outcome:
    prediction: object  # results.Prediction
    pending: object | None  # concurrent Future of the upstream answer, when one was sent
    engine: Engine


class Engine:
    """One loaded bundle with its routing and escalation path: what a batch runs on."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.model = pipeline.model
        self.name, self.version = self.model.name, self.model.version
        self.release = self.model.manifest.raw.get("release")
        self.loaded_at = time.time()

    def warm_up(self) -> None:
        self.model.predict(WARM_UP)  # the first runs allocate onnxruntime's arena

    def run(self, texts: list[str]) -> list[Outcome]:
        # dispatch, not predict: the handler awaits each upstream answer, so the batcher thread never
        # blocks on the uplink's deadline
        return [Outcome(prediction, pending, self) for prediction, pending in self.pipeline.dispatch(texts)]


class HotSwap:
    def __init__(
        self,
        load_engine: Callable[[], Engine],
        active: Callable[[], tuple[str, str] | None],
        on_swap: Callable[[Engine], None] | None = None,
    ):
        self.load_engine, self.active, self.on_swap = load_engine, active, on_swap
        self._lock = threading.Lock()  # one reload at a time
        self.current = load_engine()
        self.current.warm_up()
        self.reloads = 0

    def run(self, texts: list[str]) -> list[Outcome]:
        return self.current.run(texts)

    def reload(self, force: bool = False) -> dict:
        """Load the store's active bundle and swap it in (blocking: call from a thread)."""
        with self._lock:
            old = self.current
            try:
                wanted = self.active()
                if not force and wanted == (old.name, old.version):
                    return {"result": "unchanged", "model": old.name, "version": old.version}
                started = time.perf_counter()
                engine = self.load_engine()
                engine.warm_up()
            except Exception as error:  # keep serving the old model
                log.error("reload failed; still serving %s@%s: %s", old.name, old.version, error)
                return {"result": "failed", "model": old.name, "version": old.version, "error": str(error)}
            self.current = engine  # atomic: the next batch runs on the new engine
            self.reloads += 1
            if self.on_swap:
                self.on_swap(engine)
            seconds = time.perf_counter() - started
            log.info(
                "swapped %s@%s -> %s@%s",
                old.name,
                old.version,
                engine.name,
                engine.version,
                extra={"load_s": round(seconds, 3)},
            )
            return {
                "result": "swapped",
                "model": engine.name,
                "version": engine.version,
                "previous": {"model": old.name, "version": old.version},
                "load_s": round(seconds, 3),
            }
