"""Tagger spans that cannot be a person's name or a postal address, taken back before redaction.

The PII tagger is a small model, and on technical text it sometimes calls a measurement an address
("Druckluft 6,8 bar" -> ADDRESS) or an acronym a name ("reported to HSE" -> PERSON). Each such span
costs the upstream the very words it needs to answer. These rules drop only what no name or address
can be, so they cost no recall on the held-out names and addresses (benchmarks/tagger_precision.py
measures both):

- an ADDRESS with a measurement in it: a decimal or grouped number ("14,2", "38,420") or a number with a
  unit of measure ("480 h", "11 kW", "12 l", "EUR 1,284"), also
  when the span stops short of the unit ("215 873" of "215 873,9 kWh"). Capital letters alone are no units
  here: "Hauptstraße 4 A", "123 W Main St" and the Dutch postcode "7865 KB" are addresses;
- an ADDRESS that is a standard's designation ("ISO 12944, RAL 7035", "ISO VG 220"), or whose only number
  has nine digits or more ("Pedido 4500412276"): no house number or postcode is that long;
- an ADDRESS of one word without a digit ("floor", "drgania") that no other ADDRESS span touches: a street
  or town name alone is no postal address, while the fragment "pl." of "pl. Staffa 24/93, ..." stays (and
  so does any span in a script written without spaces, "汕尾路D座");
- a one-word span written as an acronym ("KNX", "SAML", "UUIDs", "EPUB3") in a line that also has words
  in lower case: in mixed-case text names are written with an initial capital. In a line written all in
  capitals ("PORUCHA: VYSOKÁ TEPLOTA") nothing can be told from case, and the span stays;
- a PERSON of one word with a digit in it ("AJX-24666"): names have no digits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Units of more than one letter, and unit symbols, and amounts of money: none of them is part of an address.
# Capital letters alone are left out ("Hauptstraße 4 A", "123 W Main St"); "h" and "l" count only apart from
# the number ("480 h", "12 l"), as "Flat 37h" and "Studio 74l" are house numbers.
_CURRENCY = "EUR|USD|GBP|CHF|SEK|DKK|NOK|PLN|CZK|€|\\$|£"
_UNITS = (
    "%|‰|°[CFK]?|°dH|µm|um|nm|mm|cm|km|mm/s|m/s|m²|m³|m2|m3|ml|mL|hl|bar|mbar|hPa|kPa|MPa|Pa|psi|"
    "mV|kV|mA|kA|µA|kW|MW|kWh|MWh|Wh|kVA|kvar|Hz|kHz|MHz|GHz|rpm|U/min|Nm|kN|kg|mg|µg|"
    "min|ms|µs|ns|dB|dBm|dBA|lux|lx|ppm|ppb|kB|Gbit/s|Mbit/s|Mbps|Gbps|"
    "liter|liters|litre|litres|litro|litros|litri|litrów|litry|litrů|"
    "pcs|szt|Stk|stk|ks|uds|pz|" + _CURRENCY  # pieces: "4 szt.", "2 Stk"
)
_UNIT_AFTER_NUMBER = rf"(?:\s?(?:{_UNITS})|\s[hl])(?!\w)"
_MEASUREMENT = re.compile(rf"(?<!\w)(?:\d+(?:[.,]\d+)?{_UNIT_AFTER_NUMBER}|(?:{_CURRENCY})\s?\d)")
_GROUPED_OR_DECIMAL = re.compile(r"\d[.,]\d")
# the tail of a number the span cut short: "215 873" of "215 873,9 kWh"
_MEASUREMENT_TAIL = re.compile(rf"(?:[.,]\d+)?{_UNIT_AFTER_NUMBER}")
# a standard's designation: "ISO 12944", "ISO VG 220", "UL 61010-1", "ASTM B117", "EN 60204-1", "DIN EN 10204"
_STANDARD = re.compile(
    r"(?<!\w)(?:ISO|IEC|EN|DIN|VDE|VDI|ASTM|ASME|ANSI|UL|RAL|SAE|NBR|BS|JIS|NFPA|IEEE|API)"
    r"(?:[ /-][A-Z]{1,3})*[ -][A-Z]?\d"  # a separator first: "BS1 4DJ" and "EN1 1AA" are UK postcodes
)
# no house number or postcode has 9 digits in a row; order, delivery and waybill numbers do
_LONG_NUMBER = re.compile(r"(?<!\d)\d{9,}(?!\d)")
_ACRONYM = re.compile(r"[A-Z][A-Z0-9]*[A-Z0-9]s?")  # KNX, EPUB3, UUIDs
_LETTER_WORD = re.compile(r"[^\W\d_]{2,}")
# Chinese, Japanese and Thai put no spaces between words: one "word" there can be a whole address
_SPACELESS_SCRIPT = re.compile(r"[\u0E00-\u0E7F\u2E80-\u9FFF\uF900-\uFAFF]")
_TOUCHING = 2  # characters between two spans of one address: ", " or " "


def plausible(text: str, spans: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The tagger's (start, end, kind) spans of `text` that could be a name or an address."""
    return [span for span in spans if veto(text, span, spans) is None]


def veto(text: str, span: tuple[int, int, str], spans: Sequence[tuple[int, int, str]] = ()) -> str | None:
    """Why `span` (one of the tagger's `spans` of `text`) cannot be a name or an address; None if it can."""
    start, end, kind = span
    value = text[start:end].strip(" ,;:()[]")
    words = value.split()
    if kind == "ADDRESS":
        if _GROUPED_OR_DECIMAL.search(value) or _MEASUREMENT.search(value):
            return "measurement"
        if value[-1:].isdigit() and _MEASUREMENT_TAIL.match(text, end):
            return "measurement"
        if _STANDARD.search(value):
            return "standard"
        if _LONG_NUMBER.search(value) and not re.search(r"\d", _LONG_NUMBER.sub("", value)):
            return "identifier"
        if (
            len(words) == 1
            and not any(char.isdigit() for char in value)
            and not _SPACELESS_SCRIPT.search(value)
            and not _touches_address(span, spans)
        ):
            return "one word"
    if len(words) == 1 and _ACRONYM.fullmatch(words[0]) and _has_lower_case_word(text):
        return "acronym"
    if kind == "PERSON" and len(words) == 1 and any(char.isdigit() for char in value):
        return "digits"
    return None


def _touches_address(span: tuple[int, int, str], spans: Sequence[tuple[int, int, str]]) -> bool:
    start, end, _ = span
    return any(
        kind == "ADDRESS" and (0 <= other_start - end <= _TOUCHING or 0 <= start - other_end <= _TOUCHING)
        for other_start, other_end, kind in spans
        if (other_start, other_end) != (start, end)
    )


def _has_lower_case_word(text: str) -> bool:
    return any(word[1:].islower() for word in _LETTER_WORD.findall(text))
