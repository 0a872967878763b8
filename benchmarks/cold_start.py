"""Cold start: the daemon's time from exec to ready, and a cold `edge-runtime predict`, with their memory.

    python benchmarks/cold_start.py [--runs 5] [--json]

Uses the active bundle of $EDGE_RUNTIME_HOME, as benchmarks/serve.py does. Each run is a new process:

- daemon: `edge-runtime serve` started with a NOTIFY_SOCKET of this script's; the time from exec to the
  READY=1 datagram (what systemd waits for with Type=notify), and the daemon's resident set then;
- predict: `edge-runtime predict TEXT` from exec to exit, and its peak resident set (its VmHWM at exit);
- both with the session graph cache warm (the store's optimised graph from an earlier load, the usual case
  on a device) and cold (the cache emptied before the run: the first start after an install).

Medians over the runs; the machine's other load moves them, so compare figures taken in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import REPO, free_port, pick_home  # noqa: E402  benchmarks/serve.py

from edge_runtime.paths import cache_dir  # noqa: E402
from edge_runtime.server.memory_budget import resident_mb  # noqa: E402

TEXT = "what is my checking account balance"


def environment(home: Path) -> dict:
    return {**os.environ, "EDGE_RUNTIME_HOME": str(home), "EDGE_RUNTIME_LOGGING_LEVEL": "warning"}


def daemon_ready(home: Path) -> dict:
    """Seconds from exec to READY=1, and the resident set at that moment."""
    folder = Path(tempfile.mkdtemp(prefix="cold-start-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(folder / "notify.sock"))
    listener.settimeout(120)
    env = environment(home) | {"NOTIFY_SOCKET": str(folder / "notify.sock")}
    env.pop("WATCHDOG_USEC", None)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "serve", "--port", str(free_port())],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while b"READY=1" not in listener.recv(4096):
            pass
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "rss_mb": resident_mb(pid=process.pid)}
    finally:
        process.terminate()
        process.wait(60)
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


# `edge-runtime predict` as the console script runs it, reporting its own peak resident set (VmHWM) at exit.
# Not the rusage of wait4: Linux carries the pre-exec peak of the forked child (this script's) into it.
PREDICT = """
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("VmHWM", int(line.split()[1]), file=sys.stderr)
atexit.register(peak)
from edge_runtime.cli import main
sys.argv = ["edge-runtime", "predict", sys.argv[1]]
main()
"""


def cold_predict(home: Path) -> dict:
    """Seconds from exec to exit of `edge-runtime predict`, and its peak resident set."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PREDICT, TEXT], env=environment(home), cwd=REPO, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"edge-runtime predict failed: {done.stderr[-2000:]}")
    peak_kb = int(done.stderr.split("VmHWM")[-1].split()[0])
    return {"seconds": seconds, "rss_mb": peak_kb / 1024}


def drop_graph_cache(folder: Path) -> None:
    """The optimised session graphs (<key>.onnx + <key>.sha256), not the rest of the cache (build caches)."""
    for path in list(folder.glob("*.onnx")) + list(folder.glob("*.sha256")):
        path.unlink()


def median_of(runs: list[dict]) -> dict:
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    home = pick_home()
    graphs = cache_dir(home)
    results = {}
    for what, measure in (("daemon_ready", daemon_ready), ("predict", cold_predict)):
        measure(home)  # fills the graph cache
        results[f"{what}_warm_cache"] = median_of([measure(home) for _ in range(options.runs)])
        cold = []
        for _ in range(options.runs):
            drop_graph_cache(graphs)
            cold.append(measure(home))
        results[f"{what}_cold_cache"] = median_of(cold)
    if options.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'what':<28} {'seconds':>8} {'RSS MB':>8}   (median of {options.runs}, {home})")
    for name, figures in results.items():
        print(f"{name:<28} {figures['seconds']:>8.3f} {figures['rss_mb']:>8.1f}")


if __name__ == "__main__":
    main()
