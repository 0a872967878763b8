"""Everything that leaves the device passes here: PII is redacted (or the send refused) first.

What counts as PII: the regex scanner's identifiers (kernels.pii) and, with a tagger bundle
(pii_tagger.py), person names and postal addresses.

Fail closed: when the configuration requires a tagger (`required_tagger`) and none is loaded, or the
tagger fails on a text, nothing leaves: `prepare` raises PrivacyUnavailable and the answer stays local.
Names have no checksum, so the scanner alone cannot stand in for the tagger.

The placeholder mapping never leaves: it is kept in memory, per request id, for `ttl_s` seconds,
so the upstream answer can be re-identified locally and then forgotten. The mappings sit in an
OrderedDict in expiry order (one `ttl_s` for all, a monotonic clock: insertion order is expiry order),
so expiring is O(1) per escalation, and at most `max_mappings` are kept: beyond it the oldest is
forgotten early and counted in `mappings_dropped` (its answer then comes back with placeholders).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping

from .audit import AuditLog
from .errors import EdgeRuntimeError
from .pii_tagger import PiiTagger, find_spans
from .redaction import PrivacyRefused, redact, restore

log = logging.getLogger(__name__)


class PrivacyUnavailable(EdgeRuntimeError):
    """The PII tagger the configuration requires is not loaded, or failed on the text: nothing may leave."""


class Egress:
    def __init__(
        self,
        policy: Mapping[str, str] | None = None,
        audit: AuditLog | None = None,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        tagger: PiiTagger | None = None,
        required_tagger: str = "",
        max_mappings: int = 100_000,
    ):
        self.policy = dict(policy or {})
        self.tagger = tagger  # replaced in place when a reload loads a newly installed tagger
        self.required_tagger = required_tagger  # the configured tagger without which nothing leaves ('' = none)
        self.audit = audit or AuditLog(None)
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_mappings = max_mappings
        self.mappings_dropped = 0
        self._mappings: collections.OrderedDict[str, tuple[float, dict[str, str]]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def unavailable(self) -> str | None:
        """Why nothing may leave the device now, or None when escalations may go out."""
        if self.required_tagger and self.tagger is None:
            return f"PII tagger {self.required_tagger} is not loaded"
        return None

    def prepare(self, request_id: str, text: str, reason: str) -> str:
        """The text as it may leave the device; raises PrivacyRefused when the policy forbids sending and
        PrivacyUnavailable when the required tagger is missing or fails."""
        unavailable = self.unavailable
        if unavailable is None:
            try:
                spans = find_spans(text, self.tagger)
            except Exception as error:  # an onnxruntime failure in the tagger: the names were not looked for
                log.exception("PII tagger failed on a text; it stays on the device")
                unavailable = f"PII tagger failed: {type(error).__name__}"
        if unavailable is not None:
            self.audit.record("kept_local", request_id=request_id, reason=reason, unavailable=unavailable)
            raise PrivacyUnavailable(unavailable)
        try:
            redaction = redact(text, spans, policy=self.policy)
        except PrivacyRefused as refused:
            self.audit.record("refused", request_id=request_id, reason=reason, refused=str(refused))
            raise
        with self._lock:
            self._expire()
            if redaction.mapping:
                self._mappings[request_id] = (self.clock() + self.ttl_s, redaction.mapping)
                self._mappings.move_to_end(request_id)  # the same id again: its new expiry is the latest
                while len(self._mappings) > self.max_mappings:
                    self._mappings.popitem(last=False)
                    self.mappings_dropped += 1
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

    @property
    def mapping_count(self) -> int:  # not __len__: an Egress with no mappings must stay truthy
        return len(self._mappings)

    def _expire(self) -> None:
        """Drop the expired mappings from the front: the first one still valid ends the walk."""
        now = self.clock()
        while self._mappings:
            request_id, (expires, _) = next(iter(self._mappings.items()))
            if expires > now:
                break
            del self._mappings[request_id]


def _restore_strings(value, mapping):
    if isinstance(value, str):
        return restore(value, mapping)
    if isinstance(value, dict):
        return {k: _restore_strings(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_strings(v, mapping) for v in value]
    return value
