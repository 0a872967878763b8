"""A synthetic, labelled corpus for the PII name/address tagger: Faker values in hand-written templates.

No NER dataset can be downloaded here, so the tagger learns from sentences like the ones that escalate
(support requests, messages, bookings) with person names and postal addresses from many Faker locales,
written the ways people write them (full, first or last only, titled, lower case, "Last, First").
Texts are 1-3 clauses joined with random punctuation. Clauses come in two disjoint sets: TRAIN builds
the training data, HELD_OUT the gate's evaluation, so the gate measures wording the tagger has never
seen. Cities, weekdays, months, companies and products fill other slots and stay unlabelled: they are
not personal data on their own; nor are honorifics and degrees ("Dr.", "MBA") around a name.

An example is (text, [(start, end, kind), ...]) with kinds PERSON and ADDRESS.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..pii_tagger import KINDS

TAGS = ["O"] + [f"{edge}-{kind}" for kind in KINDS for edge in "BI"]  # O, B-PERSON, I-PERSON, B-ADDRESS, ...
LOCALES = (
    "en_US",
    "en_GB",
    "en_IE",
    "en_AU",
    "de_DE",
    "de_AT",
    "fr_FR",
    "es_ES",
    "it_IT",
    "nl_NL",
    "pt_PT",
    "pl_PL",
    "sv_SE",
    "da_DK",
    "cs_CZ",
)

# Clauses are joined 1-3 at a time with random punctuation, so a name is seen at the start, in the
# middle and at the end of texts, next to addresses, numbers and other names, not in a few fixed frames.
# {name} / {first} / {last}: PERSON; {address} / {street}: ADDRESS; the other slots stay O.
TRAIN = [
    "Hi, my name is {name}",
    "this is {name}",
    "{name} here",
    "I am {first}",
    "it's {first} again",
    "my name is {first} {last}",
    "hello, {title} {last} speaking",
    "Dear {title} {last}",
    "Dear {first}",
    "Regards, {name}",
    "Thanks, {first}",
    "Kind regards, {name}",
    "cheers {first}",
    "Best, {first} {last}",
    "-- {name}",
    "Sincerely,\n{name}",
    "thank you {title} {last}",
    "Many thanks,\n{first}",
    "please ask {name} to call me back",
    "tell {first} that I will be late",
    "remind me to call {first} {last}",
    "can you transfer me to {name} from {company}",
    "the account holder is {name}",
    "I am writing on behalf of my mother, {name}",
    "please cancel the subscription for {last}, {first}",
    "send the invoice to {name}",
    "my husband {first} lost his card in {city}",
    "is {first} {last} allowed to sign",
    "the technician, {name}, never showed up",
    "contact person: {name}",
    "name: {name}",
    "Mr {last} and Mrs {last2} want separate bills",
    "{title} {last} booked a table for four",
    "{title} {last} called about the {product}",
    "{first} and {first2} both want to be on the lease",
    "change the recipient from {name} to {name2}",
    "is {name} still working at the {city} branch",
    "I spoke to {first} on the phone",
    "add {first} to my contacts",
    "set up a call with {first} and {first2}",
    "my daughter {first} needs a new {product}",
    "paid by {name} on {month} {day}",
    "{NAME} HAS NOT RECEIVED THE REFUND",
    "the card belongs to {name}",
    "{first} {last} is my landlord",
    "{name} will pick it up",
    "ask for {first} at the desk",
    "from: {name}",
    "to: {name}",
    "my colleague {name} has the details",
    "order placed by {name}",
    "our manager, {title} {last}, agreed",
    "Hallo, ich bin {name}",
    "mit freundlichen Grüßen, {name}",
    "Bonjour, je suis {name}",
    "Cordialement, {name}",
    "Hola, soy {name}",
    "Saludos, {first}",
    "Ciao, sono {name}",
    "Goedemiddag, u spreekt met {name}",
    "can you send the parcel to {address}",
    "I moved to {address} last month",
    "my billing address is {address}",
    "deliver it to {street}",
    "we live at {street} in {city}",
    "please forward my mail to {address}",
    "address: {address}",
    "ship to {address}",
    "the flat at {street} has no heating",
    "{address}",
    "{name}, {address}",
    "{name}\n{address}",
    "meine Adresse ist {address}",
    "j'habite {address}",
    "vivo en {address}",
    "the new office is at {street}",
    "{name} speaking",
    "you are speaking with {name}",
    "greetings from {first}",
    "{first} writes",
    "P.S. {first} says hi",
    "a letter from {name} arrived",
    "I am {name}'s neighbour",
    "{first}'s phone is broken",
    "Rechnung an {name}",
    "zu Händen von {name}",
    "à l'attention de {name}",
    "a nombre de {name}",
    "ten name van {name}",
    "per conto di {name}",
    "w imieniu {name}",
    "em nome de {name}",
    "bill it to {last}",
    "the {last} family moved to {address}",
    "{title} {last}'s order is late",
    "ring {first} on {weekday}",
    "{first}: call me",
    "c/o {name}, {address}",
    "attn: {name}",
    "customer {name} (account {order})",
    "my lawyer {name} disagrees",
    "{first} {last} wrote:",
    "the doctor, {title} {last}, prescribed it",
    "Sehr geehrte {title} {last}",
    "Estimado {first}",
    "Caro {first}",
    "Beste {first}",
    "Hej {first}",
    "{first}, are you there",
    "signed by {name} and {name2}",
    "the house on {street} is for sale",
    "wohnhaft in {address}",
    "residente in {address}",
    "mieszkam pod adresem {address}",
    "woonachtig op {address}",
    "moro em {address}",
    "bor på {address}",
]
HELD_OUT = [
    "Good morning, {name} speaking",
    "could {first} {last} please contact the office",
    "the package for {name} was left at the door",
    "my son {first} forgot his password",
    "please update the address on file to {address}",
    "thanks, {name}",
    "{title} {last} asked about the warranty",
    "Signed: {name}",
    "I'm {first}, the new tenant at {street}",
    "put {first} {last} on the guest list",
    "our accountant {name} will send the forms",
    "Guten Tag, mein Name ist {name}",
    "ask {first} if it is still on",
    "refund it to the card of {name}",
    "it was left at {address} but nobody was home",
    "Yours faithfully, {name}",
    "my wife {first} will call you",
    "{first} {last} is not the account owner",
    "the parcel went to {street} instead",
    "sono {name} e abito in {address}",
]
NEGATIVE = [  # no person, no address: the tagger must leave these alone
    "what is the weather in {city} on {weekday}",
    "book a flight to {city} for {month} {day}",
    "my {product} from {company} stopped charging",
    "how do i reset my {product}",
    "is the {city} store open on {weekday}",
    "order {order} has not arrived yet",
    "can I pay for {product} in {month}",
    "what's the exchange rate in {city}",
    "transfer 200 dollars to my savings account on {weekday}",
    "the meeting with {company} moved to {month} {day}",
    "I need a taxi from the airport to {city}",
    "set an alarm for 7am on {weekday}",
    "please cancel my order",
    "the {product} is broken",
    "does {company} deliver to {city}",
    "Thank you",
    "Best regards",
    "Guten Tag",
    "Bonjour",
    "Kind regards",
    "Hello",
    "thanks in advance",
    "I have a question about my bill",
    "the app crashes when I log in",
    "Vielen Dank für Ihre Hilfe",
    "Merci beaucoup",
    "Muchas gracias",
    "my internet is down since {weekday}",
    "New York is lovely in {month}",
    "Paris or {city}, whichever is cheaper",
    "Amazon Prime renewed in {month}",
    "Christmas Eve falls on a {weekday}",
    "Black Friday deals on the {product}",
    "the Rose Garden opens in {month}",
    "Sehr geehrte Damen und Herren",
    "Mit freundlichen Grüßen",
    "Buongiorno",
    "Grazie mille",
    "Dzień dobry",
    "Met vriendelijke groet",
    "Obrigado",
    "Tack så mycket",
    "Dear Sir or Madam",
    "To whom it may concern",
    "my Apple Watch stopped syncing",
    "Google Maps shows the wrong route",
    "Microsoft Teams keeps crashing",
    "the Tesla Model 3 needs a service",
    "I booked the Grand Hotel for {month} {day}",
    "Saint Patrick's Day is in {month}",
    "the Golden Gate Bridge was closed",
    "my Visa Gold card expired",
    "Customer Service never replied",
    "Happy New Year",
    "the Main Street branch is closed on {weekday}",
]
# first names that are also ordinary words: a query holding them is still a negative example
COMMON_WORDS = {
    "may",
    "will",
    "bill",
    "june",
    "april",
    "art",
    "rose",
    "faith",
    "hope",
    "grace",
    "joy",
    "mark",
    "pat",
    "sue",
    "an",
    "long",
    "wood",
    "chance",
    "jack",
    "ray",
    "page",
    "lane",
    "dawn",
    "summer",
    "autumn",
    "sky",
    "king",
    "love",
    "star",
    "major",
    "rich",
    "dale",
    "glen",
    "don",
    "guy",
    "young",
    "iris",
    "sage",
    "august",
    "holly",
    "ivy",
    "sandy",
    "pearl",
    "ruby",
    "amber",
    "crystal",
    "jade",
    "reed",
    "price",
    "cash",
    "case",
    "chase",
    "miles",
    "china",
    "paris",
    "georgia",
    "virginia",
    "carolina",
    "austin",
    "dallas",
    "jordan",
    "florence",
    "sydney",
    "eve",
    "dean",
    "frank",
    "ben",
}
SEPARATORS = [" ", ", ", ". ", "; ", "\n", " - ", "! ", "? ", ": "]
PRODUCTS = [
    "iPhone",
    "Galaxy tablet",
    "ThinkPad",
    "Kindle",
    "PlayStation",
    "router",
    "Visa card",
    "Premium plan",
    "coffee machine",
    "Windows licence",
    "Netflix subscription",
    "Surface Pro",
]
TITLES = {
    "en": ["Mr", "Mrs", "Ms", "Dr.", "Mr.", "Mrs.", "Prof."],
    "de": ["Herr", "Frau", "Dr."],
    "fr": ["M.", "Mme", "Monsieur", "Madame"],
    "es": ["Sr.", "Sra.", "Don", "Doña"],
    "it": ["Sig.", "Sig.ra", "Dott."],
    "nl": ["Dhr.", "Mevr."],
}
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_SLOT = re.compile(r"\{(\w+)\}")
# honorifics and degrees around a Faker name are not part of the PERSON span ("Dr." identifies nobody)
_TITLE_WORDS = {
    "mr",
    "mrs",
    "ms",
    "miss",
    "mx",
    "dr",
    "prof",
    "herr",
    "frau",
    "hr",
    "fru",
    "pan",
    "pani",
    "sig",
    "dott",
    "m",
    "mme",
    "mlle",
    "sr",
    "sra",
    "srta",
    "don",
    "doña",
    "dhr",
    "mevr",
    "sir",
    "lady",
}
_DEGREE_WORDS = {"md", "phd", "dds", "dvm", "mba", "jr", "ii", "iii", "iv", "v", "csc", "dsc", "esq"}
_PERSON_SLOTS = {
    "name": "name",
    "name2": "name",
    "NAME": "name",
    "first": "first",
    "first2": "first",
    "last": "last",
    "last2": "last",
}
_ADDRESS_SLOTS = {"address": "address", "street": "street"}


@dataclass(frozen=True)
class Example:
    text: str
    spans: tuple[tuple[int, int, str], ...]


def name_core(name: str) -> tuple[int, int]:
    """(start, end) of `name` without leading honorifics and trailing degrees: "Dr. Ann Lee MBA" -> "Ann Lee"."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", name)]
    first, last = 0, len(words)

    def bare(i):
        return name[words[i][0] : words[i][1]].rstrip(".,").lower()

    def dotted(i):  # "Dipl.-Ing.", "Univ.Prof.", "B.Sc.", "Ph.D." (but not "H.-Dieter")
        return name[words[i][0] : words[i][1]].endswith(".")

    while last - first > 1 and (bare(first) in _TITLE_WORDS or dotted(first)):
        first += 1
    while last - first > 1 and (bare(last - 1) in _DEGREE_WORDS or dotted(last - 1)):
        last -= 1
    return words[first][0], words[last - 1][1]


