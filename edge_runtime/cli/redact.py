"""`edge-runtime redact`: personal data out of stdin lines, one output line per input line, under the same
[privacy] policy and tagger as the daemon (`--config`)."""

from __future__ import annotations

import json
import sys

import click

from ..egress import PrivacyUnavailable
from ..errors import InputError
from ..pii_tagger import find_spans
from ..redaction import ACTIONS, KINDS
from ..redaction import redact as redact_text
from .common import config_option, load_device

KIND = click.Choice(KINDS, case_sensitive=False)


def _old_policy(values: tuple[str, ...], refuse: list[str], drop: list[str]) -> None:
    """--policy KIND=ACTION, the spelling of earlier releases, into --refuse / --drop."""
    if values:
        click.echo("warning: --policy is deprecated and goes after this release: use --refuse / --drop KIND", err=True)
    for item in values:
        kind, _, action = item.partition("=")
        kind = kind.strip().upper()
        if kind not in KINDS or action not in ACTIONS:
            raise click.BadParameter(
                f"{item!r}: want KIND=ACTION, KIND one of {', '.join(KINDS)}, ACTION one of {', '.join(ACTIONS)}",
                param_hint="--policy",
            )
        if action == "refuse":
            refuse.append(kind)
        elif action == "drop":
            drop.append(kind)
        # "redact" is what every kind gets by default


@click.command("redact")
@config_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object per line: {"text": redacted, "spans": [{"start","end","kind"}]}.',
)
@click.option("--refuse", multiple=True, type=KIND, help="Refuse texts holding this kind [config privacy.refuse].")
@click.option("--drop", multiple=True, type=KIND, help="Remove this kind without a placeholder [config privacy.drop].")
@click.option("--policy", "policy_items", multiple=True, hidden=True)
@click.option(
    "--tagger", metavar="NAME|PATH", help="PII tagger bundle for names and addresses [config privacy.tagger]."
)
@click.option("--no-tagger", is_flag=True, help="The regex scanner only (no names, no addresses).")
def redact(config_file, as_json, refuse, drop, policy_items, tagger, no_tagger) -> None:
    """Redact personal data from stdin lines (spans in --json are offsets in the original line)."""
    refuse, drop = [kind.upper() for kind in refuse], [kind.upper() for kind in drop]
    _old_policy(policy_items, refuse, drop)
    device = load_device(
        config_file, privacy={"refuse": refuse or None, "drop": drop or None, "tagger": "" if no_tagger else tagger}
    )
    egress = device.egress(tagger=device.tagger(required=tagger is not None), audit=False)
    if egress.unavailable:
        raise PrivacyUnavailable(
            f"{egress.unavailable}: names and addresses cannot be found (edge-runtime build pii-tagger), "
            "or --no-tagger for the scanner alone"
        )
    out = sys.stdout
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise InputError(f"stdin line {number} is not valid UTF-8 ({error.reason})") from None
        spans = find_spans(line, egress.tagger) if line.strip() else []
        result = redact_text(line, spans, egress.policy)
        if as_json:
            record = {"text": result.text, "spans": [{"start": s, "end": e, "kind": kind} for s, e, kind in spans]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            out.write(result.text + "\n")
        out.flush()
