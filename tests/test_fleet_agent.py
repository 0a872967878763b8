"""The device update agent as a real process against a real mosquitto: happy path, refusals, bad chunks,
kill -9 at every state, disk full, failing self-test and probation."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edge_runtime import bundle, signing
from edge_runtime.fleet import protocol
from edge_runtime.fleet import release as releases
from edge_runtime.mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from edge_runtime.schema import SchemaError
from edge_runtime.store import Store

from support import mqtt_broker
from support.daemon import Daemon
from support.fleet_sim import Device, Reports, ServedManager, make_release, refinalize, tiny

pytestmark = pytest.mark.skipif(not mqtt_broker.available(), reason="mosquitto is not installed")

TRAFFIC = [
    "what is my account balance",
    "play some jazz music",
    "book a table for two tonight",
    "how do I reset my password",
    "turn off the lights",
    "what's the weather tomorrow",
] * 4


@pytest.fixture(scope="module")
def broker():
    with mqtt_broker.Broker() as running:
        yield running


@pytest.fixture(scope="module")
def archives(tmp_path_factory, fleet_key):
    src = tmp_path_factory.mktemp("bundles")
    v1 = tiny(src / "tiny-1.0.0", fleet_key, "1.0.0", 1)
    v2 = tiny(
        src / "tiny-1.1.0",
        fleet_key,
        "1.1.0",
        2,
    )
    strict = dict(routing={"min_confidence": 0.99, "min_margin": 0.0, "max_entropy": 1.0})
    escalating = tiny(src / "tiny-1.2.0", fleet_key, "1.2.0", 3, **strict)

    def wrong_golden(path, raw):
        labels = json.loads((path / "labels.json").read_text())
        rows = [json.loads(line) for line in (path / "golden.jsonl").read_text().splitlines()]
        rows = [{**r, "label": next(label for label in labels if label != r["label"])} for r in rows]
        (path / "golden.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        raw.update(version="1.3.0", release=4)

    failing = refinalize(Path(str(v2)[:-4]), src / "tiny-1.3.0", fleet_key, wrong_golden)
    v3 = tiny(src / "tiny-2.0.0", fleet_key, "2.0.0", 5)
    return {"v1": v1, "v2": v2, "escalating": escalating, "failing": failing, "v3": v3}


@pytest.fixture
def group():
    return f"g{uuid.uuid4().hex[:8]}"  # retained desired states must not leak between tests


@pytest.fixture
def traffic(tmp_path):
    path = tmp_path / "traffic.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TRAFFIC))
    return path


@pytest.fixture
def device(tmp_path, broker, fleet_key, archives, group, traffic):
    made = []

    def factory(*args, initial="v1", with_traffic_file=True):
        probation = ("--probation-traffic", str(traffic)) if with_traffic_file else ()
        dev = Device(
            tmp_path / "devices",
            f"dev-{uuid.uuid4().hex[:6]}",
            group,
            broker.url,
            fleet_key.public_key(),
            archives[initial],
            *probation,
            *args,
            fleet_dir=tmp_path / "fleet",  # the `served` manager's
        )
        made.append(dev)
        return dev

    yield factory
    for dev in made:
        dev.stop()


@pytest.fixture
def served(broker, tmp_path, fleet_key):
    manager = ServedManager(broker.url, tmp_path / "fleet", [fleet_key])
    yield manager
    manager.close()


@pytest.fixture
def reports(broker):
    watcher = Reports(broker.url)
    yield watcher
    watcher.close()


def release_for(archives, name, key, group, tmp_path, **options) -> Path:
    """A release record for archives[name] in its own dir (tests sign the same archive differently)."""
    archive = archives[name]
    folder = tmp_path / f"rel-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    copy = folder / archive.name
    copy.write_bytes(archive.read_bytes())
    return make_release(copy, key, group, **{"chunk_size": 64 * 1024, **options})


def publish_raw(broker_url: str, topic: str, payload: bytes) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(*broker_url.removeprefix("mqtt://").split(":")[0:1], int(broker_url.rsplit(":", 1)[1]))
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def desired_bytes(keys, group, seq, envelope, action="install") -> bytes:
    return protocol.encode(
        protocol.build_desired(keys, scope="group", target=group, seq=seq, action=action, release=envelope)
    )


def snapshot(root: Path) -> dict:
    models = root / "models"
    return {
        p.relative_to(models).as_posix(): p.read_bytes()
        for p in sorted(models.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def assert_serving(dev: Device, expected: tuple[str, str]) -> None:
    """A verified model serves: load() works, every installed version verifies, nothing half-installed."""
    from edge_runtime import load

    store = Store(dev.home)
    assert store.active() == expected
    assert all(ok for *_, ok, _why in store.verify_all()), store.verify_all()
    assert load(root=dev.home).predict(["play some jazz"])[0].label in ("negative", "neutral", "positive")
    assert not [p.name for p in store.models.iterdir() if p.name.startswith(".") and p.is_dir()]
    downloads = dev.home / "state" / "fleet" / "downloads"
    assert not (downloads.exists() and list(downloads.iterdir()))


# --- happy path ------------------------------------------------------------------------------------


@pytest.mark.kernels  # the self-test judges the new model by what the kernels compute
def test_update_goes_through_every_phase_and_reports_them(
    device, served, reports, archives, fleet_key, group, tmp_path
):
    dev = device().start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    record = release_for(archives, "v2", fleet_key, group, tmp_path)
    served.manager.publish(record, archives["v2"], group)
    final = dev.wait_phase("committed", "failed", "rolled_back")
    assert final["phase"] == "committed", final
    assert final["installed_release"] == 2
    assert_serving(dev, ("tiny", "1.1.0"))
    assert Store(dev.home).previous() == ("tiny", "1.0.0")
    reports.wait(lambda s: s["device"] == dev.id and s["phase"] == "committed", 10, "committed")
    seen = [s["phase"] for s in reports.all if s["device"] == dev.id]
    for phase in ("downloading", "verifying", "staged", "selftest", "activating", "probation", "committed"):
        assert phase in seen, seen
    assert final["probation"]["escalation_rate"] == 0.0 and final["selftest"]["examples"] == 3


# --- refusals --------------------------------------------------------------------------------------


def test_refusals_are_reported_and_change_nothing(device, reports, archives, fleet_key, group, tmp_path, broker):
    dev = device().start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    before = snapshot(dev.home)
    good = releases.read(release_for(archives, "v2", fleet_key, group, tmp_path))
    stranger = signing.generate_keypair()[0]
    unsigned = {"signed": good["signed"], "signatures": []}
    wrong_key = releases.read(release_for(archives, "v2", stranger, group, tmp_path))
    tampered = json.loads(json.dumps(good))
    tampered["signed"]["expires_at"] += 10**8
    expired = releases.read(release_for(archives, "v2", fleet_key, group, tmp_path, now=time.time() - 7200))
    other_group = releases.read(release_for(archives, "v2", fleet_key, "elsewhere", tmp_path))
    topic = protocol.group_desired_topic(group)
    cases = [
        (desired_bytes([fleet_key], group, 1, unsigned), "not signed"),
        (desired_bytes([fleet_key], group, 2, wrong_key), f"untrusted key {signing.key_id(stranger.public_key())}"),
        (desired_bytes([fleet_key], group, 3, tampered), "bad signature"),
        (desired_bytes([fleet_key], group, 4, expired), "expired at"),
        (desired_bytes([fleet_key], group, 5, other_group), "is for group(s) elsewhere"),
        (desired_bytes([stranger], group, 6, good), "desired state: signature does not verify"),
        (desired_bytes([fleet_key], "not-" + group, 7, good), "addressed to group not-"),
    ]
    for payload, reason in cases:
        publish_raw(broker.url, topic, payload)
        report = reports.wait(
            lambda s, reason=reason: s["device"] == dev.id and reason in (s.get("last_error") or ""), 20, reason
        )
        assert report["phase"] == "idle"
        assert snapshot(dev.home) == before, reason
    assert Store(dev.home).active() == ("tiny", "1.0.0")


def test_rollback_attack_and_replayed_desired_state_are_refused(
    device, served, reports, archives, fleet_key, group, tmp_path, broker
):
    dev = device().start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    old = releases.read(release_for(archives, "v1", fleet_key, group, tmp_path))  # release 1
    new = releases.read(release_for(archives, "v2", fleet_key, group, tmp_path))  # release 2
    topic = protocol.group_desired_topic(group)
    served.manager.fleet.add_release(new, releases.check_shape(new["signed"]), archives["v2"])
    first = desired_bytes([fleet_key], group, 10, new)
    publish_raw(broker.url, topic, first)
    assert dev.wait_phase("committed", "failed", "rolled_back")["phase"] == "committed"
    after_update = snapshot(dev.home)
    publish_raw(broker.url, topic, desired_bytes([fleet_key], group, 11, old))
    reports.wait(
        lambda s: s["device"] == dev.id and "not newer than installed release 2" in (s.get("last_error") or ""),
        20,
        "rollback refusal",
    )
    publish_raw(broker.url, topic, first)  # seq 10 again: a replay
    reports.wait(
        lambda s: (
            s["device"] == dev.id and "replayed desired state (seq 10, already saw 11)" in (s.get("last_error") or "")
        ),
        20,
        "replay refusal",
    )
    assert snapshot(dev.home) == after_update
    assert_serving(dev, ("tiny", "1.1.0"))


def test_tampered_bundle_bytes_are_refused_at_verification(device, served, archives, fleet_key, group, tmp_path):
    """The fleet key signs a record over an archive whose model file was altered: the bundle's own
    manifest hashes catch it, nothing is installed."""
    import tarfile

    dev = device().start()
    before = snapshot(dev.home)
    trusted = {signing.key_id(fleet_key.public_key()): fleet_key.public_key()}
    unpacked = bundle.unpack(archives["v2"], tmp_path / "unpacked", trusted).path
    model = unpacked / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    evil = tmp_path / "evil" / "tiny-1.1.0.erb"
    evil.parent.mkdir()
    with tarfile.open(evil, "w") as tar:
        for name in [bundle.MANIFEST, bundle.SIGNATURE, *sorted(bundle.read_manifest(unpacked).files)]:
            tar.add(unpacked / name, arcname=name)
    record = make_release(evil, fleet_key, group, chunk_size=64 * 1024)
    served.manager.publish(record, evil, group)
    final = dev.wait_phase("committed", "failed", "rolled_back")
    assert final["phase"] == "failed" and "model.onnx: sha256 mismatch" in final["last_error"], final
    assert snapshot(dev.home) == before
    assert_serving(dev, ("tiny", "1.0.0"))


def test_a_chunk_with_a_bad_hash_is_refetched_not_written(device, archives, fleet_key, group, tmp_path, broker):
    """An adversarial chunk server: the first answer for chunk 1 is corrupted."""
    dev = device().start()
    record = release_for(archives, "v2", fleet_key, group, tmp_path)
    envelope = releases.read(record)
    target = releases.check_shape(envelope["signed"])
    archive = record.with_name(record.name.removesuffix(releases.SUFFIX))
    corrupted = {"left": 1}
    holder = {}

    def answer(message):
        request = protocol.parse_request(message.payload, dev.id)
        for index in request["indices"]:
            data = archive.read_bytes()[index * target.chunk_size : (index + 1) * target.chunk_size]
            if index == 1 and corrupted["left"]:
                corrupted["left"] -= 1
                data = b"\x00" + data[1:]
            holder["link"].client.publish(
                protocol.chunk_topic(dev.id), protocol.encode_chunk(target.sha256, index, data), qos=1
            )

    holder["link"] = link = Link(
        BrokerConfig.from_url(broker.url),
        "evil-server",
        subscriptions=[Subscription(protocol.chunk_request_topic(dev.id))],
        handlers=LinkHandlers(on_message=answer),
        clean_start=True,
    )
    link.start()
    link.wait_ready(10)
    try:
        publish_raw(broker.url, protocol.group_desired_topic(group), desired_bytes([fleet_key], group, 1, envelope))
        final = dev.wait_phase("committed", "failed", "rolled_back")
    finally:
        link.stop()
    assert final["phase"] == "committed", final
    assert corrupted["left"] == 0 and final["download"]["bad"] == 1
    assert final["download"]["received"] == target.signed["archive"]["size"] // target.chunk_size + 1
    assert_serving(dev, ("tiny", "1.1.0"))


# --- crashes ---------------------------------------------------------------------------------------

KILL_POINTS = [
    "downloading",
    "chunk",
    "verifying",
    "store-install",
    "staged",
    "selftest",
    "activating",
    "probation",
    "committed",
    "rolling_back",
]


@pytest.mark.kernels  # the self-test judges the new model by what the kernels compute
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_every_state_then_resume(point, device, served, archives, fleet_key, group, tmp_path):
    dev = device()
    marker = tmp_path / "paused"
    name = "escalating" if point == "rolling_back" else "v2"
    dev.start(pause=(point, marker))
    record = release_for(archives, name, fleet_key, group, tmp_path)
    served.manager.publish(record, archives[name], group)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert dev.process.poll() is None, dev.log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"never paused at {point}: {dev.log.read_text()[-2000:]}"
        time.sleep(0.05)
    dev.kill()
    assert dev.process.returncode == -9
    interrupted = dev.state()["phase"]
    # Right after the crash, before any restart, the device can already serve a verified model.
    from edge_runtime import load

    assert load(root=dev.home).manifest.ref in ("tiny@1.0.0", "tiny@1.1.0", "tiny@1.2.0")
    dev.start()
    final = dev.wait_phase("committed", "failed", "rolled_back")
    expected = ("rolled_back", ("tiny", "1.0.0")) if point == "rolling_back" else ("committed", ("tiny", "1.1.0"))
    assert (final["phase"], Store(dev.home).active()) == expected, (interrupted, final)
    assert_serving(dev, expected[1])
    if point == "chunk":  # resumed from the bitmap: the stored chunk was not fetched again
        total = len(releases.read(record)["signed"]["archive"]["chunks"])
        assert final["download"]["received"] < total


# --- failures that must leave the old model serving ------------------------------------------------


def test_disk_full_during_download_aborts_and_the_old_model_keeps_serving(
    device, served, archives, fleet_key, group, tmp_path
):
    downloads = tmp_path / "small-disk"
    downloads.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(downloads)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'not permitted'})")
    try:
        dev = device("--download-dir", str(downloads)).start()
        record = release_for(archives, "v2", fleet_key, group, tmp_path)
        served.manager.publish(record, archives["v2"], group)
        final = dev.wait_phase("committed", "failed", "rolled_back")
        assert final["phase"] == "failed" and "disk full" in final["last_error"], final
        assert list(downloads.iterdir()) == []  # the partial download was removed
        assert_serving(dev, ("tiny", "1.0.0"))
        assert [m.ref for m in Store(dev.home).versions()] == ["tiny@1.0.0"]
    finally:
        dev.stop()
        subprocess.run(["umount", str(downloads)], check=False)


@pytest.mark.kernels  # the self-test judges the new model by what the kernels compute
def test_failing_self_test_is_not_activated_and_is_removed(
    device, served, reports, archives, fleet_key, group, tmp_path
):
    dev = device().start()
    record = release_for(archives, "failing", fleet_key, group, tmp_path)
    served.manager.publish(record, archives["failing"], group)
    final = dev.wait_phase("committed", "failed", "rolled_back")
    assert final["phase"] == "failed" and "golden example 1" in final["last_error"], final
    assert [m.ref for m in Store(dev.home).versions()] == ["tiny@1.0.0"]
    assert_serving(dev, ("tiny", "1.0.0"))
    reports.wait(
        lambda s: s["device"] == dev.id and s["phase"] == "failed" and "golden" in s["last_error"], 10, "failed report"
    )


@pytest.mark.kernels  # probation compares escalation rates, which follow the kernels' confidences
def test_higher_escalation_rate_in_probation_rolls_back(device, served, reports, archives, fleet_key, group, tmp_path):
    dev = device().start()
    record = release_for(archives, "escalating", fleet_key, group, tmp_path)
    served.manager.publish(record, archives["escalating"], group)
    final = dev.wait_phase("committed", "failed", "rolled_back")
    assert final["phase"] == "rolled_back" and "escalation rate" in final["last_error"], final
    assert_serving(dev, ("tiny", "1.0.0"))
    report = reports.wait(lambda s: s["device"] == dev.id and s["phase"] == "rolled_back", 10, "rolled_back")
    assert report["active"] == "tiny@1.0.0" and report["installed_release"] == 3


class Traffic(threading.Thread):
    """Requests to a daemon, a batch of TRAFFIC every 50 ms, until stopped: the device's live traffic."""

    def __init__(self, daemon: Daemon):
        super().__init__(daemon=True)
        self.target, self.halt, self.failures = daemon, threading.Event(), []

    def run(self) -> None:
        while not self.halt.wait(0.05):
            status = self.target.post("/v1/predict", {"texts": TRAFFIC[:6]})[0]
            if status != 200:
                self.failures.append(status)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def serving(daemon: Daemon) -> dict:
    return daemon.get("/v1/status")[2]["model"]


