"""Fleet test harness and simulation: real mosquitto, real agent processes (`edge-runtime update run`),
each with its own store and enrolled in the manager's device registry, and an in-process fleet manager
serving chunks. benchmarks/fleet.py runs
`simulate` from the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_runtime import bundle, signing
from edge_runtime.fleet import protocol
from edge_runtime.fleet import release as releases
from edge_runtime.fleet.fleetdir import FleetDir
from edge_runtime.fleet.manager import Manager
from edge_runtime.fleet.state import UpdateState, state_path
from edge_runtime.mqtt import BrokerConfig, Link, LinkHandlers, Subscription
from edge_runtime.store import Store

from . import paused_cli, pythonpath, terminate
from .mqtt_broker import listener

QUIET_ROUTING = {
    "min_confidence": 0.0,
    "min_margin": 0.0,
    "max_entropy": 1.0,
    "per_class": {},
    "always_escalate": [],
    "never_escalate": [],
    "private_labels": [],
    "oos_label": None,
}


def tiny(dest: Path, key, version: str, release: int, **updates) -> Path:
    """A signed tiny bundle (bundle_factory) packed to DEST.erb; routing that never escalates by default."""
    from .bundle_factory import make_bundle

    updates.setdefault("routing", QUIET_ROUTING)
    made = make_bundle(dest, key, version=version, release=release, manifest_updates=updates)
    return bundle.pack(made.path, Path(f"{dest}.erb"))


def refinalize(source: Path, dest: Path, key, edit) -> Path:
    """Copy a bundle dir, let `edit(dir, manifest_dict)` change it, finalize + sign again, pack."""
    import shutil

    shutil.copytree(source, dest)
    for path in dest.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    raw = json.loads((dest / bundle.MANIFEST).read_text())
    for name in ("files", "created"):
        raw.pop(name, None)
    edit(dest, raw)
    bundle.finalize(dest, raw, key)
    return bundle.pack(dest, Path(f"{dest}.erb"))


def make_release(archive: Path, key, group: str = "lab", expires_s: int = 3600, **options) -> Path:
    envelope = releases.create(archive, [group], [key] if not isinstance(key, list) else key, expires_s, **options)
    return releases.write(envelope, archive.with_name(archive.name + releases.SUFFIX))


class Device:
    """One simulated device: a store at BASE/ID trusting the fleet key (bundle and fleet roles), and an agent
    process that says it is in `group`. With `fleet_dir` it is enrolled in that group in the fleet dir's
    registry (the manager sends desired states and chunks to enrolled devices only)."""

    def __init__(
        self,
        base: Path,
        device_id: str,
        group: str,
        broker_url: str,
        fleet_public,
        initial: Path,
        *args: str,
        fleet_dir: Path | None = None,
    ):
        self.id, self.group, self.broker_url, self.args = device_id, group, broker_url, list(args)
        if fleet_dir is not None:
            self.enroll(fleet_dir)
        self.home = base / device_id
        signing.trust_key(self.home, fleet_public, "bundle")  # it signs the bundles
        signing.trust_key(self.home, fleet_public, "fleet")  # and the release records and desired states
        store = Store(self.home)
        manifest = store.install(initial)
        store.activate(manifest.name, manifest.version)
        self.store = store
        self.log = base / f"{device_id}.log"
        self.process: subprocess.Popen | None = None

    def enroll(self, fleet_dir: Path, group: str | None = None) -> Device:
        """Enroll it in `group` (default: the one its agent says), as `fleet device add` does."""
        FleetDir(fleet_dir).registry.add(self.id, group or self.group)
        return self

    def start(self, pause: tuple[str, Path] | None = None) -> Device:
        """Starts the agent; with `pause` (POINT, MARKER) it stops at POINT (see support.paused_cli)."""
        env = {
            **os.environ,
            "EDGE_RUNTIME_HOME": str(self.home),
            "PYTHONPATH": pythonpath(),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
        args = [
            "update",
            "run",
            "--broker",
            self.broker_url,
            "--device-id",
            self.id,
            "--group",
            self.group,
            "--chunk-timeout",
            "2",
            "--heartbeat",
            "5",
            *self.args,
        ]
        command = paused_cli.command(*pause, *args) if pause else [sys.executable, "-m", "edge_runtime", *args]
        self.process = subprocess.Popen(command, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        terminate(self.process, 15)

    def state(self) -> dict:
        return UpdateState(state_path(self.home)).data

    def wait(self, predicate, timeout: float = 60.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.state()
            if predicate(data):
                return data
            if self.process and self.process.poll() is not None:
                raise AssertionError(
                    f"{self.id} agent exited {self.process.returncode}: {self.log.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(
            f"{self.id}: timed out waiting for {what}; state {self.state()}\n{self.log.read_text()[-3000:]}"
        )

    def wait_phase(self, *phases: str, timeout: float = 60.0) -> dict:
        return self.wait(lambda d: d["phase"] in phases, timeout, f"phase in {phases}")


class Reports:
    """The devices' retained edge/<id>/state reports, as a test or the simulation sees them."""

    def __init__(self, broker_url: str):
        self.latest: dict[str, dict] = {}
        self.all: list[dict] = []
        self.link = Link(
            BrokerConfig.from_url(broker_url),
            f"reports-{os.getpid()}-{time.monotonic_ns()}",
            subscriptions=[Subscription(protocol.state_topic("+"))],
            handlers=LinkHandlers(on_message=self._on),
            clean_start=True,
            session_expiry_s=0,
        )
        self.link.start()
        self.link.wait_ready(10)

    def _on(self, message) -> None:
        state = protocol.decode_state(message.payload)
        if state:
            self.latest[state["device"]] = state
            self.all.append(state)

    def wait(self, predicate, timeout: float = 60.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in list(self.all) if predicate(s)]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no report {what} within {timeout} s; latest {self.latest}")

    def close(self) -> None:
        self.link.stop()


