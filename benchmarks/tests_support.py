"""The tests' helpers (tests/support) for the benchmarks that need a broker, a test bundle or the fleet
harness. They are found on PYTHONPATH, as pytest finds them (`pythonpath` in pyproject.toml): run such a
benchmark from the checkout as `PYTHONPATH=tests python benchmarks/<name>.py`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def load(module: str) -> ModuleType:
    """tests/support/<module>, or exit saying how to run the benchmark."""
    try:
        return importlib.import_module(f"support.{module}")
    except ModuleNotFoundError as missing:
        if missing.name != "support":
            raise
        script = Path(sys.argv[0]).name
        sys.exit(f"{script} uses the tests' helpers (tests/support): run `PYTHONPATH=tests python benchmarks/{script}`")