def wait_for_texts(daemon: Daemon, version: str, texts: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = serving(daemon)
        if model["version"] == version and model["live"]["texts"] >= texts:
            return model
        time.sleep(0.1)
    raise AssertionError(f"the daemon did not route {texts} texts on {version}: {serving(daemon)}")


@pytest.mark.kernels  # probation compares escalation rates, which follow the kernels' confidences
def test_live_probation_judges_the_new_model_by_the_daemons_own_counters(
    device, archives, served, fleet_key, group, tmp_path
):
    """No traffic file: the agent compares the daemon's counters for the new model with those of the one it
    replaces, read before the swap. A release that routes like its predecessor commits; one that escalates
    the same live traffic far more is rolled back, and the daemon serves the previous model again."""
    window = 30
    dev = device(with_traffic_file=False)  # probation reads the daemon's counters
    daemon = Daemon(dev.home, log_dir=tmp_path).wait_ready()
    traffic = Traffic(daemon)
    dev.args += ["--daemon-url", f"http://127.0.0.1:{daemon.port}", "--probation-requests", str(window)]
    try:
        traffic.start()
        wait_for_texts(daemon, "1.0.0", window)  # the previous model's window, before the swap
        dev.start()
        served.manager.publish(release_for(archives, "v2", fleet_key, group, tmp_path), archives["v2"], group)
        good = dev.wait_phase("committed", "failed", "rolled_back")
        assert good["phase"] == "committed", good
        judged = good["probation"]
        assert judged["source"] == "daemon" and judged["texts"] >= window, judged
        assert (
            judged["baseline"]["texts"] >= window and judged["escalation_rate"] == judged["baseline"]["escalation_rate"]
        )
        assert serving(daemon)["version"] == "1.1.0"

        wait_for_texts(daemon, "1.1.0", window)
        record = release_for(archives, "escalating", fleet_key, group, tmp_path)
        served.manager.publish(record, archives["escalating"], group)
        bad = dev.wait(lambda s: s["phase"] in ("failed", "rolled_back") and s["release"]["signed"]["release"] == 3)
        assert bad["phase"] == "rolled_back" and "probation: escalation rate" in bad["last_error"], bad
        assert serving(daemon)["version"] == "1.1.0"
        assert Store(dev.home).active() == ("tiny", "1.1.0")
        assert traffic.failures == []
    finally:
        traffic.stop()
        daemon.stop()  # the agent is the `device` fixture's to stop


# --- key roles, anti-rollback floor, desired-state expiry and ordering -----------------------------


def test_a_release_record_signed_only_by_a_bundle_key_is_refused(
    device, served, reports, archives, fleet_key, group, tmp_path, broker
):
    """A key trusted to sign bundles cannot decide what a device installs: a release record (or a desired
    state) it signs is refused, even inside a desired state the fleet key signed."""
    dev = device()
    bundle_key = signing.generate_keypair()[0]
    signing.trust_key(dev.home, bundle_key.public_key(), "bundle")
    dev.start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    before = snapshot(dev.home)
    record = releases.read(release_for(archives, "v2", bundle_key, group, tmp_path))
    served.manager.fleet.add_release(record, releases.check_shape(record["signed"]), archives["v2"])
    kid = signing.key_id(bundle_key.public_key())
    topic = protocol.group_desired_topic(group)
    publish_raw(broker.url, topic, desired_bytes([fleet_key], group, 1, record))
    reports.wait(
        lambda s: (
            s["device"] == dev.id
            and "release record: signature does not verify" in (s.get("last_error") or "")
            and f"untrusted key {kid}" in s["last_error"]
        ),
        20,
        "refusal of the bundle-key release record",
    )
    fleet_record = releases.read(release_for(archives, "v2", fleet_key, group, tmp_path))
    publish_raw(broker.url, topic, desired_bytes([bundle_key], group, 2, fleet_record))
    reports.wait(
        lambda s: s["device"] == dev.id and "desired state: signature does not verify" in (s.get("last_error") or ""),
        20,
        "refusal of the bundle-key desired state",
    )
    assert dev.state()["phase"] == "idle"
    assert snapshot(dev.home) == before
    assert_serving(dev, ("tiny", "1.0.0"))


def test_the_devices_local_build_key_cannot_steer_the_fleet(
    device, served, reports, archives, fleet_key, group, tmp_path, broker
):
    """`build default` leaves keys/signing/local.key on a device (and on every clone of its image): it may sign
    bundles for this device, never release records or desired states."""
    import os
    import sys

    from edge_runtime.build.local_key import local_signing_key

    from support import pythonpath

    dev = device()
    local = local_signing_key(dev.home)
    public_text = signing.public_key_to_text(local.public_key()) + "\n"
    # A copy of its public key planted among the fleet keys (by hand, or by an older runtime) does not count.
    (signing.trusted_dir(dev.home, "fleet") / f"{signing.key_id(local.public_key())}.pub").write_text(public_text)
    dev.start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    before = snapshot(dev.home)
    record = releases.read(release_for(archives, "v2", local, group, tmp_path))
    served.manager.fleet.add_release(record, releases.check_shape(record["signed"]), archives["v2"])
    publish_raw(broker.url, protocol.group_desired_topic(group), desired_bytes([local], group, 1, record))
    reports.wait(
        lambda s: s["device"] == dev.id and "desired state: signature does not verify" in (s.get("last_error") or ""),
        20,
        "refusal of the local key's desired state",
    )
    assert snapshot(dev.home) == before
    assert_serving(dev, ("tiny", "1.0.0"))
    # And `keys trust --role fleet` refuses it, with a one-line reason.
    public_file = tmp_path / "local.pub"
    public_file.write_text(public_text)
    refused = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "keys", "trust", "--role", "fleet", str(public_file)],
        env={**os.environ, "EDGE_RUNTIME_HOME": str(dev.home), "PYTHONPATH": pythonpath()},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "local build key" in refused.stderr, refused
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_corrupt_update_state_refuses_updates_and_keeps_the_floor(
    device, served, reports, archives, fleet_key, group, tmp_path
):
    import os
    import sys

    from support import pythonpath

    dev = device()
    state_file = dev.home / "state" / "fleet" / "update.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_bytes(b'{"phase": "idle", "installed_release": 7, "seen_')  # torn by a bad disk
    dev.start()
    record = release_for(archives, "v2", fleet_key, group, tmp_path)
    served.manager.publish(record, archives["v2"], group)
    report = reports.wait(
        lambda s: s["device"] == dev.id and "is unreadable" in (s.get("last_error") or ""), 30, "refusal"
    )
    assert "updates are refused" in report["last_error"] and report["state_error"]
    assert report["installed_release"] == 1  # the store's highest installed release, not 0
    time.sleep(2)  # give a wrong agent the time to start downloading
    assert state_file.read_bytes() == b'{"phase": "idle", "installed_release": 7, "seen_'  # never overwritten
    assert [m.ref for m in Store(dev.home).versions()] == ["tiny@1.0.0"]
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(dev.home), "PYTHONPATH": pythonpath()}
    status = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "update", "status"], env=env, capture_output=True, text=True
    )
    assert status.returncode == 1 and "is unreadable" in status.stdout, status
    doctor = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "doctor", "--json"], env=env, capture_output=True, text=True
    )
    assert any("is unreadable" in problem for problem in json.loads(doctor.stdout)["problems"]), doctor.stdout
    assert_serving(dev, ("tiny", "1.0.0"))


