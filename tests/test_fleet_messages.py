"""What devices send the fleet manager, checked: state reports and chunk requests against their strict schemas
(protocol.parse_state / parse_request), and the token buckets and throttled log `fleet serve` uses."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.fleet import protocol
from edge_runtime.ratelimit import KeyedBuckets, ThrottledLog, TokenBucket
from edge_runtime.schema import SchemaError

SHA = "ab" * 32


def report(**changes) -> dict:
    """A report with every field the update agent sends (agent.Agent.report), mid-update."""
    base = protocol.build_state(
        "dev-a",
        "lab",
        phase="verifying",
        active="tiny@1.0.0",
        previous=None,
        release=2,
        target="tiny@1.1.0",
        installed_release=1,
        last_error=None,
        refused={"release": 3, "reason": "release 3 is for group(s) shop, this device is in lab", "at": 1.5e9},
        note="waiting: release is with the canaries",
        escalation_rate=0.125,
        download={"requested": 9, "received": 8, "bad": 1, "duplicates": 0, "chunks": 8, "bytes": 972800},
        runtime="0.4.0",
    )
    base.update(changes)
    return {k: v for k, v in base.items() if v != "<drop>"}


def encode(obj) -> bytes:
    return json.dumps(obj).encode()


def test_a_full_agent_report_is_accepted_as_sent():
    sent = report()
    assert protocol.parse_state(encode(sent), "dev-a") == sent


@pytest.mark.parametrize(
    ("changes", "reason", "detail"),
    [
        ({"refused": "x"}, "schema", "state.refused: expected an object, got str"),
        ({"refused": {"release": "3", "reason": "r"}}, "schema", "state.refused.release: expected an integer"),
        ({"release": True}, "schema", "state.release: expected an integer, got bool"),
        ({"release": 10**20}, "schema", "state.release: 100000000000000000000 is outside"),
        ({"escalation_rate": 1.5}, "schema", "state.escalation_rate: 1.5 is outside 0.0..1.0"),
        ({"phase": "pwned"}, "schema", "state.phase: 'pwned' is not one of idle"),
        ({"note": "x" * 5000}, "schema", "state.note: length 5000 is outside 0..4096"),
        ({"group": "a/b"}, "schema", "state.group: 'a/b' does not match"),
        ({"admin": True}, "schema", "state: unknown key 'admin'"),
        ({"device": "<drop>"}, "schema", "state: missing key 'device'"),
        ({"download": {"requested": -1}}, "schema", "state.download.requested: -1 is outside"),
        ({"type": "fleet.desired"}, "schema", "state.type: 'fleet.desired' is not one of fleet.state"),
        ({"schema": 1.0}, "schema", "state.schema: 1.0 is not one of 1"),
        ({"schema": True}, "schema", "state.schema: True is not one of 1"),
        ({"device": "dev-b"}, "device_mismatch", "report for device 'dev-b' on the topic of 'dev-a'"),
    ],
)
def test_a_bad_report_is_refused_with_its_reason(changes, reason, detail):
    with pytest.raises(SchemaError) as raised:
        protocol.parse_state(encode(report(**changes)), "dev-a")
    assert raised.value.reason == reason and detail in str(raised.value)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 3000, "not_json"),
        (b"\xff\xfe", "not_json"),
        (b'{"escalation_rate": NaN}', "not_json"),
        (b"[]", "schema"),
        (b"x" * (protocol.MAX_STATE_BYTES + 1), "too_large"),
    ],
)
def test_what_is_not_a_report_at_all_is_refused(payload, reason):
    with pytest.raises(SchemaError) as raised:
        protocol.parse_state(payload, "dev-a")
    assert raised.value.reason == reason


def request(**changes) -> dict:
    return {"type": protocol.REQUEST_TYPE, "device": "dev-a", "sha256": SHA, "indices": [0, 1, 2], **changes}


def test_a_request_as_the_agent_builds_it_is_accepted():
    sent = protocol.build_request("dev-a", SHA, list(range(8)))
    assert protocol.parse_request(sent, "dev-a") == json.loads(sent)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"indices": [10**20]}, "request.indices[0]: 100000000000000000000 is outside 0..2147483647"),
        ({"indices": [-1]}, "request.indices[0]: -1 is outside"),
        ({"indices": [1.0]}, "request.indices[0]: expected an integer, got float"),
        ({"indices": list(range(17))}, "request.indices: 17 items, outside 1..16"),
        ({"indices": []}, "request.indices: 0 items, outside 1..16"),
        ({"indices": [3, 3]}, "request.indices: repeated items"),
        ({"indices": "0"}, "request.indices: expected a list, got str"),
        ({"sha256": "../../etc/passwd"}, "request.sha256: '../../etc/passwd' does not match"),
        ({"extra": 1}, "request: unknown key 'extra'"),
        ({"device": "dev-b"}, "from device 'dev-b' on the topic of 'dev-a'"),
    ],
)
def test_a_bad_request_is_refused_with_its_reason(changes, detail):
    with pytest.raises(SchemaError) as raised:
        protocol.parse_request(encode(request(**changes)), "dev-a")
    assert detail in str(raised.value)


def test_device_ids_in_topics_are_checked():
    assert protocol.device_of("edge/dev-a/chunks/request", "chunks/request") == "dev-a"
    assert protocol.device_of(f"edge/{'d' * 129}/state", "state") is None
    assert protocol.device_of("edge//state", "state") is None
    assert protocol.device_of("edge/a/b/state", "state") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
near_requests = st.fixed_dictionaries(
    {"type": st.just(protocol.REQUEST_TYPE), "device": st.just("dev-a"), "sha256": st.just(SHA)},
    optional={"indices": json_values | st.lists(json_values, max_size=20), "extra": json_values},
)


@settings(max_examples=300, deadline=None)
@given(message=json_values | near_requests | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_payload_is_either_a_valid_request_or_a_schema_error(message):
    """No payload makes the parser raise anything else (which would end paho's network thread)."""
    payload = message.encode("latin-1", "replace") if isinstance(message, str) else encode(message)
    try:
        checked = protocol.parse_request(payload, "dev-a")
    except SchemaError:
        return
    indices = checked["indices"]
    assert 1 <= len(indices) <= 16 and len(set(indices)) == len(indices)
    assert all(type(i) is int and 0 <= i <= protocol.MAX_CHUNK_INDEX for i in indices)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(report())), json_values, max_size=3))
