"""Technical text is not personal data: the tagger's hard negatives in training, the hand-written technical
negative set it is gated on (never trained on), and the precision gate of the tagger build.

The built tagger itself is measured on the set in tests/test_pii_tagger.py (it needs the session's tagger).
"""

from __future__ import annotations

import re

import pytest

from edge_runtime.build.errors import BuildError, GateError
from edge_runtime.build.tagger import false_lines, precision_gate, read_negative_lines

from support import REPO

NEGATIVES = REPO / "datasets" / "technical" / "negatives.txt"
TECHNICAL_SETS = sorted((REPO / "datasets" / "technical").glob("*.txt"))  # the development, test and blind sets
UI_STRINGS = REPO / "datasets" / "ui-strings"
SLOT = re.compile(r"\{(\w+)\}")


@pytest.fixture(scope="module")
def corpus():
    pytest.importorskip("faker", reason="the tagger's training corpus comes from Faker")
    from edge_runtime.build import pii_corpus

    return pii_corpus


@pytest.fixture(scope="module")
def training_texts(corpus) -> list[str]:
    """The training corpus exactly as the shipped recipe builds it (its held-out set too: no line of the
    evaluation-only set may be in either)."""
    from edge_runtime.build.default import tagger_corpus
    from edge_runtime.build.recipe import TAGGER_RECIPE, load_recipe

    train, val = tagger_corpus(load_recipe(TAGGER_RECIPE))
    return [example.text for example in train + val]


def test_the_technical_negative_set_is_hand_written_and_large_enough():
    lines = read_negative_lines(NEGATIVES)
    assert len(lines) >= 500
    assert len(set(lines)) == len(lines), "duplicate lines"
    assert (NEGATIVES.parent / "README.md").read_text().count("evaluation only") >= 1


@pytest.mark.parametrize("path", TECHNICAL_SETS, ids=lambda path: path.name)
def test_no_technical_negative_line_is_in_the_training_corpus(training_texts, path):
    lines = read_negative_lines(path)
    texts = {text.lower() for text in training_texts}
    inside = [line for line in lines if line.lower() in texts]
    assert not inside, inside[:10]
    joined = "\n".join(texts)
    contained = [line for line in lines if len(line) > 25 and line.lower() in joined]
    assert not contained, contained[:10]


def _template_pattern(template: str) -> re.Pattern | None:
    """A regex for what `template` can produce (a slot: one to six words), or None when it has too little
    fixed wording to tell ("{name}, {address}" could be anything)."""
    literal = SLOT.sub("", template)
    if len(re.sub(r"[^A-Za-z]", "", literal)) < 8:
        return None
    parts = SLOT.split(template)
    regex = "".join(re.escape(part) if i % 2 == 0 else r"\S+(?: \S+){0,5}" for i, part in enumerate(parts))
    return re.compile(regex, re.IGNORECASE)


def test_no_technical_negative_line_is_produced_by_a_training_template(corpus):
    """Neither the whole line nor any clause of it (split where compose joins clauses) is a template's."""
    templates = corpus.TRAIN + corpus.HELD_OUT + corpus.NEGATIVE + corpus.TECHNICAL + corpus.TECHNICAL_HELD_OUT
    patterns = [(template, _template_pattern(template)) for template in templates]
    assert sum(p is not None for _, p in patterns) > 100  # the check covers nearly every template
    hits = []
    for line in read_negative_lines(NEGATIVES):
        pieces = [line.rstrip(".!?")] + [p.rstrip(".!?") for p in re.split(r", |\. |; |\n| - |! |\? |: ", line)]
        hits += [(line, t) for t, p in patterns if p is not None and any(p.fullmatch(piece) for piece in pieces)]
    assert not hits, hits[:10]


def test_the_pattern_check_recognises_generated_text(corpus):
    """The check above can fail: text the generator wrote from a technical template is caught."""
    import random

    from faker import Faker

    fake, rng = Faker("en_US"), random.Random(3)
    for template in corpus.TECHNICAL[:10]:
        text = corpus.fill(template, fake, rng).text
        assert _template_pattern(template).fullmatch(text), (template, text)


def test_technical_clauses_hold_no_personal_data_and_held_out_frames_are_disjoint(corpus):
    person_or_address = {"name", "name2", "NAME", "first", "first2", "last", "last2", "address", "street"}
    for template in corpus.TECHNICAL + corpus.TECHNICAL_HELD_OUT:
        assert not set(SLOT.findall(template)) & person_or_address, template
    assert not set(corpus.TECHNICAL) & set(corpus.TECHNICAL_HELD_OUT)
    technical = corpus.generate(200, 5, corpus.TRAIN, technical=corpus.TECHNICAL, technical_share=1.0)
    assert all(not example.spans for example in technical)


