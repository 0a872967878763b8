"""The PII scanner: both twins agree, find what they should, and leave dates & co. alone."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.pii_twins import COMPILED, NOT_BUILT, PURE, found

KINDS = {"EMAIL", "PHONE", "CARD", "IBAN", "IPV4", "IPV6", "MAC", "SECRET"}


POSITIVES = [
    ("write to john.doe+news@mail.example.co.uk today", "john.doe+news@mail.example.co.uk", "EMAIL"),
    ("call (415) 555-2671 now", "(415) 555-2671", "PHONE"),
    ("call 415-555-2671 now", "415-555-2671", "PHONE"),
    ("call 415.555.2671x123 now", "415.555.2671x123", "PHONE"),
    ("call +44 20 7946 0958 now", "+44 20 7946 0958", "PHONE"),
    ("call +14155552671 now", "+14155552671", "PHONE"),
    ("call 020 7946 0958 now", "020 7946 0958", "PHONE"),
    ("appelez le 06 12 34 56 78 svp", "06 12 34 56 78", "PHONE"),
    ("maestro 6759 6498 2648 declined", "6759 6498 2648", "CARD"),  # 12 digits: Maestro only
    ("ruf an: 030 12345678", "030 12345678", "PHONE"),
    ("ruf an: +49 30 1234567.", "+49 30 1234567", "PHONE"),
    ("bel +31(0)20 1234567", "+31(0)20 1234567", "PHONE"),
    ("chiamami al 3420837783, grazie", "3420837783", "PHONE"),  # Italian mobiles: no trunk 0, often no +39
    ("il mio cellulare 329924188.", "329924188", "PHONE"),
    ("pay with 4111 1111 1111 1111 please", "4111 1111 1111 1111", "CARD"),
    ("pay with 4111-1111-1111-1111 please", "4111-1111-1111-1111", "CARD"),
    ("amex 378282246310005.", "378282246310005", "CARD"),
    ("iban GB82 WEST 1234 5698 7654 32 ok", "GB82 WEST 1234 5698 7654 32", "IBAN"),
    ("iban DE89370400440532013000, ok", "DE89370400440532013000", "IBAN"),
    ("host 192.168.0.1:8080 down", "192.168.0.1", "IPV4"),
    ("loopback ::1 only", "::1", "IPV6"),
    ("link fe80::1%eth0", "fe80::1", "IPV6"),
    ("mapped ::ffff:192.0.2.128 here", "::ffff:192.0.2.128", "IPV6"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334.", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "IPV6"),
    ("mac aa:bb:cc:dd:ee:ff seen", "aa:bb:cc:dd:ee:ff", "MAC"),
    ("mac AA-BB-CC-DD-EE-FF seen", "AA-BB-CC-DD-EE-FF", "MAC"),
    ("mac aabb.ccdd.eeff seen", "aabb.ccdd.eeff", "MAC"),
    ("key sk-abcdefghijklmnopqrstuvwxyz123456 leaked", "sk-abcdefghijklmnopqrstuvwxyz123456", "SECRET"),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 leaked", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "SECRET"),
    ("aws AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE", "SECRET"),
    ("Authorization: Bearer abc123def456ghi", "abc123def456ghi", "SECRET"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "SECRET",
    ),
    ("token=3f786850e387550fdab836ed7e6dc881de23001b", "3f786850e387550fdab836ed7e6dc881de23001b", "SECRET"),
    ("random aB3xK9mQ2pL7vR4tY8wZ1nC5 here", "aB3xK9mQ2pL7vR4tY8wZ1nC5", "SECRET"),
    ("電話 +81 3 1234 5678。メールは taro@example.jp です", "+81 3 1234 5678", "PHONE"),
    ("メールはtaro@example.jpです", "taro@example.jp", "EMAIL"),
]

NEGATIVES = [
    "on 2024-03-15, 15/03/2024, 15.03.2024 and 03/15/2024",
    "at 12:30:45 or 09:15",
    "release 1.2.3, v2.10.0-rc1, 10.0.19045 and 3.11.7",
    "order ORD-2024-000123 and #123456 shipped",
    "request 123e4567-e89b-12d3-a456-426614174000 failed",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it",
    "total $1,299.99 or 1.299,00 EUR for 12 items of 500 g",
    "card 4111111111111112 fails Luhn, IBAN DE89370400440532013001 fails mod-97",
    "12 digits pass Luhn but are no Maestro IIN: 411111111117 or 3782 8224 6313",
    "octets 256.1.1.1 and 1.2.3.4.5 are not addresses",
    "class MyVeryLongCamelCaseClassName2 in /usr/lib/python3.12/site-packages",
    "numbers 42 and 1000000 and 3.14159",
    "tel. 12345 is too short, 1 2 3 4 5 6 7 8 9 0 is a list",
]


@pytest.mark.parametrize("text,value,kind", POSITIVES)
def test_finds(scan, text, value, kind):
    assert (value, kind) in found(scan, text)


@pytest.mark.parametrize("text", NEGATIVES)
def test_leaves_alone(scan, text):
    assert found(scan, text) == []


def test_priority_and_no_overlap(scan):
    # the e-mail wins over the secret-looking token inside it
    text = "mail aB3xK9mQ2pL7vR4tY8wZ1nC5@example.com"
    assert found(scan, text) == [("aB3xK9mQ2pL7vR4tY8wZ1nC5@example.com", "EMAIL")]


def test_edge_inputs(scan):
    assert scan("") == []
    assert scan("١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦") == []  # read as 12345678901234567: no card (Luhn), no phone
    text = "é" * 3 + " x@example.com " + "\U0001f600" + " 192.168.1.1"
    assert found(scan, text) == [("x@example.com", "EMAIL"), ("192.168.1.1", "IPV4")]
    with pytest.raises(TypeError):
        scan(b"bytes")


# --- the twins agree -----------------------------------------------------------------------

FRAGMENTS = [
    "john.doe@example.com",
    "a@b.co",
    "@",
    ".",
    "-",
    " ",
    "+",
    "(",
    ")",
    ":",
    "::",
    "=",
    "/",
    "x",
    "(415) 555-2671",
    "+44 20 7946 0958",
    "06 12 34 56 78",
    "0",
    "00",
    "4111 1111 1111 1111",
    "4111111111111111",
    "378282246310005",
    "GB82WEST12345698765432",
    "GB82 WEST 1234 5698 7654 32",
    "192.168.0.1",
    "255",
    "fe80::1",
    "::ffff:192.0.2.128",
    "2001:db8::1",
    "aa:bb:cc:dd:ee:ff",
    "aabb.ccdd.eeff",
    "sk-abcdefghijklmnopqrstuvwxyz123456",
    "Bearer ",
    "token=",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    "aB3xK9mQ2pL7vR4tY8wZ1nC5",
    "2024-03-15",
    "12:30:45",
    "v2.10.0-rc1",
    "ORD-2024-000123",
    "é",
    "ü",
    "電話",
    "١٢٣",
    "\U0001f600",
    "\x00",
]
texts = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(max_size=8),
        st.text(alphabet="0123456789 -.+():abcdefABCDEF@x", max_size=24),
    ),
    max_size=30,
).map("".join)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_twins_agree(text):
    assert COMPILED.scan(text) == PURE.scan(text)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
@settings(max_examples=100, deadline=None)
@given(st.text())
def test_twins_agree_on_any_text(text):
    assert COMPILED.scan(text) == PURE.scan(text)


@pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)
def test_twins_agree_on_long_text():
    rng = random.Random(7)
    text = " ".join(rng.choice(FRAGMENTS) + rng.choice(["", " ", ", ", "x"]) for _ in range(3000))
    spans = COMPILED.scan(text)
    assert spans == PURE.scan(text)
    assert len(spans) > 100


@settings(max_examples=150, deadline=None)
@given(texts)
def test_spans_are_sorted_disjoint_and_typed(text):
    for module in filter(None, (PURE, COMPILED)):
        spans = module.scan(text)
        for (s, e, kind), nxt in zip(spans, spans[1:] + [(len(text), len(text), "")]):
            assert 0 <= s < e <= nxt[0] and kind in KINDS


# --- quality on a Faker corpus -------------------------------------------------------------

LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT"]
CARD_TYPES = ["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16"]
TEMPLATES = ["{a} {v} {b}", "{a} ({v}) {b}", "{a}: {v}, {b}", "{a} {v}.", "{v} {b}"]


def negatives(fake, rng):
    """Values that look numeric or token-like but are not personal data."""
    return [
        fake.date(pattern=rng.choice(["%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%m/%d/%Y"])),
        fake.time(),
        f"v{rng.randint(0, 20)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
        f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}-rc{rng.randint(1, 5)}",
        f"ORD-{rng.randint(2015, 2030)}-{rng.randint(0, 999999):06d}",
        f"#{rng.randint(10000, 9999999)}",
        fake.uuid4(),
        fake.sha1(),
        fake.md5(),
        f"${rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}",
        f"{rng.randint(1, 99)} x {rng.randint(1, 999)} g",
        f"{rng.randint(1, 999999)}",
        f"{rng.randint(1, 99)},{rng.randint(0, 99):02d} €",
        f"{rng.randint(1, 9)}.{rng.randint(100, 999)}.{rng.randint(100, 999)}",
    ]


def corpus(seed=20240315, per_locale=40):
    from faker import Faker

    rng = random.Random(seed)
    docs = []  # (text, [(start, end, kind)])
    for locale in LOCALES:
        fake = Faker(locale)
        fake.seed_instance(seed)
        for _ in range(per_locale):
            card = fake.credit_card_number(card_type=rng.choice(CARD_TYPES))
            if rng.random() < 0.3:
                card = " ".join(card[k : k + 4] for k in range(0, len(card), 4))
            iban = fake.iban()
            if rng.random() < 0.3:
                iban = " ".join(iban[k : k + 4] for k in range(0, len(iban), 4))
            items = [
                ("EMAIL", fake.email()),
                ("PHONE", fake.phone_number()),
                ("CARD", card),
                ("IBAN", iban),
                ("IPV4", fake.ipv4()),
                ("IPV6", fake.ipv6()),
                ("MAC", fake.mac_address()),
            ]
            items += [(None, value) for value in rng.sample(negatives(fake, rng), 4)]
            rng.shuffle(items)
            text, truth = "", []
            for kind, value in items:
                template = rng.choice(TEMPLATES)
                before = template[: template.index("{v}")].format(a=fake.sentence(nb_words=5)[:-1])
                after = template[template.index("{v}") + 3 :].format(b=fake.sentence(nb_words=5))
                start = len(text) + len(before)
                if kind:
                    truth.append((start, start + len(value), kind))
                text += before + value + after + " "
            docs.append((text, truth))
    return docs


def quality(scan, docs):
    hits = {kind: 0 for kind in KINDS - {"SECRET"}}
    totals = dict.fromkeys(hits, 0)
    predicted = correct = 0
    for text, truth in docs:
        spans = set(scan(text))
        predicted += len(spans)
        for span in truth:
            totals[span[2]] += 1
            if span in spans:
                hits[span[2]] += 1
                correct += 1
    recall = {kind: hits[kind] / totals[kind] for kind in hits}
    return recall, correct / max(predicted, 1)


@pytest.fixture(scope="module")
def faker_docs():
    pytest.importorskip("faker")
    return corpus()


def test_quality_on_faker_corpus(scan, faker_docs):
    recall, precision = quality(scan, faker_docs)
    figures = " ".join(f"{kind}={value:.3f}" for kind, value in sorted(recall.items()))
    print(f"\n[{scan.__module__}] recall {figures} precision={precision:.3f} docs={len(faker_docs)}")
    for kind in ("EMAIL", "CARD", "IBAN", "IPV4", "IPV6", "MAC"):
        assert recall[kind] >= 0.98, (kind, recall[kind])
    assert precision >= 0.95
    assert recall["PHONE"] >= 0.9
