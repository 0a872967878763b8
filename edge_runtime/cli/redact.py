"""`edge-runtime redact`: personal data out of stdin lines, one output line per input line."""

from __future__ import annotations

import json
import sys

import click

from ..errors import InputError
from ..pii_tagger import DEFAULT_BUNDLE, find_spans, load_tagger
from ..redaction import ACTIONS, KINDS
from ..redaction import redact as redact_text


def _policy(values: tuple[str, ...]) -> dict[str, str]:
    policy = {}
    for item in values:
        kind, _, action = item.partition("=")
        kind = kind.strip().upper()
        if kind not in KINDS or action not in ACTIONS:
            raise click.BadParameter(
                f"{item!r}: want KIND=ACTION, KIND one of {', '.join(KINDS)}, ACTION one of {', '.join(ACTIONS)}",
                param_hint="--policy",
            )
        policy[kind] = action
    return policy


@click.command("redact")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object per line: {"text": redacted, "spans": [{"start","end","kind"}]}.',
)
@click.option(
    "--policy",
    "policy_items",
    multiple=True,
    metavar="KIND=ACTION",
    help="redact (default), drop or refuse a kind, e.g. --policy CARD=refuse. Repeatable.",
)
@click.option(
    "--tagger",
    metavar="NAME|PATH",
    default=None,
    help=f"PII tagger bundle for names and addresses [default: {DEFAULT_BUNDLE} if installed].",
)
@click.option("--no-tagger", is_flag=True, help="The regex scanner only (no names, no addresses).")
def redact(as_json: bool, policy_items: tuple[str, ...], tagger: str | None, no_tagger: bool) -> None:
    """Redact personal data from stdin lines (spans in --json are offsets in the original line)."""
    policy = _policy(policy_items)
    found = None if no_tagger else load_tagger(tagger or DEFAULT_BUNDLE, required=tagger is not None)
    if found is None and not no_tagger:
        click.echo(
            f"note: no PII tagger ({DEFAULT_BUNDLE} is not installed): names and addresses are not "
            "redacted; build it with `edge-runtime build pii-tagger`",
            err=True,
        )
    out = sys.stdout
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise InputError(f"stdin line {number} is not valid UTF-8 ({error.reason})") from None
        spans = find_spans(line, found) if line.strip() else []
        result = redact_text(line, spans, policy)
        if as_json:
            record = {"text": result.text, "spans": [{"start": s, "end": e, "kind": kind} for s, e, kind in spans]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            out.write(result.text + "\n")
        out.flush()
