"""The onnxruntime session, set up for low latency and small memory on a CPU device.

Telemetry is switched off before onnxruntime is imported (ORT_DISABLE_TELEMETRY=1: no device id or
offline cache under ~/.cache/Microsoft). The graph optimised for this machine is cached on disk so a
cold start skips the optimisation passes; the cache is keyed and hashed (GraphCache) and never trusted
over the verified model.
"""

from __future__ import annotations

import ctypes
import functools
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


# A run over at most this many tokens (rows x columns) that follows a larger one hands the arena's spare
# chunks back to the system. onnxruntime's arena keeps the peak of every run for good: one batch of 32
# texts leaves ~60 MB behind on a board that mostly answers one text at a time. Shrinking on every run
# would cost large batches ~15% (benchmarks/memory.py); shrinking once the load has dropped costs one
# small run the unmapping, and a busy daemon, whose batches stay large, nothing.
SMALL_RUN_TOKENS = 256

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

    def read(self) -> PrivateCopy | None:
        """The cached graph, copied where no other process can change it, when its bytes hash to the
        recorded digest; else None (and the bad files go). The caller closes the copy."""
        try:
            expected = self.digest_file.read_text(encoding="ascii").strip()
            copy = PrivateCopy(self.graph)
        except (OSError, UnicodeDecodeError):
            self.discard()
            return None
        if copy.sha256 != expected:
            copy.close()
            log.warning("optimised-graph cache %s does not match its hash; rebuilding it", self.graph.name)
            self.discard()
            return None
        return copy

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
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._arena_grown = False  # a large run happened since the last shrink (a benign race between threads)
        self.shrinks = 0
        release_free_memory()  # parsing and optimising the graph left free heap behind

    @staticmethod
    def _from_cache(cache: GraphCache, settings: SessionSettings):
        graph = cache.read()  # the bytes that were hashed are the bytes loaded: no swap in between
        if graph is None:
            return None
        options = _options(settings)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(graph.source, options, providers=PROVIDERS)
        except Exception as error:  # onnxruntime raises its own types: any failure means rebuild
            log.warning("optimised-graph cache %s does not load (%s); rebuilding it", cache.graph.name, error)
            cache.discard()
            return None
        finally:
            graph.close()

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
        if next(iter(feeds.values())).size > SMALL_RUN_TOKENS:
            self._arena_grown = True
        elif self._arena_grown:
            self._arena_grown = False
            self.shrinks += 1
            result = self._session.run(outputs, feeds, self._shrink)
            release_free_memory()
            return result
        return self._session.run(outputs, feeds)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing). The
    arena's shrinkage and a dropped session free their memory into the heap, where it would stay
    resident: 22 MB after a few batches of 32 with the default model (benchmarks/memory.py)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


class PrivateCopy:
    """A file's bytes, copied where no other process can change them, and their sha256. `source` is what
    InferenceSession loads: on Linux the path of a memfd holding the bytes (streamed through in chunks),
    elsewhere the bytes themselves. Through a memfd onnxruntime keeps ~22 MB less resident for the 23 MB
    default model than when handed the bytes, and the load peaks one copy of the file lower
    (benchmarks/memory.py)."""

    CHUNK = 1 << 20

    def __init__(self, path: Path):
        digest = hashlib.sha256()
        self._fd: int | None = None
        if not hasattr(os, "memfd_create"):
            self.source: str | bytes | None = Path(path).read_bytes()
            digest.update(self.source)
        else:
            self._fd = os.memfd_create("edge-runtime-graph", os.MFD_CLOEXEC)
            try:
                with open(path, "rb") as handle:
                    while chunk := handle.read(self.CHUNK):
                        digest.update(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(self._fd, view) :]
            except BaseException:
                self.close()
                raise
            self.source = f"/proc/self/fd/{self._fd}"
        self.sha256 = digest.hexdigest()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.source = None


def version() -> str:
    return ort.__version__


def providers() -> list[str]:
    return ort.get_available_providers()
