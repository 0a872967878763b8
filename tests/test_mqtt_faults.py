"""Nothing lost: broker kill -9, uplink process kill -9, and a 20 s network partition (veth + netns)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edge_runtime.mqtt import BrokerConfig
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import Uplink, UplinkOptions
from edge_runtime.worker import Worker

from support import REPO, mqtt_broker

pytestmark = [pytest.mark.mqtt, pytest.mark.skipif(not mqtt_broker.available(), reason="mosquitto is not installed")]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def echo(request: dict) -> dict:
    return {"echo": request["text"]}


def wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_broker_killed_three_times_during_2000_escalations(tmp_path):
    delivered = collections.Counter()
    fast = dict(backoff_min_s=0.05, backoff_max_s=0.5, keepalive=5)
    with mqtt_broker.Broker() as broker:
        config = BrokerConfig.from_url(broker.url, **fast)
        options = UplinkOptions(max_inflight=64, resend_after_s=1.0, tick_s=0.1)
        with (
            Worker(config, echo) as worker,
            Uplink(
                "dev-k",
                config,
                Outbox(tmp_path / "o.sqlite"),
                options=options,
                on_answer=lambda rid, m: delivered.update([rid]),
            ) as uplink,
        ):
            worker.wait_ready(5)
            uplink.wait_ready(5)
            futures = [uplink.submit(f"request {i}") for i in range(2000)]
            for threshold in (300, 800, 1300):
                wait_for(lambda threshold=threshold: uplink.stats["answered"] >= threshold, 30)
                broker.restart()  # kill -9, then start again
            answers = [future.result(40) for future in futures]
            summary = uplink.outbox.summary()
            resent = uplink.stats["resent"]
    assert [a["answer"]["echo"] for a in answers] == [f"request {i}" for i in range(2000)]
    assert all(a["id"] == f.request_id for a, f in zip(answers, futures))
    assert len(delivered) == 2000 and set(delivered.values()) == {1}  # exactly once at the caller
    assert summary["pending"] == 0 and summary["answered"] == 2000 and summary["dead"] == 0
    assert resent > 0


DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from edge_runtime.mqtt import BrokerConfig
    from edge_runtime.outbox import Outbox
    from edge_runtime.uplink import Uplink, UplinkOptions
    host, port, db, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[6]
    count, pace = int(sys.argv[4]), float(sys.argv[5])
    config = BrokerConfig(host=host, port=port, backoff_min_s=0.05, backoff_max_s=1.0, keepalive=2)
    deliveries = []
    uplink = Uplink("dev-p", config, Outbox(db), options=UplinkOptions(max_inflight=64, resend_after_s=2.0, tick_s=0.1),
                    on_answer=lambda rid, message: deliveries.append(rid))
    uplink.start()
    futures = []
    for i in range(count):
        futures.append(uplink.submit(f"request {i}", request_id=f"r{i:05d}"))   # same ids after a restart
        if pace:
            time.sleep(pace)
    answers = [f.result(120) for f in futures]
    uplink.stop()
    assert all(a["answer"]["echo"] == f"request {i}" for i, a in enumerate(answers))
    json.dump({"deliveries": deliveries, "stats": dict(uplink.stats)}, open(out, "w"))
""")

WORKER_SCRIPT = textwrap.dedent("""
    import signal, sys, threading
    from edge_runtime.mqtt import BrokerConfig
    from edge_runtime.worker import Worker
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    config = BrokerConfig(host=sys.argv[1], port=int(sys.argv[2]), backoff_min_s=0.05, backoff_max_s=1.0, keepalive=2)
    worker = Worker(config, lambda request: {"echo": request["text"]}).start()
    worker.wait_ready(10)
    print("ready", flush=True)
    done.wait()
    worker.stop()
""")


