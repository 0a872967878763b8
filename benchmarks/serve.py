"""Daemon throughput and latency over loopback, against in-process `model.predict`, in one run.

    python benchmarks/serve.py [--seconds 4] [--threads N] [--workers N] [--json]

Uses the active bundle of $EDGE_RUNTIME_HOME (else the checkout's .edge-runtime if it has one, else it
builds the small test bundle with the tests' helpers: then run it as
`PYTHONPATH=tests python benchmarks/serve.py`). The daemon runs in a subprocess; this process is the load
generator: N keep-alive connections (asyncio, raw HTTP/1.1), each sending one /v1/predict text at a time,
for a bounded time and count. Routing is set to keep every answer local so the daemon does the same work
as `model.predict` (no outbox writes). Batching off = batching.max_batch 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from edge_runtime.server.memory_budget import resident_mb

REPO = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO / ".edge-runtime"
TEXTS = [
    "what is my checking account balance",
    "how do i say thank you in japanese",
    "set an alarm for 6 am tomorrow",
    "is there a fee for using my card abroad",
    "tell me a joke about computers",
    "what's the weather going to be like in paris this weekend",
    "please transfer 200 dollars from savings to checking before friday",
    "how many calories are in a large banana",
]
CLIENTS = (1, 8, 32)
MAX_REQUESTS = 200_000  # per point: bounded by count as well as time


def pick_home() -> Path:
    for candidate in (os.environ.get("EDGE_RUNTIME_HOME"), DEFAULT_HOME):
        if candidate and (Path(candidate) / "models" / "active.json").is_file():
            return Path(candidate)
    from edge_runtime import signing
    from edge_runtime.store import Store

    import tests_support

    root = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    private, _ = signing.generate_keypair()
    signing.save_private_key(root / "build.key", private)
    built = tests_support.load("small_bundle").build_small_bundle(
        root / "bundle", key_path=root / "build.key", cache_dir=root / "cache"
    )
    home = root / "home"
    signing.trust_key(home, private.public_key())
    store = Store(home)
    manifest = store.install(built)
    store.activate(manifest.name, manifest.version)
    return home


def in_process(home: Path, seconds: float, threads: int = 0) -> dict:
    import edge_runtime

    model = edge_runtime.load(root=home, threads=threads)
    for text in TEXTS:
        model.predict([text])
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds / 2 or len(latencies) < 200:
        t0 = time.perf_counter()
        model.predict([TEXTS[len(latencies) % len(TEXTS)]])
        latencies.append(time.perf_counter() - t0)
    batch = [TEXTS[i % len(TEXTS)] for i in range(32)]
    rounds, started = 0, time.perf_counter()
    while rounds < 5 or time.perf_counter() - started < seconds:
        model.predict(batch)
        rounds += 1
    result = {
        "model": f"{model.name}@{model.version}",
        "batch1_p50_ms": 1000 * statistics.median(latencies),
        "batch32_per_s": rounds * 32 / (time.perf_counter() - started),
    }
    del model
    gc.collect()
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_daemon(home: Path, max_batch: int, keep_local: bool = True) -> tuple[subprocess.Popen, int]:
    """`edge-runtime serve` on a free port; with `keep_local` the router answers every text on the device."""
    port = free_port()
    env = {
        **os.environ,
        "EDGE_RUNTIME_HOME": str(home),
        "EDGE_RUNTIME_BATCHING_MAX_BATCH": str(max_batch),
        "EDGE_RUNTIME_LOGGING_LEVEL": "warning",
        "EDGE_RUNTIME_BATCHING_MAX_QUEUE": "4096",
    }
    if keep_local:
        env |= {
            "EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "0",
            "EDGE_RUNTIME_ROUTING_MIN_MARGIN": "0",
            "EDGE_RUNTIME_ROUTING_MAX_ENTROPY": "1",
        }
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the daemon did not become ready")


def request_bytes(text: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    return (
        b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def _connection(port: int, requests: list[bytes], stop_at: float, latencies: list, budget: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    while time.perf_counter() < stop_at and budget[0] > 0:
        budget[0] -= 1
        t0 = time.perf_counter()
        writer.write(requests[i % len(requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"HTTP error: {head[:40]!r} {body[:200]!r}")
        i += 1
    writer.close()


async def load(port: int, clients: int, seconds: float) -> dict:
    requests = [request_bytes(text) for text in TEXTS]
    warm: list = []
    await asyncio.gather(
        *[_connection(port, requests, time.perf_counter() + 0.5, warm, [10**9]) for _ in range(clients)]
    )
    latencies: list = []
    started = time.perf_counter()
    await asyncio.gather(
        *[_connection(port, requests, started + seconds, latencies, [MAX_REQUESTS // clients]) for _ in range(clients)]
    )
    elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "per_s": len(latencies) / elapsed,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per point")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads, daemon and in-process (0 = per core)")
    parser.add_argument("--workers", type=int, default=1, help="the daemon's batching.workers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["EDGE_RUNTIME_SERVER_THREADS"] = str(args.threads)  # the daemons inherit the environment
    os.environ["EDGE_RUNTIME_BATCHING_WORKERS"] = str(args.workers)
    home = pick_home()
    reference = in_process(home, args.seconds, args.threads)
    points, peaks = [], {}
    for label, max_batch in (("batching", 32), ("no batching", 1)):
        process, port = start_daemon(home, max_batch)
        try:
            for clients in CLIENTS:
                point = asyncio.run(load(port, clients, args.seconds))
                points.append({"mode": label, **point})
            peaks[label] = resident_mb("VmHWM", process.pid)
        finally:
            process.terminate()
            process.wait(60)
    by = {(p["mode"], p["clients"]): p for p in points}
    summary = {
        "reference": reference,
        "points": points,
        "peak_rss_mb": peaks,
        "threads": args.threads,
        "workers": args.workers,
        "speedup_32_batching_vs_off": by[("batching", 32)]["per_s"] / by[("no batching", 32)]["per_s"],
        "share_32_of_in_process_batch32": by[("batching", 32)]["per_s"] / reference["batch32_per_s"],
        "p50_1_client_minus_in_process_ms": by[("batching", 1)]["p50_ms"] - reference["batch1_p50_ms"],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"model {reference['model']}, {os.cpu_count()} CPUs, threads {args.threads or 'per core'}, "
        f"workers {args.workers}, {args.seconds:g} s per point, answers kept local"
    )
    print(
        f"in-process: batch-1 p50 {reference['batch1_p50_ms']:.2f} ms, "
        f"batch-32 {reference['batch32_per_s']:.0f} texts/s"
    )
    print(f"{'mode':<12} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for p in points:
        print(f"{p['mode']:<12} {p['clients']:>7} {p['per_s']:>8.0f} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f}")
    print(
        f"32 clients: batching {summary['speedup_32_batching_vs_off']:.2f}x no batching (target >= 2x), "
        f"{100 * summary['share_32_of_in_process_batch32']:.0f}% of in-process batch 32 (target >= 70%)"
    )
    print(f"1 client: p50 {summary['p50_1_client_minus_in_process_ms']:+.2f} ms vs in-process (target <= 0.3)")
    print("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in peaks.items()) + " (target <= 160 MB)")


if __name__ == "__main__":
    main()
