"""The regression gate: a new classifier must not be worse on val than the bundle it replaces.

Both bundles are scored by the runtime, as `edge-runtime eval` scores them (edge_runtime.model.Model.predict,
the bundle's own reject threshold included; edge_runtime.evaluation.accuracy_figures), on the new build's
val split. The new bundle is the staged INT8 one, finalized unsigned in the staging dir; the replaced one is
loaded from the store or a path and verified like any bundle (its signature against the store's trusted keys).
A val label the replaced bundle does not know simply counts as a miss for it.

Both run in batches of EVAL_MAX_BATCH, as `edge-runtime eval` runs (Device.load_model): with dynamic INT8
quantization the activations' scales are per batch, so a different batching can flip a borderline example.
"""

from __future__ import annotations

from pathlib import Path

from .errors import BuildError, GateError

EVAL_MAX_BATCH = 32  # Device.load_model's default, which `edge-runtime eval` uses


def runtime_scores(model, texts, gold, oos_label: str | None) -> dict:
    """Accuracy, in-scope accuracy and OOS recall in points (2 decimals) of `model` on (texts, gold)."""
    from ..evaluation import accuracy_figures

    predicted = [prediction.label for prediction in model.predict(list(texts))]
    figures = accuracy_figures(list(gold), predicted, oos_label or "")
    scores = {
        key: None if figures[key] is None else round(100.0 * figures[key], 2)
        for key in ("accuracy", "in_scope_accuracy", "oos_recall")
    }
    scores["examples"] = figures["n"]
    return scores


def load_replaced(ref: str, root=None):
    """The bundle `ref` names (store name, name@version, or a bundle directory / .erb), verified, loaded."""
    from ..errors import EdgeRuntimeError
    from ..model import load

    try:
        model = load(ref, root=root, threads=0, max_batch=EVAL_MAX_BATCH, use_cache=False)
    except EdgeRuntimeError as error:
        raise BuildError(f"--replaces {ref}: {error}") from None
    if model.task != "text-classification":
        raise BuildError(f"--replaces {ref}: {model.name}@{model.version} is a {model.task} model, not a classifier")
    return model


def staged_model(stage: Path, manifest: dict):
    """The staged bundle as the runtime loads it: `manifest` finalized unsigned in `stage` (emit() finalizes it
    again, signed, with the final manifest)."""
    from .. import bundle
    from ..model import Model
    from ..session import SessionSettings

    return Model(stage, bundle.finalize(stage, manifest), SessionSettings(threads=0), max_batch=EVAL_MAX_BATCH)


def regression_gate(
    replaced, new, texts, gold, oos_label: str | None, max_regression: float, force: bool = False
) -> dict:
    """Compare `new` with `replaced` (loaded models) on val; raise GateError when the new bundle's accuracy is
    lower by more than `max_regression` points (unless `force`). The report goes into metrics.regression."""
    before = runtime_scores(replaced, texts, gold, oos_label)
    after = runtime_scores(new, texts, gold, oos_label)
    regression = round(before["accuracy"] - after["accuracy"], 2)
    report = {
        "replaces": f"{replaced.name}@{replaced.version}",
        "replaces_release": replaced.manifest.raw.get("release"),
        "replaces_model_sha256": replaced.manifest.files[replaced.manifest.model_file]["sha256"],
        "split": "val",
        "replaced": before,
        "new": after,
        "accuracy_regression": regression,
        "max_regression": max_regression,
        "passed": regression <= max_regression,
        "forced": False,
    }
    if not report["passed"]:
        if not force:
            raise GateError(
                f"regression gate failed: val accuracy {after['accuracy']:.2f} is {regression:.2f} points below "
                f"{report['replaces']} ({before['accuracy']:.2f}), allowed {max_regression:.2f}; "
                "--force to emit anyway",
                report,
            )
        report["forced"] = True
    return report
