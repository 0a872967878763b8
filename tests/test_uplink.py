"""Device -> real mosquitto -> worker -> device: correlation, deadlines, ACLs and TLS."""

from __future__ import annotations

import subprocess
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime import escalation
from edge_runtime.mqtt import BrokerConfig, LinkError
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import EscalationRejected, Uplink, UplinkOptions
from edge_runtime.worker import Worker

from support import REPO, mqtt_broker

pytestmark = [pytest.mark.mqtt, pytest.mark.skipif(not mqtt_broker.available(), reason="mosquitto is not installed")]
FAST = dict(backoff_min_s=0.05, backoff_max_s=0.5, keepalive=5)


def echo(request: dict) -> dict:
    return {"label": request["text"].upper(), "seen_prediction": request["prediction"]}


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def broker():
    with mqtt_broker.Broker() as running:
        yield running


def plain(broker) -> BrokerConfig:
    return BrokerConfig.from_url(broker.url, **FAST)


def test_round_trip_matches_the_answer_by_correlation_id(broker, tmp_path):
    with (
        Worker(plain(broker), echo) as worker,
        Uplink("dev-1", plain(broker), Outbox(tmp_path / "o.sqlite"), bundle=("intent", "1.0")) as uplink,
    ):
        worker.wait_ready(5)
        uplink.wait_ready(5)
        prediction = {"label": "refund", "score": 0.4, "top_k": [("refund", 0.4)], "margin": 0.01, "entropy": 0.9}
        futures = {text: uplink.submit(text, prediction) for text in ("alpha", "beta", "gamma")}
        for text, future in futures.items():
            message = future.result(10)
            assert message["id"] == future.request_id
            assert message["answer"]["label"] == text.upper()
            assert message["answer"]["seen_prediction"]["label"] == "refund"
            assert uplink.answer(future.request_id)["answer"]["label"] == text.upper()
        assert uplink.outbox.summary()["pending"] == 0


def test_request_carries_mqtt5_properties(broker, tmp_path):
    seen = []
    probe = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    probe.on_message = lambda c, u, m: seen.append(m)
    probe.connect("127.0.0.1", broker.port)
    probe.subscribe("edge/+/escalations", qos=1)
    probe.loop_start()
    try:
        time.sleep(0.2)
        with Uplink(
            "dev-2",
            plain(broker),
            Outbox(tmp_path / "o.sqlite"),
            bundle=("intent", "1.0"),
            options=UplinkOptions(message_expiry_s=120),
        ) as uplink:
            uplink.wait_ready(5)
            future = uplink.submit("hello")
            wait_for(lambda: seen)
    finally:
        probe.loop_stop()
        probe.disconnect()
    props = seen[0].properties
    assert seen[0].topic == "edge/dev-2/escalations"
    assert props.ResponseTopic == "edge/dev-2/answers"
    assert props.CorrelationData == future.request_id.encode()
    assert 0 < props.MessageExpiryInterval <= 120
    assert ("bundle", "intent") in props.UserProperty and ("schema", "1") in props.UserProperty
    assert escalation.decode_request(seen[0].payload)["id"] == future.request_id


def test_deadline_defers_then_a_late_worker_fills_the_store(broker, tmp_path):
    options = UplinkOptions(resend_after_s=0.5)
    with Uplink("dev-3", plain(broker), Outbox(tmp_path / "o.sqlite"), options=options) as uplink:
        uplink.wait_ready(5)
        started = time.monotonic()
        assert uplink.escalate("is anyone there", deadline_s=0.5) is None
        waited = time.monotonic() - started
        request_id = uplink.outbox.pending_ids()[0]
        assert uplink.answer(request_id) is None
        with Worker(plain(broker), echo) as worker:
            worker.wait_ready(5)
            wait_for(lambda: uplink.answer(request_id) is not None)
        assert uplink.answer(request_id)["answer"]["label"] == "IS ANYONE THERE"
        assert uplink.outbox.counters()["answers_after_deadline"] == 1
    assert waited < 5  # generous: deferral happened at the deadline, not at some later resend


def test_worker_is_idempotent_and_device_ignores_a_second_answer(broker, tmp_path):
    calls = []

    def counting(request):
        calls.append(request["id"])
        return echo(request)

    delivered = []
    with (
        Worker(plain(broker), counting) as worker,
        Uplink(
            "dev-4", plain(broker), Outbox(tmp_path / "o.sqlite"), on_answer=lambda rid, m: delivered.append(rid)
        ) as uplink,
    ):
        worker.wait_ready(5)
        uplink.wait_ready(5)
        future = uplink.submit("twice")
        future.result(10)
        # Re-publish the same request as a device re-send would.
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = uplink.answers, future.request_id.encode()
        uplink.link.client.publish(uplink.topic, uplink.outbox.payload(future.request_id), qos=1, properties=props)
        wait_for(lambda: uplink.stats["duplicate_answers"] == 1)
        assert calls == [future.request_id]
        assert worker.stats["cache_hits"] == 1
        assert delivered == [future.request_id]


