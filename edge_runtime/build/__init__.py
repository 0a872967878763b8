"""The build toolchain: HF model -> ONNX -> head -> INT8 -> gate -> signed bundle.

Needs the optional [build] extra (torch, optimum, transformers, onnx, scikit-learn); the heavy
imports happen inside the step functions, so importing this package stays cheap.
"""

from __future__ import annotations

from .deps import missing_build_deps, require_build_deps
from .errors import BuildError, GateError, MissingBuildDeps

__all__ = ["BuildError", "GateError", "MissingBuildDeps", "missing_build_deps", "require_build_deps"]
