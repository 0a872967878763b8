"""The device registry the fleet manager owns (registry.py): enrollment through the CLI, a registry that cannot
be read stops everything, and with a real mosquitto and real agent processes, a device that lies about its
group is flagged, never becomes a canary and never receives the other group's release; `publish --device`
reaches that device only."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest

from edge_runtime import signing
from edge_runtime.cli import main
from edge_runtime.fleet import protocol
from edge_runtime.fleet import release as releases
from edge_runtime.fleet.fleetdir import FleetDir
from edge_runtime.mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from edge_runtime.store import Store

from support import mqtt_broker
from support.fleet_sim import Device, Reports, ServedManager, make_release, tiny

# The tests that need a broker take conftest's `broker`: a mosquitto of the test's own, so no retained report or
# desired state of one test reaches the next.
mqtt = pytest.mark.mqtt


@pytest.fixture(scope="module")
def archives(tmp_path_factory, fleet_key):
    src = tmp_path_factory.mktemp("bundles")
    return {
        "v1": tiny(src / "tiny-1.0.0", fleet_key, "1.0.0", 1),
        "v2": tiny(src / "tiny-1.1.0", fleet_key, "1.1.0", 2),
        "v3": tiny(src / "tiny-1.2.0", fleet_key, "1.2.0", 3),
    }


def release_for(archive, key, group, tmp_path):
    """A release record for a copy of `archive` in a folder of its own (the same archive, other groups)."""
    folder = tmp_path / f"rel-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    copy = folder / archive.name
    copy.write_bytes(archive.read_bytes())
    return make_release(copy, key, group, chunk_size=64 * 1024)


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["fleet", *args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *args):
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def certificate(path, common_names):
    """A self-signed client certificate with these subject CNs (made the way the broker's CA would)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class DesiredSpy:
    """Every desired state the broker delivers on fleet/# (retained ones included), by topic."""

    def __init__(self, broker_url: str):
        self.messages: list[tuple[str, dict]] = []
        self.link = mqtt_broker.listener(broker_url, "fleet/#", self._on, "spy")

    def _on(self, message) -> None:
        if message.payload:
            self.messages.append((message.topic, json.loads(message.payload)["signed"]))

    def to(self, device: str) -> list[dict]:
        return [signed for topic, signed in list(self.messages) if topic == protocol.device_desired_topic(device)]

    def close(self) -> None:
        self.link.stop()


def wait_until(check, timeout=30.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


# --- the registry through the CLI ----------------------------------------------------------------------


def test_enroll_list_move_remove_through_the_cli(tmp_path, capsys):
    common = ["--fleet-dir", str(tmp_path / "fleet")]
    assert cli_json(capsys, "device", "add", "shop-1", "--group", "lab", *common)["source"] == "cli"
    assert cli_json(capsys, "device", "add", "shop-1", "--group", "lab", *common)["group"] == "lab"  # idempotent
    pem = certificate(tmp_path / "shop-2.crt", ["shop-2"])
    assert cli_json(capsys, "device", "add", "--cert", str(pem), "--group", "field", *common)["device"] == "shop-2"
    listed = cli_json(capsys, "device", "list", *common)
    assert [(d["device"], d["group"], d["source"], d["pinned"]) for d in listed] == [
        ("shop-1", "lab", "cli", None),
        ("shop-2", "field", "cert", None),
    ]
    assert [d["device"] for d in cli_json(capsys, "device", "list", "--group", "field", *common)] == ["shop-2"]
    assert cli_json(capsys, "device", "move", "shop-1", "--group", "field", *common)["group"] == "field"
    assert cli_json(capsys, "device", "remove", "shop-2", *common) == {"ok": True, "device": "shop-2", "removed": True}
    assert FleetDir(tmp_path / "fleet").registry.groups() == {"shop-1": "field"}
    code, out, _ = cli(capsys, "device", "list", *common)
    assert code == 0 and "shop-1" in out and "field" in out

    refusals = [
        (["add", "shop-1", "--group", "lab"], "device shop-1 is enrolled in group field; move it"),
        (["add", "fleet", "--group", "lab"], "device id 'fleet' is reserved"),
        (["add", "worker", "--group", "lab"], "device id 'worker' is reserved"),
        (["add", "site-north", "--group", "lab"], "device id 'site-north' is reserved"),
        (["add", "a/b", "--group", "lab"], "must be 1-128 characters without / + # or NUL"),
        (["add", "x" * 129, "--group", "lab"], "must be 1-128 characters"),
        (["add", "shop-3", "--group", "no group"], "group 'no group' must be 1-64 letters"),
        (["add", "--group", "lab"], "give a DEVICE_ID or --cert PEM"),
        (["add", "--cert", str(certificate(tmp_path / "fleet.crt", ["fleet"])), "--group", "lab"], "is reserved"),
        (["add", "--cert", str(certificate(tmp_path / "two.crt", ["a", "b"])), "--group", "lab"], "2 common names"),
        (["add", "--cert", str(tmp_path / "shop-2.crt"), "shop-9", "--group", "lab"], "one of them"),
        (["move", "ghost", "--group", "lab"], "device ghost is not enrolled"),
        (["remove", "ghost"], "device ghost is not enrolled"),
        (["unpin", "shop-1"], "device shop-1 has no desired state of its own"),
    ]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    refusals.append((["add", "--cert", str(not_pem), "--group", "lab"], "not a PEM certificate"))
    for args, reason in refusals:
        code, out, err = cli(capsys, "device", *args, *common, "--json")
        assert code == 1, (args, out, err)
        assert json.loads(out)["ok"] is False and reason in json.loads(out)["error"], (args, out)
        assert err.count("\n") == 1 and reason in err, (args, err)  # one line on stderr
    assert FleetDir(tmp_path / "fleet").registry.groups() == {"shop-1": "field"}  # nothing changed


@mqtt
def test_an_unreadable_registry_fails_closed(tmp_path, capsys, broker, archives, fleet_key, monkeypatch):
    """Nothing is published, listed or served while the registry cannot be read, and it is not overwritten."""
    monkeypatch.setenv("EDGE_RUNTIME_UPLINK_BROKER", broker.url)
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, fleet_key)
    fleet = FleetDir(tmp_path / "fleet")
    common = ["--fleet-dir", str(fleet.root)]
    group = f"g{uuid.uuid4().hex[:6]}"
    fleet.registry.add("shop-1", group)
    record = release_for(archives["v2"], fleet_key, group, tmp_path)
    sha = releases.read(record)["signed"]["archive"]["sha256"]
    fleet.add_release(releases.read(record), releases.check_shape(releases.read(record)["signed"]), archives["v2"])
    served = ServedManager(broker.url, fleet.root, [fleet_key])
    spy = DesiredSpy(broker.url)
    chunks = []
    listener = Link(
        BrokerConfig.from_url(broker.url),
        f"chunks-{uuid.uuid4().hex[:6]}",
        subscriptions=[Subscription(protocol.chunk_topic("shop-1"))],
        handlers=LinkHandlers(on_message=chunks.append),
        clean_start=True,
        session_expiry_s=0,
    )
    listener.start()
    listener.wait_ready(10)
    try:
        garbage = b"this is not an SQLite database, it was overwritten by accident\n" * 20
        fleet.registry.path.write_bytes(garbage)
        reason = "is unreadable (file is not a database)"
        for args in (
            ["device", "list"],
            ["device", "add", "shop-2", "--group", group],
            ["device", "remove", "shop-1"],
            ["status", "--wait", "0.2"],
            ["publish", str(record), "--group", group, "--key", str(key_file)],
            ["publish", str(record), "--device", "shop-1", "--key", str(key_file)],
        ):
            code, _, err = cli(capsys, *args, *common)
            assert code == 1 and reason in err and err.count("\n") == 1, (args, err)
        assert fleet.registry.path.read_bytes() == garbage  # never "repaired" into an empty registry
        assert fleet.rollout(group) is None and fleet.device_rollouts() == []
        # `fleet serve` keeps running and answers nobody, not even a device that was enrolled
        served.manager.fleet.registry.path.write_bytes(garbage)
        link = served.manager._link()
        try:
            state = protocol.build_state("shop-1", group, phase="idle")
            link.client.publish(protocol.state_topic("shop-1"), protocol.encode(state), qos=1).wait_for_publish(10)
            link.client.publish(
                protocol.chunk_request_topic("shop-1"), protocol.build_request("shop-1", sha, [0]), qos=1
            ).wait_for_publish(10)
        finally:
            link.stop()
        wait_until(lambda: served.manager.refused["registry_unreadable"] == 1, 10, "the refused request")
        time.sleep(0.5)
        assert chunks == [] and spy.messages == []
        assert served.manager.ignored == {"registry_unreadable": 1}
        assert served.thread.is_alive()
    finally:
        listener.stop()
        spy.close()
        served.close()


# --- a device that lies about its group, with real agents ----------------------------------------------


@mqtt
def test_a_device_lying_about_its_group_is_flagged_and_gets_no_other_groups_release(
    tmp_path, capsys, broker, archives, fleet_key, monkeypatch
):
    """liar is enrolled in A and says B; stranger is not enrolled at all and says B. Both are shown, neither is a
    canary of B or gets B's release; the liar gets only A's desired states, refuses A's release (its agent is
    configured for B) and that refusal, from a device whose report is not trusted, does not halt A."""
    monkeypatch.setenv("EDGE_RUNTIME_UPLINK_BROKER", broker.url)
    monkeypatch.setenv("COLUMNS", "250")  # rich fits the table to the terminal, eliding cells
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, fleet_key)
    fleet_dir = tmp_path / "fleet"
    common = ["--fleet-dir", str(fleet_dir)]
    a, b = f"a{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    base = tmp_path / "devices"

    def device(name, says, enrolled_in=None):
        made = Device(base, name, says, broker.url, fleet_key.public_key(), archives["v1"])
        return made.enroll(fleet_dir, enrolled_in) if enrolled_in else made

    a1, a2, b1 = device("a1", a, a), device("a2", a, a), device("b1", b, b)
    liar, stranger = device("liar", b, enrolled_in=a), device("stranger", b)
    devices = [a1, a2, b1, liar, stranger]
    spy = DesiredSpy(broker.url)
    reports = Reports(broker.url)
    served = ServedManager(broker.url, fleet_dir, [fleet_key])
    try:
        for dev in devices:
            dev.start()
        wait_until(lambda: len(reports.latest) == 5, 60, "five reports")
        status = cli_json(capsys, "status", "--wait", "0.5", *common)
        seen = {d["device"]: (d["registry_group"], d["group"], d["group_mismatch"]) for d in status["devices"]}
        assert seen == {"a1": (a, a, False), "a2": (a, a, False), "b1": (b, b, False), "liar": (a, b, True)}
        assert [(d["device"], d["group"]) for d in status["unenrolled"]] == [("stranger", b)]
        code, table, _ = cli(capsys, "status", "--wait", "0.5", *common)
        table = " ".join(table.split())
        assert code == 0 and f"liar {a} {b} (!)" in table and f"reports group {b}, enrolled in {a}" in table
        assert f"stranger - {b}" in table and "not enrolled: ignored" in table
        assert [d["device"] for d in cli_json(capsys, "status", "--group", b, "--wait", "0.5", *common)["devices"]] == [
            "b1"
        ]

        # B's release, to (ceil of 99 % of) every trusted member of B as canaries: b1 only
        rel_b = release_for(archives["v2"], fleet_key, b, tmp_path)
        rollout = cli_json(
            capsys, "publish", str(rel_b), "--group", b, "--canary", "99", "--key", str(key_file), *common
        )
        assert (rollout["canaries"], rollout["devices"]) == (["b1"], ["b1"])
        # A's release: the liar is a member of A and is sent A's desired state, but is no canary of A either
        rel_a = release_for(archives["v3"], fleet_key, a, tmp_path)
        rollout = cli_json(
            capsys, "publish", str(rel_a), "--group", a, "--canary", "99", "--key", str(key_file), *common
        )
        assert (rollout["canaries"], rollout["devices"]) == (["a1", "a2"], ["a1", "a2", "liar"])
        liar.wait(lambda s: "waiting" in (s.get("note") or ""), 30, "the liar waits for A's canaries")
        for dev, number in ((b1, 2), (a1, 3), (a2, 3)):
            dev.wait(lambda s, n=number: s["phase"] == "committed" and s["installed_release"] == n, 60, "commit")
        assert cli_json(capsys, "promote", "--group", a, "--key", str(key_file), *common)["stage"] == "all"
        # the liar's agent (configured for B) refuses A's release; its report does not count for A's rollout
        liar.wait(lambda s: f"is for group(s) {a}, this device is in {b}" in (s.get("last_error") or ""), 30, "refusal")
        time.sleep(1.5)  # serve has seen the refusal
        status = cli_json(capsys, "status", "--wait", "0.5", *common)
        rollouts = {r["group"]: r for r in status["rollouts"]}
        assert rollouts[a]["stage"] == "all" and rollouts[a]["assessment"] == "2/2 devices committed"
        assert served.events == []  # no automatic halt
        assert served.manager.ignored["group_mismatch"] >= 1 and served.manager.ignored["unenrolled"] >= 1
    finally:
        served.close()
        reports.close()
        for dev in devices:
            dev.stop()
        spy.close()
    # what each device was ever sent
    assert {s["release"]["signed"]["release"] for s in spy.to("liar")} == {3}
    assert all(s["release"]["signed"]["groups"] == [a] for s in spy.to("liar"))
    assert spy.to("stranger") == []
    assert not [topic for topic, _ in spy.messages if topic.startswith("fleet/groups/")]
    for dev in (liar, stranger):
        assert Store(dev.home).active() == ("tiny", "1.0.0") and dev.state()["installed_release"] == 1
    assert Store(b1.home).active() == ("tiny", "1.1.0") and Store(a1.home).active() == ("tiny", "1.2.0")


