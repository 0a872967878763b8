"""The device daemon, run for real: `python -m edge_runtime serve` as a subprocess on a free port, with
a private store holding the small CLINC150 INT8 bundle; clients are http.client, raw sockets and
tritonclient."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_runtime import bundle, signing
from edge_runtime.outbox import Outbox
from edge_runtime.store import Store

from support import REPO, free_port, mqtt_broker
from support.daemon import Daemon
from support.stores import store_with
from support.upstream import Upstream, wait_for

pytestmark = pytest.mark.kernels  # the daemon answers with what the kernels compute

TEXTS = [
    "what is my checking account balance",
    "play the next song please",
    "thank you so much",
    "freeze my bank account right now",
    "roll a six sided die",
]
MARKER = "zq-private-marker-7731"  # must never appear in the daemon's log


def cli(*args, home: Path, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGE_RUNTIME_HOME": str(home), **(env or {})},
        cwd=REPO,
        timeout=120,
    )


def second_version(small_bundle: Path, build_key: Path, where: Path, version="0.2.0", release=2) -> Path:
    target = where / f"bundle-{version}"
    shutil.copytree(small_bundle, target)
    raw = json.loads((target / "manifest.json").read_text())
    raw.update(version=version, release=release)
    (target / "signature.json").unlink(missing_ok=True)
    bundle.finalize(target, raw, signing.load_private_key(build_key))
    return target


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, small_bundle, build_key):
    """One daemon shared by the read-mostly tests of this module (own store copy)."""
    home = store_with(tmp_path_factory.mktemp("daemon-home"), small_bundle, build_key)
    socket_path = tmp_path_factory.mktemp("sock") / "edge.sock"
    running = Daemon(home, "--unix-socket", str(socket_path)).wait_ready()
    running.home, running.socket_path = home, socket_path
    yield running
    assert running.stop() == 0
    assert MARKER not in running.log(), "request text leaked into the log"


def infer_body(texts, **extra):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


# -- Open Inference Protocol ------------------------------------------------------------------------


def test_v2_health_and_metadata_follow_the_protocol(daemon):
    status, _, body = daemon.get("/v2/health/live")
    assert (status, body) == (200, {"live": True})
    status, _, body = daemon.get("/v2/health/ready")
    assert (status, body) == (200, {"ready": True})
    status, _, server = daemon.get("/v2")
    assert status == 200 and server["name"] == "edge-runtime" and server["version"]
    assert isinstance(server["extensions"], list)
    status, _, meta = daemon.get("/v2/models/clinc-small")
    assert status == 200 and meta["name"] == "clinc-small" and meta["versions"] == ["0.1.0"]
    assert meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
    assert outputs["label"] == "BYTES" and outputs["score"] == "FP32" and outputs["decision"] == "BYTES"
    assert daemon.get("/v2/models/clinc-small/versions/0.1.0")[2] == meta
    assert daemon.get("/v2/models/clinc-small/ready")[2] == {"name": "clinc-small", "ready": True}
    assert daemon.get("/v2/models/clinc-small/versions/0.1.0/ready")[0] == 200
    for path in ("/v2/models/other", "/v2/models/clinc-small/versions/9.9.9", "/v2/models/other/ready"):
        status, _, body = daemon.get(path)
        assert status == 404 and "error" in body


def test_v2_infer_returns_named_tensors(daemon, small_bundle):
    labels = set(json.loads((small_bundle / "labels.json").read_text()))
    status, _, body = daemon.post("/v2/models/clinc-small/infer", infer_body(TEXTS[:3], id="req-7"))
    assert status == 200, body
    assert body["model_name"] == "clinc-small" and body["model_version"] == "0.1.0" and body["id"] == "req-7"
    tensors = {t["name"]: t for t in body["outputs"]}
    assert set(tensors) == {"label", "score", "decision", "reason", "request_id"}
    assert tensors["label"]["datatype"] == "BYTES" and tensors["label"]["shape"] == [3]
    assert set(tensors["label"]["data"]) <= labels
    assert tensors["score"]["datatype"] == "FP32" and all(0 < s <= 1 for s in tensors["score"]["data"])
    assert set(tensors["decision"]["data"]) <= {"local", "escalate", "deferred"}
    # outputs selection, [N, 1] shape, the /versions form
    status, _, body = daemon.post(
        "/v2/models/clinc-small/versions/0.1.0/infer",
        {
            "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[TEXTS[0]], [TEXTS[1]]]}],
            "outputs": [{"name": "top_k"}, {"name": "score"}],
        },
    )
    assert status == 200, body
    assert [t["name"] for t in body["outputs"]] == ["top_k", "score"]
    top = [json.loads(item) for item in body["outputs"][0]["data"]]
    assert len(top) == 2 and top[0][0]["score"] == pytest.approx(body["outputs"][1]["data"][0], rel=1e-6)
    status, _, body = daemon.post("/v2/models/clinc-small/versions/0.0.9/infer", infer_body(TEXTS[:1]))
    assert status == 404 and "0.0.9" in body["error"]


def test_v2_infer_returns_the_out_of_scope_score_on_request(daemon):
    status, _, body = daemon.post("/v2/models/clinc-small/infer", infer_body(TEXTS, outputs=[{"name": "ood"}]))
    assert status == 200, body
    (tensor,) = body["outputs"]
    assert tensor["datatype"] == "FP32" and tensor["shape"] == [len(TEXTS)]
    plain = daemon.post("/v1/predict", {"texts": TEXTS})[2]["predictions"]
    assert tensor["data"] == pytest.approx([p["ood"] for p in plain], abs=1e-6)
    assert all(0.0 <= value <= 1.0 for value in tensor["data"])


def test_v2_asking_a_model_without_the_score_for_it_is_a_400(tiny_home, tmp_path):
    from edge_runtime.store import Store

    manifest = Store(tiny_home).install(tiny_home / "tiny")  # a bundle_factory model: no ood.npz
    Store(tiny_home).activate(manifest.name, manifest.version)
    running = Daemon(tiny_home, log_dir=tmp_path).wait_ready()
    try:
        status, _, body = running.post(
            f"/v2/models/{manifest.name}/infer", infer_body(TEXTS, outputs=[{"name": "ood"}])
        )
        assert status == 400 and body["error"] == "outputs: this model has no out-of-scope score (ood)", body
        assert running.post(f"/v2/models/{manifest.name}/infer", infer_body(TEXTS))[0] == 200
    finally:
        running.stop()


def test_standard_v2_client_works_unchanged(daemon):
    np = pytest.importorskip("numpy")
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{daemon.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("clinc-small")
    assert client.get_model_metadata("clinc-small")["platform"] == "onnxruntime"
    for binary in (False, True):  # JSON tensors and the binary tensor extension
        tensor = httpclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(np.array(TEXTS[:3], dtype=np.object_), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("label", "score")]
        result = client.infer("clinc-small", [tensor], outputs=outputs, request_id="t1")
        assert result.get_response()["model_version"] == "0.1.0" and result.get_response()["id"] == "t1"
        assert result.as_numpy("label").shape == (3,) and result.as_numpy("score").dtype == np.float32
        plain = daemon.post("/v1/predict", {"texts": TEXTS[:3]})[2]["predictions"]
        assert [label if isinstance(label, str) else label.decode() for label in result.as_numpy("label")] == [
            p["label"] for p in plain
        ]
    default = client.infer("clinc-small", [tensor])  # no outputs named: the server's defaults
    assert default.as_numpy("decision").shape == (3,)
    with pytest.raises(Exception, match="unknown model"):
        client.infer("nope", [tensor])
    client.close()


# -- /v1 ----------------------------------------------------------------------------------------------


def test_v1_predict_single_and_many(daemon):
    status, _, one = daemon.post("/v1/predict", {"text": TEXTS[0], "top_k": 2})
    assert status == 200, one
    assert one["model"] == "clinc-small" and one["version"] == "0.1.0"
    assert one["decision"] in ("local", "escalate", "deferred") and one["reason"]
    assert len(one["top_k"]) == 2 and one["top_k"][0]["label"] == one["label"]
    status, _, many = daemon.post("/v1/predict", {"texts": TEXTS})
    assert status == 200 and len(many["predictions"]) == len(TEXTS)
    assert many["predictions"][0]["label"] == one["label"]


def test_deferred_answers_are_looked_up_by_request_id(daemon):
    from edge_runtime.outbox import Outbox

    status, _, body = daemon.post("/v1/predict", {"texts": TEXTS})
    deferred = [p for p in body["predictions"] if p["decision"] == "deferred"]
    assert deferred, "the small bundle's routing escalates its unsure answers (offline: deferred)"
    request_id = deferred[0]["request_id"]
    status, _, pending = daemon.get(f"/v1/requests/{request_id}")
    assert status == 202 and pending == {"request_id": request_id, "status": "pending"}
    with Outbox(daemon.home / "state" / "outbox.sqlite") as outbox:  # an upstream answer arrives
        assert outbox.record_answers([(request_id, json.dumps({"id": request_id, "answer": {"label": "upstream"}}))])
    status, _, answered = daemon.get(f"/v1/requests/{request_id}")
    assert status == 200 and answered["status"] == "answered" and answered["answer"]["label"] == "upstream"
    for unknown in ("0" * 32, "not-an-id"):
        status, _, body = daemon.get(f"/v1/requests/{unknown}")
        assert status == 404 and body == {"error": "unknown request id"}


def test_metrics_and_status(daemon):
    daemon.post("/v1/predict", {"texts": TEXTS[:2]})
    status, headers, text = daemon.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = text.decode()
    for series in (
        'edge_runtime_http_requests_total{route="v1_predict",status="200"}',
        "edge_runtime_http_request_seconds_bucket",
        "edge_runtime_batch_size_bucket",
        "edge_runtime_queue_depth",
        "edge_runtime_outbox_pending",
        "edge_runtime_outbox_dead_letters",
        "edge_runtime_escalation_rate",
        'edge_runtime_model_info{name="clinc-small",release="1",version="0.1.0"} 1.0',
        "edge_runtime_predictions_total{decision=",
    ):
        assert series in text, series
    done = cli("status", "--json", "--url", f"http://127.0.0.1:{daemon.port}", home=daemon.home)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"]["name"] == "clinc-small" and report["model"]["version"] == "0.1.0"
    assert report["kernels"] in ("cython", "python") and report["uptime_s"] > 0
    assert report["outbox"]["pending"] >= 0 and report["queue"]["max_batch"] == 32
    assert sum(report["counters"]["predictions"].values()) >= 2
    human = cli("status", "--unix-socket", str(daemon.socket_path), home=daemon.home)
    assert human.returncode == 0 and "clinc-small@0.1.0" in human.stdout
    nobody = cli("status", "--url", f"http://127.0.0.1:{free_port()}", home=daemon.home)
    assert nobody.returncode == 1 and "no daemon answering" in nobody.stderr


# -- bad input ------------------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    ("non-JSON", "/v1/predict", b"{not json", JSON, 400, "not valid JSON"),
    ("empty body", "/v1/predict", b"", JSON, 400, "empty body"),
    ("JSON list", "/v1/predict", b"[1, 2]", JSON, 400, "JSON object"),
    ("wrong type", "/v1/predict", json.dumps({"text": 42}).encode(), JSON, 400, "text 1: expected a string"),
    ("texts not a list", "/v1/predict", json.dumps({"texts": MARKER}).encode(), JSON, 400, "expected a list"),
    ("both fields", "/v1/predict", json.dumps({"text": "a", "texts": ["b"]}).encode(), JSON, 400, "exactly one"),
    ("unknown field", "/v1/predict", json.dumps({"txt": "a"}).encode(), JSON, 400, "unknown field"),
    ("bad top_k", "/v1/predict", json.dumps({"text": "a", "top_k": 9}).encode(), JSON, 400, "top_k"),
    ("empty text", "/v1/predict", json.dumps({"text": "   "}).encode(), JSON, 400, "text 1: empty"),
    ("empty list", "/v1/predict", json.dumps({"texts": []}).encode(), JSON, 400, "empty list"),
    ("text too long", "/v1/predict", json.dumps({"text": MARKER * 1000}).encode(), JSON, 413, "too long"),
    ("too many texts", "/v1/predict", json.dumps({"texts": [MARKER] * 65}).encode(), JSON, 413, "too many texts"),
    ("invalid UTF-8", "/v1/predict", b'{"text": "caf\xe9 ' + MARKER.encode() + b'"}', JSON, 400, "UTF-8"),
    ("lone surrogate", "/v1/predict", b'{"text": "\\ud800 ' + MARKER.encode() + b'"}', JSON, 400, "surrogate"),
    ("nested too deep", "/v1/predict", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "not valid JSON"),
    ("huge number", "/v1/predict", b'{"top_k": ' + b"9" * 5000 + b"}", JSON, 400, "not valid JSON"),
    (
        "wrong content type",
        "/v1/predict",
        json.dumps({"text": MARKER}).encode(),
        {"Content-Type": "text/plain"},
        415,
        "content type",
    ),
    ("body too large", "/v1/predict", b'{"text": "' + b"a" * (2 << 20) + b'"}', JSON, 413, "too large"),
    ("unknown model", "/v2/models/other/infer", json.dumps(infer_body([MARKER])).encode(), JSON, 404, "unknown model"),
    (
        "unknown version",
        "/v2/models/clinc-small/versions/7.0.0/infer",
        json.dumps(infer_body(["a"])).encode(),
        JSON,
        404,
        "no version",
    ),
    (
        "V2 wrong input name",
        "/v2/models/clinc-small/infer",
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
        JSON,
        400,
        "input named 'text'",
    ),
    (
        "V2 wrong datatype",
        "/v2/models/clinc-small/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(),
        JSON,
        400,
        "BYTES",
    ),
    (
        "V2 shape mismatch",
        "/v2/models/clinc-small/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}).encode(),
        JSON,
        400,
        "does not match",
    ),
    (
        "V2 unknown output",
        "/v2/models/clinc-small/infer",
        json.dumps(infer_body(["a"], outputs=[{"name": "logits"}])).encode(),
        JSON,
        400,
        "unknown output",
    ),
    (
        "V2 number as text",
        "/v2/models/clinc-small/infer",
        json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [5]}]}).encode(),
        JSON,
        400,
        "expected a string",
    ),
    (
        "V2 bad binary header",
        "/v2/models/clinc-small/infer",
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        400,
        "Inference-Header-Content-Length",
    ),
]


@pytest.mark.parametrize(
    "path, body, headers, status, reason", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_input_gets_a_clear_4xx_and_the_daemon_keeps_serving(daemon, path, body, headers, status, reason):
    got, _, answer = daemon.post(path, body, headers)
    assert got == status, answer
    assert set(answer) == {"error"} and reason in answer["error"]
    assert MARKER not in answer["error"]
    assert daemon.post("/v1/predict", {"text": TEXTS[0]})[0] == 200


def test_unknown_paths_and_methods_answer_json(daemon):
    status, _, body = daemon.get("/nope")
    assert status == 404 and "error" in body
    status, headers, body = daemon.request("DELETE", "/v1/predict")
    assert status == 405 and "error" in body and "POST" in headers.get("Allow", "")


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    return sock


def test_slow_and_vanishing_clients_do_not_block_others(daemon):
    body = json.dumps({"text": MARKER}).encode()
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow_headers = _raw(daemon.port)
    slow_headers.sendall(head[:20])  # headers trickle in, never finish
    slow_body = _raw(daemon.port)
    slow_body.sendall(head + body[:5])  # body stalls half-way
    for _ in range(3):  # gone mid-body / before the answer
        gone = _raw(daemon.port)
        gone.sendall(head + body[:3])
        gone.close()
        gone = _raw(daemon.port)
        gone.sendall(head + body)
        gone.close()
    results = []

    def client():
        for _ in range(5):
            results.append(daemon.post("/v1/predict", {"text": TEXTS[1]})[0])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 20
    slow_headers.sendall(head[20:] + body)  # the slow ones still get served
    assert slow_headers.recv(65536).startswith(b"HTTP/1.1 200")
    slow_body.sendall(body[5:])
    assert slow_body.recv(65536).startswith(b"HTTP/1.1 200")
    slow_headers.close()
    slow_body.close()


def test_a_client_that_never_sends_its_body_gets_408(tmp_path, small_bundle, build_key):
    home = store_with(tmp_path / "home", small_bundle, build_key)
    running = Daemon(home, env={"EDGE_RUNTIME_SERVER_BODY_TIMEOUT_S": "0.5"}).wait_ready()
    try:
        sock = _raw(running.port)
        sock.sendall(
            b'POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"te'
        )
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408") and b"not received within" in answer
        sock.close()
    finally:
        assert running.stop() == 0


# -- backpressure and deadlines ----------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(tmp_path, small_bundle, build_key):
    home = store_with(tmp_path / "home", small_bundle, build_key)
    running = Daemon(home, env={"EDGE_RUNTIME_BATCHING_MAX_QUEUE": "64"}).wait_ready()
    try:
        statuses, lock = [], threading.Lock()

        def client():
            got = running.post("/v1/predict", {"texts": [TEXTS[i % 5] for i in range(64)]})
            with lock:
                statuses.append((got[0], got[1].get("Retry-After"), got[2]))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert {s for s, _, _ in statuses} <= {200, 503} and len(statuses) == 8
        refused = [(retry, body) for s, retry, body in statuses if s == 503]
        assert refused, "8 concurrent requests of 64 texts cannot all fit a 64-text queue"
        assert all(retry == "1" and "queue is full" in body["error"] for retry, body in refused)
        assert any(s == 200 for s, _, _ in statuses)
        assert running.post("/v1/predict", {"text": TEXTS[0]})[0] == 200
        assert 'edge_runtime_rejected_total{reason="queue_full"}' in running.get("/metrics")[2].decode()
    finally:
        assert running.stop() == 0


def test_deadline_answers_504(tmp_path, small_bundle, build_key):
    home = store_with(tmp_path / "home", small_bundle, build_key)
    running = Daemon(home, env={"EDGE_RUNTIME_SERVER_REQUEST_TIMEOUT_MS": "1"}).wait_ready()
    try:
        status, _, body = running.post("/v1/predict", {"texts": [TEXTS[i % 5] * 4 for i in range(64)]})
        assert status == 504 and "deadline exceeded" in body["error"]
        assert running.get("/v2/health/live")[0] == 200
    finally:
        assert running.stop() == 0


# -- hot swap, drain, systemd notify ---------------------------------------------------------------------


def test_hot_swap_under_load_fails_no_request(home, small_bundle, build_key, tmp_path):
    Store(home).install(second_version(small_bundle, build_key, tmp_path))
    running = Daemon(home, log_dir=tmp_path).wait_ready()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def load(mine):
        while not stop.is_set():
            status, _, body = running.post("/v1/predict", {"text": TEXTS[len(mine) % 5]})
            mine.append((status, body.get("version") if isinstance(body, dict) else None))

    threads = [threading.Thread(target=load, args=(s,)) for s in seen]
    try:
        for thread in threads:
            thread.start()
        while sum(map(len, seen)) < 40:
            time.sleep(0.05)
        activated = cli("models", "activate", "clinc-small@0.2.0", home=home)
        assert activated.returncode == 0, activated.stderr
        running.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while not all(s and s[-1][1] == "0.2.0" for s in seen):
            assert time.monotonic() < deadline, "the daemon never switched to 0.2.0"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    answers = [answer for mine in seen for answer in mine]
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    for mine in seen:  # each client: old answers, then only new ones
        versions = [version for _, version in mine]
        first_new = versions.index("0.2.0")
        assert set(versions[:first_new]) == {"0.1.0"} and set(versions[first_new:]) == {"0.2.0"}
    assert running.get("/v2/models/clinc-small")[2]["versions"] == ["0.2.0"]
    assert 'version="0.2.0"' in running.get("/metrics")[2].decode()
    status, _, result = running.post("/v1/admin/reload", b"", {})
    assert status == 200 and result["result"] == "unchanged"
    assert cli("models", "rollback", home=home).returncode == 0
    status, _, result = running.post("/v1/admin/reload", b"", {})
    assert result["result"] == "swapped" and result["version"] == "0.1.0"
    assert running.stop() == 0


@pytest.fixture
def hybrid_daemon(daemon_home_factory, small_bundle, build_key, tmp_path):
    """start(device_id, **routing env): a daemon whose uplink reaches a real upstream worker running the same
    bundle, through a broker of the test's own, its uplink connected. The worker's home is tmp_path/upstream-home."""
    with contextlib.ExitStack() as stack:

        def start(device_id: str, env: dict):
            broker = stack.enter_context(mqtt_broker.Broker())
            worker = Upstream(
                store_with(tmp_path / "upstream-home", small_bundle, build_key), "clinc-small", broker.url
            )
            stack.callback(worker.close)
            worker.wait_ready()
            running = daemon_home_factory(
                env={"EDGE_RUNTIME_UPLINK_BROKER": broker.url, "EDGE_RUNTIME_UPLINK_DEVICE_ID": device_id, **env}
            )
            wait_for(lambda: running.get("/v1/status")[2]["uplink"]["connected"], 30, "the daemon's uplink")
            return running

        yield start


def test_status_counts_what_the_serving_model_routed_and_how_often_the_upstream_agreed(hybrid_daemon):
    """The live counters the update agent's probation reads: every text the model routed, the escalated ones,
    and the upstream answers that named the device's own label (a real worker on the same bundle)."""
    from edge_runtime import load

    running = hybrid_daemon(
        "dev-live",
        {
            "EDGE_RUNTIME_UPLINK_DEADLINE_MS": "60000",  # wait for each answer: none deferred
            "EDGE_RUNTIME_SERVER_REQUEST_TIMEOUT_MS": "60000",
            "EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "1.0",  # escalate every text
        },
    )
    answered = running.post("/v1/predict", {"texts": TEXTS})[2]["predictions"]
    assert [p["decision"] for p in answered] == ["escalate"] * len(TEXTS), answered
    own = [p.label for p in load(root=running.home).predict(TEXTS)]  # the device model's labels
    status = running.get("/v1/status")[2]
    live = status["model"]["live"]
    sent = status["uplink"]["stats"]
    assert sent["published"] == len(TEXTS) and sent["bytes_published"] > sum(len(t.encode()) for t in TEXTS)
    agreeing = sum(mine == p["label"] for mine, p in zip(own, answered))
    assert live["texts"] == live["escalated"] == live["upstream_answers"] == len(TEXTS), live
    assert live["agreed"] == agreeing and live["agreement"] == agreeing / len(TEXTS), (live, own, answered)
    assert live["escalation_rate"] == 1.0