def _one_line_address(fake) -> str:
    return re.sub(r"\s*\n\s*", ", ", fake.address()).strip(", ")


def _value(slot: str, fake, rng: random.Random, language: str) -> tuple[str, str | None, tuple[int, int]]:
    """(text, kind or None, labelled part of the text) for one slot."""
    kind = None
    if slot in _PERSON_SLOTS:
        kind, part = "PERSON", _PERSON_SLOTS[slot]
        value = {"name": fake.name, "first": fake.first_name, "last": fake.last_name}[part]()
        if slot == "NAME":
            value = value.upper()
    elif slot in _ADDRESS_SLOTS:
        kind = "ADDRESS"
        value = _one_line_address(fake) if _ADDRESS_SLOTS[slot] == "address" else fake.street_address()
    elif slot == "title":
        value = rng.choice(TITLES.get(language, TITLES["en"]))
    elif slot in ("city", "city2"):
        value = fake.city()
    elif slot == "company":
        value = fake.company()
    elif slot == "product":
        value = rng.choice(PRODUCTS)
    elif slot == "weekday":
        value = rng.choice(WEEKDAYS)
    elif slot == "month":
        value = rng.choice(MONTHS)
    elif slot == "day":
        value = str(rng.randint(1, 28))
    elif slot == "order":
        value = f"#{rng.randint(10000, 999999)}"
    else:
        raise KeyError(f"unknown template slot {{{slot}}}")
    return value, kind, name_core(value) if kind == "PERSON" else (0, len(value))


