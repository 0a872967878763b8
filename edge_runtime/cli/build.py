"""`edge-runtime build`: classifier / embedder bundles from a Hugging Face model, the default bundle and
the PII tagger.

Everything heavy is imported inside the commands, after the [build] extra has been checked.
"""

from __future__ import annotations

from pathlib import Path

import click

from .output import json_option, print_json

VARIANT_OPTION = click.option(
    "--variant", metavar="NAME", help="Lay the recipe's [variants.NAME] over it (e.g. fast, quick)."
)


def _progress(as_json: bool):
    from ..build.progress import Progress

    return Progress(enabled=True)  # progress goes to stderr, so --json stdout stays clean


def _summary(result: dict) -> None:
    metrics = result.get("metrics") or {}
    made = ", ".join(
        f"{what} {value}"
        for what, value in (("head", metrics.get("head")), ("variant", (metrics.get("source") or {}).get("variant")))
        if value
    )
    click.echo(
        f"{result.get('status', 'built')}: {result.get('name')}@{result.get('version')}"
        f"{f' ({made})' if made else ''} -> {result.get('path') or result.get('archive')}"
    )
    for split in ("fp32", "int8", "int8_with_outside_bias"):
        scores = metrics.get(split)
        if scores and "all" in scores:  # a tagger: span figures per kind
            kinds = ", ".join(
                f"{kind} {scores[kind]['value_recall']:.2f}" for kind in scores if kind not in ("all", "negatives")
            )
            click.echo(
                f"  {split}: values fully redacted {scores['all']['value_recall']:.2f} ({kinds}), "
                f"span precision {scores['all']['span_precision']:.2f}"
            )
        elif scores:
            oos = "" if scores.get("oos_recall") is None else f", OOS recall {scores['oos_recall']:.2f}"
            click.echo(f"  {split}: in-scope {scores['in_scope_accuracy']:.2f}{oos}, accuracy {scores['accuracy']:.2f}")
    for split, scores in (metrics.get("with_reject_threshold") or {}).items():
        click.echo(
            f"  {split} + reject threshold: in-scope {scores['in_scope_accuracy']:.2f}, "
            f"OOS recall {scores.get('oos_recall')}"
        )
    gate = metrics.get("gate", {})
    if "mean_cosine" in gate:
        click.echo(f"  int8 vs fp32: mean cosine {gate['mean_cosine']:.4f}, min {gate['min_cosine']:.4f}")
    regression = metrics.get("regression")
    if regression:
        forced = " (forced)" if regression["forced"] else ""
        click.echo(
            f"  vs {regression['replaces']}: val accuracy {regression['replaced']['accuracy']:.2f} -> "
            f"{regression['new']['accuracy']:.2f} (allowed drop {regression['max_regression']:.2f}){forced}"
        )
    if "int8_size_mb" in metrics:
        click.echo(
            f"  int8 size {metrics['int8_size_mb']} MB, batch-1 latency {metrics.get('int8_latency_ms_batch1')} ms"
        )
    if "build_seconds" in result or "build_seconds" in metrics:
        click.echo(f"  build time {result.get('build_seconds', metrics.get('build_seconds'))} s")


def _signing_key(key: str | None, allow_unsigned: bool):
    from .. import signing

    if key:
        return signing.load_private_key(Path(key))
    if not allow_unsigned:
        raise click.UsageError("pass --key KEYFILE to sign the bundle, or --allow-unsigned-output")
    return None


