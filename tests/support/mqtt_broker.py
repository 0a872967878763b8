"""A real mosquitto for tests: own config and persistence in a temp dir, free port, kill -9 and restart."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from . import free_port, terminate

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def available() -> bool:
    return os.path.exists(MOSQUITTO)


def give_to_mosquitto(path: Path) -> None:
    """As root mosquitto drops to the `mosquitto` user: it must own its directory and read its files."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid)


class Broker:
    def __init__(
        self,
        *,
        port: int | None = None,
        bind: str = "127.0.0.1",
        tls: dict | None = None,
        acl_file: Path | None = None,
        allow_anonymous: bool = True,
        netns: str | None = None,
        config: str | None = None,
    ):
        """`config`: a whole mosquitto.conf instead of the one built here (e.g. a shipped one, templated), with
        `{dir}` for this broker's directory; it must log to {dir}/mosquitto.log at notice level or more."""
        # Its own dir under /tmp: pytest's tmp_path parents are 0700 root, closed to the mosquitto user.
        self.dir = Path(tempfile.mkdtemp(prefix="edge-mosquitto-"))
        self.dir.chmod(0o755)
        self.port = port or free_port()
        self.bind = bind
        self.netns = netns
        self.process: subprocess.Popen | None = None
        self.log = self.dir / "mosquitto.log"
        lines = [
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"listener {self.port} {bind}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        ]
        if tls:
            for name in ("ca", "cert", "key"):
                shutil.copy(tls[name], self.dir / f"tls-{name}.pem")
            lines += [
                f"cafile {self.dir}/tls-ca.pem",
                f"certfile {self.dir}/tls-cert.pem",
                f"keyfile {self.dir}/tls-key.pem",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if acl_file:
            shutil.copy(acl_file, self.dir / "acl")
            lines.append(f"acl_file {self.dir}/acl")
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text(config.replace("{dir}", str(self.dir)) if config else "\n".join(lines) + "\n")
        give_to_mosquitto(self.dir)

    @property
    def url(self) -> str:
        return f"mqtt://{self.bind}:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        seen = self.log.read_text().count(" running") if self.log.exists() else 0
        command = [MOSQUITTO, "-c", str(self.config)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and self.log.read_text().count(" running") > seen:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.process.stderr.read().decode()} "
                    f"{self.log.read_text() if self.log.exists() else ''}"
                )
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        """kill -9: no goodbye, no final save."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        terminate(self.process, 5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def listener(broker_url: str, topic_filter: str, on_message, name: str):
    """A started, subscribed edge_runtime Link that hands every message on `topic_filter` to `on_message`: a
    test's (or benchmark's) observer, with no session left behind. Stop it with `.stop()`."""
    from edge_runtime.mqtt import BrokerConfig, Link, LinkHandlers, Subscription

    link = Link(
        BrokerConfig.from_url(broker_url),
        f"{name}-{os.getpid()}-{time.monotonic_ns()}",
        subscriptions=[Subscription(topic_filter)],
        handlers=LinkHandlers(on_message=on_message),
        clean_start=True,
        session_expiry_s=0,
    )
    link.start()
    link.wait_ready(10)
    return link
