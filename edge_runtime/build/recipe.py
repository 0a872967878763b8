"""recipe.toml: what `edge-runtime build default` builds (source model, dataset, head, gate)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_RECIPE = REPO / "models" / "clinc150-minilm-int8" / "recipe.toml"
TAGGER_RECIPE = REPO / "models" / "pii-tagger-minilm" / "recipe.toml"


@dataclass
class Recipe:
    path: Path
    raw: dict
    variant: str | None = None  # the [variants.NAME] laid over this recipe, if any

    def section(self, name: str) -> dict:
        value = self.raw.get(name, {})
        if not isinstance(value, dict):
            raise BuildError(f"{self.path}: [{name}] must be a table")
        return value

    def get(self, section: str, key: str, default=None, required: bool = False):
        table = self.section(section)
        if required and key not in table:
            raise BuildError(f"{self.path}: [{section}] needs `{key}`")
        return table.get(key, default)

    def with_variant(self, name: str | None) -> Recipe:
        """This recipe with the tables of `[variants.NAME]` laid over its own, key by key (e.g. the
        `fast` logistic-regression bundle served first, or the `quick` smoke build with a few steps)."""
        if not name:
            return self
        variants = self.section("variants")
        if name not in variants:
            known = ", ".join(sorted(variants)) or "none"
            raise BuildError(f"{self.path}: no [variants.{name}] (variants: {known})")
        raw = {key: value for key, value in self.raw.items() if key != "variants"}
        for section, table in variants[name].items():
            if not isinstance(table, dict):
                raise BuildError(f"{self.path}: [variants.{name}] {section} must be a table")
            raw[section] = {**self.section(section), **table}
        return Recipe(self.path, raw, name)

    def dataset_dir(self, override: Path | None = None) -> Path:
        """--datasets DIR, else $EDGE_RUNTIME_DATASETS, holding <name>/; else `path` relative to the repo."""
        name = self.get("dataset", "name", required=True)
        root = override or os.environ.get("EDGE_RUNTIME_DATASETS")
        folder = Path(root).expanduser() / name if root else REPO / self.get("dataset", "path", required=True)
        folder = folder.resolve()
        if not folder.is_dir():
            raise BuildError(f"dataset {name!r} not found at {folder} (set EDGE_RUNTIME_DATASETS or --datasets)")
        return folder


def load_recipe(path: Path | None = None) -> Recipe:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path or DEFAULT_RECIPE)
    if not path.is_file():
        raise BuildError(f"no recipe at {path} (pass --recipe PATH)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise BuildError(f"{path}: invalid TOML ({error})") from None
    recipe = Recipe(path, raw)
    for section, key in (("bundle", "name"), ("bundle", "version"), ("bundle", "release")):
        recipe.get(section, key, required=True)
    return recipe
