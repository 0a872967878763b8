"""`edge-runtime build default`: build the recipes' bundles, sign them locally, install them.

The classifier recipe's bundle is activated (it is what the daemon serves); the PII tagger's is only
installed (egress loads it by name).
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import paths
from ..datasets import read_jsonl
from .classifier import build_classifier
from .config import BuildConfig
from .distill import Distillation
from .errors import BuildError
from .finetune import FinetuneConfig
from .local_key import local_signing_key
from .progress import Progress
from .recipe import REPO, Recipe
from .source import check_model_dir, package_model_dir


def installed_at_or_after(store, name: str, release: int):
    """The newest installed version of `name` at `release` or a later one; None when there is none. A build
    is not needed then, and must not replace it (a fleet update, or the fine-tuned bundle that followed the
    `fast` one, has a later release)."""
    later = [manifest for manifest in store.versions(name) if manifest.release >= release]
    return later[-1] if later else None


def config_from_recipe(recipe: Recipe, root: Path, out: Path, cache_dir: Path | None = None) -> BuildConfig:
    source = recipe.section("source")
    if "package" in source:
        model_dir = package_model_dir(source["package"])
    elif "model_dir" in source:
        model_dir = check_model_dir(REPO / source["model_dir"])
    else:
        raise BuildError(f"{recipe.path}: [source] needs `package` or `model_dir`")
    if source.get("layers"):  # a smaller student: only these layers of the source encoder
        from .source import truncated_model_dir

        cache = Path(cache_dir) if cache_dir else paths.cache_dir(root) / "build"
        model_dir = truncated_model_dir(model_dir, [int(i) for i in source["layers"]], cache)
    head = recipe.section("head")
    tune = FinetuneConfig(**{key: head[key] for key in FinetuneConfig.__dataclass_fields__ if key in head})
    gate = recipe.section("gate")
    distill = recipe.section("distill")
    return BuildConfig(
        model_dir=model_dir,
        name=recipe.get("bundle", "name"),
        version=str(recipe.get("bundle", "version")),
        release=int(recipe.get("bundle", "release")),
        out=out,
        max_length=int(head.get("max_length", 64)),
        max_drop=float(gate.get("max_drop", 1.0)),
        replaces=gate.get("replaces"),  # the regression gate (build/regression.py): off unless set
        max_regression=float(gate.get("max_regression", 0.5)),
        quantization=str(recipe.get("quantize", "method", "dynamic")),
        exclude_nodes=list(gate.get("exclude_nodes", [])),
        fallback_exclude=list(gate.get("fallback_exclude", [])),
        head=head.get("mode", "finetune"),
        logreg_c=float(head.get("logreg_c", 10.0)),
        finetune=tune,
        oos_label=recipe.get("oos", "label", "oos"),
        reject_max_in_scope_drop=float(recipe.get("oos", "reject_max_in_scope_drop", 0.3)),
        reject_signal=str(recipe.get("oos", "reject_signal", "auto")),
        routing=recipe.section("routing"),
        distillation=Distillation(
            teacher=distill["teacher"],
            temperature=float(distill.get("temperature", 2.0)),
            weight=float(distill.get("weight", 0.5)),
            unlabelled=REPO / distill["unlabelled"] if distill.get("unlabelled") else None,
        )
        if distill.get("teacher")
        else None,
        private_key=local_signing_key(root),
        max_false_share=float(gate.get("max_false_share", 0.015)),
        max_outside_bias=float(gate.get("max_outside_bias", 6.0)),
        technical_negatives=REPO / gate["technical_negatives"] if gate.get("technical_negatives") else None,
        max_technical_false_share=float(gate.get("max_technical_false_share", 0.02)),
        min_value_recall={kind: float(value) for kind, value in gate.get("min_value_recall", {}).items()},
        cache_dir=Path(cache_dir) if cache_dir else paths.cache_dir(root) / "build",
        source={
            "model": source.get("package") or source.get("model_dir"),
            **({"layers": list(source["layers"])} if source.get("layers") else {}),
            "dataset": recipe.get("dataset", "attribution", recipe.get("dataset", "name")),
            "recipe": str(recipe.path),
            **({"variant": recipe.variant} if recipe.variant else {}),
        },
    )


def build_default(
    recipe: Recipe,
    force: bool = False,
    datasets: Path | None = None,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """The classifier recipe: build, install, activate (a no-op when its release or a later one is installed)."""

    def make(config: BuildConfig, progress: Progress):
        dataset = recipe.dataset_dir(datasets)
        train = read_jsonl(dataset / recipe.get("dataset", "train", "train.jsonl"))
        val = read_jsonl(dataset / recipe.get("dataset", "val", "val.jsonl"))
        return build_classifier(config, train, val, progress)

    return _build_and_install(recipe, make, force, progress, cache_dir, activate=True)


def build_pii_tagger(
    recipe: Recipe,
    force: bool = False,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    datasets: Path | None = None,
) -> dict:
    """The PII tagger recipe: a synthetic corpus (plus real queries as negatives), build, install (not
    activated)."""
    from . import pii_corpus
    from .tagger import build_tagger

    def make(config: BuildConfig, progress: Progress):
        train, val = tagger_corpus(recipe, datasets)
        config.source["dataset"] = "synthetic (Faker, edge_runtime/build/pii_corpus.py)" + (
            f" + negatives from {config.source['dataset']}" if config.source.get("dataset") else ""
        )
        return build_tagger(config, train, val, pii_corpus.TAGS, progress)

    return _build_and_install(recipe, make, force, progress, cache_dir, activate=False)


def ui_strings_split(recipe: Recipe) -> tuple[list[str], list[str]]:
    """The (train, held-out) software-message lines that the recipe's [corpus] ui_strings takes; the other
    lines of those files are never trained on (benchmarks/tagger_precision.py measures on them)."""
    from . import pii_corpus

    corpus = recipe.section("corpus")
    return pii_corpus.ui_negatives(
        REPO / corpus["ui_strings"],
        int(corpus.get("ui_strings_per_language", 0)),
        int(corpus.get("ui_strings_val_per_language", 0)),
        int(corpus.get("seed", 1)),
        int(corpus.get("ui_strings_max_words", 12)),
    )


def tagger_corpus(recipe: Recipe, datasets: Path | None = None) -> tuple[list, list]:
    """(train, held-out) examples as the recipe's [corpus] and optional [dataset] (real negatives) say."""
    from . import pii_corpus

    corpus = recipe.section("corpus")
    seed, negatives = int(corpus.get("seed", 1)), float(corpus.get("negatives", 0.2))
    real_train, real_val = [], []
    if recipe.section("dataset"):
        texts = read_jsonl(recipe.dataset_dir(datasets) / recipe.get("dataset", "train", "train.jsonl")).texts
        wanted = int(corpus.get("real_negatives", 0)), int(corpus.get("real_negatives_val", 0))
        chosen = pii_corpus.real_negatives(texts, sum(wanted), seed)
        real_train, real_val = chosen[: wanted[0]], chosen[wanted[0] :]
    if corpus.get("ui_strings"):  # real sentences in the other languages, also negatives
        ui_train, ui_val = ui_strings_split(recipe)
        real_train, real_val = real_train + ui_train, real_val + ui_val
    technical = float(corpus.get("technical", 0.0))  # 0: no technical clauses at all (the 1.0.0 corpus)
    train = pii_corpus.generate(
        int(corpus.get("train_examples", 4000)),
        seed,
        pii_corpus.TRAIN,
        negatives,
        real=real_train,
        technical=pii_corpus.TECHNICAL if technical else None,
        technical_share=technical,
    )
    val = pii_corpus.generate(
        int(corpus.get("val_examples", 800)),
        seed + 1,
        pii_corpus.HELD_OUT,
        negatives,
        real=real_val,
        technical=pii_corpus.TECHNICAL_HELD_OUT if technical else None,
        technical_share=technical,
    )
    return train, val


