"""edge-runtime eval: accuracy, in-scope accuracy, OOS recall and routing figures on a labelled JSONL file;
with --upstream, the device + upstream hybrid against the device alone and against everything upstream."""

from __future__ import annotations

import click

from ..datasets import read_jsonl
from ..evaluation import DEFAULT_DEVICE_COST, DEFAULT_UPSTREAM_COST, hybrid_evaluation, per_class, routed_figures
from .common import load_device, model_options, percent
from .output import print_json_line

ROWS = ("accuracy", "in_scope_accuracy", "oos_recall", "escalation_rate", "kept_accuracy")


def _print_hybrid(figures) -> None:
    device, everything = figures["device_only"], figures["all_upstream"]
    click.echo(f"upstream          {figures['upstream']}  (mode {figures['upstream_mode']})")
    click.echo(f"\n{'':<22}{'device only':>12}{'hybrid':>10}{'all upstream':>14}")
    for key in ("accuracy", "in_scope_accuracy", "oos_recall"):
        click.echo(f"{key:<22}{percent(device[key]):>12}{percent(figures[key]):>10}{percent(everything[key]):>14}")
    click.echo(f"{'answered on device':<22}{'100.0%':>12}{percent(figures['local_share']):>10}{'0.0%':>14}")
    click.echo(
        f"{'bytes upstream /1000':<22}{0:>12,}{figures['upstream_bytes_per_1000']:>10,.0f}"
        f"{everything['upstream_bytes_per_1000']:>14,.0f}"
    )
    device_cost = 1000 * figures["prices"]["device"]
    click.echo(
        f"{'cost /1000 requests':<22}{device_cost:>12.4f}{figures['cost_per_1000']:>10.4f}"
        f"{everything['cost_per_1000']:>14.4f}"
    )
    click.echo(
        f"\nkept accuracy      {percent(figures['kept_accuracy'])}   "
        f"escalated: device {percent(figures['escalated_local_accuracy'])}, "
        f"upstream {percent(figures.get('escalated_accuracy'))}"
    )
    redaction = figures["redaction"]
    click.echo(
        f"redaction          {redaction['tagger'] or 'scanner only'}: {redaction['texts_changed']} texts changed, "
        f"{redaction['kept_local_for_privacy']} escalations kept local for privacy"
    )


@click.command()
@model_options
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help='JSONL file, one {"text", "label"} per line.',
)
@click.option("--upstream", metavar="PATH|NAME", help="A larger bundle that answers the escalated cases.")
@click.option(
    "--upstream-mode",
    type=click.Choice(["plain", "candidates", "combined"]),
    default="plain",
    show_default=True,
    help="candidates: the upstream picks among the device's top-k labels and the OOS label; combined: "
    "the upstream pools its probabilities with the device's top-k as its postprocess.combine "
    "section says (fit it with `calibrate --bundle UPSTREAM --device DEVICE`). In both, the "
    "'all upstream' column applies the mode to every request.",
)
@click.option(
    "--device-cost",
    type=click.FloatRange(0),
    default=DEFAULT_DEVICE_COST,
    show_default=True,
    help="Price of one request on the device (USD).",
)
@click.option(
    "--upstream-cost",
    type=click.FloatRange(0),
    default=DEFAULT_UPSTREAM_COST,
    show_default=True,
    help="Price of one request upstream (USD).",
)
@click.option("--oos-label", default="oos", show_default=True)
@click.option("--per-class", "show_per_class", is_flag=True, help="Include the per-class report.")
@click.option("--json", "as_json", is_flag=True)
def evaluate(
    config_file,
    bundle,
    threads,
    allow_unsigned,
    data,
    upstream,
    upstream_mode,
    device_cost,
    upstream_cost,
    oos_label,
    show_per_class,
    as_json,
):
    """Evaluate a bundle (and, with --upstream, the device + upstream hybrid) on labelled data."""
    split = read_jsonl(data)
    texts, gold = split.texts, split.labels
    device = load_device(config_file, server={"threads": threads})
    model = device.load_model(bundle, allow_unsigned=allow_unsigned)
    predictions = device.pipeline(model).route(texts)  # the daemon's routing, [routing] overrides included
    local = final = [p.label for p in predictions]
    if upstream:
        big = device.load_model(upstream, allow_unsigned=allow_unsigned)
        egress = device.egress(tagger=device.tagger(), audit=False)  # the upstream reads what would leave
        figures, final = hybrid_evaluation(
            model, big, texts, gold, predictions, upstream_mode, oos_label, device_cost, upstream_cost, egress
        )
    else:
        figures = routed_figures(gold, local, [p.decision == "escalate" for p in predictions], None, oos_label)
    figures["model"] = f"{model.name}@{model.version}"
    if show_per_class or as_json:
        figures["per_class"] = per_class(gold, final)
    if as_json:
        print_json_line(figures)
        return
    click.echo(f"model             {figures['model']}  ({figures['n']} examples)")
    if upstream:
        _print_hybrid(figures)
    else:
        for key in ROWS:
            click.echo(f"{key:<18}{percent(figures[key])}")
    if show_per_class:
        click.echo("\nlabel                           precision  recall     f1  support")
        for label, row in figures["per_class"].items():
            click.echo(f"{label:<32}{row['precision']:>9.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}{row['support']:>9d}")