def fill(template: str, fake, rng: random.Random, language: str = "en") -> Example:
    """Fill every slot; record the character spans of PERSON and ADDRESS values ("{first} {last}" is
    one PERSON span: spans of one kind with only spaces between them are merged)."""
    parts, spans, cursor, length = [], [], 0, 0
    for match in _SLOT.finditer(template):
        literal = template[cursor : match.start()]
        parts.append(literal)
        length += len(literal)
        value, kind, (core_start, core_end) = _value(match.group(1), fake, rng, language)
        if kind and spans and spans[-1][2] == kind and spans[-1][1] == length - len(literal) and not literal.strip():
            spans[-1] = (spans[-1][0], length + core_end, kind)
        elif kind:
            spans.append((length + core_start, length + core_end, kind))
        parts.append(value)
        length += len(value)
        cursor = match.end()
    parts.append(template[cursor:])
    return Example("".join(parts), tuple(spans))


def compose(clauses: list[str], fake, rng: random.Random, language: str) -> Example:
    """Join filled clauses with random separators; 15% of texts are typed all lower case."""
    text, spans = "", []
    for number, clause in enumerate(clauses):
        part = fill(clause, fake, rng, language)
        if number:
            separator = rng.choice(SEPARATORS)
            text += separator
            body = part.text[:1].upper() + part.text[1:] if separator in (". ", "! ", "? ", "\n") else part.text
            part = Example(body, part.spans)
        elif clauses[0][:1] != "{":
            part = Example(part.text[:1].upper() + part.text[1:], part.spans)
        spans += [(start + len(text), end + len(text), kind) for start, end, kind in part.spans]
        text += part.text
    if rng.random() < 0.8:
        text += rng.choice([".", "", "!", "?", " thanks", ", thank you."])
    if rng.random() < 0.15:
        text = text.lower()
    return Example(text, tuple(spans))