def test_names_are_mixed_with_technical_clauses_in_training(corpus):
    """Some texts hold a name or an address next to a technical clause: the tagger sees where one ends."""

    def words(templates):
        return {word for template in templates for word in re.findall(r"[a-z]+", SLOT.sub(" ", template).lower())}

    technical_only = words(corpus.TECHNICAL) - words(corpus.TRAIN + corpus.NEGATIVE) - {"a", "on", "at", "to"}
    examples = corpus.generate(600, 5, corpus.TRAIN, technical=corpus.TECHNICAL, technical_share=0.2)
    mixed = [e for e in examples if e.spans and set(re.findall(r"[a-z]+", e.text.lower())) & technical_only]
    assert len(mixed) >= 30
    for example in mixed:  # every labelled span is still a name or an address, not the technical part
        for start, end, kind in example.spans:
            assert kind in ("PERSON", "ADDRESS") and not re.search(
                r"\d+\.\d+\.\d+|0x[0-9A-F]{8}", example.text[start:end]
            )


def test_a_recipe_without_technical_share_builds_the_old_corpus(corpus):
    """technical = 0 draws nothing extra from the generator: the 1.0.0 corpus (and its held-out set) is
    reproduced exactly, so an older tagger is measured on the held-out set it was built with."""
    old = corpus.generate(300, 7, corpus.TRAIN, real=["one real query"])
    none = corpus.generate(300, 7, corpus.TRAIN, real=["one real query"], technical=None, technical_share=0.3)
    assert old == none
    assert old != corpus.generate(300, 7, corpus.TRAIN, real=["one real query"], technical=corpus.TECHNICAL)


SCORES = {"PERSON": {"value_recall": 99.1}, "ADDRESS": {"value_recall": 97.9}}


def _negatives(flagged: int, total: int = 500) -> dict:
    lines = [f"line {i} of firmware 1.{i}" for i in range(total)]
    spans = [[(0, 4, "ADDRESS")] if i < flagged else [] for i in range(total)]
    return false_lines(lines, spans)


def test_false_lines_counts_lines_with_any_span():
    report = _negatives(7)
    assert (report["lines"], report["with_spans"], report["per_1000"]) == (500, 7, 14.0)
    assert report["examples"][0] == {"text": "line 0 of firmware 1.0", "spans": [["line", "ADDRESS"]]}


def test_precision_gate_passes_a_precise_tagger_that_keeps_its_recall():
    report = precision_gate(_negatives(10), SCORES, 0.02, {"PERSON": 98.9, "ADDRESS": 97.6})
    assert report["passed"] and not report["forced"]
    assert report["value_recall"] == {"PERSON": 99.1, "ADDRESS": 97.9}


def test_precision_gate_refuses_too_many_false_lines():
    with pytest.raises(GateError, match=r"11 of 500 technical negative lines \(2.20%\) got a span, allowed 2.00%"):
        precision_gate(_negatives(11), SCORES, 0.02, {"PERSON": 98.9})


def test_precision_gate_refuses_lost_recall_and_names_the_kind():
    with pytest.raises(GateError, match=r"held-out ADDRESS value recall 97.90 < 98.00") as raised:
        precision_gate(_negatives(0), SCORES, 0.02, {"PERSON": 98.9, "ADDRESS": 98.0})
    assert "PERSON" not in str(raised.value) and raised.value.report["passed"] is False
    forced = precision_gate(_negatives(0), SCORES, 0.02, {"ADDRESS": 98.0}, force=True)
    assert forced["forced"] and not forced["passed"]


def test_unreadable_negatives_file_is_a_build_error(tmp_path):
    with pytest.raises(BuildError, match="technical negatives .*missing.txt"):
        read_negative_lines(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(BuildError, match="no lines"):
        read_negative_lines(tmp_path / "empty.txt")


def test_ui_string_negatives_are_split_per_language_and_drop_lines_with_a_first_name(corpus, tmp_path):
    """Real sentences in each corpus language (datasets/ui-strings): the same number from each file, training
    and held-out lines disjoint, and a line holding a first name Faker knows is never a negative."""
    files = sorted(UI_STRINGS.glob("*.txt"))
    assert len(files) == 11 and all(len(read_negative_lines(path)) >= 300 for path in files)
    train, held_out = corpus.ui_negatives(UI_STRINGS, 30, 10, seed=3)
    assert len(train) == 30 * len(files) and len(held_out) == 10 * len(files)
    assert not set(train) & set(held_out)
    for path in files:
        lines = set(read_negative_lines(path))
        assert len(lines & set(train)) == 30 and len(lines & set(held_out)) == 10, path.name

    (tmp_path / "de.txt").write_text("Bitte rufen Sie Jürgen wegen der Wartung an.\nDie Datei wurde gespeichert.\n")
    (tmp_path / "pl.txt").write_text("Awarię zgłosiła Agnieszka z drugiej zmiany.\nNie znaleziono pliku.\n")
    train, held_out = corpus.ui_negatives(tmp_path, 5, 5, seed=0)
    assert sorted(train) == ["Die Datei wurde gespeichert.", "Nie znaleziono pliku."] and held_out == []
