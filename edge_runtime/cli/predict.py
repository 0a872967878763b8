"""edge-runtime predict: classify texts on the device and show the routing decision."""

from __future__ import annotations

import click

from .common import load_model, model_options, read_texts, router_for
from .output import print_json_line

CHUNK = 32


@click.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--top-k", type=click.IntRange(1, 5), default=None, help="How many labels to list (max 5).")
@click.argument("texts", nargs=-1)
def predict(bundle, threads, allow_unsigned, as_json, top_k, texts):
    """Classify TEXT arguments (or stdin lines) with a bundle; say whether each stays local or escalates."""
    texts = read_texts(texts)
    model = load_model(bundle, threads, allow_unsigned)
    router = router_for(model)
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        for text, prediction in zip(chunk, router.route_all(model.predict(chunk, top_k=top_k))):
            if as_json:
                print_json_line({"text": text, **prediction.to_dict()})
            else:
                click.echo(f"{prediction.label}\t{prediction.score:.3f}\t{prediction.decision}\t{text}")
