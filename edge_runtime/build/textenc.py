"""Tokenize with the bundle's own tokenizer.json, exactly as the runtime will, and batch by length."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import kernels


def load_tokenizer(path: Path, max_length: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # we pad per batch, to the longest sequence
    tokenizer.enable_truncation(max_length)
    return tokenizer


def stage_tokenizer(model_dir: Path, stage: Path, max_length: int):
    """Write the bundle's tokenizer.json (truncation at max_length, no fixed padding) into the staging dir
    and return it loaded from there, exactly as the runtime will read it."""
    load_tokenizer(Path(model_dir) / "tokenizer.json", max_length).save(str(Path(stage) / "tokenizer.json"))
    return load_tokenizer(Path(stage) / "tokenizer.json", max_length)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [item.ids for item in tokenizer.encode_batch(texts)]


def batches(ids: list[list[int]], batch_size: int):
    """Yield (indices, input_ids, attention_mask, token_type_ids), batches of similar length."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        rows = [ids[i] for i in chosen]
        input_ids, mask, _ = kernels.batching.pad_batch(rows, max(len(row) for row in rows))
        yield chosen, input_ids, mask, np.zeros_like(input_ids)
