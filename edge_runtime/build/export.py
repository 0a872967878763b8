"""Export a Hugging Face encoder to ONNX (feature-extraction: outputs last_hidden_state), with a cache."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .errors import BuildError
from .source import fingerprint


def export_encoder(model_dir: Path, out_path: Path) -> Path:
    """optimum's main_export into a temp dir, then move model.onnx to `out_path`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from optimum.exporters.onnx import main_export

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="export-", dir=out_path.parent) as work:
        try:
            with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer chatter
                warnings.simplefilter("ignore")
                main_export(
                    str(model_dir),
                    output=work,
                    task="feature-extraction",
                    library_name="transformers",
                    local_files_only=True,
                    do_validation=False,
                )
        except Exception as error:  # optimum raises many types; the reason is what matters
            raise BuildError(f"ONNX export of {model_dir} failed: {error}") from error
        exported = Path(work) / "model.onnx"
        if not exported.is_file() or (Path(work) / "model.onnx_data").exists():
            raise BuildError(f"ONNX export of {model_dir} produced no single-file model.onnx")
        shutil.move(str(exported), out_path)
    return out_path


def cached_export(model_dir: Path, cache_dir: Path | None, out_path: Path) -> Path:
    """Reuse an earlier export of the same (unchanged) model folder when a cache dir is given."""
    if cache_dir is None:
        return export_encoder(model_dir, out_path)
    from importlib.metadata import version

    key = f"{fingerprint(model_dir)}-optimum{version('optimum-onnx')}"
    cached = Path(cache_dir) / "exports" / key / "encoder.onnx"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        export_encoder(model_dir, cached.with_suffix(".tmp"))
        os.replace(cached.with_suffix(".tmp"), cached)
    shutil.copyfile(cached, out_path)
    return out_path
