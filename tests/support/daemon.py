"""`edge-runtime serve` run for real, in a subprocess on a free port, for the daemon tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, free_port


class Daemon:
    """`edge-runtime serve` in a subprocess; stdout+stderr go to a log file the test can read.

    `tagger` is the [privacy] tagger the device is configured with. The default, none, is a device that
    sends with the scanner's redaction alone: the small test stores hold no tagger, and with one configured
    but missing every escalation would stay local (privacy_unavailable). The tagger tests name it (None:
    whatever the config says). `port`: the port a --config file in `args` names (then no --port is passed);
    else a free one."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict | None = None,
        log_dir: Path | None = None,
        port: int | None = None,
        tagger: str | None = "",
    ):
        self.port = port or free_port()
        port_args = () if port else ("--port", str(self.port))
        self.log_path = (log_dir or home) / f"daemon-{self.port}.log"
        environment = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        if tagger is not None:  # None: whatever the config file says
            environment["EDGE_RUNTIME_PRIVACY_TAGGER"] = tagger
        environment.update(EDGE_RUNTIME_HOME=str(home), **(env or {}))
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "serve", *port_args, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 120.0) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}: {self.log()}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60.0):
        """(status, headers, parsed JSON or raw bytes)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                headers = {"Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            kind = response.getheader("Content-Type", "")
            return response.status, dict(response.getheaders()), json.loads(data) if "json" in kind else data
        finally:
            connection.close()

    def get(self, path: str):
        return self.request("GET", path, timeout=5)

    def post(self, path: str, body, headers=None):
        return self.request("POST", path, body, headers)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
