"""A Unicode-variant leak corpus for the PII scanner.

Values of every kind the scanner knows, written the ways people really type them: grouped with no-break,
narrow no-break, thin or figure spaces, in full-width forms, with zero-width characters inside, IBANs in
lower or mixed case. Each value sits in a sentence frame written for this corpus only (the test asserts
the frames share nothing with the tagger's training clauses in edge_runtime/build/pii_corpus.py) and
holding no digit, so a digit run that survives redaction can only come from the value.

`corpus(seed)` -> [Sample(kind, variant, value, text, frame)]; `leaks(sample, redacted_text)` says which
parts of the value survived (digit runs of 4 or more, words of 3 or more letters, two neighbouring groups
such as "337 211" or "ab:cd"), after normalising the surviving text the way the scanner does.
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from dataclasses import dataclass

KINDS = ("CARD", "IBAN", "EMAIL", "PHONE", "IPV4", "IPV6", "MAC", "SECRET-key", "SECRET-phrase")
SPACES = {"nbsp": "\u00a0", "narrow-nbsp": "\u202f", "thin-space": "\u2009", "figure-space": "\u2007"}
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
VARIANTS = ("ascii", *SPACES, "fullwidth", "zero-width", "lower-case", "mixed")
CASE_VARIANTS = {"IBAN"}  # lower-case applies to the kinds whose letters are case-free data

FRAMES = {
    "CARD": [
        "the terminal at the pharmacy rejected {v} twice",
        "charge the annual fee to {v}, not the old one",
        "a replacement for {v} should arrive by courier",
        "{v} was declined at the fuel pump",
    ],
    "IBAN": [
        "wire the deposit to {v} before friday",
        "beneficiary account {v} belongs to the landlord",
        "refunds go back to {v} within a week",
        "{v} is the account on the standing order",
    ],
    "EMAIL": [
        "forward the diagnostics to {v} please",
        "the ticket owner reads {v} only in the evening",
        "cc {v} on every reply about the boiler",
        "{v} asked for the quarterly statement",
    ],
    "PHONE": [
        "the courier dialled {v} without luck",
        "reach the site foreman on {v} after lunch",
        "{v} keeps sending me voicemails",
        "text the gate code to {v} instead",
    ],
    "IPV4": [
        "the gateway answers on {v} again",
        "firewall blocked {v} overnight",
        "telemetry arrives from {v} every minute",
    ],
    "IPV6": [
        "the gateway answers on {v} again",
        "firewall blocked {v} overnight",
        "telemetry arrives from {v} every minute",
    ],
    "MAC": [
        "the rogue adapter {v} joined the guest network",
        "whitelist hardware address {v} on the switch",
        "{v} shows up twice in the lease table",
    ],
    "SECRET-key": [
        "the build log printed {v} in clear text",
        "rotate {v} before the auditors look",
        "somebody pasted {v} into the shared channel",
    ],
}
# keyword phrases, one or more per language of the tagger corpus; "{v}" is the secret
PHRASES = [
    ("en", "my password is {v}"),
    ("en", "password: {v}, do not share it"),
    ("en", "pwd = {v}"),
    ("en", "the new passcode is {v} from today"),
    ("en", "use passphrase: {v}"),
    ("en", "PIN {v}"),
    ("en", "token {v} for the staging box"),
    ("de", "Das Passwort lautet {v}"),
    ("de", "Kennwort: {v}"),
    ("fr", "le mot de passe est {v}"),
    ("fr", "code PIN : {v}"),
    ("es", "la contraseña es {v}"),
    ("es", "clave: {v}"),
    ("it", "la parola d'ordine è {v}"),
    ("nl", "het wachtwoord is {v}"),
    ("pt", "a senha é {v}"),
    ("pl", "moje hasło jest {v}"),
    ("sv", "lösenordet är {v}"),
    ("da", "adgangskoden er {v}"),
    ("cs", "heslo je {v}"),
]
PHRASE_WRAPS = ["{p}", "fyi {p}", "{p}.", "{p} - thanks", "reminder: {p}!"]

CARD_TYPES = ["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16"]
IBAN_LOCALES = ["de_DE", "en_GB", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "pt_PT", "cs_CZ", "da_DK", "sv_SE"]
EMAIL_LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "sv_SE"]
# country calling code, national groups as digit counts (first digit of the first group not 0)
PHONE_PLANS = [
    ("+49", (2, 7)),
    ("+49", (3, 8)),
    ("+44", (2, 4, 4)),
    ("+33", (1, 2, 2, 2, 2)),
    ("+34", (3, 3, 3)),
    ("+39", (2, 4, 4)),
    ("+31", (2, 3, 4)),
    ("+351", (3, 3, 3)),
    ("+48", (2, 3, 2, 2)),
    ("+46", (1, 3, 3, 2)),
    ("+45", (2, 2, 2, 2)),
    ("+420", (3, 3, 3)),
    ("+1", (3, 3, 4)),
]
SECRET_KEYS = [("sk-", 40), ("ghp_", 36), ("glpat-", 20), ("xoxb-", 24), ("sk_live_", 24), ("AKIA", 16)]


@dataclass(frozen=True)
class Sample:
    kind: str
    variant: str
    value: str  # as written in the text
    text: str
    frame: str  # the text around the value


def _phone(rng: random.Random) -> str:
    code, groups = rng.choice(PHONE_PLANS)
    parts = []
    for number, size in enumerate(groups):
        first = rng.choice("123456789") if number == 0 else rng.choice(string.digits)
        parts.append(first + "".join(rng.choice(string.digits) for _ in range(size - 1)))
    if code == "+1":
        parts[0] = rng.choice("23456789") + parts[0][1:]
        parts[1] = rng.choice("23456789") + parts[1][1:]
        return rng.choice([f"+1 {' '.join(parts)}", f"({parts[0]}) {parts[1]}-{parts[2]}"])
    return " ".join([code, *parts])


def _secret_key(rng: random.Random) -> str:
    prefix, size = rng.choice(SECRET_KEYS)
    if prefix == "AKIA":
        return prefix + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(size))
    alphabet = string.ascii_letters + string.digits
    while True:
        body = "".join(rng.choice(alphabet) for _ in range(size))
        if any(c.isdigit() for c in body):
            return prefix + body


def _phrase_secret(rng: random.Random, fake, bare: bool) -> str:
    """A password as people choose them: a word and digits, a PIN, or a random string."""
    if bare:  # `PIN 4821`, `token x7...`: only secret-looking values are taken without ':' or 'is'
        return "".join(rng.choice(string.digits) for _ in range(rng.choice([4, 4, 6, 8])))
    shape = rng.random()
    if shape < 0.4:
        return fake.word().capitalize() + str(rng.randint(10, 99999))
    if shape < 0.7:
        return fake.password(length=rng.randint(8, 16), special_chars=False)
    if shape < 0.85:
        return "".join(rng.choice(string.digits) for _ in range(rng.choice([4, 6])))
    return fake.word() + rng.choice("!#$%&*") + fake.word() + str(rng.randint(1, 999))


def _values(kind: str, rng: random.Random, fakes: dict) -> tuple[str, str]:
    """(value, frame with "{v}")."""
    en = fakes["en_US"]
    if kind == "CARD":
        return en.credit_card_number(card_type=rng.choice(CARD_TYPES)), rng.choice(FRAMES[kind])
    if kind == "IBAN":
        return fakes[rng.choice(IBAN_LOCALES)].iban(), rng.choice(FRAMES[kind])
    if kind == "EMAIL":
        return fakes[rng.choice(EMAIL_LOCALES)].email(), rng.choice(FRAMES[kind])
    if kind == "PHONE":
        return _phone(rng), rng.choice(FRAMES[kind])
    if kind == "IPV4":
        return en.ipv4(), rng.choice(FRAMES[kind])
    if kind == "IPV6":
        return en.ipv6(), rng.choice(FRAMES[kind])
    if kind == "MAC":
        mac = en.mac_address()
        return rng.choice([mac, mac.upper(), mac.replace(":", "-")]), rng.choice(FRAMES[kind])
    if kind == "SECRET-key":
        return _secret_key(rng), rng.choice(FRAMES[kind])
    _, phrase = rng.choice(PHRASES)
    bare = phrase.startswith(("PIN {v}", "token {v}"))
    frame = rng.choice(PHRASE_WRAPS).replace("{p}", phrase)
    return _phrase_secret(rng, en, bare), frame


def _grouped(kind: str, value: str) -> str:
    """Cards and IBANs as printed: groups of four."""
    if kind in ("CARD", "IBAN") and " " not in value:
        return " ".join(value[k : k + 4] for k in range(0, len(value), 4))
    return value


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


def _zero_width(value: str, rng: random.Random, count: int) -> str:
    chars = list(value)
    for _ in range(count):
        chars.insert(rng.randint(1, len(chars) - 1), rng.choice(ZERO_WIDTH))
    return "".join(chars)


def _variant(kind: str, variant: str, value: str, frame: str, rng: random.Random) -> tuple[str, str]:
    """(value as written, frame as written) for one variant."""
    if variant == "ascii":
        return value, frame
    if variant in SPACES:
        space = SPACES[variant]
        return _grouped(kind, value).replace(" ", space), frame.replace(" ", space)
    if variant == "fullwidth":
        return fullwidth(value), frame
    if variant == "zero-width":
        return _zero_width(value, rng, rng.randint(1, 3)), frame
    if variant == "lower-case":
        return _grouped(kind, value).lower() if rng.random() < 0.5 else value.lower(), frame
    # mixed: a no-break kind of space, some full-width characters, a zero-width character, any case
    space = rng.choice(list(SPACES.values()))
    written = "".join(fullwidth(c) if rng.random() < 0.3 else c for c in _grouped(kind, value).replace(" ", space))
    if kind in CASE_VARIANTS:
        written = "".join(c.lower() if rng.random() < 0.5 else c for c in written)
    return _zero_width(written, rng, 1), frame.replace(" ", space)


def corpus(seed: int, per_cell: int = 12) -> list[Sample]:
    """per_cell samples for every kind x variant (lower-case only for CASE_VARIANTS)."""
    from faker import Faker

    rng = random.Random(seed)
    fakes = {}
    for locale in {"en_US", *IBAN_LOCALES, *EMAIL_LOCALES}:
        fakes[locale] = Faker(locale)
        fakes[locale].seed_instance(seed)
    samples = []
    for kind in KINDS:
        for variant in VARIANTS:
            if variant == "lower-case" and kind not in CASE_VARIANTS:
                continue
            for _ in range(per_cell):
                value, frame = _values(kind, rng, fakes)
                written, frame = _variant(kind, variant, value, frame, rng)
                before, after = frame.split("{v}")
                samples.append(Sample(kind, variant, written, before + written + after, before + " " + after))
    return samples


_PLACEHOLDER = re.compile(r"<[A-Z0-9]+(?:_[0-9]+)?>")
_DIGITS = re.compile(r"[0-9]{4,}")
_WORDS = re.compile(r"[^\W\d_]{3,}")
_GROUPS = re.compile(r"[0-9A-Za-z]+")


def view(text: str) -> str:
    """The text as the scanner is specified to read it (written out here, independently of the scanner):
    Cf and soft hyphens gone, NFKC, Zs -> ' ', dashes -> '-', any decimal digit -> its ASCII digit."""
    out = []
    for ch in text:
        if ch == "\u00ad" or unicodedata.category(ch) == "Cf":
            continue
        for c in unicodedata.normalize("NFKC", ch):
            category = unicodedata.category(c)
            if category == "Zs":
                out.append(" ")
            elif category == "Pd" or c == "\u2212":
                out.append("-")
            elif category == "Nd":
                out.append(str(unicodedata.decimal(c)))
            elif category != "Cf":
                out.append(c)
    return "".join(out)


def leaks(sample: Sample, redacted_text: str) -> list[str]:
    """The parts of the value that survive in redacted_text: digit runs of 4 or more, words of 3 or more letters
    (words the frame holds too do not count)."""
    surviving = _PLACEHOLDER.sub(" ", view(redacted_text))
    value = view(sample.value)
    value_digits = "".join(c for c in value if c.isdigit())
    found = []
    for run in _DIGITS.findall(surviving):
        if any(run[k : k + 4] in value_digits for k in range(len(run) - 3)):
            found.append(run)
    # two neighbouring groups of the value ("337 211", "ab:cd", "doe@example"): catches short-group values
    # (phones, IPs, MACs) whose runs alone are shorter than four digits
    lowered = surviving.lower()
    if value.lower() in lowered:
        found.append(value)  # whole, whatever its shape
    groups = list(_GROUPS.finditer(value))
    for left, right in zip(groups, groups[1:]):
        piece = value[left.start() : right.end()]
        if right.start() - left.end() <= 3 and len(left.group()) + len(right.group()) >= 4 and piece.lower() in lowered:
            found.append(piece)
    frame_words = {word.lower() for word in _WORDS.findall(view(sample.frame))}
    value_words = {word.lower() for word in _WORDS.findall(value)} - frame_words
    found += sorted(word for word in {w.lower() for w in _WORDS.findall(surviving)} if word in value_words)
    return found
