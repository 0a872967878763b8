"""The fleet manager against hostile and broken devices (issue 14): a real mosquitto, `fleet serve` as a real
process or the Manager in-process, and raw paho clients publishing what a well-behaved agent never would.

After every attack a well-behaved device still gets its chunks: the manager is alive and serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest

from edge_runtime import signing
from edge_runtime.cli import main
from edge_runtime.fleet import manager as fleet_manager
from edge_runtime.fleet import protocol
from edge_runtime.fleet import release as releases
from edge_runtime.fleet.fleetdir import FleetDir
from edge_runtime.fleet.manager import Manager
from edge_runtime.mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from edge_runtime.store import Store

from support import REPO, mqtt_broker, terminate
from support.fleet_sim import Device, make_release, tiny

pytestmark = pytest.mark.skipif(not mqtt_broker.available(), reason="mosquitto is not installed")


@pytest.fixture(scope="module")
def broker():
    with mqtt_broker.Broker() as running:
        yield running


@pytest.fixture(scope="module")
def archives(tmp_path_factory, fleet_key):
    src = tmp_path_factory.mktemp("bundles")
    return {
        "v1": tiny(src / "tiny-1.0.0", fleet_key, "1.0.0", 1),
        "v2": tiny(src / "tiny-1.1.0", fleet_key, "1.1.0", 2),
    }


@pytest.fixture
def group():
    return f"g{uuid.uuid4().hex[:8]}"  # retained messages must not leak between tests


class Peer:
    """A raw paho client: publishes whatever it is told to (retained or not) as any device id, and keeps
    every chunk the manager sends to the device ids it listens for."""

    def __init__(self, broker_url: str):
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.chunks: list[tuple[str, dict, bytes]] = []
        self.retained: set[str] = set()
        self.client.on_message = self._on_message
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        decoded = protocol.decode_chunk(message.payload)
        if decoded:
            self.chunks.append((message.topic.split("/")[1], *decoded))

    def listen(self, device_id: str) -> None:
        self.client.subscribe(protocol.chunk_topic(device_id), qos=1)
        time.sleep(0.3)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if retain:
            self.retained.add(topic)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def report(self, device_id: str, group: str, **fields) -> None:
        state = protocol.build_state(device_id, group, phase="idle", **fields)
        self.publish(protocol.state_topic(device_id), protocol.encode(state), retain=True)

    def request(self, device_id: str, sha256: str, indices: list[int]) -> None:
        self.publish(protocol.chunk_request_topic(device_id), protocol.build_request(device_id, sha256, indices))

    def received(self, device_id: str) -> list[tuple[dict, bytes]]:
        return [(header, data) for who, header, data in list(self.chunks) if who == device_id]

    def wait_for(self, device_id: str, count: int, timeout: float = 15.0) -> list[tuple[dict, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(device_id)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{device_id}: {len(self.received(device_id))} of {count} chunks within {timeout} s")

    def close(self) -> None:
        for topic in self.retained:  # the next test on this broker starts without them
            self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def peer(broker):
    client = Peer(broker.url)
    yield client
    client.close()


def published(tmp_path, archives, fleet_key, group, broker, chunk_size=4096) -> tuple[FleetDir, dict]:
    """A release of v2 for `group` in a fleet dir, published (stage all); its signed record."""
    folder = tmp_path / f"rel-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    archive = folder / archives["v2"].name
    archive.write_bytes(archives["v2"].read_bytes())
    record = make_release(archive, fleet_key, group, chunk_size=chunk_size)
    fleet = FleetDir(tmp_path / "fleet")
    Manager(BrokerConfig.from_url(broker.url), fleet, [fleet_key]).publish(record, archive, group)
    return fleet, releases.read(record)["signed"]


def enroll(fleet: FleetDir, group: str, *devices: str) -> None:
    """The manager serves enrolled devices only (registry.py)."""
    for device in devices:
        fleet.registry.add(device, group)


def assert_good_chunks(chunks, signed, indices) -> None:
    """The chunks a well-behaved device asked for, each matching the signed record's hash."""
    assert sorted(header["index"] for header, _ in chunks) == sorted(indices)
    for header, data in chunks:
        assert header["error"] is None and header["sha256"] == signed["archive"]["sha256"]
        assert hashlib.sha256(data).hexdigest() == signed["archive"]["chunks"][header["index"]]


