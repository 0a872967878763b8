"""A request the daemon refuses: HTTP status + one-line reason, answered as {"error": reason}."""

from __future__ import annotations


class RequestError(Exception):
    def __init__(self, status: int, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after
