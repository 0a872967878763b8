"""The daemon under failure and at its HTTP edge, run for real (`python -m edge_runtime serve` in a subprocess):
a full disk (a tiny tmpfs mounted as the state dir, then filled), a corrupt outbox.sqlite, a broken bundle
on reload, the bearer token, keep-alive and the connection cap.

The daemon serves a tiny real ONNX bundle (support.bundle_factory) whose routing escalates every answer,
so every request exercises the outbox; no test double is used.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_runtime import bundle
from edge_runtime.store import Store

from support import REPO, bundle_factory, free_port, mqtt_broker
from support.daemon import Daemon

LABELS = ("negative", "neutral", "positive")
TEXT = "please check the order I placed last week"
TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    key = bundle_factory.trusted_signer(root)
    routing = {**bundle_factory.base_manifest("x", "1.0.0", 1)["routing"], "always_escalate": list(LABELS)}
    made = bundle_factory.make_bundle(tmp_path / "src" / "tiny-1.0.0", key, manifest_updates={"routing": routing})
    store = Store(root)
    store.install(tmp_path / "src" / "tiny-1.0.0")
    store.activate(made.name, made.version)
    return root


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(home: Path, *args, **options) -> Daemon:
        running = Daemon(home, *args, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def small_state_dir(home):
    """$EDGE_RUNTIME_HOME/state on its own 1 MB tmpfs, unmounted afterwards."""
    state = home / "state"
    state.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> None:
    """Write until the file system says it is full (ENOSPC): the disk is full for real."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass
    for n in range(1000):  # and the last free blocks, with small files
        try:
            (directory / f"filler-{n}").write_bytes(b"\0" * 512)
        except OSError:
            break


def predictions(running: Daemon, texts: list[str]) -> list[dict]:
    status, _, body = running.post("/v1/predict", {"texts": texts})
    assert status == 200, body
    return body["predictions"]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- the outbox under failure ------------------------------------------------------------------------


@pytest.mark.parametrize("uplink", ["offline", "broker"])
def test_full_disk_escalations_are_answered_locally_never_a_deferred_id_that_does_not_exist(
    uplink, home, small_state_dir, daemons, tmp_path
):
    env = {}
    broker = None
    if uplink == "broker":
        if not mqtt_broker.available():
            pytest.skip("mosquitto is not installed")
        broker = mqtt_broker.Broker().start()  # no worker: stored escalations are deferred
        env = {
            "EDGE_RUNTIME_UPLINK_BROKER": broker.url,
            "EDGE_RUNTIME_UPLINK_DEVICE_ID": "dev-full",
            "EDGE_RUNTIME_UPLINK_DEADLINE_MS": "300",
        }
    try:
        running = daemons(home, env=env, log_dir=tmp_path).wait_ready()
        (before,) = predictions(running, [TEXT])
        assert before["decision"] == "deferred" and running.get(f"/v1/requests/{before['request_id']}")[0] == 202
        fill(small_state_dir)
        answers = []
        for n in range(8):  # each one larger than what a WAL page can still hold
            answers += predictions(running, [f"{TEXT} {n} " + "padding words " * 300] * 4)
        kept_local = [a for a in answers if a["decision"] == "local"]
        assert kept_local, answers[:2]
        for answer in kept_local:
            assert answer["reason"].startswith("outbox_unavailable:") and answer.get("request_id") is None
        for answer in answers:
            if answer["decision"] == "deferred":  # stored before the last page filled up: it must exist
                assert running.get(f"/v1/requests/{answer['request_id']}")[0] == 202
        assert {a["decision"] for a in answers} <= {"local", "deferred"}
        status = running.get("/v1/status")[2]
        assert status["outbox"]["write_failures"] >= 1 and "full" in status["outbox"]["last_error"]
        assert metric(running.get("/metrics")[2].decode(), "edge_runtime_outbox_write_failures") >= 1
        if broker is not None:
            assert status["uplink"]["stats"]["outbox_unavailable"] >= len(kept_local)
        for filler in small_state_dir.glob("filler*"):  # room again: escalations are stored again
            filler.unlink()
        (after,) = predictions(running, [TEXT])
        assert after["decision"] == "deferred" and running.get(f"/v1/requests/{after['request_id']}")[0] == 202
        assert running.process.poll() is None
    finally:
        if broker is not None:
            broker.close()