@mqtt
def test_publish_to_one_device_reaches_that_device_only(tmp_path, capsys, broker, archives, fleet_key, monkeypatch):
    monkeypatch.setenv("EDGE_RUNTIME_UPLINK_BROKER", broker.url)
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, fleet_key)
    fleet_dir = tmp_path / "fleet"
    common = ["--fleet-dir", str(fleet_dir)]
    group = f"g{uuid.uuid4().hex[:6]}"
    target, other = (
        Device(
            tmp_path / "devices", name, group, broker.url, fleet_key.public_key(), archives["v1"], fleet_dir=fleet_dir
        )
        for name in (f"one-{group}", f"two-{group}")
    )
    spy = DesiredSpy(broker.url)
    served = ServedManager(broker.url, fleet_dir, [fleet_key])
    try:
        for dev in (target, other):
            dev.start()
        rel = release_for(archives["v2"], fleet_key, group, tmp_path)
        # refused: a device that is not enrolled, a release for another group, both --group and --device
        for args, reason in (
            (["--device", "ghost"], "device ghost is not enrolled"),
            (["--device", target.id, "--group", group], "give --group or --device"),
            (["--device", target.id, "--canary", "50"], "--canary is for a group"),
        ):
            code, _, err = cli(capsys, "publish", str(rel), *args, "--key", str(key_file), *common)
            assert code in (1, 2) and reason in err, (args, err)
        elsewhere = release_for(archives["v2"], fleet_key, "elsewhere", tmp_path)
        code, _, err = cli(capsys, "publish", str(elsewhere), "--device", target.id, "--key", str(key_file), *common)
        assert code == 1 and f"release 2 is for group(s) elsewhere; device {target.id} is enrolled in {group}" in err

        pinned = cli_json(capsys, "publish", str(rel), "--device", target.id, "--key", str(key_file), *common)
        assert (pinned["device"], pinned["group"], pinned["devices"]) == (target.id, group, [target.id])
        target.wait(lambda s: s["phase"] == "committed" and s["installed_release"] == 2, 60, "the device's commit")
        assert [(s["scope"], s["target"]) for s in spy.to(target.id)] == [("device", target.id)]
        assert spy.to(other.id) == []
        time.sleep(1)
        assert other.state()["phase"] == "idle" and Store(other.home).active() == ("tiny", "1.0.0")
        listed = {d["device"]: d["pinned"] for d in cli_json(capsys, "device", "list", *common)}
        assert listed == {target.id: "tiny@1.1.0", other.id: None}
        wait_until(
            lambda: (
                [
                    (r["device"], r["assessment"])
                    for r in cli_json(capsys, "status", "--wait", "0.3", *common)["device_rollouts"]
                ]
                == [(target.id, "1/1 devices committed")]
            ),
            15,
            "the device rollout's assessment",
        )
        # the group's rollouts pass the pinned device by, until it is unpinned
        rel3 = release_for(archives["v3"], fleet_key, group, tmp_path)
        assert cli_json(capsys, "publish", str(rel3), "--group", group, "--key", str(key_file), *common)["devices"] == [
            other.id
        ]
        assert cli_json(capsys, "device", "unpin", target.id, *common)["unpinned"] is True
        assert cli_json(capsys, "halt", "--group", group, "--key", str(key_file), *common)["devices"] == sorted(
            [target.id, other.id]
        )
    finally:
        served.close()
        spy.close()
        for dev in (target, other):
            dev.stop()


