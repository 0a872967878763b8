"""The daemon's memory at each stage of its life, with and without the PII tagger, in one run.

    python benchmarks/memory.py [--json] [--requests 50]

Uses the active bundle of $EDGE_RUNTIME_HOME, as benchmarks/serve.py does. For each setting the daemon
starts in a subprocess (`edge-runtime serve`, no broker: an escalation is redacted and kept in the
outbox), and its resident set (VmRSS of /proc/PID/status) is read:

- idle: ready, nothing served yet;
- after batch 1: `--requests` single-text requests (everyday queries the device answers itself);
- after batch 32: `--requests` requests of 32 texts each;
- batch 1 after batch 32: one single-text request once the large batches are over;
- after an escalation: one text the router sends upstream (it loads the lazy tagger and redacts);
- peak: VmHWM, the most the process ever held.

Settings: the tagger installed (loaded on the first escalation, the default) and no tagger
(privacy.tagger = ''), each with the daemon's default batching (max_batch 32) and, for comparison,
with batching off (max_batch 1), and with `--max-memory-mb` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import TEXTS, pick_home, start_daemon  # noqa: E402  benchmarks/serve.py

from edge_runtime.server.memory_budget import resident_mb  # noqa: E402

# No intent fits, so the router escalates it, and the tagger reads it first (it holds a name and an address).
HARD_TEXT = "Jan Kowalski says the flux capacitor hums in B minor near Hauptstraße 12, Berlin"


def post(port: int, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def stages(port: int, pid: int, requests: int) -> dict:
    time.sleep(1.0)  # let start-up garbage settle
    result = {"idle": resident_mb(pid=pid)}
    for i in range(requests):
        post(port, {"text": TEXTS[i % len(TEXTS)]})
    result["after_batch1"] = resident_mb(pid=pid)
    batch = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(32)]
    for _ in range(requests):
        post(port, {"texts": batch})
    result["after_batch32"] = resident_mb(pid=pid)
    post(port, {"text": TEXTS[0]})
    result["batch1_after_batch32"] = resident_mb(pid=pid)
    answer = post(port, {"text": HARD_TEXT})
    result["escalated"] = answer.get("decision") != "local"
    result["after_escalation"] = resident_mb(pid=pid)
    result["peak"] = resident_mb("VmHWM", pid)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="requests per stage")
    parser.add_argument("--max-memory-mb", type=int, default=0, help="also measure with this memory budget")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = pick_home()
    settings = [
        ("tagger, batching", {}),
        ("no tagger, batching", {"EDGE_RUNTIME_PRIVACY_TAGGER": ""}),
        ("tagger, no batching", {"EDGE_RUNTIME_BATCHING_MAX_BATCH": "1"}),
        ("no tagger, no batching", {"EDGE_RUNTIME_PRIVACY_TAGGER": "", "EDGE_RUNTIME_BATCHING_MAX_BATCH": "1"}),
    ]
    if args.max_memory_mb:
        budget = {"EDGE_RUNTIME_BATCHING_MAX_MEMORY_MB": str(args.max_memory_mb)}
        settings += [(f"tagger, budget {args.max_memory_mb} MB", budget)]
    rows = []
    for label, env in settings:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            process, port = start_daemon(home, int(env.get("EDGE_RUNTIME_BATCHING_MAX_BATCH", "32")), keep_local=False)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        try:
            rows.append({"setting": label, **stages(port, process.pid, args.requests)})
        finally:
            process.terminate()
            process.wait(60)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"RSS in MB, {args.requests} requests per stage, home {home}")
    print(f"{'setting':<26} {'idle':>6} {'batch 1':>8} {'batch 32':>9} {'then 1':>7} {'escalation':>11} {'peak':>6}")
    for r in rows:
        mark = "" if r["escalated"] else " (not escalated)"
        print(
            f"{r['setting']:<26} {r['idle']:>6.0f} {r['after_batch1']:>8.0f} {r['after_batch32']:>9.0f} "
            f"{r['batch1_after_batch32']:>7.0f} "
            f"{r['after_escalation']:>11.0f} {r['peak']:>6.0f}{mark}"
        )


if __name__ == "__main__":
    main()