def real_negatives(texts: list[str], count: int, seed: int) -> list[str]:
    """Up to `count` real texts (e.g. CLINC150 queries) that hold no first name Faker knows, common words
    apart: real queries teach the tagger what ordinary lower-case text looks like."""
    from faker.providers.person.en_US import Provider

    names = {name.lower() for name in Provider.first_names} - COMMON_WORDS
    clean = [
        text
        for text in texts
        if "{" not in text and "}" not in text and not set(re.findall(r"[a-z]+", text.lower())) & names
    ]
    return random.Random(seed).sample(clean, min(count, len(clean)))


def generate(
    count: int,
    seed: int,
    clauses: list[str],
    negatives: float = 0.2,
    locales: tuple[str, ...] = LOCALES,
    real: list[str] | None = None,
) -> list[Example]:
    """`count` texts of 1-3 clauses; a `negatives` share of texts hold only NEGATIVE clauses. With `real`
    texts, they join the NEGATIVE clauses (names then also appear next to real queries), and each is
    also one text of its own (appended, beyond `count`)."""
    from faker import Faker

    negative_pool = NEGATIVE + list(real or [])
    rng = random.Random(seed)
    fakes = {}
    for locale in locales:
        fake = Faker(locale)
        fake.seed_instance(rng.randrange(1 << 30))
        for provider in fake.providers:  # it_IT builds its city list from a set: order varies per process
            if isinstance(getattr(provider, "cities", None), list):
                provider.cities = sorted(provider.cities)
        fakes[locale] = fake
    examples = []
    for _ in range(count):
        locale = rng.choice(locales)
        size = rng.choice((1, 2, 2, 3))
        if rng.random() < negatives:
            chosen = [rng.choice(negative_pool) for _ in range(size)]
        else:
            chosen = [rng.choice(clauses)] + [
                rng.choice(clauses if rng.random() < 0.5 else negative_pool) for _ in range(size - 1)
            ]
            rng.shuffle(chosen)
        examples.append(compose(chosen, fakes[locale], rng, locale.split("_")[0]))
    return examples + [Example(text, ()) for text in real or []]


def token_tags(offsets, special_mask, spans, tags: list[str] = TAGS) -> list[int]:
    """One tag index per token: B- on the first token inside a span, I- on the rest, -100 on special
    tokens (ignored by the loss). A token counts as inside when it overlaps the span."""
    index = {tag: i for i, tag in enumerate(tags)}
    out = []
    for (start, end), special in zip(offsets, special_mask):
        if special:
            out.append(-100)
            continue
        tag = "O"
        for span_start, span_end, kind in spans:
            if start < span_end and end > span_start:
                tag = ("B-" if start <= span_start else "I-") + kind
                break
        out.append(index[tag])
    return out