class BrokerTraffic:
    """Payload bytes of every message published through the broker, by topic, as one more subscriber to '#'
    sees them (each message once, however many subscribers it went to)."""

    def __init__(self, broker_url: str):
        self.bytes: dict[str, int] = {}
        self.link = listener(broker_url, "#", self._on, "traffic")

    def _on(self, message) -> None:
        self.bytes[message.topic] = self.bytes.get(message.topic, 0) + len(message.payload)

    def total(self) -> int:
        return sum(self.bytes.values())

    def chunk_bytes(self) -> int:
        """What chunk requests and chunks carried (edge/<id>/chunks and edge/<id>/chunks/request)."""
        return sum(n for topic, n in self.bytes.items() if topic.startswith("edge/") and "/chunks" in topic)

    def close(self) -> None:
        self.link.stop()


class ServedManager:
    """A Manager whose serve() loop runs in a thread."""

    def __init__(self, broker_url: str, fleet_dir: Path, keys, auto_promote: bool = False):
        self.manager = Manager(BrokerConfig.from_url(broker_url), FleetDir(fleet_dir), keys)
        self.stop_event = threading.Event()
        self.events: list[tuple[str, str, str]] = []
        self.thread = threading.Thread(
            target=self.manager.serve,
            args=(self.stop_event,),
            kwargs={"auto_promote": auto_promote, "on_event": lambda *e: self.events.append(e)},
            daemon=True,
        )
        self.thread.start()
        time.sleep(0.3)  # subscribed before devices ask

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


# --- the simulation -------------------------------------------------------------------------------


