"""Reasons a build stops. All are EdgeRuntimeError, so the CLI prints one line and exits 1."""

from __future__ import annotations

from ..errors import EdgeRuntimeError

INSTALL_HINT = (
    "the build toolchain needs the [build] extra: pip install torch==2.13.0 && pip install 'edge-runtime[build]'"
)


class BuildError(EdgeRuntimeError):
    """The build cannot go on (bad input data, missing source model, bad recipe...)."""


class MissingBuildDeps(BuildError):
    """torch / optimum / transformers / onnx / scikit-learn are not installed."""

    def __init__(self, missing: list[str]):
        super().__init__(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
        self.missing = missing


class GateError(BuildError):
    """The INT8 model lost too much against fp32: nothing was emitted."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}