def test_registry_rows_are_checked_when_read(tmp_path):
    """A hand-edited registry cannot smuggle in a reserved id, a bad group or a bad site: it reads as unreadable."""
    import sqlite3

    from edge_runtime.fleet.registry import RegistryError

    fleet = FleetDir(tmp_path / "fleet")
    fleet.registry.add("shop-1", "lab")
    with sqlite3.connect(fleet.registry.path) as connection:
        connection.execute("INSERT INTO devices VALUES ('fleet', 'lab', 'cli', 0, NULL)")
    for read in (fleet.registry.enrollments, lambda: fleet.registry.group_of("fleet"), fleet.registry.sites):
        with pytest.raises(RegistryError, match="row 'fleet': device id 'fleet' is reserved"):
            read()
    with sqlite3.connect(fleet.registry.path) as connection:
        connection.execute("DELETE FROM devices WHERE device = 'fleet'")
        connection.execute("UPDATE devices SET site = 'north' WHERE device = 'shop-1'")
    with pytest.raises(RegistryError, match="row 'shop-1': site 'north' must be site-<name>"):
        fleet.registry.sites()
    with sqlite3.connect(fleet.registry.path) as connection:
        connection.execute("UPDATE devices SET site = NULL")
        connection.execute("PRAGMA user_version = 7")
    with pytest.raises(RegistryError, match="schema version 7, expected 2"):
        fleet.registry.enrollments()
    assert not (tmp_path / "none").exists() and FleetDir(tmp_path / "none").registry.groups() == {}
    assert not (tmp_path / "none").exists()  # reading never creates a registry