def simulate(devices: int = 20, canary_pct: float = 10.0, workdir: Path | None = None, mirror: bool = False) -> dict:
    """With `mirror`, the releases name an nginx (support.nginx) serving the archives, and the devices fetch
    from it; `broker_share` is what was published through the broker during the good rollout (control
    messages, and chunks when there is no mirror) over the bytes the devices installed."""
    import contextlib
    import tempfile

    from edge_runtime.fleet import mirror as mirror_layout

    from .mqtt_broker import Broker
    from .nginx import Nginx

    work = Path(workdir or tempfile.mkdtemp(prefix="fleet-sim-"))
    server = Nginx(work / "mirror", work / "nginx") if mirror else None
    mirrors = [server.url] if server else []
    fleet_key, fleet_public = signing.generate_keypair()
    v1 = tiny(work / "src" / "tiny-1.0.0", fleet_key, "1.0.0", 1)
    v2 = tiny(work / "src" / "tiny-1.1.0", fleet_key, "1.1.0", 2)

    def wrong_golden(path, raw):
        rows = [json.loads(line) for line in (path / "golden.jsonl").read_text().splitlines()]
        labels = json.loads((path / "labels.json").read_text())
        rows = [{**r, "label": next(label for label in labels if label != r["label"])} for r in rows]
        (path / "golden.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        raw.update(version="1.2.0", release=3)

    bad = refinalize(Path(str(v2)[:-4]), work / "src" / "tiny-1.2.0", fleet_key, wrong_golden)
    r2 = make_release(v2, fleet_key, chunk_size=64 * 1024, mirrors=mirrors)
    r3 = make_release(bad, fleet_key, chunk_size=64 * 1024, mirrors=mirrors)
    if server:
        mirror_layout.sync(server.root, [mirror_layout.from_release_file(r) for r in (r2, r3)])
    result: dict = {
        "devices": devices,
        "mirror": bool(server),
        "archive_bytes": v2.stat().st_size,
        "chunks": len(releases.read(r2)["signed"]["archive"]["chunks"]),
    }
    with Broker() as broker, contextlib.ExitStack() as stack:
        if server:
            stack.enter_context(server)
        fleet = [
            Device(work / "devices", f"dev-{i:02d}", "lab", broker.url, fleet_public, v1, fleet_dir=work / "fleet")
            for i in range(devices)
        ]
        reports = Reports(broker.url)
        served = ServedManager(broker.url, work / "fleet", [fleet_key], auto_promote=True)
        traffic = BrokerTraffic(broker.url)
        try:
            started = time.monotonic()
            for device in fleet:
                device.start()
            reports.wait(lambda s: len(reports.latest) == devices, 120, "from every device")
            result["agents_up_s"] = round(time.monotonic() - started, 2)
            manager = served.manager
            t0 = time.monotonic()
            published_before = traffic.total()
            rollout = manager.publish(r2, v2, "lab", canary_pct)
            result["canaries"] = rollout["canaries"]
            downloads = []
            for device in fleet:
                state = device.wait(lambda d: d["phase"] == "committed" and d["installed_release"] == 2, 300, "r2")
                downloads.append(state["download"])
            result["rollout_s"] = round(time.monotonic() - t0, 2)
            result["bytes_served_good"] = manager.bytes_served
            for counter in ("mqtt_bytes", "mirror_bytes", "mirror_errors", "mirror_bad"):
                result[f"{counter}_good"] = sum(d[counter] for d in downloads)
            result["broker_bytes_good"] = traffic.total() - published_before
            result["broker_share"] = round(result["broker_bytes_good"] / (devices * result["archive_bytes"]), 5)
            assert all(d.store.active() == ("tiny", "1.1.0") for d in fleet)
            t1 = time.monotonic()
            bad_rollout = manager.publish(r3, bad, "lab", canary_pct)
            deadline = time.monotonic() + 120
            while manager.fleet.rollout("lab")["stage"] != "halted" and time.monotonic() < deadline:
                time.sleep(0.1)
            halted = manager.fleet.rollout("lab")
            result["bad_halt_s"] = round(time.monotonic() - t1, 2)
            result["bad_canaries"] = bad_rollout["canaries"]
            result["halt_reason"] = halted["reason"]
            time.sleep(2)  # give non-canaries a chance to (wrongly) move
            result["still_on_good"] = sum(d.store.active() == ("tiny", "1.1.0") for d in fleet)
            result["bytes_served_total"] = manager.bytes_served
            result["halted"] = halted["stage"] == "halted"
        finally:
            traffic.close()
            served.close()
            reports.close()
            for device in fleet:
                device.stop()
    return result
