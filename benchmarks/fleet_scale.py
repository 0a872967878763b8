"""The fleet at scale: one rollout of a real-size bundle to N real agent processes, over MQTT alone and then
from an nginx mirror, in one run.

    PYTHONPATH=tests python benchmarks/fleet_scale.py --key FLEET.key --installed A.erb --release B.erb \
        [--devices 50] [--json]

A.erb is installed and active on every device, B.erb (a bundle of about the default's 23 MB, signed by the
key in FLEET.key, which also signs the release records) is published to the whole group at once. For each
delivery mode a fresh mosquitto (with $SYS statistics every second), a fresh fleet directory with the
devices enrolled, a real `edge-runtime fleet serve` process, and N `edge-runtime update run` processes.
Reported per mode:

- rollout_s: from `publish` to every device committed (downloaded, verified, installed, self-tested,
  activated, probation passed); delivered_s: to every device's download complete (the N agents share this
  machine's cores, so the verify, install and self-test work, the same in both modes, weighs on rollout_s
  as it would not on N real devices);
- broker_bytes: what the broker received and sent during the rollout ($SYS/broker/bytes/*, whole MQTT
  packets), and per device as a share of the archive;
- manager_cpu_s: the `fleet serve` process's user + system CPU seconds during the rollout;
- agent_peak_mb: the agents' peak resident sets (VmHWM), median and max.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import tests_support

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import REPO, free_port  # noqa: E402  benchmarks/serve.py

GROUP = "scale"


def broker_config(port: int) -> str:
    return "\n".join(
        [
            "persistence false",
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            "sys_interval 1",  # $SYS/broker/bytes/* every second
            "log_dest file {dir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",  # the "running" line the harness waits for
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
        ]
    )


class SysBytes:
    """The broker's own byte counters ($SYS/broker/bytes/received and /sent), as it last published them."""

    def __init__(self, broker_url: str):
        self.values: dict[str, int] = {}
        self.updated = threading.Event()
        self.link = tests_support.load("mqtt_broker").listener(broker_url, "$SYS/broker/bytes/+", self._on, "sys-bytes")

    def _on(self, message) -> None:
        self.values[message.topic.rsplit("/", 1)[1]] = int(message.payload)
        self.updated.set()

    def read(self) -> dict[str, int]:
        """Counters at least as new as now (waits for the next $SYS publication)."""
        self.updated.clear()
        self.updated.wait(5)
        time.sleep(1.2)  # both counters of the same publication
        return dict(self.values)

    def close(self) -> None:
        self.link.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watch(devices, number: int, started: float, timeout_s: float = 1800.0) -> tuple[dict, dict]:
    """Poll the devices' update states until each has committed release `number` (or failed or refused it):
    ({device: seconds until its download was complete}, {device: its final state})."""
    delivered: dict[str, float] = {}
    finished: dict[str, dict] = {}
    while len(finished) < len(devices):
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"{len(devices) - len(finished)} devices not done after {timeout_s:.0f} s")
        for device in devices:
            if device.id in finished:
                continue
            state = device.state()
            release = ((state.get("release") or {}).get("signed") or {}).get("release")
            past_download = release == number and state["phase"] not in ("idle", "downloading")
            if past_download or state["installed_release"] >= number:
                delivered.setdefault(device.id, time.monotonic() - started)
            refused = (state.get("refused") or {}).get("release") == number
            if refused or (
                state["phase"] in ("committed", "failed", "rolled_back") and state["installed_release"] >= number
            ):
                delivered.setdefault(device.id, time.monotonic() - started)
                finished[device.id] = state
        time.sleep(0.1)
    return delivered, finished