@mqtt
def test_serve_sends_the_current_desired_state_to_devices_enrolled_or_moved_later(
    tmp_path, broker, archives, fleet_key
):
    """Devices report as raw clients: `fleet serve` sends a group's current desired state to a member it was
    never sent to, once, and to nobody who is not a member."""
    fleet = FleetDir(tmp_path / "fleet")
    lab, field = f"lab{uuid.uuid4().hex[:4]}", f"field{uuid.uuid4().hex[:4]}"
    served = ServedManager(broker.url, fleet.root, [fleet_key])
    manager = served.manager
    spy = DesiredSpy(broker.url)
    link = manager._link()

    def report(device, group):
        state = protocol.encode(protocol.build_state(device, group, phase="idle"))
        link.client.publish(protocol.state_topic(device), state, qos=1, retain=True).wait_for_publish(10)

    try:
        for group, archive in ((lab, archives["v2"]), (field, archives["v3"])):
            record = release_for(archive, fleet_key, group, tmp_path)
            assert manager.publish(record, record.with_name(archive.name), group)["devices"] == []
        fleet.registry.add("late", lab)
        report("late", lab)
        report("outsider", lab)  # not enrolled: sent nothing
        wait_until(lambda: spy.to("late"), 10, "the late member's desired state")
        assert [(s["target"], s["release"]["signed"]["groups"]) for s in spy.to("late")] == [("late", [lab])]
        assert fleet.rollout(lab)["devices"] == ["late"]
        report("late", lab)  # a heartbeat: already sent, not again
        report("outsider", lab)  # reports are taken in order: once this one is counted, the heartbeat was taken
        wait_until(lambda: manager.ignored["unenrolled"] == 2, 10, "the heartbeat taken before the move")
        fleet.move_device("late", field)
        report("late", lab)  # what it claims does not matter: it is in field now
        wait_until(lambda: len(spy.to("late")) == 2, 10, "field's desired state after the move")
        assert spy.to("late")[1]["release"]["signed"]["groups"] == [field]
        time.sleep(1)
        assert len(spy.to("late")) == 2 and spy.to("outsider") == []
        assert manager.ignored["unenrolled"] == 2 and manager.ignored["group_mismatch"] == 1
    finally:
        link.stop()
        spy.close()
        served.close()


