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
