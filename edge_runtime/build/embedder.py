"""Build a sentence embedder: the encoder in INT8 (the runtime pools), gated on cosine similarity to fp32."""

from __future__ import annotations

import shutil
import time

from . import export, golden, metrics, ortrun, textenc
from .config import BuildConfig, BuildResult
from .gate import embedder_gate
from .progress import Progress
from .staging import base_manifest, emit, make_staging_dir, quantize_and_gate


def build_embedder(config: BuildConfig, texts: list[str], progress: Progress | None = None) -> BuildResult:
    """Encoder only (the runtime pools), INT8, gated on cosine similarity to fp32 over `texts`."""
    progress = progress or Progress()
    began = time.perf_counter()
    work, stage = make_staging_dir(config.out)
    try:
        tokenizer = textenc.stage_tokenizer(config.model_dir, stage, config.max_length)
        ids = textenc.encode(tokenizer, texts)
        with progress.step("export encoder to ONNX"):
            export.cached_export(config.model_dir, config.cache_dir, work / "fp32.onnx")
        with progress.bar("embed with fp32", len(ids)) as advance:
            fp32 = ortrun.run(work / "fp32.onnx", ids, pool=True, normalize=True, advance=advance)
        state = {}

        def evaluate_pair():
            with progress.bar("embed with int8", len(ids)) as advance:
                state["int8"] = ortrun.run(stage / "model.onnx", ids, pool=True, normalize=True, advance=advance)
            return embedder_gate(fp32, state["int8"], config.min_cosine, force=config.force)

        quant_section, gate_report = quantize_and_gate(
            work / "fp32.onnx", stage / "model.onnx", config, progress, evaluate_pair
        )
        single = ortrun.run(stage / "model.onnx", ids[:8], batch_size=1, pool=True, normalize=True)
        golden.write_golden(stage / "golden.jsonl", golden.embedding_rows(texts, single))
        with progress.step("measure size and batch-1 latency"):
            perf = {
                "fp32_size_mb": metrics.size_mb(work / "fp32.onnx"),
                "int8_size_mb": metrics.size_mb(stage / "model.onnx"),
                "int8_latency_ms_batch1": metrics.batch1_latency_ms(stage / "model.onnx", ids[0]),
                "latency_tokens": len(ids[0]),
            }
        manifest = base_manifest(config, "feature-extraction", "tokenizer.json")
        manifest["model"] = {
            "file": "model.onnx",
            "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "outputs": ["last_hidden_state"],
            "quantization": quant_section,
        }
        manifest["postprocess"] = {"pooling": "mean", "normalize": True}
        manifest["metrics"] = {
            "gate": gate_report,
            **perf,
            "build_seconds": round(time.perf_counter() - began, 1),
            "steps_seconds": progress.timings,
            "source": config.source,
        }
        path = emit(stage, manifest, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(path, manifest, round(time.perf_counter() - began, 1))