def test_samples_go_upstream_while_the_device_answers_and_measure_its_agreement(hybrid_daemon, tmp_path):
    """routing.sample_rate = 1 with thresholds that keep every text local: each answer is the device's own, and
    each text also reaches the upstream as a sample, whose answers count as the model's sample agreement."""
    from edge_runtime import load

    running = hybrid_daemon(
        "dev-sample",
        {
            "EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "0",
            "EDGE_RUNTIME_ROUTING_MIN_MARGIN": "0",
            "EDGE_RUNTIME_ROUTING_MAX_ENTROPY": "1",
            "EDGE_RUNTIME_ROUTING_SAMPLE_RATE": "1",
        },
    )
    answered = running.post("/v1/predict", {"texts": TEXTS})[2]["predictions"]
    assert [(p["decision"], p["reason"]) for p in answered] == [("local", "confident")] * len(TEXTS)
    own = [p.label for p in load(root=running.home).predict(TEXTS)]
    assert [p["label"] for p in answered] == own  # the device's answers, not the upstream's
    wait_for(lambda: running.get("/v1/status")[2]["model"]["live"]["samples"] == len(TEXTS), 30, "samples")
    status = running.get("/v1/status")[2]
    live, sent = status["model"]["live"], status["uplink"]["stats"]
    assert live["escalated"] == 0 and live["upstream_answers"] == 0 and sent["published"] == len(TEXTS)
    upstream_labels = [p.label for p in load(root=tmp_path / "upstream-home").predict(TEXTS)]
    agreeing = sum(a == b for a, b in zip(own, upstream_labels))
    assert live["sample_agreement"] == agreeing / len(TEXTS), (live, own, upstream_labels)


