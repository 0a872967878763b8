"""`edge-runtime flywheel`: turn what the upstream workers kept (`upstream --dataset DIR`) into training data."""

from __future__ import annotations

from pathlib import Path

import click

from .output import json_option, print_fields, print_json


@click.group()
def flywheel():
    """The upstream's answered escalations as training data for the next device model."""


@flywheel.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The JSONL file to write."
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Keep only records the upstream answered with at least this score.",
)
@click.option("--max-per-label", type=click.IntRange(min=1), help="Keep at most this many records per label.")
@json_option
def export(directory, out, min_confidence, max_per_label, as_json):
    """Export DIRECTORY (an upstream's --dataset, all its files) as JSONL training data: {"text", "label",
    "teacher_probs", "flywheel_id"} per line, de-duplicated, filtered, capped, re-checked for PII."""
    from ..flywheel import export as run

    def progress(message: str) -> None:
        click.echo(message, err=True)

    summary = run(directory, out, min_confidence=min_confidence, max_per_label=max_per_label, progress=progress)
    if as_json:
        print_json(summary)
    else:
        print_fields(summary)