def _build_and_install(
    recipe: Recipe, make, force: bool, progress: Progress | None, cache_dir: Path | None, activate: bool
) -> dict:
    from ..store import Store

    progress = progress or Progress()
    root = paths.home()
    store = Store(root)
    name, release = recipe.get("bundle", "name"), int(recipe.get("bundle", "release"))
    existing = installed_at_or_after(store, name, release)
    if existing is not None and not force:
        return {
            "status": "already-installed",
            "name": name,
            "version": existing.version,
            "release": existing.release,
            "path": str(existing.path),
            "metrics": existing.metrics,
        }
    began = time.perf_counter()
    version = str(recipe.get("bundle", "version"))
    out = paths.cache_dir(root) / "build" / "bundles" / f"{name}-{version}.erb"
    if out.exists():
        out.unlink()  # a leftover of an interrupted build
    result = make(config_from_recipe(recipe, root, out, cache_dir), progress)
    if existing is not None and existing.version == version:
        raise BuildError(
            f"rebuilt {out}, but {name}@{version} is already installed: "
            "bump version and release in the recipe to install the rebuild"
        )
    with progress.step("install and activate" if activate else "install"):
        manifest = store.install(result.path)
        if activate:
            store.activate(manifest.name, manifest.version)
    return {
        "status": "built",
        "name": manifest.name,
        "version": manifest.version,
        "release": manifest.release,
        "archive": str(result.path),
        "path": str(manifest.path),
        "build_seconds": round(time.perf_counter() - began, 1),
        "metrics": result.manifest["metrics"],
    }