def test_uplink_process_killed_mid_stream_resends_from_the_outbox(tmp_path):
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    db, out = tmp_path / "o.sqlite", tmp_path / "out.json"
    count = 3000
    with mqtt_broker.Broker() as broker:
        config = BrokerConfig.from_url(broker.url, backoff_min_s=0.05, backoff_max_s=0.5)
        with Worker(config, echo) as worker:
            worker.wait_ready(5)
            args = [sys.executable, str(script), "127.0.0.1", str(broker.port), str(db), str(count), "0", str(out)]
            first = subprocess.Popen(args, env=ENV)
            watcher = Outbox(db)
            wait_for(lambda: watcher.summary()["answered"] >= 300 or first.poll() is not None, 60)
            first.send_signal(signal.SIGKILL)
            first.wait()
            at_kill = watcher.summary()
            assert at_kill["pending"] > 0, "the kill came too late to leave anything unanswered"
            unanswered = set(watcher.pending_ids())
            second = subprocess.run(args, env=ENV, timeout=120)
            assert second.returncode == 0
            final = watcher.summary()
            answered_ids = {row["id"] for row in watcher.requests("answered")}
            watcher.close()
    result = json.loads(out.read_text())
    assert final["pending"] == 0 and final["dead"] == 0 and final["answered"] == count
    assert answered_ids == {f"r{i:05d}" for i in range(count)}
    assert unanswered <= set(result["deliveries"])  # re-sent after the restart and answered then
    assert len(result["deliveries"]) == len(set(result["deliveries"]))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns_pair():
    """Two namespaces joined by a veth pair with a private /30; skipped where namespaces are not allowed."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = f"{os.getpid() % 100000}"
    broker_ns, device_ns = f"erb{tag}", f"erd{tag}"
    try:
        _ip("netns", "add", broker_ns)
        _ip("netns", "add", device_ns)
        _ip(
            "link",
            "add",
            f"vb{tag}",
            "netns",
            broker_ns,
            "type",
            "veth",
            "peer",
            "name",
            f"vd{tag}",
            "netns",
            device_ns,
        )
    except subprocess.CalledProcessError as error:
        for ns in (broker_ns, device_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"network namespaces not permitted here: {error.stderr.decode().strip()}")
    try:
        _ip("-n", broker_ns, "addr", "add", "10.213.7.1/30", "dev", f"vb{tag}")
        _ip("-n", device_ns, "addr", "add", "10.213.7.2/30", "dev", f"vd{tag}")
        for ns, dev in ((broker_ns, f"vb{tag}"), (device_ns, f"vd{tag}")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield {"broker_ns": broker_ns, "device_ns": device_ns, "device_link": f"vd{tag}", "broker_ip": "10.213.7.1"}
    finally:
        for ns in (broker_ns, device_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.netns
@pytest.mark.slow
def test_twenty_second_partition_recovers_and_loses_nothing(netns_pair, tmp_path):
    (tmp_path / "device.py").write_text(DEVICE_SCRIPT)
    (tmp_path / "worker.py").write_text(WORKER_SCRIPT)
    db, out = tmp_path / "o.sqlite", tmp_path / "out.json"
    ns = netns_pair
    count = 300
    with mqtt_broker.Broker(bind="0.0.0.0", netns=ns["broker_ns"]) as broker:
        worker = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns["broker_ns"],
                sys.executable,
                str(tmp_path / "worker.py"),
                ns["broker_ip"],
                str(broker.port),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stdout.readline().strip() == "ready"
            device = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns["device_ns"],
                    sys.executable,
                    str(tmp_path / "device.py"),
                    ns["broker_ip"],
                    str(broker.port),
                    str(db),
                    str(count),
                    "0.05",
                    str(out),
                ],
                env=ENV,
            )  # 300 requests over 15 s
            time.sleep(3)
            _ip("-n", ns["device_ns"], "link", "set", ns["device_link"], "down")
            time.sleep(20)
            _ip("-n", ns["device_ns"], "link", "set", ns["device_link"], "up")
            assert device.wait(timeout=90) == 0
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(10)
    result = json.loads(out.read_text())
    assert sorted(result["deliveries"]) == [f"r{i:05d}" for i in range(count)]  # each exactly once
    assert result["stats"]["disconnects"] >= 1
    with Outbox(db) as box:
        assert box.summary()["pending"] == 0 and box.summary()["answered"] == count