def test_two_workers_share_the_load(broker, tmp_path):
    with (
        Worker(plain(broker), echo, client_id="w1") as w1,
        Worker(plain(broker), echo, client_id="w2") as w2,
        Uplink("dev-5", plain(broker), Outbox(tmp_path / "o.sqlite")) as uplink,
    ):
        w1.wait_ready(5)
        w2.wait_ready(5)
        uplink.wait_ready(5)
        futures = [uplink.submit(f"t{i}") for i in range(200)]
        answers = [f.result(20) for f in futures]
    assert {a["worker"] for a in answers} == {"w1", "w2"}
    assert w1.stats["answered"] + w2.stats["answered"] == 200


def test_malformed_request_gets_an_error_answer(broker, tmp_path):
    got = []
    with Worker(plain(broker), echo) as worker:
        worker.wait_ready(5)
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_message = lambda c, u, m: got.append(m)
        client.connect("127.0.0.1", broker.port)
        client.subscribe("edge/dev-6/answers", qos=1)
        client.loop_start()
        time.sleep(0.2)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = "edge/dev-6/answers", b"bad-1"
        client.publish("edge/dev-6/escalations", b"{not json", qos=1, properties=props)
        wait_for(lambda: got)
        client.loop_stop()
        client.disconnect()
    answer = escalation.decode_answer(got[0].payload)
    assert answer["id"] == "bad-1" and "not valid JSON" in answer["error"]


def test_oversized_escalation_is_refused_before_the_outbox(broker, tmp_path):
    with Uplink("dev-7", plain(broker), Outbox(tmp_path / "o.sqlite")) as uplink:
        with pytest.raises(escalation.EscalationError, match="limit is 131,072 bytes"):
            uplink.submit("x" * 140_000)
        assert uplink.outbox.summary()["pending"] == 0


# -- TLS + the deployed ACL ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    script = REPO / "deploy" / "mosquitto" / "make-dev-certs.sh"
    subprocess.run([str(script), str(root / "ours"), "devA", "devB"], check=True, capture_output=True)
    subprocess.run([str(script), str(root / "other"), "devA"], check=True, capture_output=True)
    return root


@pytest.fixture
def tls_broker(pki):
    ours = pki / "ours"
    with mqtt_broker.Broker(
        tls={"ca": ours / "ca.crt", "cert": ours / "broker.crt", "key": ours / "broker.key"},
        acl_file=REPO / "deploy" / "mosquitto" / "acl",
        allow_anonymous=False,
    ) as running:
        yield running


def tls(broker, pki, name, issuer="ours") -> BrokerConfig:
    return BrokerConfig(
        host="localhost",
        port=broker.port,
        tls=True,
        ca_file=str(pki / "ours" / "ca.crt"),
        cert_file=str(pki / issuer / f"{name}.crt"),
        key_file=str(pki / issuer / f"{name}.key"),
        **FAST,
    )


def test_acl_device_cannot_publish_as_another_device(tls_broker, pki, tmp_path):
    with (
        Worker(tls(tls_broker, pki, "worker"), echo) as worker,
        Uplink("devA", tls(tls_broker, pki, "devA"), Outbox(tmp_path / "a.sqlite")) as own,
        Uplink(
            "devB", tls(tls_broker, pki, "devA"), Outbox(tmp_path / "b.sqlite"), client_id="devA-posing-as-devB"
        ) as posing,
    ):
        worker.wait_ready(5)
        own.wait_ready(5)
        assert own.escalate("mine", deadline_s=10)["answer"]["label"] == "MINE"
        with pytest.raises(EscalationRejected, match=r"Not authorized \(135\)") as caught:
            posing.escalate("not mine", deadline_s=10)
        assert caught.value.reason_code == 135
        dead = posing.outbox.requests("dead")
        assert len(dead) == 1 and "135" in dead[0]["reason"]
        assert worker.stats["answered"] == 1


