"""Build a text classifier: encoder + linear head (logreg or fine-tuned) folded into one INT8 logits graph,
with the out-of-scope score fitted on the INT8 model's pooled embeddings (build/ood.py)."""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import kernels
from . import evaluate, export, golden, graph, metrics, ortrun, reject, textenc
from . import ood as ood_fit
from .config import DEFAULT_ROUTING, BuildConfig, BuildResult
from .data import Split, encode_labels, label_list
from .errors import BuildError
from .gate import classifier_gate
from .progress import Progress
from .quantize import CALIBRATION_TEXTS
from .staging import base_manifest, emit, make_staging_dir, quantize_and_gate


def build_classifier(config: BuildConfig, train: Split, val: Split, progress: Progress | None = None) -> BuildResult:
    progress = progress or Progress()
    began = time.perf_counter()
    labels = label_list(train)
    y_train = np.asarray(encode_labels(train, labels, "training data"))
    y_val = np.asarray(encode_labels(val, labels, "validation data"))
    oos = config.oos_label if config.oos_label in labels else None
    replaced = None
    if config.replaces:  # loaded first: an unreadable --replaces stops the build before any training
        from .regression import load_replaced

        replaced = load_replaced(config.replaces)
        config.source["replaces"] = config.replaces
    if config.reject_signal not in (*reject.SIGNALS, reject.AUTO):
        raise BuildError(f"reject signal {config.reject_signal!r}: one of {', '.join(reject.SIGNALS)} or auto")
    work, stage = make_staging_dir(config.out)
    try:
        tokenizer = textenc.stage_tokenizer(config.model_dir, stage, config.max_length)
        ids_train, ids_val = textenc.encode(tokenizer, train.texts), textenc.encode(tokenizer, val.texts)
        teaching = None
        if config.distillation is not None:
            from .distill import teach

            if config.head != "finetune":
                raise BuildError("distillation trains the encoder: it needs head = finetune")
            teaching = teach(config.distillation, list(train.texts), labels, config.cache_dir, progress)
            config.source["distillation"] = teaching.provenance
        head, encoder_onnx = _train_head(config, work, ids_train, y_train, len(labels), progress, teaching, tokenizer)
        with progress.step("fold pooling + head into the graph"):
            graph.fold_head(encoder_onnx, head, work / "fp32.onnx")
        with progress.bar("evaluate fp32 on val", len(ids_val)) as advance:
            fp32_logits = ortrun.run(work / "fp32.onnx", ids_val, advance=advance)
        fp32_scores = evaluate.scores(evaluate.predict(fp32_logits, labels), y_val, labels, oos)
        state = {}

        def evaluate_pair():
            with progress.bar("evaluate int8 on val", len(ids_val)) as advance:
                state["logits"] = ortrun.run(stage / "model.onnx", ids_val, advance=advance)
            state["scores"] = evaluate.scores(evaluate.predict(state["logits"], labels), y_val, labels, oos)
            return classifier_gate(fp32_scores, state["scores"], config.max_drop, force=config.force)

        calibration = random.Random(config.finetune.seed).sample(ids_train, min(CALIBRATION_TEXTS, len(ids_train)))
        quant_section, gate_report = quantize_and_gate(
            work / "fp32.onnx", stage / "model.onnx", config, progress, evaluate_pair, calibration
        )
        int8_logits, int8_scores = state["logits"], state["scores"]
        oos_index = labels.index(oos) if oos else None
        with progress.bar("pooled embeddings of the training texts (int8)", len(ids_train)) as advance:
            pooled_train = ortrun.run(stage / "model.onnx", ids_train, output=graph.POOLED, advance=advance)
        pooled_val = ortrun.run(stage / "model.onnx", ids_val, output=graph.POOLED)
        with progress.step("fit the out-of-scope score"):
            exclude = (oos_index,) if oos_index is not None else ()
            in_scope_val = pooled_val[~np.isin(y_val, exclude)]
            try:
                ood_parameters, ood_summary = ood_fit.fit_mahalanobis(pooled_train, y_train, exclude, in_scope_val)
            except ValueError as error:  # too few training texts for their classes
                raise BuildError(f"cannot fit the out-of-scope score: {error}") from None
            ood_parameters.write(stage / "ood.npz")

        def ood_scores(model_path: Path, ids, batch_size: int = 64, pooled=None):
            if pooled is None:
                pooled = ortrun.run(model_path, ids, batch_size=batch_size, output=graph.POOLED)
            p = ood_parameters
            return kernels.ood.ood_scores(pooled, p.whiten, p.centers, p.location, p.scale)

        fp32_ood = ood_scores(work / "fp32.onnx", ids_val)
        int8_ood = ood_scores(stage / "model.onnx", ids_val, pooled=pooled_val)
        signal, selection = config.reject_signal, None
        if oos and signal == reject.AUTO:
            with progress.step("choose the reject signal (cross-fitted on val)"):
                signal, selection = reject.choose(
                    int8_logits, int8_ood, y_val, labels, oos, config.reject_max_in_scope_drop
                )
        threshold, ood_threshold = (
            reject.fit(signal, int8_logits, int8_ood, y_val, labels, oos, config.reject_max_in_scope_drop)
            if oos
            else (None, None)
        )
        with_reject = (
            {
                name: evaluate.scores(
                    evaluate.predict(logits, labels, oos, threshold, far, ood_threshold), y_val, labels, oos
                )
                for name, logits, far in (("fp32", fp32_logits, fp32_ood), ("int8", int8_logits, int8_ood))
            }
            if threshold is not None or ood_threshold is not None
            else None
        )
        (stage / "labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        golden.write_golden(
            stage / "golden.jsonl",
            golden.classifier_rows(
                val.texts,
                ids_val,
                y_val,
                labels,
                lambda ids: (
                    ortrun.run(stage / "model.onnx", ids, batch_size=1),
                    ood_scores(stage / "model.onnx", ids, batch_size=1),
                ),
                oos,
                threshold,
                batch_logits=int8_logits,
                batch_ood=int8_ood,
                ood_threshold=ood_threshold,
            ),
        )
        with progress.step("measure size and batch-1 latency"):
            sample = ids_val[0]
            perf = {
                "fp32_size_mb": metrics.size_mb(work / "fp32.onnx"),
                "int8_size_mb": metrics.size_mb(stage / "model.onnx"),
                "fp32_latency_ms_batch1": metrics.batch1_latency_ms(work / "fp32.onnx", sample),
                "int8_latency_ms_batch1": metrics.batch1_latency_ms(stage / "model.onnx", sample),
                "latency_tokens": len(sample),
            }
        manifest = base_manifest(config, "text-classification", "tokenizer.json")
        manifest["model"] = {
            "file": "model.onnx",
            "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "outputs": [graph.LOGITS, graph.POOLED],
            "quantization": quant_section,
        }
        manifest["postprocess"] = {
            "labels": "labels.json",
            "temperature": 1.0,
            "top_k": 5,
            "pooling": "mean",
            "normalize": head.normalize,
            "reject_threshold": threshold,
            "reject_label": oos if threshold is not None or ood_threshold is not None else None,
            "ood": {
                "file": "ood.npz",
                "output": graph.POOLED,
                "method": ood_fit.METHOD,
                "reject_threshold": ood_threshold,
            },
        }
        manifest["routing"] = {**DEFAULT_ROUTING, "oos_label": oos, **config.routing}
        manifest["metrics"] = {
            "split": "val",
            "head": config.head,
            "fp32": fp32_scores,
            "int8": int8_scores,
            "with_reject_threshold": with_reject,
            "reject_signal": signal if oos else None,
            "reject_signal_selection": selection,
            "ood": {
                **ood_summary,
                "val_auroc": _val_auroc(int8_logits, int8_ood, y_val, oos_index),
            },
            "gate": gate_report,
            **perf,
            "build_seconds": round(time.perf_counter() - began, 1),
            "steps_seconds": progress.timings,
            "source": config.source,
        }
        if replaced is not None:
            from .regression import regression_gate, staged_model

            with progress.step(f"regression gate against {replaced.name}@{replaced.version}"):
                manifest["metrics"]["regression"] = regression_gate(
                    replaced,
                    staged_model(stage, manifest),
                    val.texts,
                    val.labels,
                    oos,
                    config.max_regression,
                    force=config.force,
                )
        path = emit(stage, manifest, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(path, manifest, round(time.perf_counter() - began, 1))


def _val_auroc(logits, ood, targets, oos_index: int | None) -> dict | None:
    """How well each signal alone tells val's out-of-scope texts from the rest (1.0: perfectly)."""
    if oos_index is None:
        return None
    positive = targets == oos_index
    confidence = ood_fit.auroc(-evaluate.softmax(logits.astype(np.float64)).max(axis=1), positive)
    far = ood_fit.auroc(np.asarray(ood, dtype=np.float64), positive)
    return {
        "confidence": None if confidence is None else round(confidence, 4),
        "ood": None if far is None else round(far, 4),
    }


def _train_head(
    config: BuildConfig,
    work: Path,
    ids_train,
    y_train,
    n_classes: int,
    progress: Progress,
    teaching=None,
    tokenizer=None,
):
    """(LinearHead, path of the fp32 encoder ONNX it sits on). With `teaching` (build/distill.py), fine-tuning
    also learns from the teacher's soft labels, on the training texts and its unlabelled ones."""
    from .head import LinearHead, fit_logreg

    encoder_onnx = work / "encoder.onnx"
    if config.head == "logreg":
        with progress.step("export encoder to ONNX"):
            export.cached_export(config.model_dir, config.cache_dir, encoder_onnx)
        with progress.bar("encoder features (train)", len(ids_train)) as advance:
            features = ortrun.run(encoder_onnx, ids_train, pool=True, normalize=True, advance=advance)
        with progress.step("fit logistic-regression head"):
            weight, bias = fit_logreg(features, y_train, n_classes, c=config.logreg_c, seed=config.finetune.seed)
        return LinearHead(weight, bias, normalize=True), encoder_onnx
    if config.head == "finetune":
        from .finetune import cache_key, cached_finetune
        from .source import fingerprint

        cache_root = config.cache_dir or work
        ids, targets, soft, tune = ids_train, y_train.tolist(), None, config.finetune
        if teaching is not None:
            ids = ids_train + textenc.encode(tokenizer, teaching.unlabelled_texts)
            targets = targets + [-100] * len(teaching.unlabelled_texts)  # no gold label: the teacher's only
            soft = teaching.soft
            tune = replace(
                tune,
                distill_weight=teaching.provenance["weight"],
                distill_temperature=teaching.provenance["temperature"],
            )
        key = cache_key(fingerprint(config.model_dir), ids, targets, tune, soft=soft)
        tuned_dir, head = cached_finetune(
            config.model_dir, ids, targets, n_classes, tune, cache_root, key, progress, soft=soft
        )
        with progress.step("export fine-tuned encoder to ONNX"):
            export.cached_export(tuned_dir, config.cache_dir, encoder_onnx)
        return head, encoder_onnx
    raise BuildError(f"unknown head {config.head!r} (logreg or finetune)")