class Served:
    """Manager.serve in a thread, with a real broker; `clock` is the only double (time cannot be waited out)."""

    def __init__(self, broker_url, fleet: FleetDir, keys=(), **options):
        self.manager = Manager(BrokerConfig.from_url(broker_url), fleet, keys, **options)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.manager.serve, args=(self.stop_event,), daemon=True)
        self.thread.start()
        time.sleep(0.5)  # subscribed, retained reports in

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


class FrozenClock:
    """Stands in for time.monotonic in the token buckets: a test moves it instead of sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(check, timeout=15.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


# --- finding 1: an index of 10^20 killed paho's network thread -------------------------------------------


def test_a_huge_chunk_index_is_dropped_and_counted_and_serving_goes_on(
    tmp_path, broker, archives, fleet_key, group, peer
):
    fleet, signed = published(tmp_path, archives, fleet_key, group, broker)
    sha = signed["archive"]["sha256"]
    enroll(fleet, group, "evil", "good")
    served = Served(broker.url, fleet, [fleet_key])
    try:
        peer.report("evil", group)
        peer.report("good", group)
        for device in ("evil", "good"):
            peer.listen(device)
        time.sleep(0.3)
        hostile = {"type": protocol.REQUEST_TYPE, "device": "evil", "sha256": sha, "indices": [10**20]}
        peer.publish(protocol.chunk_request_topic("evil"), protocol.encode(hostile))
        long_id = "e" * 200  # longer than any device id
        peer.publish(protocol.chunk_request_topic(long_id), protocol.build_request(long_id, sha, [0]))
        peer.request("good", sha, [0, 1, 2])
        assert_good_chunks(peer.wait_for("good", 3), signed, [0, 1, 2])
        assert peer.received("evil") == []
        past_the_end = len(signed["archive"]["chunks"])  # within the schema's bound, beyond this release
        peer.request("good", sha, [past_the_end])
        assert [(h["index"], h["error"], d) for h, d in peer.wait_for("good", 4)[3:]] == [
            (past_the_end, "no such chunk", b"")
        ]
        assert served.manager.metrics()["invalid"] == {"chunk_request/bad_topic": 1, "chunk_request/schema": 1}
        assert served.manager.metrics()["refused"] == {"no_such_chunk": 1}
        assert served.manager.metrics()["callback_errors"] == {}
    finally:
        served.close()


# --- every paho callback is guarded: the shared Link (manager and devices) ---------------------------------


def test_an_exception_in_a_link_callback_drops_that_message_only(broker, peer):
    seen = []

    def handler(message):
        if message.payload == b"boom":
            raise RuntimeError("a handler bug")
        seen.append(message.payload)

    topic = f"test/{uuid.uuid4().hex[:8]}"
    link = Link(
        BrokerConfig.from_url(broker.url),
        f"guarded-{uuid.uuid4().hex[:6]}",
        subscriptions=[Subscription(topic)],
        handlers=LinkHandlers(on_message=handler),
        clean_start=True,
        session_expiry_s=0,
    )
    link.start()
    link.wait_ready(10)
    try:
        for payload in (b"one", b"boom", b"two"):
            peer.publish(topic, payload)
        wait_until(lambda: b"two" in seen, 10, "the message after the failing one")
        assert seen == [b"one", b"two"]
        assert link.callback_errors == {"on_message": 1}
        assert link.client._thread is not None and link.client._thread.is_alive()
    finally:
        link.stop()


# --- finding 2: a poisoned retained report crashed serve, status and promote, on every restart -------------


def test_a_poisoned_retained_report_crashes_neither_status_nor_promote(
    tmp_path, broker, archives, fleet_key, group, peer, capsys, monkeypatch
):
    monkeypatch.setenv("EDGE_RUNTIME_UPLINK_BROKER", broker.url)
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, fleet_key)
    common = ["--fleet-dir", str(tmp_path / "fleet")]
    assert main(["fleet", "device", "add", "canary-1", "--group", group, *common]) == 0
    peer.report("canary-1", group)
    record = make_release(archives["v2"], fleet_key, group)
    assert (
        main(["fleet", "publish", str(record), "--group", group, "--canary", "50", "--key", str(key_file), *common])
        == 0
    )
    # The canary now says something that is not a state report, retained.
    state = protocol.build_state("canary-1", group, phase="idle", release=None, refused="x")
    peer.publish(protocol.state_topic("canary-1"), protocol.encode(state), retain=True)
    capsys.readouterr()
    assert main(["fleet", "status", "--group", group, "--json", "--wait", "0.5", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["devices"] == []
    assert report["invalid_reports"] == [
        {"device": "canary-1", "reason": "state.refused: expected an object, got str", "registry_group": group}
    ]
    assert report["rollouts"][0]["assessment"] == "waiting for canaries: canary-1"
    monkeypatch.setenv("COLUMNS", "200")  # rich fits the table to the terminal, eliding cells
    assert main(["fleet", "status", "--group", group, "--wait", "0.5", *common]) == 0
    table = " ".join(capsys.readouterr().out.split())
    assert f"canary-1 {group} - - - invalid" in table and "state.refused: expected an object" in table
    # Promote refuses with the reason, as for any canary that has not committed.
    assert main(["fleet", "promote", "--group", group, "--key", str(key_file), *common]) == 1
    assert "cannot promote (waiting for canaries: canary-1)" in capsys.readouterr().err


def _serve(tmp_path, key_file, broker, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "fleet", "serve", "--key", str(key_file), *extra],
        env={**os.environ, "PYTHONPATH": str(REPO), "EDGE_RUNTIME_UPLINK_BROKER": broker.url},
        stdout=open(tmp_path / "serve.log", "ab"),
        stderr=subprocess.STDOUT,
    )


def serving(peer: Peer, fleet: FleetDir, group: str, sha: str, device: str, timeout: float = 30.0) -> None:
    """Wait until `fleet serve` answers a well-behaved device (it is up and subscribed)."""
    enroll(fleet, group, device)
    peer.report(device, group)
    peer.listen(device)
    deadline = time.monotonic() + timeout
    while not peer.received(device):
        assert time.monotonic() < deadline, f"fleet serve did not answer {device} within {timeout} s"
        peer.request(device, sha, [0])
        time.sleep(0.5)


def test_fleet_serve_outlives_a_poisoned_report_and_a_hostile_peer_across_restarts(
    tmp_path, broker, archives, fleet_key, group, peer, capsys, monkeypatch
):
    """`fleet serve` as its own process; a real agent updates after the attacks."""
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, fleet_key)
    common = ["--fleet-dir", str(tmp_path / "fleet")]
    fleet, signed = published(tmp_path, archives, fleet_key, group, broker, chunk_size=64 * 1024)
    sha = signed["archive"]["sha256"]
    poisoned = {**protocol.build_state("evil", group, phase="idle", release=None), "refused": "x", "note": 7}
    peer.publish(protocol.state_topic("evil"), protocol.encode(poisoned), retain=True)
    serve = _serve(tmp_path, key_file, broker, *common)
    try:
        serving(peer, fleet, group, sha, "probe-1")
        for attack in (
            protocol.encode({"type": protocol.REQUEST_TYPE, "device": "evil", "sha256": sha, "indices": [10**20]}),
            b"[" * 3000,  # deeper than json's recursion limit
            b"\xff\xfe not json",
            protocol.encode({"type": protocol.REQUEST_TYPE, "device": "evil", "sha256": sha, "indices": [1e308]}),
            b"x" * 100_000,
        ):
            peer.publish(protocol.chunk_request_topic("evil"), attack)
        serving(peer, fleet, group, sha, "probe-2")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        serve.terminate()
        serve.wait(15)
        serve = _serve(tmp_path, key_file, broker, *common)  # the retained report is there again on restart
        serving(peer, fleet, group, sha, "probe-3")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        # A well-behaved device (a real agent process) still downloads, installs and commits the release.
        dev = Device(
            tmp_path / "devices",
            "good-1",
            group,
            broker.url,
            fleet_key.public_key(),
            archives["v1"],
            fleet_dir=fleet.root,
        ).start()
        try:
            final = dev.wait_phase("committed", "failed", "rolled_back", timeout=90)
        finally:
            dev.stop()
        assert final["phase"] == "committed", final
        assert Store(dev.home).active() == ("tiny", "1.1.0")
        monkeypatch.setenv("EDGE_RUNTIME_UPLINK_BROKER", broker.url)
        metrics = tmp_path / "fleet" / fleet_manager.METRICS_FILE
        wait_until(lambda: json.loads(metrics.read_text())["chunks_served"] > 4, 10, "serve's metrics")
        capsys.readouterr()
        assert main(["fleet", "status", "--json", "--wait", "0.5", *common]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [bad["device"] for bad in report["invalid_reports"]] == ["evil"]
        assert report["serve"]["running"] is True and report["serve"]["chunks_served"] > 0
        assert report["serve"]["invalid"]["state/schema"] >= 1  # the retained report, seen by this serve
    finally:
        terminate(serve, 15)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "invalid: chunk_request/" in log  # the exit line of the first serve counts the attacks


# --- finding 3: any device could fetch any release, as fast and as much as it liked -------------------------


def test_chunks_go_only_to_enrolled_devices_of_the_releases_group(tmp_path, broker, archives, fleet_key, group, peer):
    fleet, signed = published(tmp_path, archives, fleet_key, group, broker)
    sha = signed["archive"]["sha256"]
    enroll(fleet, f"{group}-other", "other-group", "liar")
    enroll(fleet, group, "member")
    served = Served(broker.url, fleet, [fleet_key])
    try:
        peer.report("other-group", f"{group}-other")
        for device in ("other-group", "unenrolled", "member", "liar"):
            peer.listen(device)
        peer.report("member", group)
        peer.report("liar", group)  # enrolled in the other group: its claim does not make it a member
        peer.report("unenrolled", group)  # not enrolled: its claim counts for nothing either
        time.sleep(0.3)
        peer.request("other-group", sha, [0, 1])
        peer.request("unenrolled", sha, [0, 1])
        peer.request("member", sha, [0, 1])
        peer.request("liar", sha, [0])
        assert_good_chunks(peer.wait_for("member", 2), signed, [0, 1])
        refused = peer.wait_for("other-group", 1)
        assert [(h["error"], len(d)) for h, d in refused] == [("unknown release", 0)]
        peer.request("other-group", "f" * 64, [0])  # a release that does not exist: the same answer
        assert [h["error"] for h, _ in peer.wait_for("other-group", 2)][1] == "unknown release"
        assert [h["error"] for h, _ in peer.wait_for("liar", 1)] == ["unknown release"]
        time.sleep(1)
        assert peer.received("unenrolled") == []  # silent: it may be enrolled later and ask again
        assert len(peer.received("other-group")) == 2
        assert served.manager.metrics()["refused"] == {
            "not_in_group": 2,
            "unknown_device": 1,
            "unknown_release": 1,
        }
        ignored = served.manager.metrics()["ignored"]
        # unenrolled: this one, and the retained reports of earlier tests' agents on this module's broker
        assert ignored["group_mismatch"] == 1 and ignored["unenrolled"] >= 1
        enroll(fleet, group, "unenrolled")  # once it is enrolled, it is served (no restart)
        peer.request("unenrolled", sha, [3])
        assert_good_chunks(peer.wait_for("unenrolled", 1), signed, [3])
    finally:
        served.close()


def test_a_request_may_ask_for_at_most_16_distinct_chunks(tmp_path, broker, archives, fleet_key, group, peer):
    fleet, signed = published(tmp_path, archives, fleet_key, group, broker, chunk_size=1024)
    assert len(signed["archive"]["chunks"]) > 64
    sha = signed["archive"]["sha256"]
    enroll(fleet, group, "greedy")
    served = Served(broker.url, fleet, [fleet_key])
    try:
        peer.report("greedy", group)
        peer.listen("greedy")
        time.sleep(0.3)
        for indices in (list(range(17)), list(range(64)), [5, 5]):
            request = {"type": protocol.REQUEST_TYPE, "device": "greedy", "sha256": sha, "indices": indices}
            peer.publish(protocol.chunk_request_topic("greedy"), protocol.encode(request))
        peer.request("greedy", sha, list(range(16)))
        assert_good_chunks(peer.wait_for("greedy", 16), signed, list(range(16)))
        time.sleep(1)
        assert len(peer.received("greedy")) == 16
        assert served.manager.metrics()["invalid"] == {"chunk_request/schema": 3}
    finally:
        served.close()


def test_each_device_has_its_own_chunk_budget(tmp_path, broker, archives, fleet_key, group, peer):
    fleet, signed = published(tmp_path, archives, fleet_key, group, broker, chunk_size=1024)
    sha = signed["archive"]["sha256"]
    clock = FrozenClock()
    limits = fleet_manager.ServeLimits(chunk_rate=1.0, chunk_burst=8.0, message_rate=1000.0, message_burst=1000.0)
    enroll(fleet, group, "hog", "quiet")
    served = Served(broker.url, fleet, [fleet_key], limits=limits, clock=clock)
    try:
        for device in ("hog", "quiet"):
            peer.report(device, group)
            peer.listen(device)
        time.sleep(0.3)
        peer.request("hog", sha, list(range(8)))
        assert len(peer.wait_for("hog", 8)) == 8
        for _ in range(5):  # the bucket is empty and the clock stands still: nothing more
            peer.request("hog", sha, list(range(8, 16)))
        peer.request("quiet", sha, list(range(8)))  # another device's budget is untouched
        assert_good_chunks(peer.wait_for("quiet", 8), signed, list(range(8)))
        time.sleep(1)
        assert len(peer.received("hog")) == 8
        assert served.manager.metrics()["refused"] == {"rate_limited": 5}
        clock.now += 4.0  # 4 chunks' worth of tokens
        peer.request("hog", sha, list(range(8, 16)))
        peer.request("hog", sha, list(range(8, 12)))
        assert_good_chunks(peer.wait_for("hog", 12)[8:], signed, list(range(8, 12)))
        assert served.manager.metrics()["refused"] == {"rate_limited": 6}
    finally:
        served.close()


def test_a_message_flood_is_cut_off_per_device_and_others_are_still_served(
    tmp_path, broker, archives, fleet_key, group, peer
):
    fleet, signed = published(tmp_path, archives, fleet_key, group, broker, chunk_size=1024)
    sha = signed["archive"]["sha256"]
    clock = FrozenClock()
    limits = fleet_manager.ServeLimits(message_rate=1.0, message_burst=20.0)
    enroll(fleet, group, "flooder", "good")
    served = Served(broker.url, fleet, [fleet_key], limits=limits, clock=clock)
    try:
        peer.report("flooder", group)
        peer.report("good", group)
        peer.listen("good")
        time.sleep(0.3)
        sent = [peer.client.publish(protocol.chunk_request_topic("flooder"), b"{not json", qos=1) for _ in range(200)]
        sent[-1].wait_for_publish(10)
        peer.request("good", sha, [0, 1])
        assert_good_chunks(peer.wait_for("good", 2), signed, [0, 1])
        wait_until(
            lambda: sum(served.manager.metrics()["invalid"].values()) + served.manager.refused["rate_limited"] >= 200,
            15,
            "every flood message counted",
        )
        metrics = served.manager.metrics()
        # The report (1 message) and 19 requests fit the burst of 20; the rest is cut off unread.
        assert metrics["invalid"] == {"chunk_request/not_json": 19}
        assert metrics["refused"] == {"rate_limited": 181}
    finally:
        served.close()
