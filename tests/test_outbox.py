"""The outbox on a real SQLite file: durability, duplicates, dead letters, budgets, the technician CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_runtime import escalation
from edge_runtime.cli.outbox import outbox as outbox_cli
from edge_runtime.outbox import Budgets, Outbox


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def answer_bytes(request_id: str, label: str = "ok") -> bytes:
    return escalation.encode(escalation.build_answer(request_id, {"label": label}, worker="w"))


def test_request_survives_a_killed_writer_process(tmp_path):
    db = tmp_path / "outbox.sqlite"
    code = (
        "import os, sys; from edge_runtime.outbox import Outbox; "
        f"box = Outbox({str(db)!r}); box.add([('r1', b'{{}}'), ('r2', b'{{}}')]); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with Outbox(db) as box:
        assert box.pending_ids() == ["r1", "r2"]


def test_answer_is_stored_once_and_duplicates_ignored(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        assert box.add([("a", b"x"), ("b", b"y")]).new == ["a", "b"]
        assert box.add([("a", b"x")]).new == []  # same id twice is harmless
        assert box.record_answers([("a", answer_bytes("a", "first"))]) == ["a"]
        assert box.record_answers([("a", answer_bytes("a", "second")), ("zz", answer_bytes("zz"))]) == []
        assert box.answer("a")["answer"] == {"label": "first"}
        assert box.answer("b") is None
        assert box.pending_ids() == ["b"]
        stored = box.add([("a", b"x")]).already_answered["a"]
        assert json.loads(stored)["answer"] == {"label": "first"}


def test_dead_letter_retry_and_purge(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        box.add([("a", b"x"), ("b", b"y")])
        box.record_answers([("b", answer_bytes("b"))])
        assert box.dead_letter("a", "broker refused: Not authorized (135)")
        assert box.summary()["dead"] == 1 and box.pending_ids() == []
        assert box.requests("dead")[0]["reason"] == "broker refused: Not authorized (135)"
        assert box.retry() == ["a"]
        assert box.pending_ids() == ["a"]
        box.dead_letter("a", "again")
        assert box.purge() == {"dead": 1, "answered": 1}
        assert box.summary() == {"pending": 0, "answered": 0, "dead": 0, "counters": {}}


def test_count_budget_evicts_oldest_first(tmp_path):
    with Outbox(tmp_path / "o.sqlite", Budgets(max_count=3)) as box:
        result = box.add([(f"r{i}", b"x") for i in range(5)])
        assert [request_id for request_id, _ in result.evicted] == ["r0", "r1"]
        assert box.pending_ids() == ["r2", "r3", "r4"]
        assert box.counters() == {"evicted_count": 2}
        assert {row["id"] for row in box.requests("dead")} == {"r0", "r1"}


def test_bytes_budget_evicts_oldest_first(tmp_path):
    with Outbox(tmp_path / "o.sqlite", Budgets(max_bytes=250)) as box:
        box.add([("r0", b"x" * 100), ("r1", b"x" * 100)])
        evicted = box.add([("r2", b"x" * 100)]).evicted
        assert [request_id for request_id, _ in evicted] == ["r0"]
        assert box.counters() == {"evicted_bytes": 1}


def test_age_budget_evicts_old_requests(tmp_path):
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", Budgets(max_age_s=60), clock=clock) as box:
        box.add([("old", b"x")])
        clock.now += 50
        box.add([("young", b"x")])
        assert box.enforce_budgets() == []
        clock.now += 20
        assert [request_id for request_id, _ in box.enforce_budgets()] == ["old"]
        assert box.pending_ids() == ["young"]
        assert box.counters() == {"evicted_age": 1}


def test_request_larger_than_128k_is_refused_with_a_clear_error():
    message = escalation.build_request("x" * (130 * 1024), device_id="d1")
    with pytest.raises(escalation.EscalationError, match="limit is 131,072 bytes"):
        escalation.encode(message)


def test_request_schema_round_trip_and_bad_input():
    prediction = {
        "label": "billing",
        "score": 0.41,
        "top_k": [("billing", 0.41), ("refund", 0.39)],
        "margin": 0.02,
        "entropy": 0.8,
    }
    message = escalation.build_request(
        "my card [CARD] was charged twice", prediction, device_id="d1", bundle=("intent", "1.2.0"), reason="low margin"
    )
    decoded = escalation.decode_request(escalation.encode(message))
    assert decoded["prediction"]["top_k"][1] == {"label": "refund", "score": 0.39}
    assert decoded["bundle"] == {"name": "intent", "version": "1.2.0"}
    with pytest.raises(escalation.EscalationError, match="schema 2"):
        escalation.decode_request(json.dumps({**message, "schema": 2}).encode())
    with pytest.raises(escalation.EscalationError, match="not valid JSON"):
        escalation.decode_request(b"{nope")


def test_cli_list_retry_purge(tmp_path):
    db = tmp_path / "o.sqlite"
    with Outbox(db) as box:
        box.add([("a", b"x"), ("b", b"y"), ("c", b"z")])
        box.dead_letter("a", "broker refused: Not authorized (135)")
        box.record_answers([("c", answer_bytes("c"))])
    runner = CliRunner()
    listed = json.loads(runner.invoke(outbox_cli, ["list", "--db", str(db), "--json"]).output)
    assert (listed["pending"], listed["answered"], listed["dead"]) == (1, 1, 1)
    assert {r["id"]: r["state"] for r in listed["requests"]} == {"a": "dead", "b": "pending", "c": "answered"}
    missing = runner.invoke(outbox_cli, ["retry", "nope", "--db", str(db)])
    assert missing.exit_code == 1 and "not in dead letters: nope" in missing.output
    retried = runner.invoke(outbox_cli, ["retry", "--db", str(db), "--json"])
    assert json.loads(retried.output)["retried"] == ["a"]
    refused = runner.invoke(outbox_cli, ["purge", "--db", str(db)], input="n\n")
    assert refused.exit_code == 1
    purged = runner.invoke(outbox_cli, ["purge", "--db", str(db), "--yes", "--json"])
    assert json.loads(purged.output)["deleted"] == {"dead": 0, "answered": 1}
    with Outbox(db) as box:
        assert box.pending_ids() == ["b", "a"]


def test_dead_letters_are_capped_oldest_dropped_and_counted(tmp_path):
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", budgets=Budgets(max_dead=3), clock=clock) as box:
        box.add([(f"r{n}", b"{}") for n in range(5)])
        for n in range(5):
            clock.now += 1
            assert box.dead_letter(f"r{n}", "broker refused")
        assert [r["id"] for r in box.requests("dead")] == ["r2", "r3", "r4"]
        assert box.summary()["dead"] == 3 and box.counters()["dead_dropped"] == 2
        assert box.retry(["r4"]) == ["r4"]
        clock.now += 1
        assert box.dead_letter("r4", "again")  # back in, still within the cap: nothing more dropped
        assert box.counters()["dead_dropped"] == 2 and box.summary()["dead"] == 3


def test_open_outbox_moves_a_corrupt_file_aside_and_starts_fresh(tmp_path):
    from edge_runtime.outbox import open_outbox

    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        box.add([("r1", b"{}")])
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the header survives, the pages do not
    path.write_bytes(bytes(data))
    box = open_outbox(path)
    assert box.health()["state"] == "recovered"
    aside = Path(box.health()["moved_aside"])
    assert aside.name.startswith("outbox.sqlite.corrupt-") and aside.read_bytes() == bytes(data)
    assert box.pending_ids() == [] and box.add([("r2", b"{}")]).new == ["r2"]
    box.close()
    assert open_outbox(path).health()["state"] == "ok"  # a sound file is left alone


def test_open_outbox_that_cannot_be_opened_refuses_every_write(tmp_path):
    from edge_runtime.outbox import OutboxUnavailable, open_outbox

    (tmp_path / "outbox.sqlite").mkdir()
    box = open_outbox(tmp_path / "outbox.sqlite")
    assert box.health()["state"] == "unavailable"
    with pytest.raises(OutboxUnavailable):
        box.add([("r1", b"{}")])
    assert box.pending_ids() == [] and box.answer("r1") is None and box.health()["write_failures"] == 1