def test_any_report_is_either_valid_or_a_schema_error(changes):
    try:
        checked = protocol.parse_state(encode(report(**changes)), "dev-a")
    except SchemaError:
        return
    assert checked["refused"] is None or isinstance(checked["refused"], dict)
    assert isinstance(checked["group"], str) and checked["device"] == "dev-a"


class Clock:
    """Stands in for time.monotonic: the tests move time instead of sleeping."""

    def __init__(self):
        self.now = 50.0

    def __call__(self):
        return self.now


def test_token_bucket_spends_refills_and_caps_at_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=4.0, clock=clock)
    assert [bucket.take() for _ in range(5)] == [True, True, True, True, False]
    clock.now += 1.0  # two tokens
    assert bucket.take(3) is False and bucket.take(2) is True and bucket.take() is False
    clock.now += 100.0  # refills to the burst, not beyond
    assert bucket.take(4) is True and bucket.take() is False


def test_keyed_buckets_are_per_key_and_forget_the_oldest_beyond_their_bound():
    clock = Clock()
    buckets = KeyedBuckets(rate=0.0, burst=1.0, clock=clock, max_keys=2)
    assert buckets.take("a") and not buckets.take("a")
    assert buckets.take("b") and buckets.take("c")  # "a" is forgotten: at most two buckets are kept
    assert buckets.take("a")  # a forgotten key starts with a full bucket
    assert not buckets.take("c")


def test_throttled_log_writes_a_kind_once_per_interval_and_counts_the_rest(caplog):
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.throttled"), interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "test.throttled"):
        written = [throttled.log(logging.WARNING, "bad", "dropped %s", n) for n in range(5)]
        throttled.log(logging.WARNING, "other", "another kind")
        clock.now += 10.0
        throttled.log(logging.WARNING, "bad", "dropped %s", 99)
    assert written == [True, False, False, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 0",
        "another kind",
        "dropped 99 (and 4 more like it in the last 10 s)",
    ]
