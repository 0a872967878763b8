"""Fuzzing the daemon's HTTP layer: random paths, methods, content types and bodies (random bytes,
random JSON, near-valid /v1 and V2 requests) against the real daemon. No 5xx, no crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.daemon import Daemon
from support.stores import store_with

pytestmark = pytest.mark.kernels  # the daemon answers with what the kernels compute

PATHS = [
    "/v1/predict",
    "/v2/models/clinc-small/infer",
    "/v2/models/clinc-small/versions/0.1.0/infer",
    "/v2/models/clinc-small",
    "/v1/requests/abc",
    "/v1/status",
    "/metrics",
    "/v2",
    "/v2/health/ready",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
texts = st.text(max_size=60)
v1_bodies = st.fixed_dictionaries(
    {},
    optional={
        "text": texts | json_values,
        "texts": st.lists(texts, max_size=5) | json_values,
        "top_k": st.integers(-2, 8) | json_values,
    },
)
v2_bodies = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["text", "x"]) | json_values,
                    "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
                    "datatype": st.sampled_from(["BYTES", "FP32"]) | json_values,
                    "data": st.lists(texts | json_values, max_size=4) | json_values,
                    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 50)}),
                },
            ),
            max_size=2,
        )
        | json_values,
    },
    optional={
        "id": json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["label", "score", "top_k", "nope"])}), max_size=3
        )
        | json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "x"]), json_values, max_size=2),
    },
)


def encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


bodies = st.binary(max_size=300) | json_values.map(encode) | v1_bodies.map(encode) | v2_bodies.map(encode)
paths = st.sampled_from(PATHS) | st.text(alphabet="/abcdefv0123456789._-%", max_size=40).map(lambda p: "/" + p)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "text/plain", "application/octet-stream", "", "application/json; charset=utf-8"]
        ),
        "Inference-Header-Content-Length": st.integers(-5, 400).map(str) | st.just("x"),
    },
)


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory, small_bundle, build_key):
    home = store_with(tmp_path_factory.mktemp("fuzz-home"), small_bundle, build_key)
    running = Daemon(home).wait_ready()
    yield running
    assert running.stop() == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), path=paths, body=bodies, extra=headers)
def test_random_requests_never_get_a_5xx(fuzz_daemon, method, path, body, extra):
    status, _, answer = fuzz_daemon.request(method, path, body if method != "GET" else None, extra)
    assert status < 500, (status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    assert fuzz_daemon.process.poll() is None
