"""Staged rollout through the real CLI: `fleet serve` as its own process, devices as agent processes.
Canaries first, promote, fleet rollback, and a bad release that halts itself at the canaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from edge_runtime import signing
from edge_runtime.cli import main
from edge_runtime.store import Store

from support import REPO, mqtt_broker
from support.fleet_sim import Device, make_release, tiny

pytestmark = pytest.mark.skipif(not mqtt_broker.available(), reason="mosquitto is not installed")

STRICT = {"min_confidence": 0.99, "min_margin": 0.0, "max_entropy": 1.0}


def fleet_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["fleet", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def wait_until(check, timeout=90, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


@pytest.mark.kernels  # the bad release halts because the canaries' self-test fails on what the kernels compute
def test_canary_promote_rollback_and_automatic_halt(tmp_path, capsys, monkeypatch):
    key = signing.generate_keypair()[0]
    key_file = tmp_path / "fleet.key"
    signing.save_private_key(key_file, key)
    src = tmp_path / "src"
    v1 = tiny(src / "tiny-1.0.0", key, "1.0.0", 1)
    v2 = tiny(src / "tiny-1.1.0", key, "1.1.0", 2)
    bad = tiny(src / "tiny-1.2.0", key, "1.2.0", 3, routing=STRICT)
    group = f"g{uuid.uuid4().hex[:6]}"
    traffic = tmp_path / "traffic.txt"
    traffic.write_text("play some jazz\nwhat is my balance\nbook a table\nturn on the lights\n" * 5)
    with mqtt_broker.Broker() as broker:
        monkeypatch.setenv("EDGE_RUNTIME_BROKER", broker.url)
        common = ["--fleet-dir", str(tmp_path / "fleet")]
        devices = [
            Device(
                tmp_path / "devices",
                f"shop-{i}",
                group,
                broker.url,
                key.public_key(),
                v1,
                "--probation-traffic",
                str(traffic),
                fleet_dir=tmp_path / "fleet",
            ).start()
            for i in range(5)
        ]
        serve = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "fleet", "serve", "--key", str(key_file), *common],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=open(tmp_path / "serve.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: len(fleet_json(capsys, "status", "--wait", "0.5", *common)["devices"]) == 5,
                60,
                "five devices report",
            )
            # 1. canaries first (20 % of 5 = 1 device), the others wait for promotion
            rel2 = make_release(v2, key, group)
            rollout = fleet_json(
                capsys, "publish", str(rel2), "--group", group, "--canary", "20", "--key", str(key_file), *common
            )
            assert rollout["stage"] == "canary" and len(rollout["canaries"]) == 1
            canary = next(d for d in devices if d.id == rollout["canaries"][0])
            others = [d for d in devices if d is not canary]
            canary.wait_phase("committed")
            for device in others:
                device.wait(lambda s: "waiting" in (s.get("note") or ""), 30, "a note that it waits")
                assert Store(device.home).active() == ("tiny", "1.0.0")
            # 2. promote: everyone commits
            assert fleet_json(capsys, "promote", "--group", group, "--key", str(key_file), *common)["stage"] == "all"
            for device in devices:
                device.wait(lambda s: s["phase"] == "committed" and s["installed_release"] == 2, 60, "commit")
            status = fleet_json(capsys, "status", "--group", group, *common)
            assert {d["active"] for d in status["devices"]} == {"tiny@1.1.0"}
            assert {d["previous"] for d in status["devices"]} == {"tiny@1.0.0"}
            assert status["rollouts"][0]["assessment"] == "5/5 devices committed"
            # 3. fleet rollback: everyone back on the previous model
            fleet_json(capsys, "rollback", "--group", group, "--key", str(key_file), *common)
            for device in devices:
                device.wait(lambda s: s["phase"] == "rolled_back", 60, "fleet rollback")
                assert Store(device.home).active() == ("tiny", "1.0.0")
            # 4. a release that raises the escalation rate halts itself at the canary
            rel3 = make_release(bad, key, group)
            rollout = fleet_json(
                capsys, "publish", str(rel3), "--group", group, "--canary", "20", "--key", str(key_file), *common
            )
            canary = next(d for d in devices if d.id == rollout["canaries"][0])
            canary.wait(lambda s: s["phase"] == "rolled_back" and s["installed_release"] == 3, 60, "canary rollback")
            wait_until(
                lambda: (
                    fleet_json(capsys, "status", "--group", group, "--wait", "0.3", *common)["rollouts"][0]["stage"]
                    == "halted"
                ),
                30,
                "automatic halt",
            )
            halted = fleet_json(capsys, "status", "--group", group, *common)["rollouts"][0]
            assert halted["reason"].startswith(f"canary {canary.id} rolled_back: probation: escalation rate")
            assert main(["fleet", "promote", "--group", group, "--key", str(key_file), *common]) == 1
            assert "rollout is halted" in capsys.readouterr().err
            for device in devices:
                assert Store(device.home).active() == ("tiny", "1.0.0")
                assert device.state()["installed_release"] == (3 if device is canary else 2)
            capsys.readouterr()
            assert main(["fleet", "status", "--group", group, *common]) == 0
            table = capsys.readouterr().out
            assert "halted" in table and canary.id in table
        finally:
            serve.terminate()
            serve.wait(15)
            for device in devices:
                device.stop()
    assert b"served" in (tmp_path / "serve.log").read_bytes()


@pytest.mark.slow
def test_fleet_simulation_twenty_devices(tmp_path):
    """20 agent processes: canary 10 % then promote; a bad release halts at its canaries."""
    from support.fleet_sim import simulate

    result = simulate(devices=20, canary_pct=10, workdir=tmp_path)
    assert len(result["canaries"]) == 2 and len(result["bad_canaries"]) == 2
    assert result["halted"] and result["halt_reason"].startswith("canary ")
    assert result["still_on_good"] == 20
    assert result["bytes_served_good"] >= 20 * result["archive_bytes"]
