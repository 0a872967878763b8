"""The pre- and post-processing core.

Each kernel module exists twice with the same functions and signatures:
  edge_runtime.kernels._<name>      compiled from kernels/<name>.pyx (Cython)
  edge_runtime.kernels.pure.<name>  the pure-Python/NumPy twin

The compiled modules are used when they import; EDGE_RUNTIME_PURE_PYTHON=1 forces the twins
(as MSGPACK_PUREPYTHON does for msgpack). `IMPLEMENTATION` says which one is active.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

MODULES = ("batching", "classify", "pooling", "tokencls", "pii", "ood")


def _pure_forced() -> bool:
    return os.environ.get("EDGE_RUNTIME_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")


def pure_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.pure.{name}")


def compiled_module(name: str) -> ModuleType | None:
    """The compiled twin, or None when the extension was not built."""
    try:
        return importlib.import_module(f"{__name__}._{name}")
    except ImportError:
        return None


def _choose() -> tuple[str, dict[str, ModuleType]]:
    if not _pure_forced():
        compiled = {name: compiled_module(name) for name in MODULES}
        if all(module is not None for module in compiled.values()):
            return "cython", compiled
    return "python", {name: pure_module(name) for name in MODULES}


IMPLEMENTATION, _ACTIVE = _choose()

batching = _ACTIVE["batching"]
classify = _ACTIVE["classify"]
pooling = _ACTIVE["pooling"]
tokencls = _ACTIVE["tokencls"]
pii = _ACTIVE["pii"]
ood = _ACTIVE["ood"]

__all__ = [
    "IMPLEMENTATION",
    "MODULES",
    "batching",
    "classify",
    "pooling",
    "tokencls",
    "pii",
    "ood",
    "pure_module",
    "compiled_module",
]
