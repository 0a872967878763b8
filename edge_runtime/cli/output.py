"""Shared CLI output: JSON for scripts, rich tables for people, one-line failures (exit 1)."""

from __future__ import annotations

import json

import click

from ..errors import EdgeRuntimeError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str))


def print_json_line(data) -> None:
    """One compact JSON object per line (JSON Lines), for streams of results."""
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


def print_table(columns: list[str], rows: list[list], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, box=None, header_style="bold")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(table)


def print_fields(fields: dict) -> None:
    """Aligned `key: value` lines; nested dicts are flattened with dots."""
    flat: list[tuple[str, object]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])
        else:
            flat.append((prefix, value))

    walk("", fields)
    width = max((len(key) for key, _ in flat), default=0)
    for key, value in flat:
        plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        shown = value if plain else json.dumps(value, ensure_ascii=False)
        click.echo(f"{key.ljust(width)}  {shown}")


def fail(reason: str, as_json: bool = False, **details) -> None:
    """Print {"ok": false, "error": ...} when --json is on, then exit 1 with the reason on stderr."""
    if as_json:
        print_json({"ok": False, "error": reason, **details})
    raise EdgeRuntimeError(reason)
