"""Bounded growth on a device that runs for months: the audit log rotates by size, and the egress mapping
store expires in order and is capped. Real files (and a real full tmpfs); the only double is the egress
clock (an hour cannot pass in a test)."""

from __future__ import annotations

import json
import subprocess

import pytest

from edge_runtime.audit import AuditLog
from edge_runtime.egress import Egress

pytestmark = pytest.mark.kernels  # the mappings come from the PII scanner kernel


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_audit_log_rotates_by_size_and_keeps_n_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=2_000, backups=2)
    for n in range(300):
        audit.record("escalated", request_id=f"{n:032x}", reason="low_confidence", redacted={"EMAIL": 1})
    audit.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    lines = []
    for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"):  # oldest first
        assert (tmp_path / name).stat().st_size <= 2_000
        lines += [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    ids = [int(entry["request_id"], 16) for entry in lines]
    assert ids == list(range(ids[0], 300)) and ids[0] > 0  # whole lines, in order, the oldest dropped


def test_audit_log_on_a_full_disk_counts_the_failure_and_does_not_raise(tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    try:
        audit = AuditLog(where / "audit.jsonl")
        audit.record("escalated", request_id="a" * 32, reason="r")
        with open(where / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        for _ in range(50):
            audit.record("escalated", request_id="b" * 32, reason="r" * 200)  # before: OSError on the request path
        assert audit.failures >= 1
        (where / "filler").unlink()
        audit.record("escalated", request_id="c" * 32, reason="r")  # room again: written again
        audit.close()
        assert '"request_id": "' + "c" * 32 in (where / "audit.jsonl").read_text()
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_egress_mappings_are_capped_oldest_forgotten_first_and_counted():
    egress = Egress(max_mappings=3, clock=FakeClock())
    for n in range(5):
        egress.prepare(f"r{n}", f"write to user{n}@example.org", "low_confidence")
    assert egress.mapping_count == 3 and egress.mappings_dropped == 2
    assert egress.reidentify("r0", {"reply": "sent to <EMAIL_1>"}) == {"reply": "sent to <EMAIL_1>"}
    assert egress.reidentify("r4", {"reply": "sent to <EMAIL_1>"}) == {"reply": "sent to user4@example.org"}


def test_egress_mappings_expire_in_order_of_expiry():
    clock = FakeClock()
    egress = Egress(ttl_s=10, clock=clock)
    egress.prepare("r0", "mail a@example.org", "x")
    clock.now += 5
    egress.prepare("r1", "mail b@example.org", "x")
    egress.prepare("r0", "mail c@example.org", "x")  # the same id again: now the latest to expire
    clock.now += 6  # r1 and the new r0 are 6 and 6 s old: both alive
    assert egress.mapping_count == 2
    clock.now += 5  # 11 s: both expired
    egress.prepare("r2", "mail d@example.org", "x")
    assert egress.mapping_count == 1 and egress.reidentify("r2", "<EMAIL_1>") == "d@example.org"
