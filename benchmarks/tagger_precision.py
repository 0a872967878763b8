"""False spans of a PII tagger bundle on text without personal data, and its recall on held-out names.

    python benchmarks/tagger_precision.py                                  # the installed pii-tagger-minilm
    python benchmarks/tagger_precision.py pii-tagger-minilm@1.0.0 --root ~/.edge-runtime --json
    python benchmarks/tagger_precision.py /path/to/bundle --held-out-recipe models/pii-tagger-minilm/recipe.toml

The tagger runs as egress runs it (edge_runtime.pii_tagger.PiiTagger: windows, whole-word spans).
- CLINC150 val texts (real queries; a few hold a first name, e.g. "send a text to joe"): lines given a span
  and spans, per 1,000 lines; also on the lines that hold no first name Faker knows (pii_corpus.real_negatives).
- Files of lines without personal data (`--technical`, repeatable; default datasets/technical/negatives.txt,
  hand-written, never trained on): the same, with the 95% interval of the share of lines given a span.
  `--technical datasets/technical/blind4.txt --technical datasets/ui-strings/de.txt` for the blind set and
  real German software messages; `--unseen-ui-strings` for every language's software messages that the
  shipped recipe never trains on.
- Held-out PERSON / ADDRESS value recall (every character of the value covered by some span) on the held-out
  clauses of a recipe (`--held-out-recipe`, default the shipped one; pass an older recipe to compare a tagger
  on the held-out set it was built with).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crossfit import wilson  # benchmarks/crossfit.py

REPO = Path(__file__).resolve().parent.parent
TAGGER_RECIPE = REPO / "models" / "pii-tagger-minilm" / "recipe.toml"
DEVELOPMENT_SET = REPO / "datasets" / "technical" / "negatives.txt"


def false_span_rates(tagger, lines: list[str]) -> dict:
    """Lines given any span, and spans, per 1,000 lines (all of them false on text without PII)."""
    found = [tagger.spans(line) for line in lines]
    flagged = sum(bool(spans) for spans in found)
    spans = sum(len(spans) for spans in found)
    return {
        "lines": len(lines),
        "lines_with_spans": flagged,
        "lines_with_spans_per_1000": round(1000 * flagged / len(lines), 1),
        "lines_with_spans_interval": wilson(flagged, len(lines)),  # percent
        "spans_per_1000_lines": round(1000 * spans / len(lines), 1),
        "examples": [[line, [line[s:e] for s, e, _ in spans]] for line, spans in zip(lines, found) if spans][:8],
    }


def held_out_recall(tagger, recipe_path: Path) -> dict:
    from edge_runtime.build.default import tagger_corpus
    from edge_runtime.build.recipe import load_recipe
    from edge_runtime.build.tagger import span_scores

    _, val = tagger_corpus(load_recipe(recipe_path))
    scores = span_scores([tagger.spans(example.text) for example in val], val)
    return {
        "recipe": str(recipe_path),
        **{
            kind: {"values": scores[kind]["values"], "value_recall": scores[kind]["value_recall"]}
            for kind in ("PERSON", "ADDRESS")
        },  # fmt: skip
        "negatives": scores["negatives"],
    }


def unseen_ui_strings(recipe_path: Path) -> dict[str, list[str]]:
    """Per language, the lines of datasets/ui-strings that the recipe's corpus never uses (neither training nor
    held-out): real software messages the tagger has not seen."""
    from edge_runtime.build.default import ui_strings_split
    from edge_runtime.build.recipe import load_recipe
    from edge_runtime.build.tagger import read_negative_lines

    recipe = load_recipe(recipe_path)
    folder = REPO / recipe.get("corpus", "ui_strings", "datasets/ui-strings")
    used = set().union(*ui_strings_split(recipe)) if recipe.get("corpus", "ui_strings") else set()
    return {
        path.stem: [line for line in read_negative_lines(path) if line not in used]
        for path in sorted(folder.glob("*.txt"))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", nargs="?", default="pii-tagger-minilm", help="bundle path, name or name@version")
    parser.add_argument("--root", type=Path, help="the store (EDGE_RUNTIME_HOME) that trusts the bundle's signer")
    parser.add_argument(
        "--technical",
        type=Path,
        action="append",
        help="a file of lines without personal data (repeatable); default: datasets/technical/negatives.txt",
    )
    parser.add_argument("--clinc", type=Path, default=REPO / "datasets" / "clinc150" / "val.jsonl")
    parser.add_argument("--held-out-recipe", type=Path, action="append", help="repeatable; default: the shipped one")
    parser.add_argument(
        "--unseen-ui-strings",
        action="store_true",
        help="also the datasets/ui-strings lines the shipped recipe never trains on, per language",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import edge_runtime
    from edge_runtime.build.pii_corpus import real_negatives
    from edge_runtime.build.tagger import read_negative_lines
    from edge_runtime.datasets import read_jsonl
    from edge_runtime.errors import EdgeRuntimeError
    from edge_runtime.pii_tagger import PiiTagger

    try:
        tagger = PiiTagger(edge_runtime.load(str(args.ref), root=args.root, threads=1))
        clinc = read_jsonl(args.clinc).texts
        technical = {path: read_negative_lines(path) for path in args.technical or [DEVELOPMENT_SET]}
    except EdgeRuntimeError as error:
        print(f"tagger_precision: {error}", file=sys.stderr)
        return 1
    report = {
        "tagger": tagger.name,
        "clinc150_val": false_span_rates(tagger, clinc),
        "clinc150_val_without_first_names": false_span_rates(tagger, real_negatives(clinc, len(clinc), 0)),
        "technical_negatives": {str(path): false_span_rates(tagger, lines) for path, lines in technical.items()},
        "held_out": [held_out_recall(tagger, path) for path in args.held_out_recipe or [TAGGER_RECIPE]],
    }
    if args.unseen_ui_strings:
        languages = {lang: false_span_rates(tagger, lines) for lang, lines in unseen_ui_strings(TAGGER_RECIPE).items()}
        others = [row for lang, row in languages.items() if lang != "en"]
        flagged, lines = sum(r["lines_with_spans"] for r in others), sum(r["lines"] for r in others)
        report["unseen_ui_strings"] = {
            "per_language": languages,
            "other_languages": {"lines": lines, "lines_with_spans": flagged, "interval": wilson(flagged, lines)},
        }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"tagger {report['tagger']}")
    rows = {what: report[what] for what in ("clinc150_val", "clinc150_val_without_first_names")}
    rows.update({Path(path).name: row for path, row in report["technical_negatives"].items()})
    rows.update(
        {
            f"unseen ui-strings/{lang}": row
            for lang, row in report.get("unseen_ui_strings", {}).get("per_language", {}).items()
        }
    )
    for what, row in rows.items():
        print(
            f"  {what:34} {row['lines']:5} lines: {row['lines_with_spans_per_1000']:6.1f} lines with a span and "
            f"{row['spans_per_1000_lines']:6.1f} spans per 1,000 lines (lines with a span: 95% interval "
            f"{row['lines_with_spans_interval'][0]}-{row['lines_with_spans_interval'][1]}%)"
        )
    for held in report["held_out"]:
        print(
            f"  held-out value recall ({held['recipe']}): PERSON {held['PERSON']['value_recall']:.2f} of "
            f"{held['PERSON']['values']}, ADDRESS {held['ADDRESS']['value_recall']:.2f} of "
            f"{held['ADDRESS']['values']}; "
            f"texts without PII given a span {held['negatives']['with_false_spans']} of {held['negatives']['texts']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
