"""Text -> padded int64 tensors, with length bucketing for large batches.

Tokenisation is the Rust `tokenizers` library reading the bundle's tokenizer.json; padding and
bucketing are kernels (edge_runtime.kernels.batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from . import kernels
from .errors import InputError


@dataclass
class Batch:
    tensors: dict[str, np.ndarray]
    lengths: np.ndarray  # tokens per text, after truncation


class Preprocessor:
    def __init__(
        self,
        tokenizer_file: Path,
        max_length: int,
        pad_id: int = 0,
        token_type_ids: bool = True,
        case_feature: bool = False,
    ):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = pad_id
        self.token_type_ids = token_type_ids
        self.case_feature = case_feature  # token_type_ids carry case_flags() (see there)

    def encode(self, texts: Sequence[str]):
        for number, text in enumerate(texts, 1):
            if not isinstance(text, str):
                raise InputError(f"text {number}: expected a string, got {type(text).__name__}")
            if not text.strip():
                raise InputError(f"text {number}: empty")
        if len(texts) == 1:  # batch 1: skip the tokenizer's thread pool hand-off
            return [self.tokenizer.encode(texts[0], add_special_tokens=True)]
        return self.tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def tensors(self, encodings, texts: Sequence[str] | None = None) -> Batch:
        """Padded tensors; a case-feature bundle needs the `texts` the encodings came from."""
        ids = [encoding.ids for encoding in encodings]
        type_ids = [encoding.type_ids for encoding in encodings] if self.token_type_ids else None
        if self.case_feature:
            if texts is None:
                raise ValueError("this bundle's token_type_ids carry case: pass the texts")
            type_ids = [case_flags(text, encoding) for text, encoding in zip(texts, encodings)]
        input_ids, attention_mask, token_type_ids = kernels.batching.pad_batch(
            ids, self.max_length, self.pad_id, type_ids
        )
        tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            tensors["token_type_ids"] = token_type_ids
        return Batch(tensors, attention_mask.sum(axis=1))

    def buckets(self, encodings, max_batch: int, max_tokens: int):
        """(order, boundaries, inverse) grouping texts of similar length to bound padding."""
        lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
        return kernels.batching.length_buckets(lengths, max_batch, max_tokens)


def token_positions(encodings, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (B, width, 2), word_ids (B, width)) of padded encodings, for entity decoding: character
    spans into each text, and -1 on special and padding tokens."""
    offsets = np.zeros((len(encodings), width, 2), dtype=np.int64)
    word_ids = np.full((len(encodings), width), -1, dtype=np.int64)
    for row, encoding in enumerate(encodings):
        n = min(len(encoding.ids), width)
        offsets[row, :n] = np.asarray(encoding.offsets[:n], dtype=np.int64).reshape(n, 2)
        word_ids[row, :n] = [-1 if w is None else w for w in encoding.word_ids[:n]]
    return offsets, word_ids


def case_flags(text: str, encoding) -> list[int]:
    """1 for each token whose first character is upper case, else 0 (special tokens: 0).

    An uncased encoder cannot tell "Rose" from "rose"; a tagger bundle built with `case_feature`
    learns the token-type embedding as a capitalisation signal, which names and addresses need."""
    return [1 if end > start and text[start].isupper() else 0 for start, end in encoding.offsets]
