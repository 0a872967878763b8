"""The PII scanner written the usual way, with Python's `re`: the benchmark baseline.

Same kinds, validators (Luhn, mod-97, octets, ipaddress, entropy) and priority as
edge_runtime.kernels.pii; the patterns approximate the hand-written state machine, so results
agree on ordinary text but are not guaranteed identical. `scan(text) -> [(start, end, kind)]`.
Non-ASCII text is normalised the usual way too (unicodedata per character, cached) and the spans mapped back;
secrets after keywords are one more case-insensitive pattern.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import unicodedata
from collections import Counter

from edge_runtime.kernels.pure.pii import (
    COPULA_STOPWORDS,
    COPULAS,
    IBAN_LENGTHS,
    KINDS,
    SECRET_KEY_NAMES,
    SECRET_KEYWORDS,
    SECRET_PREFIXES,
)

_NUM_PREV = r"(?<![A-Za-z0-9_.,\-/+#@$])(?<![0-9] )"
_HEX_PREV = r"(?<![A-Za-z0-9_:.\-])"
PATTERNS = {
    "EMAIL": re.compile(
        r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9]"
        r"[A-Za-z0-9\-]*(?:\.[A-Za-z0-9][A-Za-z0-9\-]*)*\.[A-Za-z]{2,}(?![A-Za-z0-9\-])"
    ),
    "IBAN": re.compile(
        r"(?<![A-Za-z0-9_])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]{4}){1,7}(?: ?[A-Za-z0-9]{1,4})?"
        r"(?![A-Za-z0-9_])"
    ),
    "CARD": re.compile(
        _NUM_PREV + r"[1-9][0-9]{2,18}(?:([ \-])[0-9]{1,6}(?:\1[0-9]{1,6}){0,5})?"
        r"(?![A-Za-z0-9_]|[.,\-][0-9])"
    ),
    "IPV6": re.compile(_HEX_PREV + r"(?:[0-9A-Fa-f]{1,4}|:)?:[0-9A-Fa-f:.]*[0-9A-Fa-f:](?![A-Za-z0-9_])"),
    "MAC": re.compile(
        _HEX_PREV + r"(?:[0-9A-Fa-f]{2}([:\-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}"
        r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4})(?![A-Za-z0-9_]|[:.\-][0-9A-Fa-f])"
    ),
    "IPV4": re.compile(
        r"(?<![A-Za-z0-9_.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
        r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?![A-Za-z0-9_]|\.[0-9])"
    ),
    "PHONE": re.compile(
        _NUM_PREV + r"(?:\+[0-9]|\(?[0-9])[0-9 ().\-]{6,28}[0-9](?:x[0-9]{1,6})?"
        r"(?![A-Za-z0-9_]|[.\-][0-9])"
    ),
    "SECRET": re.compile(r"[A-Za-z0-9_\-+/=.]{8,}"),
}
_GROUPS = re.compile(r"\(?[0-9]+\)?")
_KEY_VALUE = re.compile(r"^(?P<name>[A-Za-z0-9_\-+/.]*?)=(?!=)(?P<value>.+)$")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-+/=]{7,}\.eyJ[A-Za-z0-9_\-+/=]{7,}\.[A-Za-z0-9_\-+/=]{10,}")
_AWS = re.compile(r"A[KS]IA[A-Z0-9]{16}")


def luhn(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if k % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def mod97(iban: str) -> bool:
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _card(match) -> tuple[int, int] | None:
    value = match.group(0)
    groups = re.split(r"[ \-]", value)
    while groups:
        digits = "".join(groups)
        if (
            13 <= len(digits) <= 19
            and (len(groups) == 1 or (all(3 <= len(g) <= 6 for g in groups[:-1]) and len(groups[-1]) <= 6))
            and luhn(digits)
        ):
            return match.start(), match.start() + len(" ".join(groups))
        groups = groups[:-1]
    return None


def _iban(match) -> tuple[int, int] | None:
    compact = match.group(0).replace(" ", "").upper()
    length = IBAN_LENGTHS.get(compact[:2], 0)
    if length == 0 or len(compact) < length:
        return None
    # cut back to the country's length, counting the spaces kept inside
    kept, end = 0, match.start()
    for ch in match.group(0):
        if kept == length:
            break
        end += 1
        kept += ch != " "
    if re.match(r"[A-Za-z0-9_]", match.string[end : end + 1]) or not mod97(compact[:length]):
        return None
    return match.start(), end


def _ipv6(match) -> tuple[int, int] | None:
    value = match.group(0)
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    groups = len([g for g in re.split(r"::?", value) if g]) + value.count(".") // 3
    if "::" in value and groups < 2 and not (value.startswith("::") and groups == 1):
        return None
    return match.span()


def _phone_ok(number: str) -> bool:
    groups = _GROUPS.findall(number)
    if number.count("(") != number.count(")"):
        return False
    digits = "".join(g.strip("()") for g in groups)
    lengths = [len(g.strip("()")) for g in groups]
    plus = number.startswith("+")
    trunk = "(0)" in groups
    if len(digits) < 8:
        return False
    if plus or digits.startswith("00"):
        dialled = len(digits) - trunk - (0 if plus else 2)
        return 8 <= dialled <= 15 and digits[0 if plus else 2] != "0"
    if digits.startswith("0"):
        return not trunk and 9 <= len(digits) <= (11 if len(groups) == 1 else 12)
    return (
        (lengths == [3, 3, 4] and digits[0] >= "2")
        or (lengths == [1, 3, 3, 4] and digits[0] == "1" and digits[1] >= "2")
        or (lengths == [10] and digits[0] >= "2" and digits[3] >= "2")
    )


def _phone(match) -> tuple[int, int] | None:
    start, value = match.start(), match.group(0)
    if value.startswith("(") and ")" not in value:
        start, value = start + 1, value[1:]
    number, x, extension = value.partition("x")
    # the longest run of whole groups that is a phone number
    cuts = [m.end() for m in re.finditer(r"[0-9)](?=[ .\-]|$)", number)]
    for cut in reversed(cuts):
        tail = match.string[start + cut : start + cut + 2]
        if re.match(r"[.\-][0-9]", tail) or re.search(r"[ .\-]{2}", number[:cut]) or not _phone_ok(number[:cut]):
            continue
        end = start + cut + (len(x) + len(extension) if cut == len(number) else 0)
        return start, end
    return None


def _entropy_ok(token: str) -> bool:
    if (
        len(token) < 20
        or token.startswith("/")
        or not re.search(r"[a-z]", token)
        or not re.search(r"[A-Z]", token)
        or not re.search(r"[0-9]", token)
        or re.fullmatch(r"[0-9a-fA-F\-]+", token)
    ):
        return False
    pairs = max(len(token) - 1, 1)
    if (
        len(re.findall(r"(?=[a-z]{2})", token)) * 5 >= pairs * 2
        or len(re.findall(r"(?=[A-Z]{2})", token)) * 5 >= pairs * 2
    ):
        return False
    window = token[:1024]
    counts = Counter(window).values()
    entropy = -sum(c / len(window) * math.log2(c / len(window)) for c in counts)
    return entropy >= 3.5


def _secret(match) -> tuple[int, int] | None:
    text, start = match.string, match.start()
    token = match.group(0).strip(".")
    if len(token) < 8:
        return None
    start += len(match.group(0)) - len(match.group(0).lstrip("."))
    if re.search(r"(?<![A-Za-z0-9_])Bearer $", text[max(0, match.start() - 8) : match.start()]):
        return start, start + len(token)
    pair = _KEY_VALUE.match(token)
    if pair:
        name, value = pair.group("name"), pair.group("value")
        if any(name.lower().endswith(key) for key in SECRET_KEY_NAMES):
            if len(value) >= 8 and not _UUID.fullmatch(value):
                return start + len(name) + 1, start + len(token)
            return None
        start, token = start + len(name) + 1, value
    for prefix, rest in SECRET_PREFIXES:
        if token.startswith(prefix):
            return (start, start + len(token)) if len(token) - len(prefix) >= rest else None
    if _AWS.fullmatch(token) or _JWT.fullmatch(token) or _entropy_ok(token):
        return start, start + len(token)
    return None


VALIDATORS = {
    "EMAIL": lambda m: m.span(),
    "IBAN": _iban,
    "CARD": _card,
    "IPV6": _ipv6,
    "MAC": lambda m: m.span(),
    "IPV4": lambda m: m.span(),
    "PHONE": _phone,
    "SECRET": _secret,
}


def _alternation(words) -> str:
    escaped = (re.escape(w).replace(r"\ ", r"[ \t]+").replace("'", "['\u2019\u2018\u02bc]") for w in words)
    return "|".join(sorted(escaped, key=len, reverse=True))


_KEYWORD = re.compile(
    rf"(?<!\w)(?:{_alternation(SECRET_KEYWORDS)})(?!\w)"
    rf"(?:[ \t]*[:=][ \t]*|[ \t]+(?P<copula>(?:{_alternation(COPULAS)})[ \t]+)[ \t]*|(?P<bare>[ \t]+))"
    r"(?:[\"'`\u201c\u201e\u2018\u201a\u00ab\u2039](?P<quoted>[^\n\"'`\u201d\u201c\u2019\u2018\u00bb\u203a]{1,127})"
    r"[\"'`\u201d\u201c\u2019\u2018\u00bb\u203a]|(?P<value>\S+))",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(COPULA_STOPWORDS)
_OPEN_QUOTES = "\"'`\u201c\u201e\u2018\u201a\u00ab\u2039"
_TRAILING = ".,;:!?)]}>\"'`\u201d\u201c\u2019\u2018\u00bb\u203a\u3002\u3001"


def _keyword_secrets(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _KEYWORD.finditer(text):
        if match.group("quoted"):
            spans.append(match.span("quoted"))
            continue
        raw = match.group("value")
        value = raw.lstrip(_OPEN_QUOTES)
        start = match.start("value") + len(raw) - len(value)
        value = value.rstrip(_TRAILING)
        if not value:
            continue
        if match.group("bare") and (len(value) < 4 or not re.search(r"[0-9]", value)):
            continue
        if match.group("copula") and value.lower() in _STOPWORDS:
            continue
        spans.append((start, start + len(value)))
    return spans


_FOLDED_CATEGORY = {"Zs": " ", "Pd": "-"}


@functools.lru_cache(maxsize=4096)
def _fold(ch: str) -> str:
    if ch == "\u00ad" or unicodedata.category(ch) == "Cf":
        return ""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        category = "Pd" if c == "\u2212" else unicodedata.category(c)
        if category == "Nd":
            out.append(str(unicodedata.decimal(c)))
        elif category != "Cf":
            out.append(_FOLDED_CATEGORY.get(category, c))
    return "".join(out)


def scan(text: str) -> list[tuple[int, int, str]]:
    if text.isascii():
        return _scan(text)
    parts, origin = [], []
    for k, ch in enumerate(text):
        folded = ch if ch < "\x80" else _fold(ch)
        parts.append(folded)
        origin += [k] * len(folded)
    spans, kept, previous_end = _scan("".join(parts)), [], 0
    for start, end, kind in spans:
        start, end = max(origin[start], previous_end), origin[end - 1] + 1
        if start < end:
            kept.append((start, end, kind))
            previous_end = end
    return kept


def _scan(text: str) -> list[tuple[int, int, str]]:
    candidates = []
    for priority, kind in enumerate(KINDS):
        validate = VALIDATORS[kind]
        for match in PATTERNS[kind].finditer(text):
            span = validate(match)
            if span:
                candidates.append((priority, span[0], span[1]))
    candidates += [(KINDS.index("SECRET"), start, end) for start, end in _keyword_secrets(text)]
    candidates.sort()
    taken = bytearray(len(text))
    kept = []
    for priority, start, end in candidates:
        if taken.find(1, start, end) < 0:
            taken[start:end] = b"\x01" * (end - start)
            kept.append((start, end, KINDS[priority]))
    return sorted(kept)
