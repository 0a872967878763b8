"""edge-runtime eval: accuracy, in-scope accuracy, OOS recall and routing figures on a labelled JSONL file."""
from __future__ import annotations

import click

from ..evaluation import per_class, read_jsonl, routed_figures
from .common import emit_json, load_model, model_options, percent, router_for

@click.command()
@model_options
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL file, one {"text", "label"} per line.')
@click.option("--upstream", metavar="PATH|NAME", help="A larger bundle that answers the escalated cases.")
@click.option("--oos-label", default="oos", show_default=True)
@click.option("--per-class", "show_per_class", is_flag=True, help="Include the per-class report.")
@click.option("--json", "as_json", is_flag=True)
def evaluate(bundle, threads, allow_unsigned, data, upstream, oos_label, show_per_class, as_json):
    """Evaluate a bundle (and, with --upstream, the device + upstream hybrid) on labelled data."""
    texts, gold = read_jsonl(data)
    model = load_model(bundle, threads, allow_unsigned)
    router = router_for(model)
    predictions = router.route_all(model.predict(texts))
    local = [p.label for p in predictions]
    escalated = [p.decision == "escalate" for p in predictions]
    final = None
    if upstream:
        big = load_model(upstream, threads, allow_unsigned)
        sent = [i for i, e in enumerate(escalated) if e]
        final = list(local)
        for i, answer in zip(sent, big.predict([texts[i] for i in sent]) if sent else []):
            final[i] = answer.label
    figures = routed_figures(gold, local, escalated, final, oos_label)
    figures["model"] = f"{model.name}@{model.version}"
    if show_per_class or as_json:
        figures["per_class"] = per_class(gold, final or local)
    if as_json:
        emit_json(figures)
        return
    click.echo(f"model             {figures['model']}  ({figures['n']} examples)")
    for key in ("accuracy", "in_scope_accuracy", "oos_recall", "escalation_rate", "kept_accuracy"):
        click.echo(f"{key:<18}{percent(figures[key])}")
    if show_per_class:
        click.echo("\nlabel                           precision  recall     f1  support")
        for label, row in figures["per_class"].items():
            click.echo(f"{label:<32}{row['precision']:>9.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}{row['support']:>9d}")