def rollout(options, mirror: bool, work: Path) -> dict:
    from edge_runtime import signing
    from edge_runtime.fleet import mirror as mirror_layout
    from edge_runtime.fleet.fleetdir import FleetDir
    from edge_runtime.fleet.manager import Manager
    from edge_runtime.mqtt import BrokerConfig

    fleet_sim, mqtt_broker, nginx = (tests_support.load(m) for m in ("fleet_sim", "mqtt_broker", "nginx"))
    key = signing.load_private_key(options.key)
    server = nginx.Nginx(work / "mirror", work / "nginx") if mirror else None
    fleet_dir = work / "fleet"
    archive = work / options.release.name  # the release record is written beside it
    shutil.copyfile(options.release, archive)
    record = fleet_sim.make_release(archive, key, GROUP, mirrors=[server.url] if server else [])
    if server:
        mirror_layout.sync(server.root, [mirror_layout.from_release_file(record, archive)])
    port = free_port()
    with mqtt_broker.Broker(port=port, config=broker_config(port)) as broker:
        if server:
            server.start()
        devices = [
            fleet_sim.Device(
                work / "devices",
                f"dev-{i:03d}",
                GROUP,
                broker.url,
                key.public_key(),
                options.installed,
                "--probation-seconds",
                "0",
                fleet_dir=fleet_dir,
            )
            for i in range(options.devices)
        ]
        env = {**os.environ, "EDGE_RUNTIME_HOME": str(work / "manager-home"), "PYTHONPATH": str(REPO)}
        manager_log = open(work / "fleet-serve.log", "wb")  # noqa: SIM115 - closed in the finally below
        serving = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "fleet", "serve", "--broker", broker.url, "--fleet-dir",
             str(fleet_dir), "--key", str(options.key)],
            env=env, cwd=REPO, stdout=manager_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        reports = fleet_sim.Reports(broker.url)
        counters = SysBytes(broker.url)
        try:
            for device in devices:
                device.start()
            reports.wait(lambda s: len(reports.latest) == len(devices), 300, "a report from every device")
            time.sleep(2)  # the agents' start-up reports are through
            before, cpu_before = counters.read(), cpu_seconds(serving.pid)
            started = time.monotonic()
            Manager(BrokerConfig.from_url(broker.url), FleetDir(fleet_dir), [key]).publish(record, archive, GROUP, 0.0)
            number = json.loads(Path(record).read_text())["signed"]["release"]
            delivered, finished = watch(devices, number, started)
            states = [finished[device.id] for device in devices]
            elapsed = time.monotonic() - started
            delivery = max(delivered.values())
            cpu = cpu_seconds(serving.pid) - cpu_before
            after = counters.read()
            peaks = [peak_mb(device.process.pid) for device in devices]
        finally:
            counters.close()
            reports.close()
            for device in devices:
                device.stop()
            serving.terminate()
            serving.wait(60)
            manager_log.close()
            if server:
                server.stop()
    failed = [s for s in states if s["phase"] != "committed"]
    size = options.release.stat().st_size
    moved = {name: after.get(name, 0) - before.get(name, 0) for name in ("received", "sent")}
    return {
        "mode": "mirror" if mirror else "mqtt",
        "devices": len(devices),
        "committed": len(devices) - len(failed),
        "failures": [s.get("last_error") for s in failed][:3],
        "archive_mb": round(size / 1e6, 2),
        "rollout_s": round(elapsed, 1),
        "delivered_s": round(delivery, 1),
        "broker_bytes_received": moved["received"],
        "broker_bytes_sent": moved["sent"],
        "broker_share_per_device": round(max(moved.values()) / len(devices) / size, 5),
        "manager_cpu_s": round(cpu, 1),
        "mqtt_chunk_bytes": sum(s["download"].get("mqtt_bytes", 0) for s in states if s.get("download")),
        "mirror_bytes": sum(s["download"].get("mirror_bytes", 0) for s in states if s.get("download")),
        "agent_peak_mb_median": round(statistics.median(peaks), 1),
        "agent_peak_mb_max": round(max(peaks), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", type=Path, required=True, help="ed25519 key (PEM) that signed both bundles")
    parser.add_argument("--installed", type=Path, required=True, help="the bundle archive every device starts on")
    parser.add_argument("--release", type=Path, required=True, help="the bundle archive rolled out")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop every child
    results = []
    for mirror in (False, True):
        with tempfile.TemporaryDirectory(prefix="fleet-scale-") as work:
            print(f"== {'nginx mirror' if mirror else 'MQTT only'}: {options.devices} agents ...", file=sys.stderr)
            results.append(rollout(options, mirror, Path(work)))
            print(json.dumps(results[-1]), file=sys.stderr)
    mqtt, mirror = results
    summary = {
        "runs": results,
        "rollout_time_mirror_over_mqtt": round(mirror["rollout_s"] / mqtt["rollout_s"], 3),
        "delivery_time_mirror_over_mqtt": round(mirror["delivered_s"] / mqtt["delivered_s"], 3),
        "broker_bytes_mirror_over_mqtt": round(max(mirror["broker_bytes_received"], mirror["broker_bytes_sent"])
                                               / max(mqtt["broker_bytes_received"], mqtt["broker_bytes_sent"]), 5),
    }  # fmt: skip
    if options.json:
        print(json.dumps(summary, indent=2))
        return
    columns = ("mode", "committed", "delivered_s", "rollout_s", "broker_bytes_received", "broker_bytes_sent",
               "broker_share_per_device", "manager_cpu_s", "agent_peak_mb_median", "agent_peak_mb_max")  # fmt: skip
    print(" | ".join(columns))
    for run in results:
        print(" | ".join(str(run[c]) for c in columns))
    print(f"rollout time, mirror / MQTT only: {summary['rollout_time_mirror_over_mqtt']}x (target <= 0.5)")
    print(f"delivery time (every download complete), mirror / MQTT only: {summary['delivery_time_mirror_over_mqtt']}x")
    print(
        f"broker bytes per device with the mirror: {mirror['broker_share_per_device']:.3%} of the bundle (target < 1%)"
    )


if __name__ == "__main__":
    main()
