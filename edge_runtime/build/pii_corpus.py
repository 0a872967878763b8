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
import uuid
from dataclasses import dataclass
from pathlib import Path

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
# Technical text (hard negatives: no person, no address). Identifiers, versions, codes, measurements,
# standards and site names ("Line 3", "Bay 12", "Gate B") look like names and house numbers to a tagger that
# has only seen support requests; these teach it to leave them alone, alone and next to real names.
# TECHNICAL trains; TECHNICAL_HELD_OUT (other frames) joins the held-out set, where it counts among the
# texts without PII that the bias fit and the gate measure. datasets/technical/negatives.txt (hand-written,
# evaluation only) is neither.
TECHNICAL = [
    "Firmware {version} was flashed to controller {device}",
    "torque the {thread} bolts to {torque}",
    "{equipment} on {site} tripped with fault {code}",
    "outlet temperature reached {temp} at {time}",
    "replace part {part} on the {equipment}",
    "serial number {serial}, installed {date}",
    "invoice {invoice} covers {count} units of {part}",
    "request id {uuid} failed with {code}",
    "commit {hash} fixes the {equipment} timeout",
    "the panel is certified to {standard}",
    "wire the sensor over {bus} to {device}",
    "GPS fix {coord} logged at {time}",
    "pressure dropped to {pressure} on {site}",
    "set the {equipment} speed to {speed}",
    "{site} is down for maintenance until {time}",
    "pallets go to {site}, not {site2}",
    "fitted a {pipe} flange to the {equipment}",
    "upgrade from {version} to {version2} on {date}",
    "error {code} after the {version} update",
    "the {product_model} reports {code} on boot",
    "{device} lost comms at {time} ({code})",
    "measured {voltage} and {current} at the terminals",
    "order {po} ships from {site} on {date}",
    "check the {thread} anchor on {site}",
    "{count} alarms on {device} since {date}",
    "replace the {equipment} filter every {count} hours",
    "ticket {ticket}: {equipment} vibration at {speed}",
    "calibrated against {standard} on {date}",
    "hash {hash} matches the release build",
    "log level DEBUG on {device}, build {version}",
    "move the {equipment} from {site} to {site2}",
    "cabinet IP rating {ip_rating}, ambient {temp}",
    "{equipment} {serial} returned under RMA {rma}",
    "the batch {batch} failed QA at {temp}",
    "{product_model} running {version} at {site}",
    "conveyor on {site} jammed at {time}",
    "node {device} at {coord} is offline",
    "use {pipe} pipe with {thread} fittings",
    "we run {standard} on every {equipment}",
    "{site}: {count} units done, {count2} rejected",
    "{date} {time} {device} {code}",
    "spec: {voltage}, {current}, {temp} max",
]
# Technical text as it is written in the corpus's other languages (nouns capitalised in German, a
# sentence that opens on a measured quantity), and log lines that open on a program or module name:
# a capitalised or line-initial word there is a noun or a daemon, not a surname.
TECHNICAL += [
    "Neue Firmware {version} in Steuerung {device} eingespielt",
    "Anzugsmoment für {thread} Schrauben beträgt {torque}",
    "Verdichter in {site} meldet Fehler {code}",
    "Vorlauftemperatur {temp}, Rücklauf {temp2}",
    "Ersatzteil {part} für die Pumpe bestellt",
    "Bestellung {po} wird am {date} geliefert",
    "Messwert {voltage} an Klemme X{count2}",
    "Wartung an der Presse bis {time} geplant",
    "Mise à jour du firmware {version} sur l'automate {device}",
    "Couple de serrage {torque} pour les vis {thread}",
    "Défaut {code} sur le compresseur, {site}",
    "Pression d'huile {pressure} à la sortie de la pompe",
    "Commande {po} livrée le {date}",
    "Actualizado el firmware a {version} en el equipo {device}",
    "Par de apriete {torque} en los tornillos {thread}",
    "Alarma {code} en la bomba de {site}",
    "Aggiornato il firmware {version} sul controllore {device}",
    "Coppia di serraggio {torque} per le viti {thread}",
    "Allarme {code} sul compressore della {site}",
    "Firmware {version} geïnstalleerd op besturing {device}",
    "Storing {code} op de compressor in {site}",
    "Aktualizacja oprogramowania {version} na sterowniku {device}",
    "Alarm {code} na sprężarce, ciśnienie {pressure}",
    "Firmware {version} instalado no controlador {device}",
    "Larm {code} på kompressorn i {site}",
    "Fejl {code} på pumpen, tryk {pressure}",
    "Chyba {code} na kompresoru, tlak {pressure}",
    "{daemon}: {log_message}",
    "{daemon}[{count}]: {log_message}",
    "[{module}] {log_message}",
    "{date} {time} {daemon} {log_level} {log_message}",
    "{module}: {count} retries, giving up ({code})",
    "{brand} module {product_model} reports {code}",
    "use {brand} {part} on the {thread} threads",
    "{bus} link to {device} restored after {count} s",
]
# Ordinary words of the text's language (Faker's word lists: de, fr, es, it, nl, pl, da, cs, en) around
# codes and places: in the corpus, most non-English words otherwise sit next to a name or an address, and
# the tagger learned that a foreign capitalised word is one. Five copies: a quarter of the hard negatives.
ORDINARY = ["{words}", "{words} ({code})", "{words}, {site}", "{words} {version}", "{code}: {words}"]
TECHNICAL += ORDINARY * 5
TECHNICAL_HELD_OUT = [
    "controller {device} now runs firmware {version}",
    "apply {torque} to each {thread} nut",
    "fault {code} again on the {site} {equipment}",
    "{temp} measured at the {equipment} outlet",
    "part {part} is out of stock until {date}",
    "the unit with serial {serial} is back",
    "PO {po} still open, invoice {invoice} paid",
    "trace {uuid} shows {code}",
    "rolled back to {hash}",
    "{standard} audit passed on {site}",
    "{device} talks {bus} at {speed}",
    "drone landed at {coord}",
    "{site} needs a new {equipment} by {date}",
    "{pipe} valve on {site} leaks at {pressure}",
    "{product_model} stuck at {version}",
    "{words}?",
    "{site}: {words} - {code}",
    "Steuerung {device} läuft jetzt mit {version}",
    "Panne {code} encore sur la ligne, {site}",
    "Temperatura de salida {temp} en {site}",
    "Errore {code} dopo l'aggiornamento a {version}",
    "{daemon} restarted: {log_message}",
    "[{module}] {log_level}: {log_message}",
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


def _pick(*choices):
    return lambda rng: rng.choice(choices)


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _alnum(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789") for _ in range(count))


def _version(rng: random.Random) -> str:
    core = ".".join(str(rng.randint(0, 30)) for _ in range(rng.choice((2, 3, 3, 4))))
    return rng.choice(("", "", "v", "V")) + core + rng.choice(("", "", "", "-rc1", "-beta", "b", " LTS"))


def _date(rng: random.Random) -> str:
    year, month, day = rng.randint(2015, 2027), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        (
            f"{year}-{month:02d}-{day:02d}",
            f"{day:02d}/{month:02d}/{year}",
            f"{day:02d}.{month:02d}.{year}",
            f"{day} {MONTHS[month - 1][:3]} {year}",
            f"{MONTHS[month - 1]} {day}",
        )
    )


def _time(rng: random.Random) -> str:
    hour, minute = rng.randint(0, 23), rng.randint(0, 59)
    return rng.choice(
        (f"{hour:02d}:{minute:02d}", f"{hour:02d}:{minute:02d}:{rng.randint(0, 59):02d} UTC", f"{hour}h{minute:02d}")
    )


def _coord(rng: random.Random) -> str:
    lat, lon = rng.uniform(-60, 70), rng.uniform(-170, 170)
    return rng.choice(
        (
            f"{lat:.4f}, {lon:.4f}",
            f"{abs(lat):.5f}{'N' if lat > 0 else 'S'} {abs(lon):.5f}{'E' if lon > 0 else 'W'}",
            f"lat {lat:.3f} lon {lon:.3f}",
            f"{int(abs(lat))}°{rng.randint(0, 59)}'{rng.randint(0, 59)}\" {'N' if lat > 0 else 'S'}",
        )
    )


def _site(rng: random.Random) -> str:
    area = rng.choice(
        ("Line", "Bay", "Gate", "Hall", "Dock", "Building", "Level", "Rack", "Cabinet", "Station", "Zone", "Aisle",
         "Platform", "Unit", "Room", "Cell", "Tank", "Bench", "Shelf", "Row", "Lane", "Pier", "Shed", "Wing")
    )  # fmt: skip
    number = rng.choice((str(rng.randint(1, 40)), rng.choice("ABCDEFGH"), f"{rng.randint(1, 9)}{rng.choice('ABC')}"))
    return f"{area} {number}"


_TECHNICAL_SLOTS = {
    "daemon": _pick(
        "systemd",
        "sshd",
        "kernel",
        "dockerd",
        "containerd",
        "kubelet",
        "nginx",
        "postgres",
        "mosquitto",
        "chronyd",
        "NetworkManager",
        "dnsmasq",
        "redis",
        "grafana",
        "prometheus",
        "telegraf",
        "influxd",
        "node-red",
        "haproxy",
        "cron",
        "rsyslogd",
        "udevd",
        "wpa_supplicant",
        "modbusd",
        "edge-agent",
    ),  # fmt: skip
    "module": _pick("ota", "net", "mqtt", "db", "sched", "io", "hal", "fw", "ui", "plc", "can0", "eth0", "wifi"),
    "log_level": _pick("INFO", "WARN", "ERROR", "DEBUG", "info", "warn", "err"),
    "log_message": _pick(
        "connection refused, retrying in 5 s",
        "Started Daily apt upgrade and clean activities.",
        "disk usage above 90% on /var",
        "certificate expires in 12 days",
        "reloading configuration",
        "out of memory: killed process",
        "link is up, 1000 Mbps full duplex",
        "Back-off pulling image",
        "write timeout on socket",
        "checksum mismatch, dropping frame",
        "MISCONF snapshot failed",
        "sync complete",
    ),  # fmt: skip
    "brand": _pick(
        "Siemens",
        "Loctite",
        "Festo",
        "Bosch Rexroth",
        "Schneider",
        "Omron",
        "Beckhoff",
        "Phoenix Contact",
        "WAGO",
        "SKF",
        "Danfoss",
        "Endress+Hauser",
        "Sick",
        "Pilz",
        "Rittal",
        "Yaskawa",
        "Fanuc",
        "Eaton",
    ),  # fmt: skip
    "temp2": lambda rng: f"{rng.randint(10, 90)} °C",
    "version": _version,
    "version2": _version,
    "device": lambda rng: (
        rng.choice(("C", "PLC-", "RTU ", "node-", "GW", "HMI", "VFD-", "edge-", "S")) + _digits(rng, rng.randint(1, 3))
    ),
    "thread": _pick("M4", "M5", "M6", "M8", "M10", "M12", "M16", "M20", "M24", "UNC 1/4", "G1/2", "NPT 3/4"),
    "pipe": _pick("DN15", "DN25", "DN32", "DN50", "DN80", "DN100", "DN150", "PN16", "PN40", "2-inch", "SCH 40"),
    "torque": lambda rng: f"{rng.randint(2, 400)} {rng.choice(('Nm', 'N·m', 'ft-lb', 'Nm'))}",
    "temp": lambda rng: (
        f"{rng.randint(-40, 180)}{rng.choice(('.', ''))}{rng.randint(0, 9) if rng.random() < 0.4 else ''}".rstrip(".")
        + rng.choice((" °C", "°C", " C", " degC", " °F", " K"))
    ),
    "pressure": lambda rng: f"{rng.uniform(0.1, 16):.1f} {rng.choice(('bar', 'MPa', 'psi', 'kPa', 'mbar'))}",
    "speed": lambda rng: f"{rng.randint(10, 3600)} {rng.choice(('rpm', 'Hz', 'm/min', 'baud', 'kbit/s', 'mm/s'))}",
    "voltage": lambda rng: f"{rng.choice((3.3, 5, 12, 24, 48, 110, 230, 400, 690))} {rng.choice(('V', 'VDC', 'VAC'))}",
    "current": lambda rng: f"{rng.uniform(0.1, 63):.1f} {rng.choice(('A', 'mA', 'A'))}",
    "code": lambda rng: rng.choice(
        (
            f"E{rng.randint(1, 999):03d}",
            f"E-{rng.randint(100, 999)}",
            f"0x{rng.randrange(1 << 32):08X}",
            f"ERR_{rng.randint(100, 999)}",
            f"F{rng.randint(1, 99):02d}",
            f"AL-{rng.randint(1, 99)}",
            f"HTTP {rng.choice((400, 403, 404, 500, 502, 503))}",
            f"{rng.choice(('ETIMEDOUT', 'ECONNRESET', 'SIGSEGV', 'OOMKilled', 'CRC mismatch'))}",
        )
    ),
    "serial": lambda rng: rng.choice(("SN ", "S/N ", "SN:", "", "serial ")) + _alnum(rng, 3) + "-" + _digits(rng, 5),
    "invoice": lambda rng: (
        rng.choice(("INV-", "INV ", "RE-", "F", "#")) + f"{rng.randint(2018, 2027)}-" + _digits(rng, 5)
    ),
    "po": lambda rng: rng.choice(("PO ", "PO-", "SO-", "")) + _digits(rng, rng.choice((6, 8, 10))),
    "ticket": lambda rng: rng.choice(("#", "INC", "CHG", "JIRA-", "SR-")) + _digits(rng, rng.randint(4, 7)),
    "rma": lambda rng: _digits(rng, rng.randint(5, 7)),
    "batch": lambda rng: rng.choice(("L", "B", "LOT ")) + _digits(rng, 2) + _alnum(rng, 3),
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "hash": lambda rng: f"{rng.randrange(1 << 160):040x}"[: rng.choice((7, 8, 12, 40))],
    "part": lambda rng: rng.choice(
        (
            f"6ES7 {_digits(rng, 3)}-{_digits(rng, 1)}{_alnum(rng, 2)}{_digits(rng, 2)}-0XB0",
            f"{_digits(rng, 4)}-{_alnum(rng, 4)}",
            f"P/N {_digits(rng, 5)}-{rng.choice('ABC')}",
            f"SKU {_digits(rng, 2)}-{_digits(rng, 4)}",
            f"{_alnum(rng, 2)}{_digits(rng, 4)}",
        )
    ),
    "standard": _pick(
        "ISO 9001",
        "ISO 14001",
        "ISO 13849-1",
        "IEC 61131-3",
        "IEC 62443",
        "IEC 60204-1",
        "EN 60204-1",
        "DIN 912",
        "DIN EN 1090",
        "UL 508A",
        "IEEE 802.3af",
        "ATEX Zone 2",
        "NFPA 70E",
        "ASME B31.3",
        "ISO 26262",
        "IEC 61508 SIL 2",
        "EN 50155",
        "ISO/IEC 27001",
    ),  # fmt: skip
    "bus": _pick(
        "RS-485",
        "RS-232",
        "Modbus RTU",
        "Modbus TCP",
        "PROFINET",
        "EtherCAT",
        "CAN bus",
        "I2C",
        "SPI",
        "OPC UA",
        "BACnet",
        "LoRaWAN",
        "MQTT",
        "IO-Link",
    ),  # fmt: skip
    "ip_rating": _pick("IP54", "IP65", "IP66", "IP67", "IP68", "NEMA 4X", "NEMA 12"),
    "coord": _coord,
    "date": _date,
    "time": _time,
    "site": _site,
    "site2": _site,
    "count": lambda rng: str(rng.randint(2, 500)),
    "count2": lambda rng: str(rng.randint(0, 40)),
    "equipment": _pick(
        "compressor",
        "VFD",
        "gearbox",
        "chiller",
        "pump",
        "conveyor",
        "HMI panel",
        "robot arm",
        "boiler",
        "encoder",
        "servo drive",
        "PLC",
        "inverter",
        "heat exchanger",
        "valve actuator",
        "UPS",
        "router",
        "switch",
        "spindle",
        "extruder",
        "press",
        "dryer",
        "fan",
        "hydraulic unit",
        "gateway",
        "sensor",
    ),  # fmt: skip
    "product_model": _pick(
        "S7-1200",
        "S7-1500",
        "ACS580",
        "Raspberry Pi 4",
        "ESP32",
        "STM32F407",
        "Cortex-M4",
        "Ubuntu 22.04",
        "Kubernetes 1.29",
        "nginx 1.25",
        "PostgreSQL 16",
        "Jetson Nano",
        "CompactLogix 5380",
        "MicroLogix 1400",
        "Arduino Uno",
        "Cisco IE-3400",
        "Moxa NPort 5150",
        "Windows Server 2019",
    ),  # fmt: skip
}


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
    elif slot == "words":  # a sentence of ordinary words in the locale's language, no final period
        value = fake.sentence(nb_words=rng.randint(3, 9)).rstrip(".")
    elif slot in _TECHNICAL_SLOTS:
        value = _TECHNICAL_SLOTS[slot](rng)
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


def ui_negatives(
    folder: Path, per_language: int, per_language_val: int, seed: int, max_words: int = 12
) -> tuple[list[str], list[str]]:
    """(train, held-out) lines of real software messages in the corpus's languages (datasets/ui-strings,
    from Django's and Sphinx's translations): up to `per_language` and `per_language_val` different lines
    of each language file, none holding a first name that Faker knows in any of LOCALES (common words
    apart). Text in the other languages, capitalised first words and long compounds included, is what
    drew false names from a tagger that had seen those languages only in templates."""
    from faker import Faker

    names = set()
    for locale in LOCALES:
        for provider in Faker(locale).providers:
            for attribute in ("first_names", "first_names_male", "first_names_female"):
                names |= {name.lower() for name in getattr(provider, attribute, ())}
    names -= COMMON_WORDS
    rng = random.Random(seed)
    train, held_out = [], []
    for path in sorted(Path(folder).glob("*.txt")):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line and len(line.split()) <= max_words]
        clean = sorted(line for line in lines if not set(re.findall(r"\w+", line.lower())) & names)
        rng.shuffle(clean)
        train += clean[:per_language]
        held_out += clean[per_language : per_language + per_language_val]
    if not train:
        raise FileNotFoundError(f"no ui-strings lines (*.txt) in {folder}")
    return train, held_out


