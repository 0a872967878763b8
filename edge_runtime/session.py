"""The onnxruntime session, set up for low latency and small memory on a CPU device.

Telemetry is switched off before onnxruntime is imported (ORT_DISABLE_TELEMETRY=1: no device id or
offline cache under ~/.cache/Microsoft). The graph optimised for this machine is cached on disk so a
cold start skips the optimisation passes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

ort.disable_telemetry_events()


@dataclass
class SessionSettings:
    threads: int = 0  # intra-op threads; 0 = one per physical core
    cache_dir: Path | None = None  # where optimised graphs are kept; None = no cache
    spinning: bool = True  # spinning threads cost CPU but save ~1 ms at batch 1


def _cached_graph(model_path: Path, cache_dir: Path, digest: str | None) -> Path:
    if digest is None:
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return cache_dir / f"{digest[:32]}-ort{ort.__version__}.onnx"


class Session:
    def __init__(self, model_path: Path, settings: SessionSettings | None = None, model_sha256: str | None = None):
        settings = settings or SessionSettings()
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if not settings.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = Path(model_path)
        if settings.cache_dir is not None:
            cached = _cached_graph(source, Path(settings.cache_dir), model_sha256)
            if cached.exists():
                source = cached
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            else:
                # EXTENDED, not ALL: the saved graph must stay portable across CPUs of the fleet;
                # the remaining layout passes are cheap and run at every load.
                cached.parent.mkdir(parents=True, exist_ok=True)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
                options.optimized_model_filepath = str(cached.with_suffix(f".{os.getpid()}.tmp"))
        self._session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        if options.optimized_model_filepath:
            os.replace(options.optimized_model_filepath, cached)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, tensors: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        feeds = {name: tensors[name] for name in self.input_names}
        return self._session.run(outputs, feeds)


def version() -> str:
    return ort.__version__


def providers() -> list[str]:
    return ort.get_available_providers()