def test_acl_device_cannot_read_another_devices_answers(tls_broker, pki, tmp_path):
    """A spy with devA's certificate subscribes to devB's answers and, as the positive control, to devA's own: it
    must get devA's answer (so it works, and the ACL lets it read what it may) and never devB's."""
    received = []
    subscribed = []
    spy = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="devA-spy", protocol=paho.MQTTv5)
    spy.tls_set(
        ca_certs=str(pki / "ours" / "ca.crt"),
        certfile=str(pki / "ours" / "devA.crt"),
        keyfile=str(pki / "ours" / "devA.key"),
    )
    spy.on_message = lambda c, u, m: received.append((m.topic, m.payload))
    spy.on_subscribe = lambda c, u, mid, codes, props: subscribed.append(codes)
    spy.connect("localhost", tls_broker.port)
    spy.subscribe([("edge/devB/answers", 1), ("edge/devA/answers", 1)])
    spy.loop_start()
    try:
        wait_for(lambda: subscribed)
        with (
            Worker(tls(tls_broker, pki, "worker"), echo) as worker,
            Uplink("devB", tls(tls_broker, pki, "devB"), Outbox(tmp_path / "b.sqlite")) as device_b,
            Uplink("devA", tls(tls_broker, pki, "devA"), Outbox(tmp_path / "a.sqlite")) as device_a,
        ):
            worker.wait_ready(5)
            device_b.wait_ready(5)
            device_a.wait_ready(5)
            assert device_b.escalate("private", deadline_s=10)["answer"]["label"] == "PRIVATE"
            # devA's answer is published after devB's, by the same worker: once the spy has it, devB's answer
            # would have reached it before, had the ACL let it through
            assert device_a.escalate("own", deadline_s=10)["answer"]["label"] == "OWN"
            wait_for(lambda: received)
    finally:
        spy.loop_stop()
        spy.disconnect()
    assert [topic for topic, _ in received] == ["edge/devA/answers"]
    assert escalation.decode_answer(received[0][1])["answer"]["label"] == "OWN"


def test_certificate_from_another_ca_is_refused(tls_broker, pki, tmp_path):
    with Uplink("devA", tls(tls_broker, pki, "devA", issuer="other"), Outbox(tmp_path / "a.sqlite")) as uplink:
        with pytest.raises(LinkError, match="certificate or credentials refused|cannot connect"):
            uplink.wait_ready(3)
        assert uplink.escalate("hello", deadline_s=0.2) is None
        assert uplink.outbox.summary()["pending"] == 1  # kept for when a valid certificate is in place


def test_acl_device_reads_its_own_desired_state_not_another_devices(tls_broker, pki):
    """deploy/mosquitto/acl: fleet/devices/<id>/desired is readable by <id> only; group topics by no device (the
    manager publishes per enrolled device, so a device cannot read another group's release by claiming it)."""
    received: list[str] = []

    def client(name: str) -> paho.Client:
        made = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}", protocol=paho.MQTTv5
        )
        made.tls_set(
            ca_certs=str(pki / "ours" / "ca.crt"),
            certfile=str(pki / "ours" / f"{name}.crt"),
            keyfile=str(pki / "ours" / f"{name}.key"),
        )
        made.connect("localhost", tls_broker.port)
        made.loop_start()
        return made

    fleet, spy = client("fleet"), client("devA")
    spy.on_message = lambda c, u, m: received.append(m.topic)
    try:
        for topic in ("fleet/devices/devA/desired", "fleet/devices/devB/desired", "fleet/groups/lab/desired"):
            fleet.publish(topic, b"{}", qos=1, retain=True).wait_for_publish(10)
        spy.subscribe([("fleet/devices/+/desired", 1), ("fleet/groups/+/desired", 1)])
        wait_for(lambda: len(received) >= 1)
        time.sleep(0.5)
    finally:
        for made in (fleet, spy):
            made.loop_stop()
            made.disconnect()
    assert sorted(received) == ["fleet/devices/devA/desired"]


def fill(directory) -> None:
    """Write until the file system answers ENOSPC: the disk is full for real."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KB tmpfs, filled up after the test's outbox was created in it."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_an_escalation_the_full_outbox_cannot_store_fails_at_once_and_is_not_sent(broker, full_disk):
    from edge_runtime.outbox import OutboxUnavailable

    received = []
    with (
        Worker(plain(broker), lambda request: received.append(request) or {"label": "x"}) as worker,
        Uplink("dev-full", plain(broker), Outbox(full_disk / "o.sqlite")) as uplink,
    ):
        worker.wait_ready(5)
        uplink.wait_ready(5)
        assert uplink.submit("stored first").result(10)["answer"]["label"] == "x"
        fill(full_disk)
        futures = [uplink.submit(f"text {n} " + "x" * 20_000) for n in range(4)]
        for future in futures:
            with pytest.raises(OutboxUnavailable, match="not stored"):
                future.result(5)  # before the fix: never resolved (the pump only logged the error)
            assert future.settled.is_set()
        assert uplink._futures == {} and uplink.stats["outbox_unavailable"] == 4  # released, counted
        time.sleep(0.5)
        assert len(received) == 1  # nothing unstored went upstream
        assert uplink.outbox.failures >= 1
