"""Shared build steps: a staging dir beside the output, quantize + gate (with one fallback), emit.

Nothing appears at the output path unless every step passed: the bundle is assembled in a hidden
temp dir next to it, then signed and renamed (or packed) into place.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import quantize
from .config import MIN_RUNTIME, BuildConfig
from .errors import BuildError, GateError
from .progress import Progress


def make_staging_dir(out: Path) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix != ".erb" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BuildError(f"{out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{out.name}-", dir=out.parent))
    (work / "bundle").mkdir()
    return work, work / "bundle"


def emit(bundle_dir: Path, manifest: dict, config: BuildConfig) -> Path:
    from .. import bundle

    bundle.finalize(bundle_dir, manifest, private_key=config.private_key)
    out = Path(config.out)
    if out.suffix == ".erb":
        return bundle.pack(bundle_dir, out)
    if out.exists():
        out.rmdir()  # empty, checked in make_staging_dir()
    bundle_dir.rename(out)
    return out


def quantize_and_gate(
    fp32_path: Path, int8_path: Path, config: BuildConfig, progress: Progress, evaluate_pair, calibration=None
):
    """Quantize (config.quantization: dynamic, or static on the `calibration` token ids), gate; on failure
    retry once with `fallback_exclude` kept fp32."""
    attempts = [config.exclude_nodes]
    if config.fallback_exclude and set(config.fallback_exclude) != set(config.exclude_nodes):
        attempts.append(sorted(set(config.exclude_nodes) | set(config.fallback_exclude)))
    for number, exclude in enumerate(attempts, 1):
        kept = f", fp32: {', '.join(exclude)}" if exclude else ""
        what = f"quantize (int8 {config.quantization}, per-channel{kept})"
        with progress.step(what):
            section = quantize.quantize(
                fp32_path, int8_path, exclude=exclude, method=config.quantization, calibration=calibration
            )
        try:
            return section, evaluate_pair()
        except GateError as error:
            if number == len(attempts):
                raise
            progress.log(f"{error}; retrying")
    raise AssertionError("unreachable")


def base_manifest(config: BuildConfig, task: str, tokenizer_file: str) -> dict:
    return {
        "name": config.name,
        "version": config.version,
        "release": config.release,
        "task": task,
        "preprocess": {
            "tokenizer": tokenizer_file,
            "max_length": config.max_length,
            "pad_id": 0,
            "token_type_ids": True,
        },
        "min_runtime": MIN_RUNTIME,
    }
