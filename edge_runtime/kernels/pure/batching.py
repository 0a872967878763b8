"""Padding and length bucketing: the NumPy twin of kernels/batching.pyx.

Rules (both twins follow them exactly):
- `pad_batch`: only the kept prefix of a row (its first `max_length` items) is read and checked; rows are
  truncated to `max_length`; `T = min(longest, max_length)` (0 for an empty batch or all-empty rows);
  `input_ids` is padded with `pad_id`, `attention_mask` is 1 on real tokens, `token_type_ids` (only when
  `type_ids` is given) is padded with 0. Rows must hold integers (Python ints or a NumPy integer/bool
  array); each `type_ids` row must be as long as its sequence.
- `length_buckets`: `order` is a stable argsort of `lengths`. Walking `order`, an item joins the current
  bucket while the bucket stays within `max_batch` items and `items * longest <= max_tokens` (the items are
  sorted, so the newest is the longest); an item longer than `max_tokens` gets a bucket of its own.
"""

from __future__ import annotations

import operator

import numpy as np

_INT_KINDS = "iub"


def positive_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    value = operator.index(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _int_row(seq, what: str, index: int) -> np.ndarray:
    row = np.asarray(seq)
    if row.ndim != 1:
        raise ValueError(f"{what}[{index}] must be a flat sequence of ints, got {row.ndim}-D")
    if row.size and row.dtype.kind not in _INT_KINDS:
        raise TypeError(f"{what}[{index}] must hold integers, got {row.dtype}")
    return row


def pad_batch(sequences, max_length, pad_id=0, type_ids=None):
    """Pad/truncate `sequences` to int64 `(input_ids, attention_mask, token_type_ids|None)` of shape (B, T)."""
    max_length = positive_int(max_length, "max_length")
    pad_id = operator.index(pad_id)
    sizes = [len(seq) for seq in sequences]
    rows = [_int_row(seq[:max_length], "sequences", i) for i, seq in enumerate(sequences)]
    types = None
    if type_ids is not None:
        if len(type_ids) != len(rows):
            raise ValueError(f"type_ids has {len(type_ids)} rows, sequences has {len(rows)}")
        for i, (size, typ) in enumerate(zip(sizes, type_ids)):
            if len(typ) != size:
                raise ValueError(f"type_ids[{i}] has {len(typ)} items, sequences[{i}] has {size}")
        types = [_int_row(seq[:max_length], "type_ids", i) for i, seq in enumerate(type_ids)]
    batch = len(rows)
    lengths = np.fromiter((min(row.size, max_length) for row in rows), np.int64, batch)
    width = int(lengths.max()) if batch else 0
    real = np.arange(width) < lengths[:, None]
    input_ids = np.full((batch, width), pad_id, dtype=np.int64)
    attention_mask = real.astype(np.int64)
    token_type_ids = None
    if batch and width:
        input_ids[real] = np.concatenate([row[:n] for row, n in zip(rows, lengths)])
    if types is not None:
        token_type_ids = np.zeros((batch, width), dtype=np.int64)
        if batch and width:
            token_type_ids[real] = np.concatenate([typ[:n] for typ, n in zip(types, lengths)])
    return input_ids, attention_mask, token_type_ids


def length_buckets(lengths, max_batch, max_tokens):
    """Sort by length and cut into buckets: int64 `(order, boundaries, inverse)`."""
    max_batch = positive_int(max_batch, "max_batch")
    max_tokens = positive_int(max_tokens, "max_tokens")
    values = np.asarray(lengths)
    if values.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got {values.ndim}-D")
    if values.size and values.dtype.kind not in _INT_KINDS:
        raise TypeError(f"lengths must hold integers, got {values.dtype}")
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {int(values.min())} at index {int(values.argmin())}")
    count = values.size
    order = np.argsort(values, kind="stable").astype(np.int64)
    ordered = values[order].tolist()
    boundaries = [0]
    start = 0
    for i in range(1, count):
        size = i - start + 1
        # size * longest <= max_tokens, written so it cannot overflow
        if size > max_batch or ordered[i] > max_tokens // size:
            boundaries.append(i)
            start = i
    if count:
        boundaries.append(count)
    inverse = np.empty(count, dtype=np.int64)
    inverse[order] = np.arange(count, dtype=np.int64)
    return order, np.asarray(boundaries, dtype=np.int64), inverse
