"""The durable outbox: escalation requests in SQLite (WAL) until their answer arrives.

A request is committed (synchronous=FULL) before it is published and stays `pending` until the
application-level answer comes back (a PUBACK is not enough: mosquitto acks QoS 1 before the message
is on disk). Rejected or evicted requests move to `dead_letters`; technicians list, retry and purge
them with `edge-runtime outbox`. Budgets (count, bytes, age) bound the pending requests; `max_dead`
bounds the dead letters (oldest dropped first, counted as `dead_dropped`).

When SQLite fails (a full disk, an unwritable or corrupt file) a transaction raises `OutboxUnavailable`
and the failure is counted: the caller keeps the escalation local rather than promising a deferred
answer that was never stored. `open_outbox` is how a device opens it: a corrupt file is moved aside
(`outbox.sqlite.corrupt-<timestamp>`) and a fresh one started, and when none can be opened an
`UnavailableOutbox` stands in, so local inference goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .errors import EdgeRuntimeError

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


CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class OutboxUnavailable(EdgeRuntimeError):
    """The outbox cannot store or read (disk full, unwritable, corrupt): an escalation stays local."""


def default_path() -> Path:
    return paths.state_dir() / "outbox.sqlite"


@dataclass(frozen=True)
class Budgets:
    max_count: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 7 * 86400
    keep_answered: int = 10_000  # answered requests kept for `answer(id)` lookups
    max_dead: int = 10_000  # dead letters kept for `outbox list/retry`; the oldest are dropped first


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
        self.failures = 0  # transactions SQLite refused since start
        self.last_error: str | None = None
        self.recovered_from: str | None = None  # open_outbox: where a corrupt file was moved aside
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._sync = "FULL"
            self._db.executescript(_SCHEMA)
            self._pending_count, self._pending_bytes = self._count_pending()
            self._dead_count = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def health(self) -> dict:
        """What `status`, `/v1/status`, `/metrics` and `doctor` report of the outbox."""
        return _health(self, "recovered" if self.recovered_from else "ok")

    @contextmanager
    def transaction(self, durable: bool = True):
        """One commit for everything inside (group commit). durable=False (answers only) skips the
        fsync: WAL with synchronous=NORMAL survives a process crash, and a lost answer is re-fetched.
        A SQLite failure rolls everything back and raises OutboxUnavailable."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                sync = "FULL" if durable else "NORMAL"
                if sync != self._sync:
                    self._db.execute(f"PRAGMA synchronous={sync}")
                    self._sync = sync
                self._db.execute("BEGIN IMMEDIATE")
                yield
                self._db.execute("COMMIT")
            except BaseException as error:
                self._abort()
                if isinstance(error, sqlite3.Error):
                    raise self._failed(error) from error
                raise
            finally:
                self._depth = 0

    def _abort(self) -> None:
        """Roll back what is left of a failed transaction (SQLite rolls some back by itself, e.g. on a
        full disk) and re-read the cached counts."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._pending_count, self._pending_bytes = self._count_pending()
            self._dead_count = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        except sqlite3.Error as error:
            log.warning("outbox: cannot roll back or recount: %s", error)

    def _failed(self, error: sqlite3.Error) -> OutboxUnavailable:
        self.failures += 1
        self.last_error = str(error)
        log.error("outbox: SQLite refused a transaction (%s); escalations stay local", error)
        return OutboxUnavailable(f"outbox {self.path} unavailable: {error}")

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
            self._dead_count = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
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
        """Counts by state (a full scan: call it off an event loop); the cached counts when SQLite fails."""
        with self._lock:
            try:
                states = dict(self._db.execute("SELECT state, count(*) FROM requests GROUP BY state"))
                dead = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
                counters = self.counters()
            except sqlite3.Error as error:
                self.last_error = str(error)
                return {"pending": self._pending_count, "answered": 0, "dead": self._dead_count, "counters": {}}
        return {
            "pending": states.get("pending", 0),
            "answered": states.get("answered", 0),
            "dead": dead,
            "counters": counters,
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
                    self._dead_count -= 1
            self._pending_count, self._pending_bytes = self._count_pending()
        return moved

    def purge(self, answered: bool = True) -> dict[str, int]:
        with self.transaction():
            dead = self._db.execute("DELETE FROM dead_letters").rowcount
            done = self._db.execute("DELETE FROM requests WHERE state='answered'").rowcount if answered else 0
            self._dead_count = 0
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
        replaced = self._db.execute("SELECT 1 FROM dead_letters WHERE id=?", (request_id,)).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, row[0], row[1], row[2], row[3], reason, now),
        )
        self._pending_count -= 1
        self._pending_bytes -= row[1]
        self._dead_count += 0 if replaced else 1
        self._cap_dead()
        return True

    def _cap_dead(self) -> None:
        """Drop the oldest dead letters beyond `max_dead`, counted as `dead_dropped`."""
        over = self._dead_count - self.budgets.max_dead
        if over <= 0:
            return
        dropped = self._db.execute(
            "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters ORDER BY dead_at, rowid LIMIT ?)",
            (over,),
        ).rowcount
        self._dead_count -= dropped
        self._bump("dead_dropped", dropped)
        log.warning("outbox: dropped the %d oldest dead letters (over max_dead %d)", dropped, self.budgets.max_dead)

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


def _health(outbox, state: str) -> dict:
    """The health report both outboxes give (Outbox.health)."""
    return {
        "state": state,
        "path": str(outbox.path),
        "moved_aside": outbox.recovered_from,
        "write_failures": outbox.failures,
        "last_error": outbox.last_error,
    }


class UnavailableOutbox:
    """Stands in for an outbox that cannot be opened: nothing is stored, every write raises
    OutboxUnavailable (the escalation stays local), every read finds nothing."""

    def __init__(self, path: Path, error: str, recovered_from: str | None = None):
        self.path, self.error, self.recovered_from = Path(path), error, recovered_from
        self.failures = 0
        self.last_error = error

    def health(self) -> dict:
        return _health(self, "unavailable")

    @contextmanager
    def transaction(self, durable: bool = True):
        self.failures += 1
        raise OutboxUnavailable(f"outbox {self.path} unavailable: {self.error}")
        yield  # pragma: no cover (a generator, so `with` works)

    def _refuse(self, *args, **kwargs):
        with self.transaction():
            pass

    add = record_answers = dead_letter = retry = purge = _refuse

    def mark_sent(self, ids) -> None:
        pass

    def bump(self, name: str, by: int = 1) -> None:
        pass

    def enforce_budgets(self) -> list:
        return []

    def pending_ids(self) -> list[str]:
        return []

    def payload(self, request_id: str) -> None:
        return None

    def answer(self, request_id: str) -> None:
        return None

    def counters(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {"pending": 0, "answered": 0, "dead": 0, "counters": {}}

    def requests(self, state: str) -> list:
        return []

    def close(self) -> None:
        pass


def open_outbox(
    path: str | Path | None = None, budgets: Budgets = Budgets(), clock: Callable[[], float] = time.time
) -> Outbox | UnavailableOutbox:
    """The device's outbox, whatever state its file is in: a corrupt file (and its -wal/-shm) is moved
    aside to `<name>.corrupt-<timestamp>` and a fresh outbox started; when none can be opened (read-only
    or full disk) an UnavailableOutbox, so the daemon still starts and answers locally."""
    path = Path(path) if path else default_path()
    try:
        return _checked(Outbox(path, budgets, clock))
    except sqlite3.DatabaseError as error:
        if getattr(error, "sqlite_errorcode", None) not in CORRUPT:
            log.error("outbox: cannot open %s (%s); escalations stay local", path, error)
            return UnavailableOutbox(path, str(error))
        corrupt_error = str(error)
    except OSError as error:
        log.error("outbox: cannot open %s (%s); escalations stay local", path, error)
        return UnavailableOutbox(path, error.strerror or str(error))
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    try:
        for suffix in ("-wal", "-shm", ""):  # the database last: a crash here leaves it to find again
            source = path.with_name(path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
    except OSError as error:
        log.error("outbox: %s is corrupt (%s) and cannot be moved aside: %s", path, corrupt_error, error)
        return UnavailableOutbox(path, f"corrupt ({corrupt_error}), cannot move it aside: {error.strerror}")
    log.error("outbox: %s was corrupt (%s); moved to %s, starting a fresh one", path, corrupt_error, aside)
    try:
        fresh = Outbox(path, budgets, clock)
    except (sqlite3.Error, OSError) as error:
        return UnavailableOutbox(path, str(error), recovered_from=str(aside))
    fresh.recovered_from = str(aside)
    return fresh


def _checked(outbox: Outbox) -> Outbox:
    """The outbox, once SQLite's quick check finds its pages sound (a torn file can open and fail later)."""
    with outbox._lock:
        try:
            verdict = outbox._db.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError:
            outbox.close()
            raise
    if verdict != "ok":
        outbox.close()
        error = sqlite3.DatabaseError(f"quick_check: {verdict}")
        error.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
        raise error
    return outbox


def inspect(path: str | Path | None = None) -> dict:
    """`doctor`'s view of the outbox file, read-only: sound or not, its counts, and the corrupt files a
    daemon moved aside (their escalations were never sent)."""
    path = Path(path) if path else default_path()
    aside = sorted(str(p) for p in path.parent.glob(f"{path.name}.corrupt-*") if not p.name.endswith(("-wal", "-shm")))
    report = {"path": str(path), "ok": True, "reason": None, "pending": 0, "dead": 0, "moved_aside": aside}
    if path.exists():
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {verdict}")
                report["pending"] = db.execute("SELECT count(*) FROM requests WHERE state='pending'").fetchone()[0]
                report["dead"] = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as error:
            corrupt = getattr(error, "sqlite_errorcode", None) in CORRUPT or "quick_check" in str(error)
            then = "the daemon moves it aside at its next start" if corrupt else "escalations stay local"
            report.update(ok=False, reason=f"{path} unreadable ({error}): {then}")
    if aside:
        report["ok"] = False
        report["reason"] = report["reason"] or (
            f"a corrupt outbox was moved aside to {aside[-1]}: its escalations were not sent (inspect, then delete it)"
        )
    return report
