"""Build a token tagger (token-classification): fine-tuned encoder + a linear head on every token, INT8.

Used for the PII tagger (person names, postal addresses) that egress runs beside the regex scanner.
Quality is measured on spans, the way redaction uses them: a gold value counts as caught when
predicted spans cover every one of its characters (any kind: a name redacted as an address has still
not left the device), and precision is the share of predicted spans that touch a gold value.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from .. import kernels
from ..pii_vetoes import plausible
from ..preprocess import case_flags, token_positions
from . import export, graph, metrics, ortrun, textenc
from .config import BuildConfig, BuildResult
from .errors import BuildError, GateError
from .progress import Progress
from .staging import base_manifest, emit, make_staging_dir, quantize_and_gate

AGGREGATION = "simple"
SCHEME = "IOB2"


def build_tagger(
    config: BuildConfig,
    train: list,
    val: list,
    tags: list[str],
    progress: Progress | None = None,
    case_feature: bool = True,
) -> BuildResult:
    """`train` / `val`: objects with `.text` and `.spans` ((start, end, kind), ...); `tags`: IOB2 tag list.
    `case_feature`: token_type_ids carry capitalisation (preprocess.case_flags), which the uncased
    encoder cannot see otherwise."""
    from .finetune import cache_key, cached_finetune
    from .pii_corpus import token_tags
    from .source import fingerprint

    progress = progress or Progress()
    began = time.perf_counter()
    work, stage = make_staging_dir(config.out)
    try:
        tokenizer = textenc.stage_tokenizer(config.model_dir, stage, config.max_length)
        train_enc = tokenizer.encode_batch([example.text for example in train])
        val_enc = tokenizer.encode_batch([example.text for example in val])
        ids_train = [encoding.ids for encoding in train_enc]
        targets = [
            token_tags(encoding.offsets, encoding.special_tokens_mask, example.spans, tags)
            for encoding, example in zip(train_enc, train)
        ]
        types = (
            [case_flags(example.text, encoding) for example, encoding in zip(train, train_enc)]
            if case_feature
            else None
        )
        key = cache_key(
            fingerprint(config.model_dir), ids_train, targets, config.finetune, per_token=True, type_ids=types
        )
        tuned_dir, head = cached_finetune(
            config.model_dir,
            ids_train,
            targets,
            len(tags),
            config.finetune,
            config.cache_dir or work,
            key,
            progress,
            per_token=True,
            type_ids=types,
        )
        val_texts = [example.text for example in val] if case_feature else None
        with progress.step("export fine-tuned encoder to ONNX"):
            export.cached_export(tuned_dir, config.cache_dir, work / "encoder.onnx")
        with progress.step("fold the token head into the graph"):
            graph.fold_token_head(work / "encoder.onnx", head, work / "fp32.onnx")
        fp32 = span_scores(_decode(_tag(work / "fp32.onnx", val_enc, val_texts, progress, "fp32"), tags), val)
        state = {}

        def evaluate_pair():
            state["batches"] = _tag(stage / "model.onnx", val_enc, val_texts, progress, "int8")
            state["scores"] = span_scores(_decode(state["batches"], tags), val)
            return tagger_gate(fp32, state["scores"], config.max_drop, force=config.force)

        quant_section, gate_report = quantize_and_gate(
            work / "fp32.onnx", stage / "model.onnx", config, progress, evaluate_pair
        )
        with progress.step("fit the bias against O (recall first)"):
            bias = fit_outside_bias(state["batches"], tags, val, config.max_false_share, config.max_outside_bias)
            state["spans"] = _decode(state["batches"], tags, bias)
            # recall and false spans as redaction sees them: with the spans no name or address can be taken back
            biased = span_scores([plausible(ex.text, spans) for ex, spans in zip(val, state["spans"])], val)
        precision = None
        if config.technical_negatives is not None:
            with progress.step("precision gate: technical negatives and held-out recall"):
                lines = read_negative_lines(config.technical_negatives)
                encoded = tokenizer.encode_batch(lines)
                batches = _tag(stage / "model.onnx", encoded, lines if case_feature else None, progress, "negatives")
                precision = precision_gate(
                    false_lines(lines, [plausible(t, spans) for t, spans in zip(lines, _decode(batches, tags, bias))]),
                    biased,
                    config.max_technical_false_share,
                    config.min_value_recall,
                    force=config.force,
                )
                precision["file"] = config.technical_negatives.name
        (stage / "labels.json").write_text(json.dumps(tags) + "\n", encoding="utf-8")
        _write_golden(stage / "golden.jsonl", val, state["spans"])
        with progress.step("measure size and batch-1 latency"):
            sample = val_enc[0].ids
            perf = {
                "fp32_size_mb": metrics.size_mb(work / "fp32.onnx"),
                "int8_size_mb": metrics.size_mb(stage / "model.onnx"),
                "int8_latency_ms_batch1": metrics.batch1_latency_ms(stage / "model.onnx", sample),
                "latency_tokens": len(sample),
            }
        manifest = base_manifest(config, "token-classification", "tokenizer.json")
        manifest["preprocess"]["case_feature"] = case_feature
        manifest["model"] = {
            "file": "model.onnx",
            "inputs": ["input_ids", "attention_mask", "token_type_ids"],
            "outputs": ["logits"],
            "quantization": quant_section,
        }
        manifest["postprocess"] = {
            "labels": "labels.json",
            "aggregation": AGGREGATION,
            "scheme": SCHEME,
            "outside_bias": bias,
        }
        manifest["metrics"] = {
            "split": "held-out clauses",
            "fp32": fp32,
            "int8": state["scores"],
            "int8_with_outside_bias": biased,
            "gate": gate_report,
            **({"precision_gate": precision} if precision is not None else {}),
            **perf,
            "build_seconds": round(time.perf_counter() - began, 1),
            "steps_seconds": progress.timings,
            "source": config.source,
        }
        path = emit(stage, manifest, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(path, manifest, round(time.perf_counter() - began, 1))


def _tag(model_path, encodings, texts: list[str] | None, progress: Progress, what: str) -> list[tuple]:
    """Run the tagger over held-out texts: [(rows, logits, offsets, word_ids), ...] per length batch.
    With `texts`, the token types carry case flags, as on the device."""
    sess = ortrun.session(model_path)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    batches = []
    with progress.bar(f"tag held-out texts ({what})", len(order)) as advance:
        for begin in range(0, len(order), 64):
            chosen = order[begin : begin + 64]
            rows = [encodings[i].ids for i in chosen]
            types = [case_flags(texts[i], encodings[i]) for i in chosen] if texts is not None else None
            input_ids, mask, type_ids = kernels.batching.pad_batch(rows, max(map(len, rows)), 0, types)
            if type_ids is None:
                type_ids = np.zeros_like(input_ids)
            logits = sess.run(None, ortrun._feeds(sess, input_ids, mask, type_ids))[0]
            offsets, word_ids = token_positions([encodings[i] for i in chosen], logits.shape[1])
            batches.append((chosen, logits, offsets, word_ids))
            advance(len(chosen))
    return batches


def _decode(batches: list[tuple], tags: list[str], outside_bias: float = 0.0) -> list[list[tuple]]:
    """Predicted (start, end, kind) per text, decoded by the runtime's own kernel and rule
    (postprocess.entities: `outside_bias` is taken off the O logit)."""
    from ..postprocess import entities

    out: list[list[tuple]] = [[] for _ in range(sum(len(b[0]) for b in batches))]
    for chosen, logits, offsets, word_ids in batches:
        found = entities(logits, offsets, word_ids, tags, AGGREGATION, SCHEME, outside_bias)
        for row, i in enumerate(chosen):
            out[i] = [(e.start, e.end, e.label) for e in found[row]]
    return out


def fit_outside_bias(
    batches: list[tuple],
    tags: list[str],
    examples: list,
    max_false_texts: float = 0.015,
    max_bias: float = 6.0,
    min_precision: float = 90.0,
) -> float:
    """The largest bias against O (more redaction), up to `max_bias`, that keeps false spans on at most
    `max_false_texts` of the texts without PII and span precision >= `min_precision`. Redaction prefers
    recall: a missed name leaves the device, an extra placeholder only costs the upstream a word."""
    best = 0.0
    for bias in np.arange(0.0, max_bias + 0.01, 0.5):
        scores = span_scores(_decode(batches, tags, float(bias)), examples)
        negatives = scores["negatives"]
        false_share = negatives["with_false_spans"] / max(1, negatives["texts"])
        if false_share > max_false_texts or scores["all"]["span_precision"] < min_precision:
            break
        best = float(bias)
    return best


def span_scores(predicted: list[list[tuple]], gold_examples: list) -> dict:
    """Per kind and overall: value recall (every character covered), exact-span F1, span precision."""
    kinds = sorted({kind for example in gold_examples for *_, kind in example.spans})
    result = {}
    for kind in kinds + [None]:
        gold_total = covered = exact = predicted_total = touching = 0
        for spans, example in zip(predicted, gold_examples):
            gold = [s for s in example.spans if kind is None or s[2] == kind]
            mine = [s for s in spans if kind is None or s[2] == kind]
            gold_total += len(gold)
            predicted_total += len(mine)
            for start, end, _ in gold:
                chars = set(range(start, end)) - {i for i in range(start, end) if example.text[i].isspace()}
                for p_start, p_end, _ in spans:  # any kind covers
                    chars -= set(range(p_start, p_end))
                covered += not chars
                exact += any(p[0] == start and p[1] == end for p in mine)
            for p_start, p_end, _ in mine:
                touching += any(p_start < g_end and p_end > g_start for g_start, g_end, _ in example.spans)
        recall = exact / gold_total if gold_total else 0.0
        precision = exact / predicted_total if predicted_total else 0.0
        result[kind or "all"] = {
            "values": gold_total,
            "value_recall": _pct(covered, gold_total),
            "span_precision": _pct(touching, predicted_total),
            "exact_f1": round(200 * precision * recall / (precision + recall), 2) if precision + recall else 0.0,
        }
    negatives = [spans for spans, example in zip(predicted, gold_examples) if not example.spans]
    result["negatives"] = {"texts": len(negatives), "with_false_spans": sum(bool(s) for s in negatives)}
    return result


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def tagger_gate(fp32: dict, int8: dict, max_drop: float, force: bool = False) -> dict:
    """INT8 may lose at most `max_drop` points of value recall or exact-span F1 against fp32."""
    drops = {
        "value_recall": round(fp32["all"]["value_recall"] - int8["all"]["value_recall"], 2),
        "exact_f1": round(fp32["all"]["exact_f1"] - int8["all"]["exact_f1"], 2),
    }
    report = {"max_drop": max_drop, "drops": drops, "passed": max(drops.values()) <= max_drop, "forced": False}
    if not report["passed"]:
        if not force:
            raise GateError(
                f"INT8 gate failed: tagger drop {max(drops.values()):.2f} points > allowed "
                f"{max_drop:.2f} ({drops}); try --exclude-nodes ffn_down, or --force",
                report,
            )
        report["forced"] = True
    return report


def read_negative_lines(path) -> list[str]:
    """The non-empty lines of a file of texts without PII (datasets/technical/negatives.txt)."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise BuildError(f"technical negatives {path}: {error}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise BuildError(f"technical negatives {path}: no lines")
    return lines


