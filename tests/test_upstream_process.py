"""`edge-runtime upstream` run for real: a subprocess answering a device's escalations through a real mosquitto on
a free port, with a tiny real bundle (support.bundle_factory) in its own store; hostile requests on its request
topic are refused or dropped, counted, and it keeps answering."""

from __future__ import annotations

import json

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime import escalation
from edge_runtime.mqtt import BrokerConfig
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import Uplink

from support import bundle_factory
from support.upstream import Upstream, wait_for

pytestmark = pytest.mark.mqtt
FAST = dict(backoff_min_s=0.05, backoff_max_s=0.5, keepalive=5)


@pytest.fixture
def upstream(tiny_home, broker):
    running = Upstream(tiny_home, str(tiny_home / "tiny"), broker.url).wait_ready()
    yield running
    running.close()


def device(broker, tmp_path, device_id: str) -> Uplink:
    return Uplink(device_id, BrokerConfig.from_url(broker.url, **FAST), Outbox(tmp_path / f"{device_id}.sqlite"))


TEXTS = ["what is my account balance", "play some jazz music", "book a table for two tonight", "roll a die"]


def test_upstream_process_answers_a_device_escalation_end_to_end(upstream, tiny_home, broker, tmp_path):
    expected = bundle_factory.predict(tiny_home / "tiny", TEXTS)  # tokenizers + onnxruntime, not edge_runtime
    with device(broker, tmp_path, "dev-e2e") as uplink:
        uplink.wait_ready(10)
        answers = [uplink.escalate(text, deadline_s=30) for text in TEXTS]
        assert uplink.outbox.summary()["pending"] == 0 and uplink.outbox.summary()["answered"] == len(TEXTS)
    assert all(answer is not None and answer["error"] is None for answer in answers), answers
    assert [answer["answer"]["label"] for answer in answers] == expected
    assert len({answer["worker"] for answer in answers}) == 1
    code, stats = upstream.stop()
    assert code == 0 and stats.get("answered") == len(TEXTS)


def hostile_requests() -> list[tuple[str, bytes, dict]]:
    """(what, payload, MQTT properties) a peer can put on edge/dev-h/escalations."""
    answers = escalation.answer_topic("dev-h")
    valid = escalation.build_request("hello", device_id="dev-h", request_id="ok")

    def request(**fields) -> bytes:
        return json.dumps({**valid, **fields}).encode()

    return [
        ("not JSON, no correlation data", b"\xff\xfe{garbage", {"ResponseTopic": answers}),
        ("not JSON", b"{not json", {"ResponseTopic": answers, "CorrelationData": b"bad-json"}),
        ("a JSON list", b"[1, 2, 3]", {"ResponseTopic": answers, "CorrelationData": b"bad-list"}),
        ("text is a number", request(text=42, id="bad-text"), {"ResponseTopic": answers, "CorrelationData": b"bt"}),
        ("prediction is a string", request(prediction="x", id="bad-prediction"), {"ResponseTopic": answers}),
        (
            "top_k holds pairs of strings",
            request(prediction={"label": "a", "top_k": [["a", "b"]]}, id="bad-top-k"),
            {"ResponseTopic": answers, "CorrelationData": b"top-k"},
        ),
        ("a lone surrogate as the id", request(id="\ud800"), {"ResponseTopic": answers}),
        (
            "a lone surrogate id, with correlation",
            request(id="a\udfffb"),
            {"ResponseTopic": answers, "CorrelationData": b"s"},
        ),
        ("a 100,000-character id", request(id="x" * 100_000), {"ResponseTopic": answers}),
        ("64 KB of correlation data", b"{", {"ResponseTopic": answers, "CorrelationData": b"\xff" * 65_000}),
        ("another device's answer topic", request(id="steal"), {"ResponseTopic": escalation.answer_topic("dev-x")}),
        ("no response topic", request(id="silent"), {}),
    ]


def test_upstream_process_survives_hostile_requests_and_keeps_answering(upstream, tiny_home, broker, tmp_path):
    got: list[paho.MQTTMessage] = []
    peer = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="hostile-peer", protocol=paho.MQTTv5)
    subscribed = []
    peer.on_message = lambda client, userdata, message: got.append(message)
    peer.on_subscribe = lambda client, userdata, mid, codes, properties: subscribed.extend(codes)
    peer.connect("127.0.0.1", broker.port)
    peer.subscribe(escalation.answer_topic("dev-h"), qos=1)
    peer.loop_start()
    try:
        wait_for(lambda: subscribed, 10, "the peer's subscription to its answers")
        assert not subscribed[0].is_failure
        hostile = hostile_requests()
        for _, payload, fields in hostile:
            props = Properties(PacketTypes.PUBLISH)
            for name, value in fields.items():
                setattr(props, name, value)
            peer.publish(escalation.escalation_topic("dev-h"), payload, qos=1, properties=props).wait_for_publish(10)
        # The worker takes its requests in order: a device's escalation sent after them is answered only if it
        # lived through every one.
        expected = bundle_factory.predict(tiny_home / "tiny", TEXTS[:2])
        with device(broker, tmp_path, "dev-after") as uplink:
            uplink.wait_ready(10)
            answers = [uplink.escalate(text, deadline_s=15) for text in TEXTS[:2]]
        assert [answer and answer["answer"]["label"] for answer in answers] == expected
        wait_for(lambda: len(got) >= 6, 10, "the error answers")
    finally:
        peer.loop_stop()
        peer.disconnect()
    assert upstream.process.poll() is None, upstream.stderr()
    by_correlation = {m.properties.CorrelationData: escalation.decode_answer(m.payload) for m in got}
    assert set(by_correlation) == {b"bad-json", b"bad-list", b"bt", b"s", b"bad-prediction", b"top-k"}
    assert "not valid JSON" in by_correlation[b"bad-json"]["error"]
    assert "must be a JSON object" in by_correlation[b"bad-list"]["error"]
    assert "text must be a string" in by_correlation[b"bt"]["error"]
    assert "lone surrogate" in by_correlation[b"s"]["error"] and by_correlation[b"s"]["answer"] is None
    # no correlation data, but a usable id: the error answer goes back under the id
    bad_prediction = by_correlation[b"bad-prediction"]
    assert bad_prediction["id"] == "bad-prediction" and bad_prediction["answer"] is None
    assert "prediction must be an object or null" in bad_prediction["error"]
    assert "top_k must be a list" in by_correlation[b"top-k"]["error"]
    code, stats = upstream.stop()
    assert code == 0, upstream.stderr()
    assert "Traceback" not in upstream.stderr()
    # every hostile message is accounted for: answered with an error, ignored or dropped
    assert stats.get("answered") == 2 and "errors" not in stats  # the device's two; the responder never failed
    assert stats.get("bad_requests") == 6
    assert stats.get("ignored") == 5  # no correlation data (3: garbage, two bad ids), a foreign or no response topic
    assert "callback_errors" not in stats  # nothing reached the Link's guard: every case was foreseen
    assert stats.get("dropped") == 1  # the 64 KB of correlation data: no error answer can carry it back
