"""`edge-runtime ARGS...` stopped at one crash point, so that a test can kill -9 it exactly there.

    python -m support.paused_cli POINT MARKER -- ARGS...

This process wraps the product function at POINT, then runs the CLI in-process. On reaching POINT it writes
POINT into the file MARKER and sleeps (PAUSE_S at most): the test waits for MARKER, then sends SIGKILL. The
product keeps no test hook. Points:

  store-install    right before the rename that makes a newly installed bundle version visible
  store-activate   right before models/active.json is written (activate, roll back)
  chunk            right after the first chunk of a download is stored, while others are still missing
  desired          right after the update agent received and verified a desired state to install, before
                   it records anything about it
  PHASE            right after the update agent has persisted PHASE (fleet.state.PHASES: verifying, ...)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from . import REPO, pythonpath

PAUSE_S = 120.0  # far longer than a test waits; the process goes on (unpaused) if nobody kills it


def command(point: str, marker: Path, *args: str) -> list[str]:
    """The argv that runs `edge-runtime ARGS` paused at POINT; run it with `environment()`."""
    return [sys.executable, "-m", "support.paused_cli", point, str(marker), "--", *args]


def environment(base: dict) -> dict:
    return {**base, "PYTHONPATH": pythonpath()}


def _pause(point: str, marker: Path) -> None:
    marker.write_text(point)
    deadline = time.monotonic() + PAUSE_S
    while time.monotonic() < deadline:
        time.sleep(0.1)


def pause_at(point: str, marker: Path) -> None:
    """Wraps the product function where POINT is, in this process."""
    from edge_runtime.fleet import agent, chunks, state
    from edge_runtime.store import Store

    if point == "store-install":
        commit = Store._commit_install

        def paused_commit(self, staged, target):
            _pause(point, marker)
            return commit(self, staged, target)

        Store._commit_install = paused_commit
    elif point == "store-activate":
        write_state = Store._write_state

        def paused_write_state(self, *args, **kwargs):
            _pause(point, marker)
            return write_state(self, *args, **kwargs)

        Store._write_state = paused_write_state
    elif point == "chunk":
        write = chunks.Download.write
        paused = []

        def write_then_pause(self, index, data):
            write(self, index, data)
            if not paused and self.missing():
                paused.append(index)
                _pause(point, marker)

        chunks.Download.write = write_then_pause
    elif point == "desired":
        install = agent.Agent._install

        def paused_install(self, *args, **kwargs):
            _pause(point, marker)
            return install(self, *args, **kwargs)

        agent.Agent._install = paused_install
    elif point in state.PHASES:
        transition = state.UpdateState.transition

        def transition_then_pause(self, phase, **changes):
            transition(self, phase, **changes)
            if phase == point:
                _pause(point, marker)

        state.UpdateState.transition = transition_then_pause
    else:
        raise SystemExit(f"paused_cli: unknown point {point!r} (see tests/support/paused_cli.py)")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit(__doc__.split("\n\n")[1])
    pause_at(argv[0], Path(argv[1]))
    from edge_runtime.cli import main as edge_runtime

    return edge_runtime(argv[3:])


def run_until_paused(point: str, marker: Path, *args: str, env: dict, timeout: float = 60.0) -> subprocess.Popen:
    """Starts `edge-runtime ARGS` paused at POINT and returns once it is there (MARKER exists)."""
    child = subprocess.Popen(command(point, marker, *args), env=environment(env), cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, f"the child never reached {point}"
        time.sleep(0.05)
    return child


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
