"""The two PII scanner twins, and a `scan` fixture that runs a test on each (a plugin of tests/conftest.py)."""

from __future__ import annotations

import pytest

from edge_runtime.kernels import compiled_module, pure_module

PURE = pure_module("pii")
COMPILED = compiled_module("pii")
NOT_BUILT = "the Cython extension edge_runtime.kernels._pii is not built (pip install -e .)"


@pytest.fixture(params=["python", "cython"])
def scan(request):
    if request.param == "cython":
        if COMPILED is None:
            pytest.skip(NOT_BUILT)
        return COMPILED.scan
    return PURE.scan


def found(scan, text):
    return [(text[s:e], kind) for s, e, kind in scan(text)]
