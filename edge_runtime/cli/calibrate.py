"""edge-runtime calibrate: fit temperature and routing thresholds on labelled data, write a new bundle version.

The new version is a copy of the bundle with postprocess.temperature, the reject threshold and routing.*
set, the patch version and release bumped, re-finalized and signed (default: the local build key).
With --device DEVICE, the bundle is an upstream and calibrate fits its postprocess.combine section instead:
how it pools its probabilities with DEVICE's top-k for the cases DEVICE escalates (edge_runtime/combine.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import percent
from .output import print_json_line


def _signing_key(key: str | None):
    from .. import paths, signing

    path = Path(key) if key else paths.keys_dir() / "signing" / "local.key"
    if not path.is_file():
        raise click.UsageError(f"no signing key at {path}: pass --key KEYFILE")
    return signing.load_private_key(path)


def write_version(model, manifest: dict, private_key, out: Path | None, install: bool) -> Path:
    """The new version, installed into the store (not activated) or written to `out`."""
    from ..bundle import write_new_version
    from ..store import Store

    if install:
        return Store().install_new_version(model.path, manifest, private_key).path
    if out.exists():
        raise click.UsageError(f"{out} already exists")
    return write_new_version(model.path, manifest, out, private_key)


def plot(result, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..calibration import curve

    coverage, risk = curve(result.scores, result.correct)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(coverage, risk, label="device (calibrated)")
    axis.axvline(
        1 - result.expected_escalation_rate,
        color="grey",
        linestyle="--",
        label=f"fitted cut ({percent(result.expected_escalation_rate)} escalated)",
    )
    axis.set_xlabel("coverage (share answered on the device)")
    axis.set_ylabel("risk (error rate of kept answers)")
    axis.set_title(f"risk-coverage, T={result.temperature:g}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _report(result, ref: str, new_ref: str | None) -> None:
    click.echo(f"calibrated {ref} on {result.n} examples" + (f" -> {new_ref}" if new_ref else ""))
    click.echo(f"temperature        {result.temperature:g}")
    click.echo(f"NLL                {result.nll_before:.4f} -> {result.nll_after:.4f}")
    click.echo(f"ECE (15 bins)      {result.ece_before:.4f} -> {result.ece_after:.4f}")
    reject = "-" if result.reject_threshold is None else f"{result.reject_threshold:g} -> {result.reject_label}"
    click.echo(f"reject threshold   {reject}")
    if result.reject_signal != "confidence":
        ood_reject = (
            "-"
            if result.ood_reject_threshold is None
            else f"{result.ood_reject_threshold:.6g} -> {result.reject_label}"
        )
        click.echo(f"ood reject above   {ood_reject}  (reject signal: {result.reject_signal})")
    if result.signal == "entropy":
        click.echo(f"max_entropy        {result.max_entropy:g}  (routing on normalised entropy)")
    elif result.signal == "ood":
        click.echo(f"max_ood            {result.max_ood:.6g}  (routing on the out-of-scope score)")
    elif result.signal == "confidence+ood":
        cuts = [f"min_confidence {result.min_confidence:g}" if result.min_confidence is not None else None]
        cuts.append(f"max_ood {result.max_ood:.6g}" if result.max_ood is not None else None)
        click.echo(f"routing            {', '.join(c for c in cuts if c) or 'none'}  (either escalates)")
    else:
        click.echo(f"min_confidence     {result.min_confidence:g}  (+{len(result.per_class)} per-class thresholds)")
    click.echo(f"escalation rate    {percent(result.expected_escalation_rate)} expected (on this data)")
    click.echo(f"kept accuracy      {percent(result.kept_accuracy)}   device accuracy {percent(result.accuracy)}")
    if not result.risk_coverage:
        return  # two cuts: no single score to rank the answers by
    signal = {"entropy": "1 - entropy", "ood": "1 - ood"}.get(result.signal, "threshold")
    click.echo(f"\ncoverage  {signal:>9}  kept accuracy")
    for row in result.risk_coverage:
        click.echo(f"{percent(row['coverage']):>8}  {row['threshold']:>9.4f}  {percent(row['kept_accuracy']):>13}")


@click.command()
@click.option("--bundle", "-b", metavar="PATH|NAME[@VERSION]", help="Bundle to calibrate (default: the active one).")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help='Labelled JSONL, one {"text", "label"} per line (validation data, not training data).',
)
@click.option("--target-escalation", type=click.FloatRange(0, 1), help="Share of requests to escalate, e.g. 0.10.")
@click.option(
    "--signal",
    type=click.Choice(["confidence", "entropy", "ood", "confidence+ood"]),
    default="confidence",
    show_default=True,
    help="Route on the top probability (routing.min_confidence), the normalised entropy (routing.max_entropy), "
    "the out-of-scope score of bundles that ship one (routing.max_ood), or the top probability and the "
    "out-of-scope score together (either escalates). Per-class thresholds only with confidence.",
)
@click.option(
    "--reject-signal",
    type=click.Choice(["confidence", "ood", "both"]),
    help="What answers the OOS label locally: a low top probability (postprocess.reject_threshold), a high "
    "out-of-scope score (postprocess.ood.reject_threshold), or either (both fitted together). Default: the one "
    "the bundle was built with (metrics.reject_signal), else confidence.",
)
@click.option(
    "--device",
    metavar="PATH|NAME[@VERSION]",
    help="Fit the combined upstream mode instead: BUNDLE is the upstream, DEVICE the (calibrated) device "
    "whose routing decides what is escalated; writes BUNDLE's postprocess.combine section "
    "(device weight, OOS bias, reject threshold, upstream temperature). No targets with it.",
)
@click.option(
    "--target-accuracy",
    type=click.FloatRange(0, 1, min_open=True),
    help="Accuracy the kept answers must reach, e.g. 0.99.",
)
@click.option("--oos-label", default="oos", show_default=True, help="Out-of-scope label ('' for none).")
@click.option("--no-reject", is_flag=True, help="Do not fit a reject-to-OOS threshold.")
@click.option(
    "--per-class-min",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="With --target-accuracy: per-class thresholds for classes predicted at least this often (0: off).",
)
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False),
    help="Signing key (default: $EDGE_RUNTIME_HOME/keys/signing/local.key).",
)
@click.option("--out", type=click.Path(), help="Write the new bundle version to this directory.")
@click.option("--install", is_flag=True, help="Install the new version into the store (not activated).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Risk-coverage curve as a PNG.")
@click.option("--threads", type=click.IntRange(0, 256), default=0, show_default=True)
@click.option("--allow-unsigned", is_flag=True, help="Developers only: accept an unsigned source bundle.")
@click.option("--json", "as_json", is_flag=True)
def calibrate(
    bundle,
    data,
    target_escalation,
    signal,
    reject_signal,
    device,
    target_accuracy,
    oos_label,
    no_reject,
    per_class_min,
    key,
    out,
    install,
    plot_path,
    threads,
    allow_unsigned,
    as_json,
):
    """Fit temperature scaling and routing thresholds; write them into a new, signed bundle version.

    With --device: fit how the upstream BUNDLE combines its probabilities with DEVICE's top-k on the examples
    DEVICE escalates (`edge-runtime eval --upstream-mode combined`, and the upstream worker, use it)."""
    from ..calibration import calibrate as fit
    from ..calibration import calibrated_manifest
    from ..datasets import read_jsonl
    from .common import load_device

    if device:
        if target_escalation is not None or target_accuracy is not None or plot_path:
            raise click.UsageError("--device fits the combined upstream mode: no --target-* or --plot with it")
        return _combination(bundle, device, data, oos_label, key, out, install, threads, allow_unsigned, as_json)
    if (target_escalation is None) == (target_accuracy is None):
        raise click.UsageError("give exactly one of --target-escalation and --target-accuracy")
    if out and install:
        raise click.UsageError("--out and --install exclude each other")
    private_key = _signing_key(key) if (out or install) else None
    split = read_jsonl(data)
    texts, gold = split.texts, split.labels
    model = load_device(server={"threads": threads}).load_model(bundle, allow_unsigned=allow_unsigned)
    if model.task != "text-classification":
        raise click.UsageError(f"{model.name} is a {model.task} model: only classifiers are calibrated")
    logits, ood = model.logits_and_ood(texts)
    # a recalibration keeps the bundle's own kind of reject unless told otherwise
    reject_signal = reject_signal or model.manifest.raw.get("metrics", {}).get("reject_signal") or "confidence"
    result = fit(
        logits,
        gold,
        model.labels,
        target_escalation=target_escalation,
        target_accuracy=target_accuracy,
        current_temperature=model.classification.temperature,
        oos_label=oos_label or None,
        fit_reject=not no_reject,
        per_class_min=per_class_min,
        signal=signal,
        ood=ood,
        reject_signal=reject_signal,
    )
    new_manifest = calibrated_manifest(model.manifest.raw, result)
    written = None
    if out or install:
        written = write_version(model, new_manifest, private_key, Path(out) if out else None, install)
    if plot_path:
        plot(result, Path(plot_path))
    new_ref = f"{new_manifest['name']}@{new_manifest['version']}"
    if as_json:
        print_json_line(
            {
                **result.to_dict(),
                "model": f"{model.name}@{model.version}",
                "new_version": new_ref,
                "routing": new_manifest["routing"],
                "written": str(written) if written else None,
                "plot": plot_path,
            }
        )
        return
    _report(result, f"{model.name}@{model.version}", new_ref if written else None)
    if written:
        click.echo(f"\nwrote {new_ref} to {written}")
    else:
        click.echo("\n(dry run: pass --out DIR or --install to write the new version)")


def _combination(bundle, device, data, oos_label, key, out, install, threads, allow_unsigned, as_json):
    """calibrate --device: fit BUNDLE's postprocess.combine for DEVICE's escalations, write a new version."""
    from ..combine import combined_manifest, fit_combination
    from ..datasets import read_jsonl
    from .common import load_device

    if out and install:
        raise click.UsageError("--out and --install exclude each other")
    private_key = _signing_key(key) if (out or install) else None
    split = read_jsonl(data)
    texts, gold = split.texts, split.labels
    built = load_device(server={"threads": threads})
    small = built.load_model(device, allow_unsigned=allow_unsigned)
    big = built.load_model(bundle, allow_unsigned=allow_unsigned)
    for model in (small, big):
        if model.task != "text-classification":
            raise click.UsageError(f"{model.name} is a {model.task} model: only classifiers are combined")
    predictions = built.pipeline(small).route(texts)  # what the device escalates
    escalated = [p.decision == "escalate" for p in predictions]
    result = fit_combination(
        [p.top_k for p in predictions],
        escalated,
        [p.label for p in predictions],
        big.logits(texts),
        big.labels,
        gold,
        oos_label=oos_label or None,
        device=f"{small.name}@{small.version}",
    )
    new_manifest = combined_manifest(big.manifest.raw, result)
    written = (
        write_version(big, new_manifest, private_key, Path(out) if out else None, install) if out or install else None
    )
    new_ref = f"{new_manifest['name']}@{new_manifest['version']}"
    if as_json:
        print_json_line(
            {
                **result.to_dict(),
                "model": f"{big.name}@{big.version}",
                "device": result.combination.device,
                "new_version": new_ref,
                "written": str(written) if written else None,
            }
        )
        return
    c = result.combination
    click.echo(
        f"combined {big.name}@{big.version} with {c.device}'s top-k on {result.n} examples "
        f"({result.escalated} escalated)" + (f" -> {new_ref}" if written else "")
    )
    click.echo(f"upstream temperature  {c.temperature:g}")
    click.echo(f"device weight         {c.device_weight:g}   (NLL on the escalated {result.nll_escalated:.4f})")
    click.echo(f"oos bias              {c.oos_bias:g}")
    click.echo(f"reject threshold      {c.reject_threshold:g} -> {c.oos_label}")
    click.echo(
        f"on this data          in-scope {percent(result.in_scope_accuracy)}, OOS recall "
        f"{percent(result.oos_recall)}, escalated answered right {percent(result.escalated_accuracy)}"
    )
    if written:
        click.echo(f"\nwrote {new_ref} to {written}")
    else:
        click.echo("\n(dry run: pass --out DIR or --install to write the new version)")
