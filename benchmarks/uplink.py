"""Escalations per second through the outbox to one and two workers on loopback, and round-trip latency.

    PYTHONPATH=tests python benchmarks/uplink.py [--count 5000] [--latency-count 500]

Starts its own mosquitto; workers run in subprocesses (answering trivially) so the device keeps its
own interpreter. Baseline in the same run: a bare paho request/response with no outbox.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.mqtt import BrokerConfig, _set_nodelay
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import Uplink, UplinkOptions

import tests_support

REPO = Path(__file__).resolve().parents[1]
mqtt_broker = tests_support.load("mqtt_broker")  # a real mosquitto of its own

WORKER = """
import signal, sys, threading
from edge_runtime.mqtt import BrokerConfig
from edge_runtime.worker import Worker
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
worker = Worker(BrokerConfig(port=int(sys.argv[1])), lambda request: {"label": "ok"}, client_id=sys.argv[2]).start()
worker.wait_ready(10)
print("ready", flush=True)
done.wait()
worker.stop()
"""


def start_workers(port: int, n: int) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(port), f"bench-w{i}"], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(n)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    return procs


def stop(procs) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def cpu_seconds(pids) -> float:
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def through_uplink(port: int, directory: Path, count: int, latency_count: int, tag: str, worker_pids=()) -> dict:
    config = BrokerConfig(port=port)
    with Uplink(
        f"bench-{tag}", config, Outbox(directory / f"{tag}.sqlite"), options=UplinkOptions(max_inflight=256)
    ) as uplink:
        uplink.wait_ready(10)
        for i in range(200):  # warm up
            uplink.escalate(f"warm {i}", deadline_s=10)
        latencies = []
        for i in range(latency_count):
            started = time.perf_counter()
            assert uplink.escalate(f"latency {i}", deadline_s=10) is not None
            latencies.append((time.perf_counter() - started) * 1e3)
        device0, workers0 = cpu_seconds([os.getpid()]), cpu_seconds(worker_pids)
        started = time.perf_counter()
        futures = [uplink.submit(f"throughput {i}") for i in range(count)]
        for future in futures:
            future.result(120)
        elapsed = time.perf_counter() - started
        device_us = (cpu_seconds([os.getpid()]) - device0) / count * 1e6
        worker_us = (cpu_seconds(worker_pids) - workers0) / count * 1e6
    return {
        "rate": count / elapsed,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "device_us": device_us,
        "worker_us": worker_us,
    }


def bare_paho(port: int, latency_count: int) -> dict:
    """The same request/response with paho alone: no outbox, no schema, no bookkeeping."""
    got = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
    client.on_socket_open = _set_nodelay
    client.on_message = lambda c, u, m: got.set()
    client.connect("127.0.0.1", port)
    client.subscribe("edge/bench-bare/answers", qos=1)
    client.loop_start()
    time.sleep(0.3)
    import json

    latencies = []
    for i in range(200 + latency_count):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = "edge/bench-bare/answers", f"b{i}".encode()
        payload = json.dumps(
            {"schema": 1, "type": "escalation.request", "id": f"b{i}", "text": "x", "prediction": None, "bundle": {}}
        ).encode()
        got.clear()
        started = time.perf_counter()
        client.publish("edge/bench-bare/escalations", payload, qos=1, properties=props)
        got.wait(10)
        if i >= 200:
            latencies.append((time.perf_counter() - started) * 1e3)
    client.loop_stop()
    client.disconnect()
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--latency-count", type=int, default=500)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, mqtt_broker.Broker() as broker:
        directory = Path(tmp)
        for n in (1, 2):
            workers = start_workers(broker.port, n)
            try:
                if n == 1:
                    rows.append(("bare paho, 1 worker (baseline)", None, bare_paho(broker.port, args.latency_count)))
                rows.append(
                    (
                        f"outbox + uplink, {n} worker(s)",
                        n,
                        through_uplink(
                            broker.port, directory, args.count, args.latency_count, f"w{n}", [p.pid for p in workers]
                        ),
                    )
                )
            finally:
                stop(workers)
    baseline = rows[0][2]["p50"]
    print(
        f"{'path':34} {'escalations/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs bare':>12} "
        f"{'device CPU us/esc':>18} {'worker CPU us/esc':>18}"
    )
    for name, _, result in rows:
        rate = f"{result['rate']:,.0f}" if "rate" in result else "-"
        cpu = f"{result['device_us']:18.0f} {result['worker_us']:18.0f}" if "rate" in result else f"{'-':>18} {'-':>18}"
        print(f"{name:34} {rate:>14} {result['p50']:8.2f} {result['p99']:8.2f} {result['p50'] / baseline:11.2f}x {cpu}")
    load = os.getloadavg()[0]
    print(
        f"(sustained: {args.count} escalations, window 256; latency: {args.latency_count} sequential round trips; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end)"
    )


if __name__ == "__main__":
    main()
