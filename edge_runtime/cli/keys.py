"""`edge-runtime keys`: generate ed25519 signing keys and manage the keys this device trusts, by role
(bundle: signs bundles; fleet: signs release records and desired states; see signing.py)."""

from __future__ import annotations

from pathlib import Path

import click

from .. import signing
from ..errors import BundleError
from ..fsutil import atomic_write_bytes
from .output import json_option, print_json, print_table

role_option = click.option(
    "--role",
    type=click.Choice(signing.ROLES),
    default="bundle",
    show_default=True,
    help="bundle: may sign bundles; fleet: may sign release records and desired states (what a device installs).",
)


@click.group()
def keys():
    """Generate signing keys and manage trusted keys and their roles ($EDGE_RUNTIME_HOME/keys)."""


@keys.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (PEM, mode 0600); the public key goes to OUT.pub.",
)
@click.option("--trust", is_flag=True, help="Also trust the new key on this device (for --role).")
@role_option
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@json_option
def generate(out, trust, role, force, as_json):
    """Create an ed25519 key pair for signing bundles."""
    if out.exists() and not force:
        raise BundleError(f"{out}: already exists (pass --force to overwrite)")
    private_key, public_key = signing.generate_keypair()
    signing.save_private_key(out, private_key)
    public_text = signing.public_key_to_text(public_key)
    public_file = out.with_name(out.name + signing.PUBLIC_SUFFIX)
    atomic_write_bytes(public_file, (public_text + "\n").encode())
    if trust:
        signing.trust_key(None, public_key, role)
    kid = signing.key_id(public_key)
    if as_json:
        print_json(
            {
                "key_id": kid,
                "public_key": public_text,
                "private_key_file": str(out),
                "public_key_file": str(public_file),
                "trusted": trust,
                "role": role if trust else None,
            }
        )
        return
    click.echo(f"key id:     {kid}")
    click.echo(f"public key: {public_text}")
    click.echo(f"wrote {out} (private, 0600) and {public_file}" + (f"; trusted as a {role} signer" if trust else ""))


@keys.command()
@click.argument("public_key")
@role_option
@click.option(
    "--threshold",
    type=click.IntRange(1, 16),
    help="Also set how many trusted keys of this role must sign (k of n; default 1).",
)
@json_option
def trust(public_key, role, threshold, as_json):
    """Trust PUBLIC_KEY (base64 raw ed25519, or a file holding it) for one role.

    A fleet manager's key usually needs both: `--role bundle` for the bundles it signs and `--role fleet` for
    its release records and desired states. This device's own build key (keys/signing/local.key) is refused
    for the fleet role."""
    source = Path(public_key)
    text = public_key
    if source.is_file():
        text = source.read_text(encoding="ascii", errors="replace")
    try:
        key = signing.public_key_from_text(text)
    except BundleError as error:
        raise BundleError(f"{public_key}: {error}") from None
    kid = signing.trust_key(None, key, role)
    if threshold is not None:
        signing.set_threshold(None, role, threshold)
    k = signing.threshold(None, role)
    if as_json:
        print_json({"key_id": kid, "public_key": signing.public_key_to_text(key), "role": role, "threshold": k})
    else:
        click.echo(f"trusted {kid} as a {role} signer ({k} of {len(signing.trusted_keys(None, role))} must sign)")


@keys.command("list")
@json_option
def list_(as_json):
    """Keys this device trusts, by role, and each role's threshold."""
    rows = [
        {"key_id": kid, "role": role, "public_key": signing.public_key_to_text(key)}
        for role in signing.ROLES
        for kid, key in sorted(signing.trusted_keys(None, role).items())
    ]
    thresholds = {role: signing.threshold(None, role) for role in signing.ROLES}
    if as_json:
        directories = {role: str(signing.trusted_dir(None, role)) for role in signing.ROLES}
        print_json({"trusted": rows, "thresholds": thresholds, "directories": directories})
        return
    if rows:
        print_table(["key id", "role", "public key"], [[row["key_id"], row["role"], row["public_key"]] for row in rows])
    else:
        click.echo("no trusted keys; add one with `edge-runtime keys trust PUBKEY_OR_FILE [--role bundle|fleet]`")
    click.echo("thresholds: " + ", ".join(f"{role} {k}" for role, k in thresholds.items()))
