"""What the tests share: a real mosquitto (mqtt_broker), tiny and small real bundles (bundle_factory,
small_bundle), stores (stores), the daemon and fleet harnesses (daemon, fleet_sim), and a launcher that stops
the CLI at a crash point (paused_cli).

pytest puts tests/ on sys.path (`pythonpath` in pyproject.toml), so tests import `support.<module>`; a child
process or a benchmark gets the same through PYTHONPATH (`pythonpath()`).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent


def pythonpath() -> str:
    """PYTHONPATH for a child process: edge_runtime from this checkout, and this package."""
    return os.pathsep.join([str(REPO), str(TESTS)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def terminate(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM; SIGKILL when it has not exited within `timeout` seconds."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