def test_without_update_state_the_floor_is_the_stores_highest_release(
    device, served, reports, archives, fleet_key, group, tmp_path
):
    dev = device(initial="v2").start()  # release 2 installed; no update.json yet
    record = release_for(archives, "v1", fleet_key, group, tmp_path)
    served.manager.publish(record, archives["v1"], group)
    reports.wait(
        lambda s: s["device"] == dev.id and "not newer than installed release 2" in (s.get("last_error") or ""),
        30,
        "rollback refusal",
    )
    assert dev.state()["installed_release"] == 2
    assert_serving(dev, ("tiny", "1.1.0"))
    assert [m.ref for m in Store(dev.home).versions()] == ["tiny@1.1.0"]


def test_expired_or_never_expiring_desired_states_are_refused(
    device, served, reports, archives, fleet_key, group, tmp_path, broker
):
    dev = device().start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    before = snapshot(dev.home)
    record = releases.read(release_for(archives, "v2", fleet_key, group, tmp_path))
    served.manager.fleet.add_release(record, releases.check_shape(record["signed"]), archives["v2"])
    topic = protocol.group_desired_topic(group)
    stale = protocol.build_desired(
        [fleet_key],
        scope="group",
        target=group,
        seq=1,
        action="install",
        release=record,
        ttl_s=60,
        now=time.time() - 120,
    )
    publish_raw(broker.url, topic, protocol.encode(stale))
    reports.wait(
        lambda s: s["device"] == dev.id and "desired state seq 1 expired at" in (s.get("last_error") or ""),
        20,
        "expiry",
    )
    forever = dict(stale["signed"], seq=2)
    forever.pop("expires_at")
    publish_raw(broker.url, topic, protocol.encode(releases.sign_envelope(forever, [fleet_key])))
    reports.wait(
        lambda s: s["device"] == dev.id and "desired state seq 2 has no expiry" in (s.get("last_error") or ""),
        20,
        "no expiry",
    )
    assert snapshot(dev.home) == before
    assert_serving(dev, ("tiny", "1.0.0"))


