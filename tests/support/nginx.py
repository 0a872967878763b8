"""A real nginx (Debian's package) serving a directory, for the mirror tests: its own config, logs and temp
paths in a directory of the test's, a free port on 127.0.0.1, kill -9 and stop.

`master_process off` runs nginx as one process: a kill -9 takes the whole server down at once (with a
master, its workers would go on serving), and it never switches to another user, so it reads the test's
0700 temp directories as the user running the tests. Extra directives go into the server block
(`limit_rate 64k;` to slow it down, `max_ranges 0;` to make it answer range requests with the whole file).
With `tls=(CERT, KEY)` it serves HTTPS with that certificate chain and key (PEM files).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from . import free_port, terminate

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def available() -> bool:
    return os.path.exists(NGINX)


class Nginx:
    def __init__(self, root: Path, workdir: Path, *directives: str, tls: tuple[Path, Path] | None = None):
        self.root = Path(root)
        self.tls = tls
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.error_log = self.dir / "error.log"
        self.access_log = self.dir / "access.log"
        if tls:
            directives = (f"ssl_certificate {tls[0]};", f"ssl_certificate_key {tls[1]};", *directives)
        extra = "\n".join(f"        {line}" for line in directives)
        temp = "\n".join(
            f"    {kind}_temp_path {self.dir}/{kind}-temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.config = self.dir / "nginx.conf"
        self.config.write_text(
            f"""daemon off;
master_process off;
pid {self.dir}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 64; }}
http {{
{temp}
    default_type application/octet-stream;
    log_format mirror 'conn=$connection $status $request_method $uri range="$http_range" sent=$body_bytes_sent'
                      ' auth="$http_authorization"';
    access_log {self.access_log} mirror;
    server {{
        listen 127.0.0.1:{self.port}{" ssl" if tls else ""};
        root {self.root};
{extra}
    }}
}}
"""
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        command = [NGINX, "-p", str(self.dir), "-e", str(self.error_log), "-c", str(self.config)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.error_log.read_text() if self.error_log.exists() else ""
                raise RuntimeError(
                    f"nginx exited {self.process.returncode}: {self.process.stderr.read().decode()} {log}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nginx did not listen on {self.port}")

    def kill(self) -> None:
        """kill -9: connections in flight are cut, new ones refused."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        terminate(self.process, 5)
        if self.process and self.process.stderr:
            self.process.stderr.close()

    def requests(self) -> list[str]:
        """The access log, one line per request:
        `conn=<connection> <status> <method> <uri> range="<Range header>" sent=<body bytes> auth="<Authorization>"`
        (nginx writes "-" for a header that was not sent)."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
