"""The durable outbox: escalation requests in SQLite (WAL) until their answer arrives.

A request is committed (synchronous=FULL) before it is published and stays `pending` until the
application-level answer comes back (a PUBACK is not enough: mosquitto acks QoS 1 before the message
is on disk). Rejected or evicted requests move to `dead_letters`; technicians list, retry and purge
them with `edge-runtime outbox`. Budgets (count, bytes, age) bound the pending requests.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,                 -- pending | answered
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    answer BLOB,
    answered_at REAL);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests(state, seq);
CREATE TABLE IF NOT EXISTS dead_letters(
    id TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def default_path() -> Path:
    return paths.state_dir() / "outbox.sqlite"


@dataclass(frozen=True)
class Budgets:
    max_count: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 7 * 86400
    keep_answered: int = 10_000  # answered requests kept for `answer(id)` lookups


@dataclass
class AddResult:
    new: list[str] = field(default_factory=list)
    already_answered: dict[str, bytes] = field(default_factory=dict)
    evicted: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


class Outbox:
    def __init__(
        self, path: str | Path | None = None, budgets: Budgets = Budgets(), clock: Callable[[], float] = time.time
    ):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.budgets = budgets
        self.clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._sync = "FULL"
        self._db.executescript(_SCHEMA)
        self._pending_count, self._pending_bytes = self._count_pending()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self, durable: bool = True):
        """One commit for everything inside (group commit). durable=False (answers only) skips the
        fsync: WAL with synchronous=NORMAL survives a process crash, and a lost answer is re-fetched."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            sync = "FULL" if durable else "NORMAL"
            if sync != self._sync:
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                self._pending_count, self._pending_bytes = self._count_pending()
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    # -- the uplink's side ---------------------------------------------------------------------
    def add(self, items: Iterable[tuple[str, bytes]]) -> AddResult:
        """Store new requests (same id twice is harmless), then enforce the budgets."""
        result = AddResult()
        now = self.clock()
        with self.transaction():
            for request_id, payload in items:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO requests(id, state, payload, size, created_at)"
                    " VALUES (?, 'pending', ?, ?, ?)",
                    (request_id, payload, len(payload), now),
                )
                if cursor.rowcount:
                    result.new.append(request_id)
                    self._pending_count += 1
                    self._pending_bytes += len(payload)
                else:
                    row = self._db.execute("SELECT state, answer FROM requests WHERE id=?", (request_id,)).fetchone()
                    if row and row[0] == "answered":
                        result.already_answered[request_id] = row[1]
            result.evicted = self._evict(now)
        return result

    def record_answers(self, answers: Iterable[tuple[str, bytes]]) -> list[str]:
        """Mark requests answered; returns the ids answered now (not duplicates, not unknown ids)."""
        fresh = []
        now = self.clock()
        with self.transaction(durable=False):
            for request_id, answer in answers:
                row = self._db.execute(
                    "UPDATE requests SET state='answered', answer=?, answered_at=? WHERE id=? AND state='pending' "
                    "RETURNING size",
                    (answer, now, request_id),
                ).fetchone()
                if row:
                    fresh.append(request_id)
                    self._pending_count -= 1
                    self._pending_bytes -= row[0]
        return fresh

    def mark_sent(self, ids: Iterable[str]) -> None:
        with self.transaction(durable=False):
            self._db.executemany("UPDATE requests SET attempts=attempts+1 WHERE id=?", [(i,) for i in ids])

    def dead_letter(self, request_id: str, reason: str) -> bool:
        with self.transaction():
            moved = self._move_to_dead(request_id, reason, self.clock())
        if moved:
            log.error("outbox: request %s moved to dead letters: %s", request_id, reason)
        return moved

    def enforce_budgets(self) -> list[tuple[str, str]]:
        with self.transaction():
            self._pending_count, self._pending_bytes = self._count_pending()
            evicted = self._evict(self.clock(), check_age=True)
            self._prune_answered()
        return evicted

    def pending_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM requests WHERE state='pending' ORDER BY seq")]

    def payload(self, request_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT payload FROM requests WHERE id=?", (request_id,)).fetchone()
        return row[0] if row else None

    def answer(self, request_id: str) -> dict | None:
        """The answer message stored for a request, or None while it is unanswered or unknown."""
        with self._lock:
            row = self._db.execute(
                "SELECT answer FROM requests WHERE id=? AND state='answered'", (request_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def bump(self, name: str, by: int = 1) -> None:
        with self.transaction(durable=False):
            self._bump(name, by)

    # -- the technician's side -----------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters ORDER BY name"))

    def summary(self) -> dict:
        with self._lock:
            states = dict(self._db.execute("SELECT state, count(*) FROM requests GROUP BY state"))
            dead = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return {
            "pending": states.get("pending", 0),
            "answered": states.get("answered", 0),
            "dead": dead,
            "counters": self.counters(),
        }

    def requests(self, state: str) -> list[dict]:
        with self._lock:
            if state == "dead":
                rows = self._db.execute(
                    "SELECT id, size, created_at, attempts, reason, dead_at FROM dead_letters ORDER BY dead_at"
                )
                keys = ("id", "size", "created_at", "attempts", "reason", "dead_at")
            else:
                rows = self._db.execute(
                    "SELECT id, size, created_at, attempts, answered_at FROM requests WHERE state=? ORDER BY seq",
                    (state,),
                )
                keys = ("id", "size", "created_at", "attempts", "answered_at")
            return [dict(zip(keys, row), state=state) for row in rows]

    def retry(self, ids: Iterable[str] | None = None) -> list[str]:
        """Move dead letters (all, or the given ids) back to pending; returns the ids moved."""
        with self.transaction():
            if ids is None:
                ids = [r[0] for r in self._db.execute("SELECT id FROM dead_letters ORDER BY dead_at")]
            moved = []
            for request_id in ids:
                row = self._db.execute(
                    "DELETE FROM dead_letters WHERE id=? RETURNING payload, created_at", (request_id,)
                ).fetchone()
                if row:
                    self._db.execute(
                        "INSERT OR REPLACE INTO requests(id, state, payload, size, created_at) "
                        "VALUES (?, 'pending', ?, ?, ?)",
                        (request_id, row[0], len(row[0]), self.clock()),
                    )
                    moved.append(request_id)
            self._pending_count, self._pending_bytes = self._count_pending()
        return moved

    def purge(self, answered: bool = True) -> dict[str, int]:
        with self.transaction():
            dead = self._db.execute("DELETE FROM dead_letters").rowcount
            done = self._db.execute("DELETE FROM requests WHERE state='answered'").rowcount if answered else 0
        return {"dead": dead, "answered": done}

    # -- internals (inside a transaction) -----------------------------------------------------
    def _count_pending(self) -> tuple[int, int]:
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM requests WHERE state='pending'"
        ).fetchone()
        return count, size

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
            (name, by),
        )

    def _move_to_dead(self, request_id: str, reason: str, now: float) -> bool:
        row = self._db.execute(
            "DELETE FROM requests WHERE id=? AND state='pending' RETURNING payload, size, created_at, attempts",
            (request_id,),
        ).fetchone()
        if not row:
            return False
        self._db.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, row[0], row[1], row[2], row[3], reason, now),
        )
        self._pending_count -= 1
        self._pending_bytes -= row[1]
        return True

    def _evict(self, now: float, check_age: bool = False) -> list[tuple[str, str]]:
        """Oldest pending first, into dead letters, until count, bytes (and age) are within budget."""
        budgets = self.budgets
        count, size_total = self._pending_count, self._pending_bytes
        if count <= budgets.max_count and size_total <= budgets.max_bytes and not check_age:
            return []
        evicted = []
        oldest = self._db.execute("SELECT id, size, created_at FROM requests WHERE state='pending' ORDER BY seq")
        for request_id, size, created_at in oldest:
            if count > budgets.max_count:
                reason, counter = f"evicted: over the count budget ({budgets.max_count})", "evicted_count"
            elif size_total > budgets.max_bytes:
                reason, counter = f"evicted: over the bytes budget ({budgets.max_bytes})", "evicted_bytes"
            elif now - created_at > budgets.max_age_s:
                reason, counter = f"evicted: older than the age budget ({budgets.max_age_s:g} s)", "evicted_age"
            else:
                break
            evicted.append((request_id, reason, counter))
            count -= 1
            size_total -= size
        oldest.close()
        for request_id, reason, counter in evicted:
            self._move_to_dead(request_id, reason, now)
            self._bump(counter, 1)
            log.warning("outbox: request %s %s", request_id, reason)
        return [(request_id, reason) for request_id, reason, _ in evicted]

    def _prune_answered(self) -> None:
        self._db.execute(
            "DELETE FROM requests WHERE state='answered' AND seq NOT IN "
            "(SELECT seq FROM requests WHERE state='answered' ORDER BY seq DESC LIMIT ?)",
            (self.budgets.keep_answered,),
        )
