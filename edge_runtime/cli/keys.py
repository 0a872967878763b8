"""`edge-runtime keys`: generate ed25519 signing keys and manage the keys this device trusts."""

from __future__ import annotations

from pathlib import Path

import click

from .. import paths, signing
from ..errors import BundleError
from ..fsutil import atomic_write_bytes
from .output import json_option, print_json, print_table


@click.group()
def keys():
    """Generate signing keys and manage trusted keys ($EDGE_RUNTIME_HOME/keys/trusted)."""


@keys.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (PEM, mode 0600); the public key goes to OUT.pub.",
)
@click.option("--trust", is_flag=True, help="Also trust the new key on this device.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@json_option
def generate(out, trust, force, as_json):
    """Create an ed25519 key pair for signing bundles."""
    if out.exists() and not force:
        raise BundleError(f"{out}: already exists (pass --force to overwrite)")
    private_key, public_key = signing.generate_keypair()
    signing.save_private_key(out, private_key)
    public_text = signing.public_key_to_text(public_key)
    public_file = out.with_name(out.name + signing.PUBLIC_SUFFIX)
    atomic_write_bytes(public_file, (public_text + "\n").encode())
    if trust:
        signing.trust_key(None, public_key)
    kid = signing.key_id(public_key)
    if as_json:
        print_json(
            {
                "key_id": kid,
                "public_key": public_text,
                "private_key_file": str(out),
                "public_key_file": str(public_file),
                "trusted": trust,
            }
        )
        return
    click.echo(f"key id:     {kid}")
    click.echo(f"public key: {public_text}")
    click.echo(f"wrote {out} (private, 0600) and {public_file}" + ("; trusted on this device" if trust else ""))


@keys.command()
@click.argument("public_key")
@json_option
def trust(public_key, as_json):
    """Trust PUBLIC_KEY (base64 raw ed25519, or a file holding it) for verifying bundles."""
    source = Path(public_key)
    text = public_key
    if source.is_file():
        text = source.read_text(encoding="ascii", errors="replace")
    try:
        key = signing.public_key_from_text(text)
    except BundleError as error:
        raise BundleError(f"{public_key}: {error}") from None
    kid = signing.trust_key(None, key)
    if as_json:
        print_json({"key_id": kid, "public_key": signing.public_key_to_text(key)})
    else:
        click.echo(f"trusted {kid}")


@keys.command("list")
@json_option
def list_(as_json):
    """Keys this device trusts."""
    trusted = signing.trusted_keys(None)
    rows = [{"key_id": kid, "public_key": signing.public_key_to_text(key)} for kid, key in sorted(trusted.items())]
    if as_json:
        print_json({"trusted": rows, "directory": str(paths.keys_dir() / "trusted")})
    elif rows:
        print_table(["key id", "public key"], [[row["key_id"], row["public_key"]] for row in rows])
    else:
        click.echo("no trusted keys; add one with `edge-runtime keys trust PUBKEY_OR_FILE`")