# --- sites and the central broker's ACL ------------------------------------------------------------------


def test_sites_through_the_cli(tmp_path, capsys, monkeypatch):
    """A device's site is set by `add --site`, changed by `move --site`/`--no-site` and shown by `list`; a site name
    that is not a safe site-<name> CN is refused with a one-line reason and changes nothing."""
    monkeypatch.setenv("COLUMNS", "200")
    common = ["--fleet-dir", str(tmp_path / "fleet")]
    added = cli_json(capsys, "device", "add", "dev-0", "--group", "lab", "--site", "site-a", *common)
    assert (added["ok"], added["device"], added["site"]) == (True, "dev-0", "site-a")
    assert cli_json(capsys, "device", "add", "dev-0", "--group", "lab", "--site", "site-a", *common)["site"] == "site-a"
    assert cli_json(capsys, "device", "add", "dev-1", "--group", "lab", "--site", "site-b", *common)["site"] == "site-b"
    assert cli_json(capsys, "device", "add", "dev-2", "--group", "field", *common)["site"] is None
    listed = cli_json(capsys, "device", "list", *common)
    assert [(d["device"], d["group"], d["site"]) for d in listed] == [
        ("dev-0", "lab", "site-a"),
        ("dev-1", "lab", "site-b"),
        ("dev-2", "field", None),
    ]
    assert [d["device"] for d in cli_json(capsys, "device", "list", "--site", "site-b", *common)] == ["dev-1"]
    code, out, _ = cli(capsys, "device", "list", *common)
    assert code == 0 and "site" in out.splitlines()[1] and "site-a" in out and "site-b" in out

    moved = cli_json(capsys, "device", "move", "dev-1", "--site", "site-a", *common)
    assert (moved["group"], moved["site"]) == ("lab", "site-a")  # the group stays
    moved = cli_json(capsys, "device", "move", "dev-1", "--group", "field", *common)
    assert (moved["group"], moved["site"]) == ("field", "site-a")  # the site stays
    moved = cli_json(capsys, "device", "move", "dev-1", "--no-site", "--group", "lab", *common)
    assert (moved["group"], moved["site"]) == ("lab", None)
    code, out, _ = cli(capsys, "device", "move", "dev-1", "--site", "site-b", *common)
    assert code == 0 and out == "moved dev-1 in group lab on site site-b\n"
    assert FleetDir(tmp_path / "fleet").registry.sites() == {"site-a": ["dev-0"], "site-b": ["dev-1"]}

    refusals = [
        (["add", "dev-3", "--group", "lab", "--site", "north"], "site 'north' must be site-<name>"),
        (["add", "dev-3", "--group", "lab", "--site", "site-"], "site 'site-' must be site-<name>"),
        (["add", "dev-3", "--group", "lab", "--site", "site-a/b"], "must be 1-128 characters without / + # or NUL"),
        (["add", "dev-3", "--group", "lab", "--site", "site-+"], "must be 1-128 characters without / + # or NUL"),
        (["add", "dev-3", "--group", "lab", "--site", "site-" + "x" * 124], "must be 1-128 characters"),
        (["add", "dev-3", "--group", "lab", "--site", "site-a "], "surrounding white space or control characters"),
        (["add", "dev-3", "--group", "lab", "--site", "site-a\nuser worker"], "control characters"),
        (["add", "dev-3", "--group", "lab", "--site", ""], "site '' must be 1-128 characters"),
        (["add", "dev-0", "--group", "lab", "--site", "site-b"], "device dev-0 is enrolled on site site-a; move it"),
        (["add", "dev-0", "--group", "lab"], "device dev-0 is enrolled on site site-a; move it"),
        (["add", "dev-2", "--group", "field", "--site", "site-a"], "device dev-2 is enrolled with no site; move it"),
        (["move", "dev-0", "--site", "worker"], "site 'worker' must be site-<name>"),
        (["move", "ghost", "--site", "site-a"], "device ghost is not enrolled"),
    ]
    for args, reason in refusals:
        code, out, err = cli(capsys, "device", *args, *common, "--json")
        assert code == 1, (args, out, err)
        assert json.loads(out)["ok"] is False and reason in json.loads(out)["error"], (args, out)
        assert err.count("\n") == 1 and reason in err, (args, err)  # one line on stderr
    for args in (["move", "dev-0"], ["move", "dev-0", "--site", "site-b", "--no-site"]):
        code, _, err = cli(capsys, "device", *args, *common)
        assert code == 2 and "give --" in err, (args, err)  # usage errors
    assert FleetDir(tmp_path / "fleet").registry.sites() == {"site-a": ["dev-0"], "site-b": ["dev-1"]}  # unchanged


