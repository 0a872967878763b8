"""edge-runtime predict: classify texts on the device and show the routing decision."""

from __future__ import annotations

import click

from .common import load_device, model_options, read_texts
from .output import print_json_line

CHUNK = 32


@click.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--top-k", type=click.IntRange(1, 5), default=None, help="How many labels to list (max 5).")
@click.argument("texts", nargs=-1)
def predict(config_file, bundle, threads, allow_unsigned, as_json, top_k, texts):
    """Classify TEXT arguments (or stdin lines) with a bundle; say whether each stays local or escalates
    (the routing of the daemon with the same --config; nothing is sent)."""
    texts = read_texts(texts)
    device = load_device(config_file, server={"threads": threads})
    pipeline = device.pipeline(device.load_model(bundle, allow_unsigned=allow_unsigned))
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        for text, prediction in zip(chunk, pipeline.route(chunk, top_k=top_k)):
            if as_json:
                print_json_line({"text": text, **prediction.to_dict()})
            else:
                click.echo(f"{prediction.label}\t{prediction.score:.3f}\t{prediction.decision}\t{text}")
