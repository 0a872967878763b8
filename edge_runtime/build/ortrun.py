"""Run an ONNX model over texts with onnxruntime: mean-pooled features, logits, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import textenc


def session(path: Path, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(sess, input_ids, mask, type_ids) -> dict:
    available = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
    return {i.name: available[i.name] for i in sess.get_inputs()}


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


def run(
    path: Path,
    ids: list[list[int]],
    batch_size: int = 64,
    pool: bool = False,
    normalize: bool = False,
    advance=None,
    output: str | None = None,
) -> np.ndarray:
    """The first output of the model (or the one named `output`) for every sequence, in the caller's order.

    With `pool`, that output is a hidden-state tensor, mean-pooled over the attention mask."""
    sess = session(path)
    out = None
    wanted = [output] if output else None
    for chosen, input_ids, mask, type_ids in textenc.batches(ids, batch_size):
        result = sess.run(wanted, _feeds(sess, input_ids, mask, type_ids))[0]
        if pool:
            result = mean_pool(result, mask, normalize)
        if out is None:
            out = np.zeros((len(ids), result.shape[-1]), dtype=np.float32)
        out[chosen] = result
        if advance:
            advance(len(chosen))
    return out
