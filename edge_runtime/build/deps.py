"""Check that the [build] extra is installed, without importing it (torch takes seconds to import)."""

from __future__ import annotations

import importlib.util

from .errors import MissingBuildDeps

# import name -> what is missing when it cannot be found
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "optimum.exporters.onnx": "optimum-onnx",
    "onnx": "onnx",
    "sklearn": "scikit-learn",
    "faker": "faker",  # the PII tagger's corpus: checked up front so a build never dies halfway for it
}


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the module is blocked
        return False


def missing_build_deps(needed=REQUIRED) -> list[str]:
    return [name for module, name in needed.items() if not _present(module)]


def require_build_deps(needed=REQUIRED) -> None:
    missing = missing_build_deps(needed)
    if missing:
        raise MissingBuildDeps(missing)
