"""Everything that leaves the device passes here: PII is redacted (or the send refused) first.

What counts as PII: the regex scanner's identifiers (kernels.pii) and, with a tagger bundle
(pii_tagger.py), person names and postal addresses.

The placeholder mapping never leaves: it is kept in memory, per request id, for `ttl_s` seconds,
so the upstream answer can be re-identified locally and then forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from .audit import AuditLog
from .pii_tagger import PiiTagger, find_spans
from .redaction import PrivacyRefused, redact, restore


class Egress:
    def __init__(
        self,
        policy: Mapping[str, str] | None = None,
        audit: AuditLog | None = None,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        tagger: PiiTagger | None = None,
    ):
        self.policy = dict(policy or {})
        self.tagger = tagger
        self.audit = audit or AuditLog(None)
        self.ttl_s = ttl_s
        self.clock = clock
        self._mappings: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def prepare(self, request_id: str, text: str, reason: str) -> str:
        """The text as it may leave the device; raises PrivacyRefused when the policy forbids sending."""
        try:
            redaction = redact(text, find_spans(text, self.tagger), policy=self.policy)
        except PrivacyRefused as refused:
            self.audit.record("refused", request_id=request_id, reason=reason, refused=str(refused))
            raise
        with self._lock:
            self._expire()
            if redaction.mapping:
                self._mappings[request_id] = (self.clock() + self.ttl_s, redaction.mapping)
        self.audit.record("escalated", request_id=request_id, reason=reason, redacted=redaction.kinds)
        return redaction.text

    def reidentify(self, request_id: str, answer):
        """Put the originals back into every string of an upstream answer (dicts and lists walked)."""
        with self._lock:
            self._expire()
            entry = self._mappings.get(request_id)
        if entry is None:
            return answer
        return _restore_strings(answer, entry[1])

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._mappings.pop(request_id, None)

    def _expire(self) -> None:
        now = self.clock()
        for request_id in [r for r, (expires, _) in self._mappings.items() if expires <= now]:
            del self._mappings[request_id]


def _restore_strings(value, mapping):
    if isinstance(value, str):
        return restore(value, mapping)
    if isinstance(value, dict):
        return {k: _restore_strings(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_strings(v, mapping) for v in value]
    return value
