"""Which tagger spans are taken back before redaction (edge_runtime.pii_vetoes), and which never are.

The spans here are what a tagger could propose; the rules decide on the text alone, so no model is needed.
Whether the shipped tagger gains from them is measured in test_pii_tagger.py and benchmarks/tagger_precision.py.
"""

from __future__ import annotations

import pytest

from edge_runtime.pii_vetoes import plausible, veto


def _span(text: str, value: str, kind: str) -> tuple[int, int, str]:
    start = text.index(value)
    return start, start + len(value), kind


@pytest.mark.parametrize(
    ("text", "value", "kind", "reason"),
    [
        ("Druckluft 6,8 bar, Taupunkt +2 °C.", "Druckluft 6,8 bar,", "ADDRESS", "measurement"),
        ("Truck scale reading 38,420 kg gross.", "38,420 kg gross", "ADDRESS", "measurement"),
        ("Salt spray test ASTM B117, 480 h, no red rust.", "ASTM B117, 480 h,", "ADDRESS", "measurement"),
        ("Duty advanced by broker, amount EUR 1,284.37.", "EUR 1,284", "ADDRESS", "measurement"),
        ("Stav hlavního elektroměru: 215 873,9 kWh", "215 873", "ADDRESS", "measurement"),
        ("Oil change, ISO VG 220, 11 litres.", "11 litres", "ADDRESS", "measurement"),
        ("Paint system C4-H per ISO 12944, RAL 7035.", "ISO 12944, RAL 7035", "ADDRESS", "standard"),
        ("Salt spray test to ASTM B117 passed.", "ASTM B117", "ADDRESS", "standard"),
        ("Pedido 4500412276, incoterm FCA.", "Pedido 4500412276", "ADDRESS", "identifier"),
        ("Tower 2, floor 14, IDF closet at 29 °C.", "floor", "ADDRESS", "one word"),
        ("reported to HSE, LOTO reviewed.", "HSE", "PERSON", "acronym"),
        ("Fixed: UUIDs in the audit log were truncated.", "UUIDs", "PERSON", "acronym"),
        ("conf value should be XML NAME for EPUB3", "EPUB3", "PERSON", "acronym"),
        ("Ticket AJX-24666 closed.", "AJX-24666", "PERSON", "digits"),
    ],
)
def test_what_no_name_or_address_can_be_is_taken_back(text, value, kind, reason):
    span = _span(text, value, kind)
    assert veto(text, span, [span]) == reason
    assert plausible(text, [span]) == []


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("I moved to Hauptstraße 4 A, 10115 Berlin.", "Hauptstraße 4 A, 10115 Berlin", "ADDRESS"),
        ("Ship it to 123 W Main St, Springfield.", "123 W Main St, Springfield", "ADDRESS"),
        ("Ik woon op Verastraat 182, 7865KB, Ressen.", "Verastraat 182, 7865KB, Ressen", "ADDRESS"),
        ("Ik woon op Juliasteeg 195, 5509 MB Nieuwpoort.", "Juliasteeg 195, 5509 MB Nieuwpoort", "ADDRESS"),
        ("Write to boulevard de Meunier please.", "boulevard de Meunier", "ADDRESS"),
        ("Send it to 10 Broad Street, Bristol BS1 4DJ.", "10 Broad Street, Bristol BS1 4DJ", "ADDRESS"),
        ("Moved to 5 Church Lane, Enfield EN1 1AA last year.", "5 Church Lane, Enfield EN1 1AA", "ADDRESS"),
        ("Rua Augusta 12, 01310100 São Paulo", "Rua Augusta 12, 01310100 São Paulo", "ADDRESS"),
        ("I live at Hauptstraße 5, 10 km from the plant.", "Hauptstraße 5", "ADDRESS"),
        ("Send it to Flat 37h, Wilkins Forges.", "Flat 37h, Wilkins Forges", "ADDRESS"),
        ("请寄到汕尾路D座", "汕尾路D座", "ADDRESS"),
        ("Please ask Margarethe about the pump.", "Margarethe", "PERSON"),
        ("call me tom", "tom", "PERSON"),
        # all in capitals: case tells nothing, so a name stays a name
        ("ANRUF VON MÜLLER WEGEN PUMPE 3", "MÜLLER", "PERSON"),
        ("Stephen Holt DVM speaking", "Stephen Holt DVM", "PERSON"),
    ],
)
def test_names_and_addresses_are_kept(text, value, kind):
    span = _span(text, value, kind)
    assert veto(text, span, [span]) is None
    assert plausible(text, [span]) == [span]


def test_a_one_word_fragment_of_an_address_stays_with_the_rest():
    text = "Please update the address to pl. Staffa 24/93, 39-581 Kołobrzeg today."
    fragment = _span(text, "pl.", "ADDRESS")
    rest = _span(text, "Staffa 24/93, 39-581 Kołobrzeg", "ADDRESS")
    assert plausible(text, [fragment, rest]) == [fragment, rest]
    assert plausible(text, [fragment]) == []  # alone, one word without a number is no address


def test_only_the_implausible_spans_of_a_line_go():
    text = "Anna Berg reported 14,2 bar at the inlet to HSE."
    name, pressure, acronym = (
        _span(text, "Anna Berg", "PERSON"),
        _span(text, "14,2 bar", "ADDRESS"),
        _span(text, "HSE", "PERSON"),
    )
    assert plausible(text, [name, pressure, acronym]) == [name]


@pytest.mark.parametrize(
    "locale",
    ["en_US", "en_GB", "de_DE", "de_CH", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "cs_CZ", "pt_PT", "pt_BR"]
    + ["sv_SE", "da_DK", "ja_JP", "zh_CN", "ru_RU", "en_IN"],
)
def test_no_name_or_address_faker_writes_is_taken_back(locale):
    """The rules must cost no recall: every name, address and street address Faker writes, as a whole span."""
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(20261202)
    for _ in range(200):
        for value, kind in ((fake.name(), "PERSON"), (fake.address(), "ADDRESS"), (fake.street_address(), "ADDRESS")):
            text = f"Please send the spare parts to {value} before Friday."
            span = _span(text, value, kind)
            assert veto(text, span, [span]) is None, (value, veto(text, span, [span]))
