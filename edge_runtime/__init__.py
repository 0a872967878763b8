"""edge-runtime: small INT8 ONNX models on edge devices.

    import edge_runtime
    model = edge_runtime.load()            # the active bundle of the local store
    model.predict(["what's my balance"])   # -> [Prediction(label=..., score=..., decision=...)]

Importing this package never imports torch, transformers or optimum.
"""

from __future__ import annotations

# The one place the version is written: pyproject.toml reads it from here without importing the package
# ([tool.setuptools.dynamic]), and the CLI, the daemon and the bundle builder import it.
__version__ = "0.1.0"


def load(ref=None, **options):
    """Load a verified bundle (path, store name, name@version, or the active one). See model.load."""
    from .model import load as _load

    return _load(ref, **options)


__all__ = ["load", "__version__"]
