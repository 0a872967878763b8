"""The audit log: one JSON line per escalation decision. Kinds and reasons only, never values or text.

It is rotated by size with the stdlib's RotatingFileHandler semantics (`audit.jsonl` -> `.1` ... `.N`,
the oldest dropped), so a device that escalates for months keeps at most (backups + 1) x max_bytes. A
write that fails (a full disk) is counted in `failures` and logged, never raised: the audit must not
take the request path down with it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class _Handler(logging.handlers.RotatingFileHandler):
    def __init__(self, path: Path, max_bytes: int, backups: int, owner: AuditLog):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.terminator = ""  # the line carries its own newline
        self._owner = owner

    def handleError(self, record) -> None:  # noqa: N802 (logging's name)
        self._owner.failures += 1
        log.warning("audit log %s: write failed (%d so far)", self.baseFilename, self._owner.failures, exc_info=True)
        if self.stream is not None:  # reopen on the next record: the disk may have room again
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None


class AuditLog:
    def __init__(self, path: Path | None, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS):
        self.path = Path(path) if path else None
        self.failures = 0
        self._handler = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = _Handler(self.path, max_bytes, backups, self)

    def record(
        self,
        event: str,
        *,
        request_id: str | None = None,
        reason: str = "",
        redacted: dict[str, int] | None = None,
        **fields,
    ) -> None:
        if self._handler is None:
            return
        entry = {
            "ts": round(time.time(), 3),
            "event": event,
            "request_id": request_id,
            "reason": reason,
            "redacted": redacted or {},
            **fields,
        }
        line = json.dumps(entry, sort_keys=True) + "\n"
        self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