@pytest.mark.kernels  # the self-test judges the new model by what the kernels compute
def test_kill_9_between_receiving_and_recording_a_desired_state(device, served, archives, fleet_key, group, tmp_path):
    dev = device()
    marker = tmp_path / "paused"
    dev.start(pause=("desired", marker))
    record = release_for(archives, "v2", fleet_key, group, tmp_path)
    served.manager.publish(record, archives["v2"], group)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert dev.process.poll() is None, dev.log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"never paused: {dev.log.read_text()[-2000:]}"
        time.sleep(0.05)
    dev.kill()
    assert dev.process.returncode == -9
    assert dev.state()["seen_seq"] == {}  # nothing recorded: the retained desired state is still new
    dev.start()
    final = dev.wait_phase("committed", "failed", "rolled_back", timeout=60)
    assert final["phase"] == "committed" and final["installed_release"] == 2, final
    assert_serving(dev, ("tiny", "1.1.0"))


class StallingChunkServer:
    """Answers only the first request for a release's chunks, with its first chunk: the device is then
    mid-download, holding one chunk and waiting for the rest."""

    def __init__(self, broker_url: str, device_id: str, archive: Path, chunk_size: int):
        self.data, self.chunk_size, self.device_id = archive.read_bytes(), chunk_size, device_id
        self.answered = threading.Event()
        self.link = Link(
            BrokerConfig.from_url(broker_url),
            f"stall-{uuid.uuid4().hex[:6]}",
            subscriptions=[Subscription(protocol.chunk_request_topic(device_id))],
            handlers=LinkHandlers(on_message=self._on),
            clean_start=True,
            session_expiry_s=0,
        )
        self.link.start()
        self.link.wait_ready(10)

    def _on(self, message) -> None:
        try:
            request = protocol.parse_request(message.payload, self.device_id)
        except SchemaError:
            return
        if self.answered.is_set():
            return
        self.answered.set()
        payload = protocol.encode_chunk(request["sha256"], 0, self.data[: self.chunk_size])
        self.link.client.publish(protocol.chunk_topic(self.device_id), payload, qos=1)

    def close(self) -> None:
        self.link.stop()


