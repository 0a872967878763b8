"""PII spans -> placeholders before text leaves the device, and placeholders -> values after.

redact("mail a@x.com or a@x.com") -> Redaction(text="mail <EMAIL_1> or <EMAIL_1>", ...)
restore(upstream_answer, redaction.mapping) puts the originals back.

A policy maps a kind to what happens to its values:
  "redact"  numbered placeholder <KIND_n>, kept in the mapping (the default)
  "drop"    bare <KIND>, no mapping entry: the value is gone for good
  "refuse"  raise PrivacyRefused: such text must not leave the device at all
`kinds` counts values per kind so an audit log can say what was removed without holding it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import EdgeRuntimeError, InputError
from .kernels.pure.pii import KINDS as SCANNER_KINDS
from .pii_tagger import KINDS as TAGGER_KINDS

KINDS = SCANNER_KINDS + TAGGER_KINDS  # what a policy may name: the regex scanner's, then a PII tagger bundle's
ACTIONS = ("redact", "drop", "refuse")
_PLACEHOLDER = re.compile(r"<([A-Z0-9]+_[0-9]+)>")


@dataclass(frozen=True)
class Redaction:
    text: str
    mapping: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)


def _check_policy(policy: Mapping[str, str] | None) -> dict[str, str]:
    policy = dict(policy or {})
    for kind, action in policy.items():
        if kind not in KINDS:
            raise InputError(f"unknown PII kind {kind!r} in policy (known: {', '.join(KINDS)})")
        if action not in ACTIONS:
            raise InputError(f"unknown action {action!r} for {kind} (known: {', '.join(ACTIONS)})")
    return policy


def _check_spans(text: str, spans: Iterable) -> list[tuple[int, int, str]]:
    checked = sorted((int(s), int(e), str(kind)) for s, e, kind in spans)
    previous_end = 0
    for start, end, kind in checked:
        if not 0 <= start < end <= len(text) or start < previous_end:
            raise InputError(f"span ({start}, {end}, {kind}) is out of range or overlaps another")
        if kind not in KINDS:
            raise InputError(f"unknown PII kind {kind!r} in spans")
        previous_end = end
    return checked


def redact(text: str, spans=None, policy: Mapping[str, str] | None = None) -> Redaction:
    """Replaces each PII span (default: kernels.pii.scan(text)) as the policy says."""
    if not isinstance(text, str):
        raise InputError(f"redact() needs a str, not {type(text).__name__}")
    policy = _check_policy(policy)
    if spans is None:
        from .kernels import pii

        spans = pii.scan(text)
    spans = _check_spans(text, spans)
    refused = sorted({kind for _, _, kind in spans if policy.get(kind) == "refuse"})
    if refused:
        raise PrivacyRefused(f"text holds {', '.join(refused)}, which the privacy policy refuses to send")
    parts: list[str] = []
    mapping: dict[str, str] = {}
    by_value: dict[tuple[str, str], str] = {}
    counts: dict[str, int] = {}
    numbered: dict[str, int] = {}
    cursor = 0
    for start, end, kind in spans:
        value = text[start:end]
        parts.append(text[cursor:start])
        counts[kind] = counts.get(kind, 0) + 1
        if policy.get(kind, "redact") == "drop":
            parts.append(f"<{kind}>")
        else:
            placeholder = by_value.get((kind, value))
            if placeholder is None:
                numbered[kind] = numbered.get(kind, 0) + 1
                placeholder = f"<{kind}_{numbered[kind]}>"
                by_value[(kind, value)] = placeholder
                mapping[placeholder] = value
            parts.append(placeholder)
        cursor = end
    parts.append(text[cursor:])
    return Redaction("".join(parts), mapping, counts)


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Puts the originals back for placeholders in `mapping`; leaves any other <...> as it is."""
    return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


class PrivacyRefused(EdgeRuntimeError):
    """The text holds a kind of personal data that the policy forbids sending off the device."""