def test_corrupt_outbox_is_moved_aside_and_the_daemon_serves_and_reports_it(home, daemons, tmp_path):
    state = home / "state"
    state.mkdir()
    garbage = os.urandom(8192)
    (state / "outbox.sqlite").write_bytes(garbage)
    running = daemons(home, log_dir=tmp_path).wait_ready()
    (answer,) = predictions(running, [TEXT])
    assert answer["decision"] == "deferred"  # a fresh outbox took its place
    assert running.get(f"/v1/requests/{answer['request_id']}")[0] == 202
    aside = list(state.glob("outbox.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept for inspection, not deleted
    outbox = running.get("/v1/status")[2]["outbox"]
    assert outbox["state"] == "recovered" and outbox["moved_aside"] == str(aside[0])
    assert metric(running.get("/metrics")[2].decode(), "edge_runtime_outbox_recovered") == 1.0
    doctor = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "doctor", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGE_RUNTIME_HOME": str(home)},
        cwd=REPO,
        timeout=120,
    )
    report = json.loads(doctor.stdout)
    assert doctor.returncode == 1 and report["outbox"]["moved_aside"] == [str(aside[0])]
    assert any(p.startswith("outbox: a corrupt outbox was moved aside") for p in report["problems"])


def test_an_outbox_that_cannot_be_opened_leaves_a_daemon_answering_locally(home, daemons, tmp_path):
    state = home / "state"
    state.mkdir()
    (state / "outbox.sqlite").mkdir()  # not a file: SQLite cannot open it, and it is not corrupt to move aside
    running = daemons(home, log_dir=tmp_path).wait_ready()
    (answer,) = predictions(running, [TEXT])
    assert answer["decision"] == "local" and answer["reason"].startswith("outbox_unavailable:")
    outbox = running.get("/v1/status")[2]["outbox"]
    assert outbox["state"] == "unavailable" and outbox["write_failures"] >= 1
    assert metric(running.get("/metrics")[2].decode(), "edge_runtime_outbox_available") == 0.0


# -- reload ------------------------------------------------------------------------------------------


def test_a_failed_reload_keeps_the_old_model_serving(home, daemons, tmp_path):
    running = daemons(home, log_dir=tmp_path).wait_ready()
    broken = tmp_path / "src" / "tiny-2.0.0"
    key = bundle_factory.trusted_signer(home)
    made = bundle_factory.make_bundle(broken, key, version="2.0.0", release=2)
    (broken / "model.onnx").write_bytes(b"not an onnx graph at all")  # signed as it is: it verifies, it won't load
    bundle.finalize(broken, json.loads((broken / "manifest.json").read_text()), private_key=key)
    store = Store(home)
    store.install(broken)
    store.activate(made.name, "2.0.0")
    status, _, result = running.post("/v1/admin/reload", b"", {})
    assert status == 500 and result["result"] == "failed" and result["version"] == "1.0.0" and result["error"]
    status, _, body = running.post("/v1/predict", {"text": TEXT})
    assert status == 200 and body["version"] == "1.0.0"
    assert running.get("/v1/status")[2]["model"]["version"] == "1.0.0"


# -- the HTTP edge ----------------------------------------------------------------------------------


def config_file(tmp_path: Path, **server) -> Path:
    lines = ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in server.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_private_routes_need_the_bearer_token(home, daemons, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config = config_file(tmp_path, token_file=str(token_file))
    running = daemons(home, "--config", str(config), log_dir=tmp_path).wait_ready()
    (answer,) = predictions(running, [TEXT])  # inference stays open
    request_path = f"/v1/requests/{answer['request_id']}"
    for method, path in (("POST", "/v1/admin/reload"), ("GET", request_path)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            status, response_headers, body = running.request(method, path, b"", headers)
            assert status == 401 and body["error"].startswith("unauthorized"), (path, headers, body)
            assert response_headers["WWW-Authenticate"].startswith("Bearer")
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert running.request("GET", request_path, None, good)[0] == 202
    assert running.request("POST", "/v1/admin/reload", b"", good)[2]["result"] == "unchanged"
    assert running.get("/v1/status")[0] == 200 and running.get("/metrics")[0] == 200  # not protect_status
    assert 'edge_runtime_rejected_total{reason="unauthorized"} 6.0' in running.get("/metrics")[2].decode()


def test_protect_status_also_guards_status_and_metrics_and_the_cli_sends_the_token(home, daemons, tmp_path):
    port = free_port()
    config = config_file(tmp_path, token=TOKEN, protect_status=True, port=port)
    running = daemons(home, "--config", str(config), log_dir=tmp_path, port=port).wait_ready()
    for path in ("/v1/status", "/metrics"):
        assert running.get(path)[0] == 401
        assert running.request("GET", path, None, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(home)}
    status = cli("status", "--json", "--config", str(config), env=env)  # host, port and token from the config
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["model"]["version"] == "1.0.0"
    without = cli("status", "--url", f"http://127.0.0.1:{port}", env=env)
    assert without.returncode == 1 and "needs the daemon's token" in without.stderr


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_idle_and_slow_header_connections_are_closed_after_the_keepalive_timeout(home, daemons, tmp_path):
    config = config_file(tmp_path, keepalive_timeout_s=1.0)
    running = daemons(home, "--config", str(config), log_dir=tmp_path).wait_ready()
    idle = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # ...and never the end of its headers
    started = time.monotonic()
    for sock in (idle, slow):
        assert sock.recv(4096) == b""  # closed by the daemon
        sock.close()
    assert time.monotonic() - started < 8  # aiohttp's default would keep them for an hour
    assert running.get("/v2/health/live")[0] == 200


def test_connections_beyond_the_cap_get_503_json_and_are_counted(home, daemons, tmp_path):
    config = config_file(tmp_path, max_connections=4)
    running = daemons(home, "--config", str(config), log_dir=tmp_path).wait_ready()
    held = []
    for _ in range(4):  # four keep-alive connections, each known to be admitted
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        connection.request("GET", "/v2/health/live")
        assert connection.getresponse().read() == b'{"live": true}'
        held.append(connection)
    extra = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    data = b""
    while chunk := extra.recv(4096):
        data += chunk
    extra.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"].startswith("busy: too many connections")
    for sock in held:
        sock.close()
    time.sleep(0.3)
    assert running.get("/v2/health/live")[0] == 200  # room again
    assert 'edge_runtime_rejected_total{reason="connections"} 1.0' in running.get("/metrics")[2].decode()


def test_unix_socket_only_listens_on_no_tcp_port(home, tmp_path):
    path = tmp_path / "edge.sock"
    port = free_port()
    config = config_file(tmp_path, tcp=False, unix_socket=str(path), port=port)
    env = {**os.environ, "EDGE_RUNTIME_HOME": str(home)}
    log_path = tmp_path / "unix-only.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 60
        while '"msg": "ready"' not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        status = cli("status", "--json", "--unix-socket", str(path), env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["model"]["name"] == "tiny", status.stderr
        with socket.socket() as probe:  # the config's port is not listened on
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        process.terminate()
        assert process.wait(60) == 0


def test_metrics_waiting_on_a_locked_outbox_does_not_stall_the_event_loop(home, daemons, tmp_path):
    running = daemons(home, log_dir=tmp_path).wait_ready()
    predictions(running, [TEXT])  # the outbox exists, in WAL mode
    # Another process holds every WAL read-mark lock of the -shm file (SQLite's own byte-range locks, offsets
    # 123-127): a reader then retries for ~10 s before it gives up. Nothing is faked: the lock is real.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, time\n"
            f"fd = os.open({str(home / 'state' / 'outbox.sqlite-shm')!r}, os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX, 5, 123, 0)\n"
            "print('locked', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        slow = {}

        def scrape():
            slow["status"] = running.request("GET", "/metrics", timeout=60)[0]

        scraper = threading.Thread(target=scrape)
        scraper.start()
        time.sleep(0.5)  # /metrics now waits for SQLite's lock
        started = time.monotonic()
        assert running.get("/v2/health/live")[0] == 200  # before: stuck behind /metrics for the lock's duration
        assert time.monotonic() - started < 2.0
        scraper.join(60)
        assert slow["status"] == 200
    finally:
        holder.kill()
        holder.wait()


def test_the_update_agent_reloads_a_daemon_that_has_a_token(home, daemons, tmp_path):
    from edge_runtime.errors import EdgeRuntimeError
    from edge_runtime.fleet.agent import Agent, AgentConfig
    from edge_runtime.mqtt import BrokerConfig

    config = config_file(tmp_path, token=TOKEN)
    running = daemons(home, "--config", str(config), log_dir=tmp_path).wait_ready()

    def agent(token):  # the link to the broker is built, not started: only the daemon is talked to
        settings = AgentConfig(
            device_id="dev-1",
            group="g",
            broker=BrokerConfig.from_url("mqtt://127.0.0.1:1"),
            root=home,
            daemon_url=f"http://127.0.0.1:{running.port}",
            daemon_token=token,
        )
        return Agent(settings)

    agent(TOKEN)._reload_daemon()  # raises on any failure
    with pytest.raises(EdgeRuntimeError, match="daemon reload at .* failed"):
        agent(None)._reload_daemon()
    assert 'edge_runtime_reloads_total{result="unchanged"} 1.0' in running.get("/metrics")[2].decode()  # one got in
