"""`edge-runtime upstream` run for real, in a subprocess, for the tests that need an upstream worker process
(SIGSTOP/SIGCONT it to hold escalations, SIGTERM it to read the stats it prints on the way out)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, pythonpath, terminate


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g} s")
        time.sleep(0.02)


class Upstream:
    """`python -m edge_runtime upstream` in a subprocess; its stderr goes to a file the test reads."""

    def __init__(
        self,
        home: Path,
        bundle: str,
        broker_url: str,
        *args: str,
        preexec_fn=None,
        stderr_name=None,
        prefix: tuple[str, ...] = (),
    ):
        """`args`: more options for the command (e.g. --dataset DIR); `preexec_fn` runs in the child before the
        command (e.g. a resource limit); `prefix` wraps the command (e.g. `ip netns exec NAME`)."""
        self.stderr_path = home / (stderr_name or "upstream.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "edge_runtime", "upstream", "--bundle", bundle, "--broker", broker_url]
            + list(args),
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={**os.environ, "EDGE_RUNTIME_HOME": str(home), "PYTHONPATH": pythonpath()},
            cwd=REPO,
            preexec_fn=preexec_fn,
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> Upstream:
        def answering() -> bool:
            assert self.process.poll() is None, f"upstream exited {self.process.returncode}: {self.stderr()}"
            return "answering $share/workers/edge/+/escalations" in self.stderr()

        wait_for(answering, timeout, "the upstream worker's ready line")
        return self

    def stop(self) -> tuple[int, dict]:
        """SIGTERM; (exit code, the stats it printed on the way out)."""
        terminate(self.process, 30)
        self._stderr.close()
        stopped = [line for line in self.stderr().splitlines() if line.startswith("stopped: ")]
        assert stopped, self.stderr()
        return self.process.returncode, ast.literal_eval(stopped[-1].removeprefix("stopped: "))

    def close(self) -> None:
        """Whatever state it is in (SIGSTOPped too): continued, then SIGTERM, SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        terminate(self.process, 30)
        self._stderr.close()