def test_a_registry_from_before_sites_reads_as_no_site_and_migrates_on_its_first_change(tmp_path, capsys):
    import sqlite3

    fleet = FleetDir(tmp_path / "fleet")
    fleet.root.mkdir()
    with sqlite3.connect(fleet.registry.path) as connection:  # schema 1, as the registry made it before sites
        connection.execute(
            "CREATE TABLE devices (device TEXT PRIMARY KEY, grp TEXT NOT NULL, source TEXT NOT NULL, "
            "enrolled_at REAL NOT NULL)"
        )
        connection.execute("INSERT INTO devices VALUES ('dev-0', 'lab', 'cli', 1.5)")
        connection.execute("PRAGMA user_version = 1")
    common = ["--fleet-dir", str(fleet.root)]
    listed = cli_json(capsys, "device", "list", *common)
    assert [(d["device"], d["group"], d["site"], d["enrolled_at"]) for d in listed] == [("dev-0", "lab", None, 1.5)]
    code, out, _ = cli(capsys, "acl", *common)
    assert code == 0 and "\nuser site-" not in out  # no device on a site: no site block
    with sqlite3.connect(fleet.registry.path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1  # reading did not migrate

    assert cli_json(capsys, "device", "move", "dev-0", "--site", "site-a", *common)["site"] == "site-a"
    with sqlite3.connect(fleet.registry.path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
    assert fleet.registry.enrollments()[0].enrolled_at == 1.5 and fleet.registry.sites() == {"site-a": ["dev-0"]}


def test_acl_from_the_registry_through_the_cli(tmp_path, capsys):
    """`fleet acl` prints (or with --out writes) the fixed rules and one block per site that has devices, naming
    exactly their topics; an unreadable registry writes nothing and leaves the broker's current ACL as it was."""
    from edge_runtime.fleet import acl

    fleet = FleetDir(tmp_path / "fleet")
    common = ["--fleet-dir", str(fleet.root)]
    fleet.registry.add("dev-0", "lab", site="site-a")
    fleet.registry.add("dev-1", "lab", site="site-b")
    fleet.registry.add("dev-2", "lab", site="site-a")
    fleet.registry.add("dev-3", "lab")  # connects centrally: the pattern rules cover it
    code, printed, err = cli(capsys, "acl", *common)
    assert code == 0 and err == ""
    blocks = printed.split("\nuser ")[1:]
    assert [block.splitlines()[0] for block in blocks] == ["worker", "fleet", "site-a", "site-b"]
    rules = {
        block.splitlines()[0]: [line for line in block.splitlines()[1:] if line.startswith("topic ")]
        for block in blocks
    }
    assert rules["site-a"] == [
        *(f"topic {access} {topic.format('dev-0')}" for access, topic in acl.DEVICE_TOPICS),
        *(f"topic {access} {topic.format('dev-2')}" for access, topic in acl.DEVICE_TOPICS),
    ]
    assert "topic read edge/dev-1/answers" in rules["site-b"] and len(rules["site-b"]) == 6
    assert "dev-3" not in printed and "+/answers" not in "".join(rules["site-a"] + rules["site-b"])

    out = tmp_path / "broker" / "acl"
    result = cli_json(capsys, "acl", "--out", str(out), *common)
    assert result == {"ok": True, "file": str(out), "sites": {"site-a": ["dev-0", "dev-2"], "site-b": ["dev-1"]}}
    assert out.read_text() == printed and oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in out.parent.iterdir()] == ["acl"]  # no temp file left behind
    assert cli_json(capsys, "acl", *common)["acl"] == printed

    fleet.registry.remove("dev-1")  # site-b has no device left: no block, so it can do nothing
    code, text, _ = cli(capsys, "acl", "--out", str(out), *common)
    assert code == 0 and text.startswith(f"wrote {out}: 1 sites, 2 devices") and "kill -HUP" in text
    assert "user site-b" not in out.read_text() and "user site-a" in out.read_text()

    before = out.read_bytes()
    fleet.registry.path.write_bytes(b"not a database\n" * 50)
    code, printed, err = cli(capsys, "acl", "--out", str(out), *common)
    assert code == 1 and printed == "" and err.count("\n") == 1 and "is unreadable (file is not a database)" in err
    assert out.read_bytes() == before  # fails closed: the last good ACL stays in place


def test_the_shipped_acls_are_the_generators_output():
    """deploy/mosquitto/acl is `fleet acl` for the example registry, site-acl holds the same device rules: the
    generator is the one source of the ACL text."""
    from edge_runtime.fleet import acl

    from support import REPO

    deploy = REPO / "deploy" / "mosquitto"
    assert (deploy / "acl").read_text() == acl.render(acl.EXAMPLE, acl.EXAMPLE_ORIGIN), (
        "regenerate: python -c 'from edge_runtime.fleet import acl; "
        'print(acl.render(acl.EXAMPLE, acl.EXAMPLE_ORIGIN), end="")\' > deploy/mosquitto/acl'
    )
    site_rules = [line for line in (deploy / "site-acl").read_text().splitlines() if line and not line.startswith("#")]
    assert site_rules == acl.pattern_rules()
