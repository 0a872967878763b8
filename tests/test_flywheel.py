"""The flywheel dataset (edge_runtime/flywheel.py) on real parts: `edge-runtime upstream --dataset DIR` in a
subprocess answering devices through a real mosquitto with a tiny real bundle, real files read back, kill -9 and a
real full disk (a 16 KB tmpfs; root only, else skipped) where they matter, and `edge-runtime flywheel export` run
as a process. No stand-ins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime import escalation, flywheel
from edge_runtime.datasets import read_jsonl
from edge_runtime.mqtt import BrokerConfig
from edge_runtime.outbox import Outbox
from edge_runtime.uplink import Uplink

from support import REPO, bundle_factory, pythonpath
from support.upstream import Upstream, wait_for

FAST = dict(backoff_min_s=0.05, backoff_max_s=0.5, keepalive=5)
DEVICE_BUNDLE = ("clinc150-minilm-int8", "1.0.0")
# What devices send: already redacted (placeholders), with odd spacing and Unicode the dataset must keep as is
# ("cafe\u0301" is NFD: NFC would make it one code point).
TEXTS = [
    "call <PERSON_1> about the invoice",
    "  book a table   for two at\tcafe\u0301 Flore  ",
    "send <EMAIL_1> the ﬁle from <ADDRESS_1>",
    "what is my account balance",
]


def start_upstream(home: Path, broker, dataset: Path, *args: str, **kwargs) -> Upstream:
    return Upstream(home, str(home / "tiny"), broker.url, "--dataset", str(dataset), *args, **kwargs).wait_ready()


def uplink(broker, tmp_path, device_id: str) -> Uplink:
    return Uplink(
        device_id,
        BrokerConfig.from_url(broker.url, **FAST),
        Outbox(tmp_path / f"{device_id}.sqlite"),
        bundle=DEVICE_BUNDLE,
    )


def device_prediction(k: int) -> dict:
    return {
        "label": "translate",
        "score": 0.41,
        "top_k": [{"label": "translate", "score": 0.41}, {"label": f"label{k}", "score": 0.3}],
        "margin": 0.11,
        "entropy": 0.62,
        **({"ood": 0.83} if k % 2 == 0 else {}),  # a device bundle with and one without the out-of-scope score
    }


def records(directory: Path) -> tuple[list[dict], Counter]:
    stats = Counter()
    return list(flywheel.read_records(directory, stats)), stats


def run_cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    home_env = {"EDGE_RUNTIME_HOME": str(home)} if home else {}
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath(), **home_env},
        cwd=REPO,
        timeout=120,
    )


# --------------------------------------------------------------------------------------------- the worker


@pytest.mark.mqtt
def test_worker_keeps_each_answered_escalation_with_exactly_the_text_received(tiny_home, broker, tmp_path):
    dataset = tmp_path / "dataset"
    upstream = start_upstream(tiny_home, broker, dataset)
    try:
        expected = bundle_factory.predict(tiny_home / "tiny", TEXTS)
        with uplink(broker, tmp_path, "dev-keep") as device:
            device.wait_ready(10)
            answers = [
                device.escalate(text, device_prediction(k), deadline_s=30, reason="min_confidence")
                for k, text in enumerate(TEXTS)
            ]
        assert [answer["answer"]["label"] for answer in answers] == expected
        code, stats = upstream.stop()
    finally:
        upstream.close()
    assert code == 0 and stats["answered"] == len(TEXTS)
    assert stats["dataset"]["written"] == len(TEXTS) and "write_errors" not in stats["dataset"]
    kept, read = records(dataset)
    assert read["torn"] == 0 and read["malformed"] == 0
    assert [record["text"] for record in kept] == TEXTS  # byte for byte: no normalising, no trimming
    for record, answer, k in zip(kept, answers, range(len(TEXTS))):
        assert record["device"] == "dev-keep" and record["request_id"] == answer["id"]
        assert record["upstream"]["label"] == answer["answer"]["label"]
        assert record["upstream"]["score"] == pytest.approx(answer["answer"]["score"])
        assert record["upstream"]["top_k"] == answer["answer"]["top_k"] and len(record["upstream"]["top_k"]) == 2
        assert record["upstream"]["bundle"] == {"name": "tiny-upstream", "version": "1.0.0"}
        assert record["device_prediction"] == device_prediction(k)
        assert record["reason"] == "min_confidence"
        assert record["bundle"] == dict(zip(("name", "version"), DEVICE_BUNDLE))
        assert record["received_at"].endswith("Z") and record["received_at"][:4] == time.strftime("%Y", time.gmtime())
    assert len({record["id"] for record in kept}) == len(kept)
    # only the fields of the schema: nothing else of the request (its created_at, its own device field) is kept
    assert {key for record in kept for key in record} == {
        "schema", "id", "received_at", "device", "request_id", "text", "device_prediction", "reason", "bundle",
        "upstream",
    }  # fmt: skip


@pytest.mark.mqtt
def test_dataset_files_rotate_by_size_and_every_record_is_read_back(tiny_home, broker, tmp_path):
    dataset = tmp_path / "dataset"
    max_bytes = 3000
    upstream = start_upstream(tiny_home, broker, dataset, "--dataset-max-mb", str(max_bytes / 1024 / 1024))
    texts = [f"question {k}: " + "why does the pump on line <ADDRESS_1> stop " * 8 for k in range(16)]
    try:
        with uplink(broker, tmp_path, "dev-rotate") as device:
            device.wait_ready(10)
            answers = [device.escalate(text, deadline_s=30) for text in texts]
        assert all(answer and answer["error"] is None for answer in answers)
        code, stats = upstream.stop()
    finally:
        upstream.close()
    assert code == 0 and stats["dataset"]["written"] == len(texts)
    files = flywheel.dataset_files(dataset)
    sizes = [path.stat().st_size for path in files]
    assert len(files) >= 4 and stats["dataset"]["files"] == len(files)
    assert all(0 < size <= max_bytes for size in sizes), sizes
    numbers = [int(path.stem.rsplit("-", 1)[1]) for path in files]
    assert numbers == list(range(1, len(files) + 1))
    kept, read = records(dataset)
    assert sorted(record["text"] for record in kept) == sorted(texts) and read["files"] == len(files)


def publish_raw(broker, device_id: str, messages: list[tuple[bytes, bytes]]) -> dict[bytes, dict]:
    """Publishes (correlation, payload) on the device's request topic as a hostile peer; its answers by
    correlation data."""
    got: dict[bytes, dict] = {}
    peer = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"peer-{device_id}", protocol=paho.MQTTv5)
    subscribed = []
    peer.on_message = lambda c, u, m: got.__setitem__(m.properties.CorrelationData, escalation.decode_answer(m.payload))
    peer.on_subscribe = lambda c, u, mid, codes, p: subscribed.extend(codes)
    peer.connect("127.0.0.1", broker.port)
    peer.subscribe(escalation.answer_topic(device_id), qos=1)
    peer.loop_start()
    try:
        wait_for(lambda: subscribed, 10, "the peer's subscription")
        for correlation, payload in messages:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = escalation.answer_topic(device_id)
            props.CorrelationData = correlation
            peer.publish(escalation.escalation_topic(device_id), payload, qos=1, properties=props).wait_for_publish(10)
        wait_for(lambda: len(got) >= len(messages), 20, "the answers")
    finally:
        peer.loop_stop()
        peer.disconnect()
    return got


@pytest.mark.kernels  # what is dropped is what the PII scanner finds
@pytest.mark.mqtt
def test_malformed_escalations_are_answered_but_never_written(tiny_home, broker, tmp_path):
    dataset = tmp_path / "dataset"
    upstream = start_upstream(tiny_home, broker, dataset)
    valid = escalation.build_request("play some jazz music", device_id="dev-h", bundle=DEVICE_BUNDLE, reason="r")

    def request(**fields) -> bytes:
        return json.dumps({**valid, "id": fields.pop("id"), **fields}).encode()

    bad = {
        b"long": request(id="long", text="play some jazz " * 400),  # 6,000 characters: over the cap
        b"other-device": request(id="other-device", device="dev-victim"),
        b"reason": request(id="reason", reason=["not", "a", "string"]),
        b"bundle": request(id="bundle", bundle="tiny"),
        b"score": request(id="score", prediction={"label": "a", "score": 7.5, "top_k": [{"label": "a", "score": 7.5}]}),
        b"nul": request(id="nul", text="play\x00some jazz"),
        b"pii": request(id="pii", text="mail the receipt to jane.doe@example.com please"),
        b"card": request(id="card", text="my card 4111 1111 1111 1111 was charged twice"),
    }
    try:
        # the good one sent twice (a device re-send): answered from the cache the second time, kept once
        good = [(b"good", request(id="good")), (b"good-again", request(id="good"))]
        answers = publish_raw(broker, "dev-h", [*bad.items(), *good])
        code, stats = upstream.stop()
    finally:
        upstream.close()
    # every one was answered (the device is not punished for what the dataset does not take)
    assert all(answers[key]["error"] is None and answers[key]["answer"]["label"] for key in answers), answers
    assert len(answers) == len(bad) + 2 and answers[b"good"] == answers[b"good-again"]
    assert code == 0 and stats["answered"] == len(bad) + 1 and stats["cache_hits"] == 1
    assert stats["dataset_rejected"] == 6 and stats["dataset_pii"] == 2
    assert stats["dataset"]["written"] == 1
    kept, read = records(dataset)
    assert [record["request_id"] for record in kept] == ["good"] and read["malformed"] == 0
    raw = b"".join(path.read_bytes() for path in flywheel.dataset_files(dataset))
    assert b"jane.doe" not in raw and b"4111" not in raw and b"dev-victim" not in raw
    assert "jane.doe" not in upstream.stderr() and "Traceback" not in upstream.stderr()  # reasons logged, not text


@pytest.mark.mqtt
def test_a_worker_killed_mid_write_leaves_a_dataset_that_reads_and_exports(tiny_home, broker, tmp_path):
    dataset = tmp_path / "dataset"
    upstream = start_upstream(tiny_home, broker, dataset)
    sent: list[str] = []
    try:
        with uplink(broker, tmp_path, "dev-kill") as device:
            device.wait_ready(10)
            for k in range(400):
                text = f"how do i reset the router {k} " + "please " * (k % 7)
                device.submit(text)
                sent.append(text)

            def lines_written() -> int:
                return sum(path.read_bytes().count(b"\n") for path in dataset.glob("escalations-*.jsonl"))

            wait_for(lambda: lines_written() >= 30, 60, "30 records on disk")
            upstream.process.send_signal(signal.SIGKILL)  # answers are streaming and the writer is busy
            upstream.process.wait(30)
    finally:
        upstream.close()
    assert upstream.process.returncode == -signal.SIGKILL
    before, read = records(dataset)
    assert read["malformed"] == 0 and 30 <= len(before) < 400
    assert all(record["text"] in sent for record in before)
    # A write() on a local file system is not cut by a signal, so a crash tears a line only when the machine
    # stops mid-write (power loss): cut the last record of the newest file in half as such a stop would.
    newest = flywheel.dataset_files(dataset)[-1]
    data = newest.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    with open(newest, "r+b") as handle:
        handle.truncate(last + (len(data) - last) // 2)
        handle.flush()
        os.fsync(handle.fileno())
    after, read = records(dataset)
    assert read["torn"] == 1 and read["malformed"] == 0 and after == before[:-1]
    # a restarted worker writes a new file next to the torn one; the export reads both
    restarted = start_upstream(tiny_home, broker, dataset, stderr_name="restarted.stderr")
    try:
        with uplink(broker, tmp_path, "dev-later") as device:
            device.wait_ready(10)
            assert device.escalate("what is the weather in paris", deadline_s=30)["error"] is None
        code, stats = restarted.stop()
    finally:
        restarted.close()
    assert code == 0 and stats["dataset"]["written"] == 1
    assert len(flywheel.dataset_files(dataset)) >= 2 and flywheel.dataset_files(dataset)[-1] != newest
    out = tmp_path / "train.jsonl"
    result = run_cli("flywheel", "export", str(dataset), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["torn"] == 1 and summary["read"] == len(before)  # the torn one out, the new one in
    assert summary["duplicates"] == 0 and summary["pii"] == 0
    exported = read_jsonl(out)
    assert "what is the weather in paris" in exported.texts and len(exported) == summary["written"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 KB file system (tmpfs): the worker's dataset fills it up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.mqtt
def test_a_full_disk_costs_records_not_answers(tiny_home, broker, tmp_path, small_disk):
    dataset = small_disk / "dataset"
    upstream = start_upstream(tiny_home, broker, dataset)
    texts = [f"my order {k} has not arrived, where is it " + "still waiting " * 6 for k in range(60)]
    try:
        with uplink(broker, tmp_path, "dev-full") as device:
            device.wait_ready(10)
            answers = [device.escalate(text, deadline_s=30) for text in texts]
        assert all(answer and answer["error"] is None for answer in answers)
        assert upstream.process.poll() is None
        code, stats = upstream.stop()
    finally:
        upstream.close()
    assert code == 0 and stats["answered"] == len(texts)
    written, failed = stats["dataset"]["written"], stats["dataset"]["write_errors"]
    assert written >= 1 and failed >= 1 and written + failed == len(texts)
    assert "No space left on device" in upstream.stderr() and "not written" in upstream.stderr()
    kept, read = records(dataset)
    # the failed writes were cut back off the file: whole lines only, exactly the ones counted as written
    assert len(kept) == written and read["torn"] == 0 and read["malformed"] == 0
    order = {text: k for k, text in enumerate(texts)}
    kept_order = [order[record["text"]] for record in kept]
    assert kept_order == sorted(set(kept_order)) and kept_order[0] == 0


def test_upstream_refuses_a_dataset_directory_it_cannot_make(tiny_home, tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a directory")
    under_a_file = str(taken / "dataset")
    result = run_cli(
        "upstream", "--bundle", str(tiny_home / "tiny"), "--broker", "mqtt://127.0.0.1:9", "--dataset", under_a_file,
        home=tiny_home,
    )  # fmt: skip
    assert result.returncode == 1 and "--dataset" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    bad_size = run_cli("upstream", "--bundle", "x", "--dataset", str(tmp_path), "--dataset-max-mb", "0")
    assert bad_size.returncode == 2 and "--dataset-max-mb" in bad_size.stderr


# --------------------------------------------------------------------------------------------- the export


def write_dataset(directory: Path, rows: list[tuple[str, str, float]], max_bytes: int = 10**9) -> None:
    """(text, upstream label, upstream score) as the worker would keep them (a PII-holding text too, as a worker
    of an earlier release or a scanner that missed it at the time would have), through the real writer."""
    writer = flywheel.DatasetWriter(directory, max_bytes=max_bytes)
    for k, (text, label, score) in enumerate(rows):
        record = {
            "schema": flywheel.SCHEMA,
            "id": f"record-{k:03d}",
            "received_at": f"2026-12-02T03:{k // 60:02d}:{k % 60:02d}.000000Z",
            "device": "dev-x",
            "request_id": f"request-{k}",
            "text": text,
            "device_prediction": None,
            "reason": "min_confidence",
            "bundle": {"name": "device", "version": "1.0.0"},
            "upstream": {
                "label": label,
                "score": score,
                "top_k": [{"label": label, "score": score}, {"label": "oos", "score": round(1 - score, 6) / 2}],
                "combined": False,
                "bundle": {"name": "big", "version": "2.0.0"},
            },
        }
        assert writer.append(flywheel.check_record(record))
    assert writer.flush()
    writer.close()
    assert writer.stats["written"] == len(rows)


def test_export_dedups_filters_caps_and_keeps_placeholders(tmp_path):
    dataset = tmp_path / "dataset"
    rows = [
        ("Call <PERSON_1> tomorrow", "call", 0.90),
        ("call   <PERSON_1>  TOMORROW", "call", 0.95),  # the same text normalised: the later one wins
        ("ｃａｌｌ <PERSON_1> tomorrow", "call", 0.97),  # full-width: NFKC makes it the same again
        ("call <PERSON_2> tomorrow", "call", 0.92),  # another placeholder: another text
        ("call <person_1> tomorrow", "call", 0.93),  # not a placeholder (lower case): yet another text
        ("play jazz", "music", 0.40),  # under --min-confidence
        ("play rock", "music", 0.80),
        ("play pop", "music", 0.85),
        ("play blues", "music", 0.99),  # music: capped at 2, the most confident kept
        ("what is the time", "time", 0.70),
    ]
    write_dataset(dataset, rows, max_bytes=900)  # several files: the export reads every rotation
    assert len(flywheel.dataset_files(dataset)) >= 3
    out = tmp_path / "out" / "train.jsonl"
    result = run_cli(
        "flywheel", "export", str(dataset), "--out", str(out), "--min-confidence", "0.5", "--max-per-label", "2",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "wrote" in result.stderr and "wrote" not in result.stdout  # progress on stderr, the JSON alone on stdout
    assert summary["read"] == len(rows) and summary["files"] == len(flywheel.dataset_files(dataset))
    assert summary["low_confidence"] == 1 and summary["duplicates"] == 2 and summary["capped"] == 2
    assert summary["torn"] == 0 and summary["malformed"] == 0 and summary["pii"] == 0
    assert summary["written"] == 5 and summary["labels"] == {"call": 2, "music": 2, "time": 1}
    assert summary["teachers"] == ["big@2.0.0"]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_text = {line["text"]: line for line in lines}
    # call: 3 distinct texts capped to the 2 most confident; the kept duplicate is the latest as received
    assert set(by_text) == {
        "ｃａｌｌ <PERSON_1> tomorrow", "call <person_1> tomorrow", "play blues", "play pop", "what is the time",
    }  # fmt: skip
    assert by_text["ｃａｌｌ <PERSON_1> tomorrow"]["teacher_probs"] == {"call": 0.97, "oos": pytest.approx(0.015)}
    assert [line["text"] for line in lines][:2] == ["ｃａｌｌ <PERSON_1> tomorrow", "call <person_1> tomorrow"]
    assert by_text["play blues"]["label"] == "music" and by_text["play blues"]["flywheel_id"] == "record-008"
    # the project's reader takes it as training data
    split = read_jsonl(out)
    assert len(split) == 5 and set(split.labels) == {"call", "music", "time"}
    assert not list(out.parent.glob(".*.tmp"))  # written through a temp file, renamed


def test_normalise_folds_text_but_not_placeholders():
    assert flywheel.normalise("  Hello\u00a0\tWORLD  ") == "hello world"
    assert flywheel.normalise("Stra\u00dfe <ADDRESS_1>") == "strasse <ADDRESS_1>"
    assert flywheel.normalise("ﬁle<EMAIL_1>now") == "file <EMAIL_1> now"
    assert flywheel.normalise("<PERSON_1>") != flywheel.normalise("<PERSON_2>")
    assert flywheel.normalise("<PERSON_1>") != flywheel.normalise("<person_1>")


@pytest.mark.kernels  # what is dropped is what the PII scanner finds
def test_export_drops_and_counts_text_holding_personal_data(tmp_path):
    dataset = tmp_path / "dataset"
    rows = [
        ("send it to <EMAIL_1> please", "email", 0.9),
        ("send it to jane.doe@example.com please", "email", 0.9),
        ("call me on +44 20 7946 0958", "call", 0.9),
        ("refund to DE89 3704 0044 0532 0130 00", "refund", 0.9),
        ("my card 4111-1111-1111-1111 is blocked", "card", 0.9),
        ("my card <CARD_1> is blocked", "card", 0.9),
    ]
    write_dataset(dataset, rows)
    out = tmp_path / "train.jsonl"
    summary = flywheel.export(dataset, out)
    assert summary["pii"] == 4 and summary["pii_kinds"] == {"CARD": 1, "EMAIL": 1, "IBAN": 1, "PHONE": 1}
    assert summary["written"] == 2
    text = out.read_text(encoding="utf-8")
    for value in ("jane.doe", "7946", "DE89", "4111"):
        assert value not in text
    # the project's leak check, run on the exported file: the scanner finds nothing in any line
    assert all(flywheel.pii_kinds(json.loads(line)["text"]) == [] for line in text.splitlines())


def test_export_cli_fails_with_a_one_line_reason(tmp_path):
    out = tmp_path / "train.jsonl"
    missing = run_cli("flywheel", "export", str(tmp_path / "nowhere"), "--out", str(out))
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0
    assert "no such dataset directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("flywheel", "export", str(tmp_path / "empty"), "--out", str(out))
    assert empty.returncode == 1 and "no dataset files" in empty.stderr
    write_dataset(tmp_path / "low", [("play jazz", "music", 0.3)])
    nothing = run_cli("flywheel", "export", str(tmp_path / "low"), "--out", str(out), "--min-confidence", "0.9")
    assert nothing.returncode == 1 and "no record left" in nothing.stderr and "low_confidence 1" in nothing.stderr
    usage = run_cli("flywheel", "export", str(tmp_path / "low"), "--out", str(out), "--min-confidence", "2")
    assert usage.returncode == 2
    no_out = run_cli("flywheel", "export", str(tmp_path / "low"))
    assert no_out.returncode == 2
    assert not out.exists()  # nothing written on any failure


def test_reader_skips_a_torn_and_a_malformed_line_without_failing(tmp_path):
    dataset = tmp_path / "dataset"
    write_dataset(dataset, [("play jazz", "music", 0.9), ("play rock", "music", 0.9)])
    path = flywheel.dataset_files(dataset)[0]
    with open(path, "ab") as handle:
        handle.write(b'{"schema": 1, "id": "x", "text": 5}\n')  # JSON, off the schema
        handle.write(b"\xff\xfe not json\n")
        handle.write(path.read_bytes().splitlines(keepends=True)[0][:40])  # torn: no newline
    kept, read = records(dataset)
    assert [record["text"] for record in kept] == ["play jazz", "play rock"]
    assert read["torn"] == 1 and read["malformed"] == 2 and read["read"] == 2
