"""`edge-runtime models`: list, inspect, verify, install, activate, roll back and remove bundles."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle import ARCHIVE_SUFFIX, Manifest, read_manifest, signature_key_ids
from ..errors import EdgeRuntimeError
from ..store import Store
from .output import fail, json_option, print_fields, print_json, print_table

unsigned_option = click.option(
    "--allow-unsigned", is_flag=True, help="Accept a bundle without signature.json (development only)."
)


def _ref_dict(ref) -> dict | None:
    return {"name": ref[0], "version": ref[1]} if ref else None


def _summary(manifest: Manifest) -> dict:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "release": manifest.release,
        "task": manifest.task,
        "path": str(manifest.path) if manifest.path else None,
        "signed_by": list(manifest.signers),
    }


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(ARCHIVE_SUFFIX)


@click.group()
def models():
    """List, inspect, verify, install, activate and roll back bundles in $EDGE_RUNTIME_HOME."""


@models.command("list")
@json_option
def list_(as_json):
    """Installed bundles; * marks the active one, ^ the rollback target."""
    store = Store()
    active, previous = store.active(), store.previous()
    rows = [
        {
            **_summary(m),
            "created": m.created,
            "active": (m.name, m.version) == active,
            "previous": (m.name, m.version) == previous,
        }
        for m in store.versions()
    ]
    if as_json:
        print_json({"active": _ref_dict(active), "previous": _ref_dict(previous), "models": rows})
        return
    if not rows:
        click.echo(f"no models installed in {store.models}")
        return

    def marks(row):
        return "*" if row["active"] else ("^" if row["previous"] else "")

    print_table(
        ["", "name", "version", "release", "task", "created"],
        [[marks(r), r["name"], r["version"], r["release"], r["task"], r["created"]] for r in rows],
    )


@models.command()
@click.argument("ref", required=False)
@json_option
def inspect(ref, as_json):
    """Manifest fields and metrics of REF (NAME, NAME@VERSION, a path; default: the active model). Not verified."""
    store = Store()
    if ref and _is_path(ref) and Path(ref).is_file():
        path, manifest = Path(ref), read_manifest(Path(ref))  # read straight from the archive
    else:
        path = store.resolve(ref)
        manifest = read_manifest(path)
    data = {
        **manifest.raw,
        "path": str(path),
        "active": store.active() == (manifest.name, manifest.version) and path.parent.parent == store.models,
        "signature_key_ids": signature_key_ids(path),
    }
    if as_json:
        print_json(data)
        return
    files = data.pop("files")
    active = "  [active]" if data["active"] else ""
    click.echo(f"{manifest.ref} (release {manifest.release}, {manifest.task}){active}")
    print_fields(data)
    click.echo(f"files  {len(files)} ({sum(entry['size'] for entry in files.values())} bytes)")


@models.command()
@click.argument("ref", required=False)
@unsigned_option
@json_option
def verify(ref, allow_unsigned, as_json):
    """Check hashes, listed files and the signature of REF (default: the active model). Exit 1 if it fails."""
    try:
        manifest = Store().verify(ref, allow_unsigned=allow_unsigned)
    except EdgeRuntimeError as error:
        fail(str(error), as_json, ref=ref)
    if as_json:
        print_json({"ok": True, **_summary(manifest)})
    else:
        signed = f"signed by {', '.join(manifest.signers)}" if manifest.signers else "UNSIGNED"
        click.echo(f"ok: {manifest.ref} (release {manifest.release}), {signed}")


@models.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--activate", "then_activate", is_flag=True, help="Make it the active model.")
@unsigned_option
@json_option
def install(source, then_activate, allow_unsigned, as_json):
    """Verify and install a bundle directory or .erb archive."""
    store = Store()
    manifest = store.install(source, allow_unsigned=allow_unsigned)
    if then_activate:
        store.activate(manifest.name, manifest.version, allow_unsigned=allow_unsigned)
    if as_json:
        print_json({"ok": True, "installed": _summary(manifest), "active": _ref_dict(store.active())})
        return
    click.echo(f"installed {manifest.ref} (release {manifest.release}) at {manifest.path}")
    if then_activate:
        click.echo(f"active: {manifest.ref}")


@models.command()
@click.argument("ref")
@unsigned_option
@json_option
def activate(ref, allow_unsigned, as_json):
    """Re-verify and activate NAME@VERSION (or NAME: its latest release)."""
    store = Store()
    name, _, version = ref.partition("@")
    manifest = store.activate(name, version or None, allow_unsigned=allow_unsigned)
    _report_switch(store, manifest, as_json)


@models.command()
@unsigned_option
@json_option
def rollback(allow_unsigned, as_json):
    """Swap back to the previously active model."""
    store = Store()
    _report_switch(store, store.rollback(allow_unsigned=allow_unsigned), as_json)


def _report_switch(store: Store, manifest: Manifest, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "ok": True,
                "active": _ref_dict(store.active()),
                "previous": _ref_dict(store.previous()),
                "path": str(manifest.path),
            }
        )
    else:
        previous = store.previous()
        click.echo(f"active: {manifest.ref}" + (f" (previous: {previous[0]}@{previous[1]})" if previous else ""))


@models.command()
@click.argument("ref")
@json_option
def remove(ref, as_json):
    """Delete NAME@VERSION from the store (never the active or previous one)."""
    name, _, version = ref.partition("@")
    if not version:
        raise click.UsageError("give NAME@VERSION")
    Store().remove(name, version)
    if as_json:
        print_json({"ok": True, "removed": {"name": name, "version": version}})
    else:
        click.echo(f"removed {ref}")