def test_sigterm_drains_in_flight_requests_then_exits_0(daemon_home_factory, small_bundle, build_key, tmp_path):
    """Requests held by a paused component: the upstream worker (a real `edge-runtime upstream` process) is
    SIGSTOPped, so escalated requests wait for its answer inside the daemon. SIGTERM arrives while they provably
    wait (committed to the outbox and published, unanswered, their clients still waiting); the worker resumes
    only after the daemon has logged that it is draining, and the requests are answered by it, not deferred."""
    if not mqtt_broker.available():
        pytest.skip("mosquitto is not installed")
    broker = mqtt_broker.Broker().start()
    upstream_home = store_with(tmp_path / "upstream-home", small_bundle, build_key)
    worker = Upstream(upstream_home, "clinc-small", broker.url)
    try:
        worker.wait_ready()
        running = daemon_home_factory(
            env={
                "EDGE_RUNTIME_UPLINK_BROKER": broker.url,
                "EDGE_RUNTIME_UPLINK_DEVICE_ID": "dev-drain",
                "EDGE_RUNTIME_UPLINK_DEADLINE_MS": "120000",  # wait for the upstream answer, never defer
                "EDGE_RUNTIME_SERVER_REQUEST_TIMEOUT_MS": "120000",
                "EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "1.0",  # escalate every text
            }
        )
        wait_for(lambda: running.get("/v1/status")[2]["uplink"]["connected"], 30, "the daemon's uplink")
        worker.process.send_signal(signal.SIGSTOP)
        results = {}

        def client(text):
            results[text] = running.post("/v1/predict", {"text": text})

        threads = [threading.Thread(target=client, args=(text,)) for text in TEXTS[:3]]
        for thread in threads:
            thread.start()

        def in_flight() -> dict:
            status = running.get("/v1/status")[2]
            return {"pending": status["outbox"]["pending"], **status["uplink"]["stats"]}

        def held() -> bool:  # the status's outbox counts may be up to a second old
            evidence = in_flight()
            assert evidence.get("answered", 0) == 0, evidence  # the paused worker answers nothing
            return evidence.get("published", 0) >= 3 and evidence["pending"] == 3

        wait_for(held, 30, "three escalations committed to the outbox and published")
        assert all(thread.is_alive() for thread in threads) and results == {}  # no client has an answer yet
        sigterm_at = time.time()
        running.process.send_signal(signal.SIGTERM)
        wait_for(lambda: '"msg": "stopping: draining in-flight requests"' in running.log(), 30, "the drain")
        assert running.process.poll() is None and results == {}  # draining, still holding the three
        worker.process.send_signal(signal.SIGCONT)
        for thread in threads:
            thread.join(120)
        assert running.process.wait(60) == 0
    finally:
        worker.close()
        broker.close()
    assert sorted(results) == sorted(TEXTS[:3])
    for status, _, body in results.values():
        assert status == 200, body
        assert body["decision"] == "escalate" and body["request_id"], body  # the upstream's answer, not deferred
    log = running.log()
    assert log.index('"msg": "stopping: draining in-flight requests"') < log.index('"msg": "stopped"')
    with Outbox(running.home / "state" / "outbox.sqlite") as outbox:
        answers = {body["request_id"]: outbox.answer(body["request_id"]) for _, _, body in results.values()}
    for _, _, body in results.values():
        answer = answers[body["request_id"]]
        # the worker's own clock stamps each answer: made after the SIGTERM, and it is what the client got
        assert answer is not None and answer["answered_at"] > sigterm_at, answer
        assert body["label"] == answer["answer"]["label"]


