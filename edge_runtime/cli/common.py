"""Options and helpers shared by the commands that run a model."""

from __future__ import annotations

import functools
import sys

import click


def model_options(func):
    @config_option
    @click.option(
        "--bundle",
        "-b",
        metavar="PATH|NAME[@VERSION]",
        help="Bundle directory or .erb archive, or a model in the store (default: the active one).",
    )
    @click.option(
        "--threads",
        type=click.IntRange(0, 256),
        help="onnxruntime intra-op threads (0: one per core) [config server.threads].",
    )
    @click.option("--allow-unsigned", is_flag=True, help="Developers only: accept an unsigned bundle.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


LOCAL_BROKER = "mqtt://127.0.0.1:1883"  # the fleet tools' broker when none is configured

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="TOML config, the daemon's (default: $EDGE_RUNTIME_CONFIG, else /etc/edge-runtime/config.toml if it exists).",
)


def load_device(config_file: str | None = None, **sections):
    """The device of the config file, the environment and these command-line settings ({section: {key:
    value}}; None values are not set), in that order of precedence: what the daemon would build."""
    from ..device import Device

    return Device.from_config(config_file, cli=sections)


def broker_options(func):
    """--config and the broker settings, one spelling in every command that talks to a broker. They are the
    config's [uplink] keys (env EDGE_RUNTIME_UPLINK_<KEY>); the command gets them as `uplink` for
    `load_device`. TLS is on for mqtts:// and whenever a CA or a client certificate is given."""
    options = [
        config_option,
        click.option("--broker", metavar="URL", help="mqtt://host:port or mqtts://host:port [config uplink.broker]."),
        click.option(
            "--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA that signed the broker's certificate."
        ),
        click.option(
            "--tls-cert",
            type=click.Path(exists=True, dir_okay=False),
            help="Client certificate (CN = ACL user).",
        ),
        click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The client certificate's key."),
        click.option("--username", help="MQTT username (the password comes from $EDGE_RUNTIME_MQTT_PASSWORD)."),
    ]

    @functools.wraps(func)
    def wrapper(*args, broker, tls_ca, tls_cert, tls_key, username, **kwargs):
        uplink = {"broker": broker, "ca_file": tls_ca, "cert_file": tls_cert, "key_file": tls_key, "username": username}
        return func(*args, uplink=uplink, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def read_texts(texts: tuple[str, ...]) -> list[str]:
    """The TEXT arguments, or else stdin's non-blank lines."""
    if texts:
        return list(texts)
    if sys.stdin.isatty():
        raise click.UsageError("give TEXT arguments or pipe lines on stdin")
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
