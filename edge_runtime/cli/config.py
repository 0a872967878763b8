"""`edge-runtime config`: check a daemon config file, or show the effective configuration."""

from __future__ import annotations

import click

from .output import json_option, print_json


@click.group()
def config():
    """Check or show the daemon's TOML configuration (file < EDGE_RUNTIME_* environment < options)."""


@config.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def check(file):
    """Validate FILE (default: /etc/edge-runtime/config.toml); exit 1 naming the first bad key."""
    from .. import config as settings
    from ..errors import ConfigError

    path = file or settings.default_file()
    if path is None:
        raise ConfigError(f"no config file given and {settings.DEFAULT_PATH} does not exist")
    settings.load(path)
    click.echo(f"ok: {path}")


@config.command()
@click.option("--config", "file", type=click.Path(dir_okay=False), metavar="FILE", help="The config file.")
@json_option
def show(file, as_json):
    """Print the effective configuration: defaults, the file and the environment merged."""
    from .. import config as settings

    values = settings.load(file)
    shown = settings.without_secrets(values)  # the token must not end up in a terminal's scrollback
    if as_json:
        print_json({"source": values.source, **shown})
    else:
        click.echo(f"# source: {values.source}")
        click.echo(settings.to_toml(shown), nl=False)