@pytest.fixture
def daemon_home_factory(tmp_path, small_bundle, build_key):
    started = []

    def start(*args, env=None):
        home = store_with(tmp_path / f"home{len(started)}", small_bundle, build_key)
        running = Daemon(home, *args, env=env)
        running.home = home
        started.append(running)
        return running.wait_ready()

    yield start
    for running in started:
        running.stop()


def test_sd_notify_ready_watchdog_reloading_stopping(daemon_home_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(60)
    running = daemon_home_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    messages = []

    def until(field: str) -> None:
        while field not in messages:
            messages.extend(listener.recv(4096).decode().split("\n"))

    until("READY=1")
    assert any(m.startswith("STATUS=serving clinc-small@0.1.0") for m in messages)
    messages.clear()
    until("WATCHDOG=1")
    running.process.send_signal(signal.SIGHUP)
    until("RELOADING=1")
    assert any(m.startswith("MONOTONIC_USEC=") for m in messages)
    messages.clear()
    until("READY=1")
    running.process.send_signal(signal.SIGTERM)
    until("STOPPING=1")
    assert running.process.wait(60) == 0
    listener.close()


def test_notifier_speaks_to_an_abstract_socket():
    from edge_runtime.server.notify import Notifier

    name = f"edge-runtime-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
    assert notifier.watchdog_s == 1.5
    assert notifier.ready("serving x")
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving x"
    assert notifier.stopping() and listener.recv(4096).startswith(b"STOPPING=1")
    notifier.close()
    listener.close()
    assert not Notifier({}).ready("no systemd")  # not under systemd: a no-op


# -- uplink, configuration errors -------------------------------------------------------------------------


def test_escalations_go_upstream_when_a_broker_is_configured(daemon_home_factory):
    if not mqtt_broker.available():
        pytest.skip("mosquitto is not installed")
    from edge_runtime.mqtt import BrokerConfig
    from edge_runtime.worker import Worker

    with (
        mqtt_broker.Broker() as broker,
        Worker(BrokerConfig.from_url(broker.url), lambda request: {"label": "upstream_label"}) as worker,
    ):
        worker.wait_ready(10)
        running = daemon_home_factory(
            env={
                "EDGE_RUNTIME_UPLINK_BROKER": broker.url,
                "EDGE_RUNTIME_UPLINK_DEVICE_ID": "dev-test",
                "EDGE_RUNTIME_UPLINK_DEADLINE_MS": "10000",
            }
        )
        deadline = time.monotonic() + 30
        while not running.get("/v1/status")[2]["uplink"]["connected"]:
            assert time.monotonic() < deadline, "the uplink never connected"
            time.sleep(0.05)
        status, _, body = running.post("/v1/predict", {"texts": TEXTS})
        assert status == 200
        escalated = [p for p in body["predictions"] if p["decision"] == "escalate"]
        assert escalated and all(p["label"] == "upstream_label" and p["request_id"] for p in escalated)
        assert all(p["decision"] in ("local", "escalate") for p in body["predictions"])


def test_serve_refuses_a_bad_config_and_a_busy_port(home, tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text("[server]\nport = 70000\n")
    done = cli("serve", "--config", str(bad), home=home)
    assert done.returncode == 1 and "config.toml: server.port: must be an integer 1-65535" in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = cli("serve", "--port", str(busy.getsockname()[1]), home=home)
    assert done.returncode == 1 and "address already in use" in done.stderr
    done = cli("serve", home=tmp_path / "empty-home")
    assert done.returncode == 1 and "no active model" in done.stderr


def test_a_tagger_that_cannot_be_loaded_keeps_escalations_local_until_the_operator_opts_out(home, tmp_path):
    """Fail closed: names have no checksum, so without the configured tagger nothing leaves the device. The
    daemon still serves local answers, says why in /v1/status and /metrics, and `require_tagger = false` is
    the operator's explicit choice to send with the scanner alone."""
    from edge_runtime.outbox import Outbox

    not_a_tagger = "clinc-small is a text-classification model, not a token-classification tagger"
    escalate_all = {"EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "1.0"}
    text = f"this is Rosalind Featherstonehaugh, my card was stolen {MARKER}"
    running = Daemon(home, tagger="clinc-small", env=escalate_all, log_dir=tmp_path).wait_ready()
    try:
        privacy = running.get("/v1/status")[2]["privacy"]
        assert privacy["tagger"] is None and privacy["escalations_allowed"] is False, privacy
        assert privacy["unavailable"] == "PII tagger clinc-small is not loaded", privacy
        code, _, body = running.post("/v1/predict", {"texts": [text, text]})
        assert code == 200, body
        for prediction in body["predictions"]:
            assert prediction["decision"] == "local", prediction
            assert prediction["reason"].startswith("privacy_unavailable:min_confidence"), prediction
        metrics = running.get("/metrics")[2].decode()
        assert "edge_runtime_privacy_available 0.0" in metrics
        assert 'edge_runtime_kept_local_total{reason="privacy_unavailable"} 2.0' in metrics
        assert running.get("/v1/status")[2]["privacy"]["kept_local"] == {"privacy_unavailable": 2.0}
    finally:
        assert running.stop() == 0
    with Outbox(home / "state" / "outbox.sqlite") as outbox:
        assert outbox.summary()["pending"] == 0, "nothing may have been queued to leave"
    warnings = [json.loads(line) for line in running.log().splitlines() if not_a_tagger in line]
    assert [(entry["level"], entry["msg"]) for entry in warnings] == [
        ("warning", f"PII tagger clinc-small not loaded: {not_a_tagger}")
    ], running.log()
    assert "Traceback" not in running.log() and MARKER not in running.log()

    opted_out = {**escalate_all, "EDGE_RUNTIME_PRIVACY_REQUIRE_TAGGER": "false"}
    running = Daemon(home, tagger="clinc-small", env=opted_out, log_dir=tmp_path).wait_ready()
    try:
        assert running.get("/v1/status")[2]["privacy"]["escalations_allowed"] is True
        assert "edge_runtime_privacy_available 1.0" in running.get("/metrics")[2].decode()
        code, _, body = running.post("/v1/predict", {"text": text})
        assert code == 200 and body["decision"] == "deferred", body
    finally:
        assert running.stop() == 0
    assert "names and addresses are not redacted (require_tagger = false)" in running.log()


def test_reload_loads_a_tagger_installed_after_start(tmp_path, small_bundle, build_key, pii_tagger_bundle):
    """`make demo` starts the daemon before `build default` installs the tagger: a reload picks it up."""
    from edge_runtime.outbox import Outbox

    home = store_with(tmp_path / "home", small_bundle, build_key)
    escalate_all = {"EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "1.0"}
    running = Daemon(home, tagger="pii-tagger-minilm", env=escalate_all).wait_ready()
    text = "this is Rosalind Featherstonehaugh, my card was stolen"
    try:
        assert running.get("/v1/status")[2]["privacy"]["tagger"] is None
        code, _, body = running.post("/v1/predict", {"text": text})  # not installed yet: stays on the device
        assert code == 200 and body["decision"] == "local", body
        assert body["reason"].startswith("privacy_unavailable:"), body
        Store(home).install(pii_tagger_bundle)
        code, _, reloaded = running.post("/v1/admin/reload", {})
        assert code == 200 and reloaded["result"] == "unchanged", reloaded  # the same classifier
        assert reloaded["tagger"] == _tagger_ref(pii_tagger_bundle)
        privacy = running.get("/v1/status")[2]["privacy"]
        assert privacy["tagger"] == _tagger_ref(pii_tagger_bundle) and privacy["escalations_allowed"] is True
        code, _, body = running.post("/v1/predict", {"text": text})
        assert code == 200 and body["decision"] == "deferred", body
    finally:
        assert running.stop() == 0
    with Outbox(home / "state" / "outbox.sqlite") as outbox:
        sent = outbox.payload(body["request_id"]).decode()
    assert "<PERSON_1>" in sent and "Featherstonehaugh" not in sent


def _tagger_ref(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return f"{manifest['name']}@{manifest['version']}"


def test_daemon_redacts_names_with_the_installed_tagger(tmp_path, small_bundle, build_key, pii_tagger_bundle):
    """The shipped config loads the PII tagger by name, lazily: verified at start, its session created by the
    first escalation and dropped after [privacy] tagger_idle_unload_s unused, then created again by the next
    one. Escalations waiting in the outbox hold no name, before and after the unload."""
    from edge_runtime.outbox import Outbox

    home = store_with(tmp_path / "home", small_bundle, build_key)
    Store(home).install(pii_tagger_bundle)
    env = {"EDGE_RUNTIME_ROUTING_MIN_CONFIDENCE": "1.0", "EDGE_RUNTIME_PRIVACY_TAGGER_IDLE_UNLOAD_S": "2"}
    running = Daemon(home, tagger=None, env=env).wait_ready()  # escalate all
    bodies = []
    try:
        privacy = running.get("/v1/status")[2]["privacy"]
        assert privacy["tagger"] == _tagger_ref(pii_tagger_bundle) and privacy["escalations_allowed"] is True
        assert privacy["tagger_loaded"] is False and privacy["tagger_loads"] == 0  # nothing escalated yet
        assert "edge_runtime_tagger_loaded 0.0" in running.get("/metrics")[2].decode()
        for name in ("Rosalind Featherstonehaugh", "Ottoline Wolstenholme"):
            text = f"hi it's {name}, my card was stolen {MARKER}"
            code, _, body = running.post("/v1/predict", {"text": text})
            assert code == 200 and body["decision"] == "deferred", body
            bodies.append((name, body["request_id"]))
            assert running.get("/v1/status")[2]["privacy"]["tagger_loads"] == len(bodies)
            deadline = time.monotonic() + 60
            while running.get("/v1/status")[2]["privacy"]["tagger_loaded"]:  # idle for 2 s: unloaded
                assert time.monotonic() < deadline, "the idle tagger was never unloaded"
                time.sleep(0.2)
    finally:
        assert running.stop() == 0
    with Outbox(home / "state" / "outbox.sqlite") as outbox:
        for name, request_id in bodies:
            sent = outbox.payload(request_id).decode()
            assert "<PERSON_1>" in sent and not any(word in sent for word in name.split()), sent
    assert MARKER not in running.log() and "Featherstonehaugh" not in running.log()
    assert "unloaded after 2 s idle" in running.log()


def test_two_batch_workers_give_every_client_the_answers_to_its_own_texts(home, small_bundle, tmp_path):
    """[batching] workers = 2: two inference runs at once. Each of 8 clients sends texts of its own; every
    answer must be its text's (a mix-up between concurrent batches scrambles labels: agreement near 1 in
    11), as the model answers it alone, allowing the near-ties that dynamic INT8 flips with the batch."""
    import edge_runtime
    from edge_runtime.datasets import read_jsonl

    from support.small_bundle import datasets_dir

    texts = read_jsonl(datasets_dir() / "clinc150" / "val.jsonl").texts[::23][:120]
    model = edge_runtime.load(small_bundle)
    alone = {text: model.predict([text])[0] for text in texts}
    running = Daemon(home, env={"EDGE_RUNTIME_BATCHING_WORKERS": "2"}, log_dir=tmp_path).wait_ready()
    answers: dict[str, str] = {}

    def client(mine):
        for text in mine:
            status, _, answer = running.post("/v1/predict", {"text": text})
            assert status == 200, answer
            answers[text] = answer["top_k"][0]["label"]

    try:
        threads = [threading.Thread(target=client, args=(texts[n::8],)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert running.get("/v1/status")[2]["queue"]["batches"] < len(texts)  # some runs held several texts
    finally:
        running.stop()
    assert len(answers) == len(texts)
    agree = sum(answers[text] == alone[text].top_k[0][0] for text in texts)
    assert agree >= 0.85 * len(texts)
    # Dynamic INT8 flips near-ties with the batch, sometimes past the third label on this small, unsure model
    # (CI saw it once); a scrambled answer, another text's label, lands in an unrelated text's top 5 about one
    # time in 30.
    strays = [text for text in texts if answers[text] not in [label for label, _ in alone[text].top_k[:5]]]
    assert len(strays) <= 1, [(text, answers[text], alone[text].top_k) for text in strays]