def false_lines(lines: list[str], spans: list[list[tuple]]) -> dict:
    """Lines without PII that got any span: how many, per 1,000, and a few of them with what was tagged."""
    flagged = [(line, found) for line, found in zip(lines, spans) if found]
    return {
        "lines": len(lines),
        "with_spans": len(flagged),
        "false_share": round(len(flagged) / len(lines), 4) if lines else 0.0,
        "per_1000": round(1000 * len(flagged) / len(lines), 1) if lines else 0.0,
        "examples": [
            {"text": line, "spans": [[line[start:end], kind] for start, end, kind in found]}
            for line, found in flagged[:5]
        ],
    }


def precision_gate(
    negatives: dict, scores: dict, max_false_share: float, min_value_recall: dict, force: bool = False
) -> dict:
    """At most `max_false_share` of the technical negative lines may get a span, while held-out value recall
    stays at or above `min_value_recall[kind]` per kind (`scores`: span_scores of the shipped tagger)."""
    recall = {kind: scores.get(kind, {}).get("value_recall", 0.0) for kind in min_value_recall}
    failures = []
    if negatives["with_spans"] > max_false_share * negatives["lines"]:
        examples = "; ".join(repr(e["text"]) for e in negatives["examples"][:2])
        failures.append(
            f"{negatives['with_spans']} of {negatives['lines']} technical negative lines "
            f"({100 * negatives['false_share']:.2f}%) got a span, allowed {100 * max_false_share:.2f}% "
            f"(e.g. {examples})"
        )
    failures += [
        f"held-out {kind} value recall {recall[kind]:.2f} < {floor:.2f}"
        for kind, floor in min_value_recall.items()
        if recall[kind] < floor
    ]
    report = {
        "technical_negatives": negatives,
        "max_false_share": max_false_share,
        "value_recall": recall,
        "min_value_recall": dict(min_value_recall),
        "passed": not failures,
        "forced": False,
    }
    if failures:
        if not force:
            raise GateError(f"precision gate failed: {'; '.join(failures)}", report)
        report["forced"] = True
    return report


def _write_golden(path, examples: list, spans: list[list[tuple]], count: int = 12) -> None:
    """Held-out texts the INT8 tagger gets exactly right, with their spans (the on-device self-test)."""
    rows = [
        {"text": example.text, "entities": [list(s) for s in example.spans]}
        for example, found in zip(examples, spans)
        if example.spans and sorted(found) == sorted(example.spans)
    ]
    with path.open("w", encoding="utf-8") as handle:
        for row in rows[:count]:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
