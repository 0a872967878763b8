"""Memory a small board gets back: the session's arena after large batches, the heap after a load.

Each measurement runs in a fresh Python process on the small bundle (the real MiniLM-L6 INT8 encoder), so
the resident set is that of one model and nothing else of the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import REPO
from support.daemon import Daemon

PROBE = textwrap.dedent(
    """
    import json, sys
    import edge_runtime

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    model = edge_runtime.load(sys.argv[1], threads=1)
    one = ["what is the balance of my checking account"]
    before = [p.label for p in model.predict(one)]
    loaded = rss_mb()
    long = ["please tell me the balance of my checking account and my savings account today " + str(i)
            for i in range(32)]
    for _ in range(5):
        model.predict(long)
    after_large = rss_mb()
    after = [p.label for p in model.predict(one)]
    print(json.dumps({"loaded": loaded, "after_large": after_large, "after_small": rss_mb(),
                      "shrinks": model.session.shrinks, "same": before == after}))
    """
)


def test_a_small_run_after_large_batches_hands_the_arena_back(bundle_home, small_bundle):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(small_bundle)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"EDGE_RUNTIME_HOME": str(bundle_home), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    grown = measured["after_large"] - measured["loaded"]
    assert grown > 5, measured  # batches of 32 long texts grow the arena
    assert measured["shrinks"] == 1, measured
    assert measured["after_small"] < measured["after_large"] - grown / 2, measured  # and most of it goes back
    assert measured["same"], measured  # a shrunk arena changes no answer


def _peak_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


LONG_TEXTS = [
    f"please move 300 dollars from my savings to my checking account before friday, ticket {i}" for i in range(32)
]


def test_a_memory_budget_caps_the_batch_and_the_daemon_stays_under_it(home, tmp_path):
    for _ in range(2):  # the first start also optimises the graph into the cache: measure the second
        free = Daemon(home, log_dir=tmp_path).wait_ready()
        try:
            memory = free.get("/v1/status")[2]["memory"]
            assert memory["budget"] is None
            loading_peak = _peak_mb(free.process.pid)  # no request served yet: the peak of loading the model
        finally:
            free.stop()
    # the serving headroom (4 MB) and room for a few texts, not for 32
    budget = int(max(loading_peak, memory["resident_mb"])) + 8
    capped = Daemon(home, "--max-memory-mb", str(budget), log_dir=tmp_path).wait_ready()
    try:
        status = capped.get("/v1/status")[2]
        fitted = status["memory"]["budget"]
        assert fitted["budget_mb"] == budget and fitted["measured"], fitted
        assert 1 <= status["queue"]["max_batch"] == fitted["max_batch"] < 32, status
        for _ in range(10):
            code, _, answer = capped.post("/v1/predict", {"texts": LONG_TEXTS})
            assert code == 200 and len(answer["predictions"]) == 32
        assert _peak_mb(capped.process.pid) <= budget
    finally:
        capped.stop()


def test_a_budget_the_model_cannot_fit_in_is_refused_at_start(home, tmp_path):
    refused = Daemon(home, "--max-memory-mb", "40", log_dir=tmp_path)
    try:
        assert refused.process.wait(120) != 0
    finally:
        refused.stop()
    last = refused.log().strip().splitlines()[-1]
    assert "max_memory_mb = 40" in last and "give at least" in last, refused.log()
