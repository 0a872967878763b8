"""Options and helpers shared by the commands that run a model."""

from __future__ import annotations

import functools
import sys

import click


def model_options(func):
    @click.option(
        "--bundle",
        "-b",
        metavar="PATH|NAME[@VERSION]",
        help="Bundle directory or .erb archive, or a model in the store (default: the active one).",
    )
    @click.option(
        "--threads",
        type=click.IntRange(0, 256),
        default=0,
        show_default=True,
        help="onnxruntime intra-op threads (0: one per core).",
    )
    @click.option("--allow-unsigned", is_flag=True, help="Developers only: accept an unsigned bundle.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def load_model(bundle: str | None, threads: int = 0, allow_unsigned: bool = False, **options):
    from ..model import load

    return load(bundle, threads=threads, allow_unsigned=allow_unsigned, **options)


def router_for(model):
    from ..router import Router, RoutingPolicy

    return Router(RoutingPolicy.from_dict(model.manifest.raw.get("routing")))


def read_texts(texts: tuple[str, ...]) -> list[str]:
    """The TEXT arguments, or else stdin's non-blank lines."""
    if texts:
        return list(texts)
    if sys.stdin.isatty():
        raise click.UsageError("give TEXT arguments or pipe lines on stdin")
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