def generate(
    count: int,
    seed: int,
    clauses: list[str],
    negatives: float = 0.2,
    locales: tuple[str, ...] = LOCALES,
    real: list[str] | None = None,
    technical: list[str] | None = None,
    technical_share: float = 0.0,
) -> list[Example]:
    """`count` texts of 1-3 clauses; a `negatives` share of texts hold only NEGATIVE clauses. With `real`
    texts, they join the NEGATIVE clauses (names then also appear next to real queries), and each is
    also one text of its own (appended, beyond `count`). With `technical` clauses, a `technical_share` of
    texts hold only those, and a quarter of the clauses added to a name or an address are technical, so the
    tagger learns where a name ends and a part number begins."""
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

    def context() -> str:  # a clause next to a name or an address
        if technical and rng.random() < 0.25:
            return rng.choice(technical)
        return rng.choice(clauses if rng.random() < 0.5 else negative_pool)

    examples = []
    for _ in range(count):
        locale = rng.choice(locales)
        size = rng.choice((1, 2, 2, 3))
        if technical and rng.random() < technical_share:
            chosen = [rng.choice(technical) for _ in range(size)]
        elif rng.random() < negatives:
            chosen = [rng.choice(negative_pool) for _ in range(size)]
        else:
            chosen = [rng.choice(clauses)] + [context() for _ in range(size - 1)]
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
