"""The onnxruntime session, set up for low latency and small memory on a CPU device.

Telemetry is switched off before onnxruntime is imported (ORT_DISABLE_TELEMETRY=1: no device id or
offline cache under ~/.cache/Microsoft). The graph optimised for this machine is cached on disk so a
cold start skips the optimisation passes; the cache is keyed and hashed (GraphCache) and never trusted
over the verified model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from . import fsutil  # noqa: E402

ort.disable_telemetry_events()
log = logging.getLogger(__name__)
PROVIDERS = ["CPUExecutionProvider"]


@dataclass
class SessionSettings:
    threads: int = 0  # intra-op threads; 0 = one per physical core
    cache_dir: Path | None = None  # where optimised graphs are kept; None = no cache
    spinning: bool = True  # spinning threads cost CPU but save ~1 ms at batch 1


# EXTENDED, not ALL: the saved graph must stay portable across CPUs of the fleet; the remaining layout
# passes are cheap and run at every load. Part of the cache key: another level is another graph.
CACHE_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


class GraphCache:
    """The optimised graph of one verified model, kept in `cache_dir` so a cold start skips the passes.

    Its name is a key over what makes the graph: the verified model's sha256, the onnxruntime version and
    the optimisation level. A sidecar `<key>.sha256` holds the graph's own sha256; both are written with
    fsync and rename (fsutil), and the graph is used only when its bytes hash to the sidecar's value. A
    graph that is missing, altered or does not load is deleted and rebuilt from the verified model.
    """

    def __init__(self, cache_dir: Path, model_sha256: str):
        material = f"{model_sha256}\0ort {ort.__version__}\0level {int(CACHE_LEVEL)}".encode()
        key = hashlib.sha256(material).hexdigest()[:40]
        self.graph = Path(cache_dir) / f"{key}.onnx"
        self.digest_file = self.graph.with_name(f"{key}.sha256")

    def read(self) -> bytes | None:
        """The cached graph's bytes when they hash to the recorded digest; else None (and the bad files go)."""
        try:
            expected = self.digest_file.read_text(encoding="ascii").strip()
            data = self.graph.read_bytes()
        except (OSError, UnicodeDecodeError):
            self.discard()
            return None
        if hashlib.sha256(data).hexdigest() != expected:
            log.warning("optimised-graph cache %s does not match its hash; rebuilding it", self.graph.name)
            self.discard()
            return None
        return data

    def store(self, written: Path) -> None:
        """Adopt the graph onnxruntime wrote to `written`: fsync and rename it, then its digest."""
        try:
            data = written.read_bytes()
            fsutil.atomic_write_bytes(self.graph, data)
            fsutil.atomic_write_bytes(self.digest_file, hashlib.sha256(data).hexdigest().encode() + b"\n")
        except OSError as error:  # a cache: the session runs without it
            log.warning("cannot write the optimised-graph cache %s: %s", self.graph, error)
            self.discard()
        finally:
            written.unlink(missing_ok=True)

    def discard(self) -> None:
        for path in (self.digest_file, self.graph):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


def _options(settings: SessionSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if not settings.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Session:
    def __init__(self, model_path: Path, settings: SessionSettings | None = None, model_sha256: str | None = None):
        settings = settings or SessionSettings()
        model_path = Path(model_path)
        self._session = None
        if settings.cache_dir is not None:
            digest = model_sha256 or hashlib.sha256(model_path.read_bytes()).hexdigest()
            cache = GraphCache(Path(settings.cache_dir), digest)
            self._session = self._from_cache(cache, settings) or self._building_cache(model_path, cache, settings)
        else:
            self._session = ort.InferenceSession(str(model_path), _options(settings), providers=PROVIDERS)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    @staticmethod
    def _from_cache(cache: GraphCache, settings: SessionSettings):
        graph = cache.read()  # the bytes that were hashed are the bytes loaded: no swap in between
        if graph is None:
            return None
        options = _options(settings)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return _session_from_bytes(graph, options)
        except Exception as error:  # onnxruntime raises its own types: any failure means rebuild
            log.warning("optimised-graph cache %s does not load (%s); rebuilding it", cache.graph.name, error)
            cache.discard()
            return None

    @staticmethod
    def _building_cache(model_path: Path, cache: GraphCache, settings: SessionSettings):
        options = _options(settings)
        options.graph_optimization_level = CACHE_LEVEL
        cache.graph.parent.mkdir(parents=True, exist_ok=True)
        written = cache.graph.with_name(f".{cache.graph.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        options.optimized_model_filepath = str(written)
        session = ort.InferenceSession(str(model_path), options, providers=PROVIDERS)
        cache.store(written)
        return session

    def run(self, tensors: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        feeds = {name: tensors[name] for name in self.input_names}
        return self._session.run(outputs, feeds)


def _session_from_bytes(graph: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session over exactly these bytes. Through a memfd where Linux has one: onnxruntime keeps ~22 MB
    more resident for a 23 MB model handed over as bytes than for the same model read from a file
    (benchmarks/memory.py), and a memfd is a file only this process can reach, so the bytes that were
    hashed are still the bytes loaded."""
    if not hasattr(os, "memfd_create"):
        return ort.InferenceSession(graph, options, providers=PROVIDERS)
    fd = os.memfd_create("edge-runtime-graph", os.MFD_CLOEXEC)
    try:
        view = memoryview(graph)
        while view:
            view = view[os.write(fd, view) :]
        return ort.InferenceSession(f"/proc/self/fd/{fd}", options, providers=PROVIDERS)
    finally:
        os.close(fd)


def version() -> str:
    return ort.__version__


def providers() -> list[str]:
    return ort.get_available_providers()
