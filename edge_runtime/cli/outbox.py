"""`edge-runtime outbox`: what is waiting to go upstream, what was dead-lettered, and clean-up."""

from __future__ import annotations

import datetime as dt

import click

from .output import json_option, print_fields, print_json, print_table

db_option = click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Outbox database (default: $EDGE_RUNTIME_HOME/state/outbox.sqlite).",
)


def _open(db_path):
    from ..outbox import Outbox

    return Outbox(db_path)


def _when(stamp) -> str:
    return dt.datetime.fromtimestamp(stamp).isoformat(timespec="seconds") if stamp else ""


@click.group()
def outbox():
    """Inspect and repair the escalation outbox (pending, answered, dead letters)."""


@outbox.command("list")
@click.option("--state", type=click.Choice(["pending", "answered", "dead", "all"]), default="all", show_default=True)
@db_option
@json_option
def list_(state, db_path, as_json):
    """Requests by state, with the counters (evictions, late answers)."""
    with _open(db_path) as box:
        states = ["pending", "answered", "dead"] if state == "all" else [state]
        rows = [row for name in states for row in box.requests(name)]
        summary = box.summary()
    if as_json:
        print_json({**summary, "requests": rows})
        return
    print_fields(summary)
    if rows:
        print_table(
            ["id", "state", "size", "created", "attempts", "detail"],
            [
                [
                    r["id"],
                    r["state"],
                    r["size"],
                    _when(r["created_at"]),
                    r["attempts"],
                    r.get("reason") or _when(r.get("answered_at")),
                ]
                for r in rows
            ],
        )


@outbox.command()
@click.argument("ids", nargs=-1)
@db_option
@json_option
def retry(ids, db_path, as_json):
    """Move dead letters (all, or the given IDS) back to pending; the uplink re-sends them."""
    with _open(db_path) as box:
        moved = box.retry(list(ids) or None)
    missing = sorted(set(ids) - set(moved))
    if as_json:
        print_json({"ok": not missing, "retried": moved, "not_found": missing})
    else:
        click.echo(f"{len(moved)} request(s) back to pending")
    if missing:
        raise click.ClickException(f"not in dead letters: {', '.join(missing)}")


@outbox.command()
@click.option("--keep-answered", is_flag=True, help="Delete dead letters only.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
@json_option
def purge(keep_answered, yes, db_path, as_json):
    """Delete dead letters and answered requests (pending ones are never touched)."""
    with _open(db_path) as box:
        summary = box.summary()
        what = f"{summary['dead']} dead letter(s)" + (
            "" if keep_answered else f" and {summary['answered']} answered request(s)"
        )
        if not yes:
            click.confirm(f"Delete {what}?", abort=True, err=True)
        deleted = box.purge(answered=not keep_answered)
    if as_json:
        print_json({"ok": True, "deleted": deleted})
    else:
        click.echo(f"deleted {deleted['dead']} dead letter(s), {deleted['answered']} answered request(s)")
