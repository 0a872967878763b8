"""The audit log: one JSON line per escalation decision. Kinds and reasons only, never values or text."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class AuditLog:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(
        self,
        event: str,
        *,
        request_id: str | None = None,
        reason: str = "",
        redacted: dict[str, int] | None = None,
        **fields,
    ) -> None:
        if self.path is None:
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
        with self._lock, open(self.path, "a", encoding="utf-8") as log:
            log.write(line)