def _common(func):
    options = [
        click.option("--model", "model_dir", required=True, metavar="DIR", help="Hugging Face model folder."),
        click.option("--name", required=True),
        click.option("--version", required=True, help="semver"),
        click.option("--release", required=True, type=click.IntRange(0), help="monotonic integer"),
        click.option("--max-length", type=click.IntRange(8, 512), default=64, show_default=True),
        click.option(
            "--exclude-nodes",
            default="",
            metavar="LIST",
            help="Comma-separated node names (or `ffn_down`) to keep fp32.",
        ),
        click.option("--force", is_flag=True, help="Emit even when the INT8 gate fails."),
        click.option("--key", type=click.Path(dir_okay=False), help="ed25519 private key (PEM) to sign with."),
        click.option("--allow-unsigned-output", is_flag=True, help="Emit an unsigned bundle (developers only)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Reuse ONNX exports from here."),
        click.option("--out", required=True, type=click.Path(), help="Output directory or .erb archive."),
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(
    model_dir,
    name,
    version,
    release,
    max_length,
    exclude_nodes,
    force,
    key,
    allow_unsigned_output,
    cache_dir,
    out,
    **extra,
):
    from ..build.config import BuildConfig
    from ..build.source import check_model_dir

    return BuildConfig(
        model_dir=check_model_dir(Path(model_dir)),
        name=name,
        version=version,
        release=release,
        out=Path(out),
        max_length=max_length,
        force=force,
        exclude_nodes=[n.strip() for n in exclude_nodes.split(",") if n.strip()],
        private_key=_signing_key(key, allow_unsigned_output),
        cache_dir=Path(cache_dir) if cache_dir else None,
        source={"model": str(model_dir)},
        **extra,
    )


@click.group(invoke_without_command=True)
@click.pass_context
def build(ctx):
    """Build signed INT8 bundles (needs the [build] extra)."""
    from ..build.deps import require_build_deps

    require_build_deps()
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@build.command()
@_common
@click.option("--train", required=True, type=click.Path(dir_okay=False), help="JSONL with text and label.")
@click.option("--val", required=True, type=click.Path(dir_okay=False), help="JSONL with text and label.")
@click.option("--head", type=click.Choice(["logreg", "finetune"]), default="logreg", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--encoder-lr", type=float, default=1e-4, show_default=True)
@click.option("--head-lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Accuracy points INT8 may lose.")
@click.option("--oos-label", default="oos", show_default=True, help="The out-of-scope class, if present.")
@click.option(
    "--reject-signal",
    type=click.Choice(["auto", "ood", "confidence", "both"]),
    default="auto",
    show_default=True,
    help="What answers the out-of-scope class on the device, fitted on --val: the out-of-scope score of the "
    "pooled embedding, the top probability, either, or (auto) the one of these with the most right answers "
    "cross-fitted on --val.",
)
@click.option(
    "--teacher",
    metavar="PATH|NAME[@VERSION]",
    help="Distil from this classifier bundle (in the store, or a path): its soft labels join the gold ones.",
)
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True)
@click.option(
    "--distill-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of the loss on the teacher's soft labels.",
)
@click.option(
    "--unlabelled",
    type=click.Path(dir_okay=False, exists=True),
    help="Extra texts (one per line, or JSONL with text) learnt from the teacher's labels only.",
)
@click.option(
    "--replaces",
    metavar="PATH|NAME[@VERSION]",
    help="The bundle this one replaces (in the store, or a path): the regression gate scores both on --val "
    "with the runtime and refuses the new one if its accuracy is lower by more than --max-regression.",
)
@click.option(
    "--max-regression",
    type=click.FloatRange(0),
    metavar="POINTS",
    help="Val accuracy points the new bundle may lose against --replaces (default 0.5).",
)
@click.option(
    "--layers",
    metavar="LIST",
    help="Keep only these encoder layers (comma-separated indices, e.g. 1,3,5): a smaller, faster student.",
)
@click.option(
    "--quantization",
    type=click.Choice(["dynamic", "static"]),
    default="dynamic",
    show_default=True,
    help="static: QDQ with activation ranges from training texts (scores independent of the batch).",
)
def classifier(
    train,
    val,
    head,
    epochs,
    encoder_lr,
    head_lr,
    seed,
    max_drop,
    oos_label,
    reject_signal,
    teacher,
    distill_temperature,
    distill_weight,
    unlabelled,
    replaces,
    max_regression,
    layers,
    quantization,
    as_json,
    **common,
):
    """Text classifier: encoder + linear head folded into one INT8 graph that outputs logits."""
    from ..build.classifier import build_classifier
    from ..build.distill import Distillation
    from ..build.finetune import FinetuneConfig
    from ..datasets import read_jsonl

    if unlabelled and not teacher:
        raise click.UsageError("--unlabelled texts need a --teacher to label them")
    if max_regression is not None and not replaces:
        raise click.UsageError("--max-regression needs --replaces (the bundle to compare with)")
    distillation = None
    if teacher:
        extra = Path(unlabelled) if unlabelled else None
        distillation = Distillation(teacher, distill_temperature, distill_weight, extra)
    if layers:
        from ..build.source import check_model_dir, truncated_model_dir

        try:
            kept = [int(index) for index in layers.split(",")]
        except ValueError:
            raise click.BadParameter(f"{layers!r}: comma-separated layer indices", param_hint="--layers") from None
        cache = Path(common["cache_dir"]) if common["cache_dir"] else Path(common["out"]).parent / ".build-cache"
        common["model_dir"] = str(truncated_model_dir(check_model_dir(Path(common["model_dir"])), kept, cache))
    config = _config(
        **common,
        quantization=quantization,
        head=head,
        max_drop=max_drop,
        oos_label=oos_label,
        reject_signal=reject_signal,
        finetune=FinetuneConfig(epochs=epochs, encoder_lr=encoder_lr, head_lr=head_lr, seed=seed),
        distillation=distillation,
        replaces=replaces,
        max_regression=0.5 if max_regression is None else max_regression,
    )
    result = build_classifier(config, read_jsonl(Path(train)), read_jsonl(Path(val)), _progress(as_json))
    report = {
        "status": "built",
        "name": config.name,
        "version": config.version,
        "path": str(result.path),
        "build_seconds": result.seconds,
        "metrics": result.manifest["metrics"],
    }
    print_json(report) if as_json else _summary(report)


@build.command()
@_common
@click.option(
    "--texts",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSONL with a text field: the sentences the INT8 gate compares on.",
)
@click.option("--min-cosine", type=float, default=0.98, show_default=True, help="Mean cosine INT8 vs fp32.")
def embedder(texts, min_cosine, as_json, **common):
    """Sentence embedder: the encoder in INT8; the runtime mean-pools and normalises."""
    from ..build.embedder import build_embedder
    from ..datasets import read_jsonl

    config = _config(**common, min_cosine=min_cosine)
    result = build_embedder(config, read_jsonl(Path(texts), need_labels=False).texts, _progress(as_json))
    report = {
        "status": "built",
        "name": config.name,
        "version": config.version,
        "path": str(result.path),
        "build_seconds": result.seconds,
        "metrics": result.manifest["metrics"],
    }
    print_json(report) if as_json else _summary(report)


@build.command()
@click.option("--recipe", type=click.Path(dir_okay=False), help="Default: models/clinc150-minilm-int8/recipe.toml.")
@click.option("--datasets", type=click.Path(file_okay=False), help="Folder holding the dataset (overrides the recipe).")
@click.option("--force", is_flag=True, help="Rebuild even when this release (or a later one) is installed.")
@click.option("--no-tagger", is_flag=True, help="Skip the PII tagger (names and addresses will not be redacted).")
@VARIANT_OPTION
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Exports and fine-tuning runs to reuse (default: $EDGE_RUNTIME_HOME/cache/build).",
)
@json_option
def default(recipe, datasets, force, no_tagger, variant, cache_dir, as_json):
    """Build, sign (local build key) and install the default bundle (activated) and the PII tagger.

    A no-op for a bundle whose release, or a later one, is already installed: a build never replaces a
    newer model. `--variant fast` builds the logistic-regression bundle served while the fine-tuned one
    builds (minutes instead of a quarter of an hour); `--variant quick` is a smoke build with a few
    training steps (not for use)."""
    from ..build.default import build_default, build_pii_tagger
    from ..build.recipe import TAGGER_RECIPE, load_recipe

    progress = _progress(as_json)
    cache = Path(cache_dir) if cache_dir else None
    result = build_default(
        load_recipe(Path(recipe) if recipe else None).with_variant(variant),
        force=force,
        datasets=Path(datasets) if datasets else None,
        progress=progress,
        cache_dir=cache,
    )
    tagger = (
        None
        if no_tagger
        else build_pii_tagger(
            load_recipe(TAGGER_RECIPE).with_variant(variant),
            force=force,
            progress=progress,
            cache_dir=cache,
            datasets=Path(datasets) if datasets else None,
        )
    )
    if as_json:
        print_json({**result, "pii_tagger": tagger})
        return
    _summary(result)
    if tagger:
        _summary(tagger)


@build.command("pii-tagger")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Default: models/pii-tagger-minilm/recipe.toml.")
@click.option("--datasets", type=click.Path(file_okay=False), help="Folder holding the real-negatives dataset.")
@click.option("--force", is_flag=True, help="Rebuild even when this release (or a later one) is installed.")
@VARIANT_OPTION
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Exports and fine-tuning runs to reuse (default: $EDGE_RUNTIME_HOME/cache/build).",
)
@json_option
def pii_tagger(recipe, datasets, force, variant, cache_dir, as_json):
    """Build, sign and install the PII tagger (person names, postal addresses) that egress runs."""
    from ..build.default import build_pii_tagger
    from ..build.recipe import TAGGER_RECIPE, load_recipe

    result = build_pii_tagger(
        load_recipe(Path(recipe) if recipe else TAGGER_RECIPE).with_variant(variant),
        force=force,
        progress=_progress(as_json),
        cache_dir=Path(cache_dir) if cache_dir else None,
        datasets=Path(datasets) if datasets else None,
    )
    print_json(result) if as_json else _summary(result)