@pytest.mark.kernels  # the self-test judges the new model by what the kernels compute
def test_a_newer_desired_state_interrupts_a_download(device, reports, archives, fleet_key, group, tmp_path, broker):
    dev = device().start()
    reports.wait(lambda s: s["device"] == dev.id, 30, "initial report")
    old = release_for(archives, "v2", fleet_key, group, tmp_path, chunk_size=1024)  # release 2, many chunks
    staller = StallingChunkServer(broker.url, dev.id, archives["v2"], 1024)
    try:
        publish_raw(
            broker.url, protocol.group_desired_topic(group), desired_bytes([fleet_key], group, 1, releases.read(old))
        )
        dev.wait(lambda d: d["phase"] == "downloading", 30, "downloading release 2")
        assert staller.answered.wait(30)
        partial = dev.home / "state" / "fleet" / "downloads"
        deadline = time.monotonic() + 10
        while not any(partial.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(partial.rglob("*")), "the first chunk was never stored"
    finally:
        staller.close()
    manager = ServedManager(broker.url, tmp_path / "fleet", [fleet_key])
    try:
        newer = releases.read(release_for(archives, "v3", fleet_key, group, tmp_path))  # release 5
        manager.manager.fleet.add_release(newer, releases.check_shape(newer["signed"]), archives["v3"])
        publish_raw(broker.url, protocol.group_desired_topic(group), desired_bytes([fleet_key], group, 2, newer))
        reports.wait(lambda s: s["device"] == dev.id and "download stopped" in (s.get("note") or ""), 30, "the switch")
        final = dev.wait_phase("committed", "failed", "rolled_back", timeout=90)
    finally:
        manager.close()
    assert (final["phase"], final["installed_release"]) == ("committed", 5), final
    assert_serving(dev, ("tiny", "2.0.0"))
    assert [m.ref for m in Store(dev.home).versions()] == ["tiny@1.0.0", "tiny@2.0.0"]  # release 2 never installed
