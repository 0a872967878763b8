"""INT8 quantization: per-channel weights (per-tensor loses accuracy on MiniLM).

Dynamic (the default): weights INT8, activations quantized at run time from each batch's own range, so a
score depends slightly on what else is in the batch. Static (QDQ): activation ranges fixed beforehand from
calibration texts (the training texts), so a text scores the same in any batch, and no range is computed
at run time.

Some nodes can stay fp32: `ffn_down` names the FFN down-projections, the layers most sensitive to INT8.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .errors import BuildError

# alias -> pattern over node names in an optimum BERT export
ALIASES = {
    "ffn_down": re.compile(r"/layer\.\d+/output/dense/MatMul$"),
}

ALWAYS_FP32 = "head/"  # the folded classification head: tiny, and the last word on the answer


def resolve_exclusions(model_path: Path, names: list[str]) -> list[str]:
    """Node names to keep fp32: the folded head, exact names, or aliases from ALIASES."""
    import onnx

    graph_nodes = [node.name for node in onnx.load(str(model_path), load_external_data=False).graph.node]
    resolved = [node for node in graph_nodes if node.startswith(ALWAYS_FP32)]
    for name in names:
        if name in ALIASES:
            matched = [node for node in graph_nodes if ALIASES[name].search(node)]
            if not matched:
                raise BuildError(f"--exclude-nodes {name}: no matching node in {model_path.name}")
            resolved += matched
        elif name in graph_nodes:
            resolved.append(name)
        else:
            raise BuildError(f"--exclude-nodes: no node named {name!r} (aliases: {', '.join(ALIASES)})")
    return sorted(set(resolved))


METHODS = ("dynamic", "static")
CALIBRATION_TEXTS = 256  # static: how many training texts fix the activation ranges


def quantize(
    src: Path,
    dst: Path,
    exclude: list[str] | None = None,
    per_channel: bool = True,
    method: str = "dynamic",
    calibration: list[list[int]] | None = None,
) -> dict:
    """Write the INT8 model; return the manifest's `quantization` section. `static` needs `calibration`:
    token ids of texts like the ones the model will see."""
    if method == "static":
        return _quantize_static(Path(src), Path(dst), list(exclude or []), per_channel, calibration or [])
    if method != "dynamic":
        raise BuildError(f"unknown quantization {method!r} (one of {', '.join(METHODS)})")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = resolve_exclusions(Path(src), list(exclude or []))
    logging.disable(logging.WARNING)  # it advises "pre-processing" on the root logger; not needed for MatMuls
    try:
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=excluded or None
        )
    finally:
        logging.disable(logging.NOTSET)
    return {
        "method": "dynamic",
        "weight_type": "int8",
        "per_channel": per_channel,
        "activations": "uint8 (dynamic)",
        "fp32_nodes": excluded,
    }


def _quantize_static(src: Path, dst: Path, exclude: list[str], per_channel: bool, calibration: list[list[int]]) -> dict:
    """QDQ INT8 on the MatMuls (what dynamic quantizes too), activation ranges from min/max over the
    calibration texts, run one at a time at their own length, as the device runs batch 1."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise BuildError("static quantization needs calibration texts")
    excluded = resolve_exclusions(src, exclude)

    class Texts(CalibrationDataReader):
        def __init__(self):
            self._rows = iter(calibration)

        def get_next(self):
            ids = next(self._rows, None)
            if ids is None:
                return None
            row = np.asarray([ids], dtype=np.int64)
            return {"input_ids": row, "attention_mask": np.ones_like(row), "token_type_ids": np.zeros_like(row)}

    logging.disable(logging.WARNING)
    try:
        quantize_static(
            str(src),
            str(dst),
            Texts(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            nodes_to_exclude=excluded or None,
        )
    finally:
        logging.disable(logging.NOTSET)
    return {
        "method": "static",
        "format": "QDQ",
        "weight_type": "int8",
        "per_channel": per_channel,
        "activations": f"uint8 (static, min/max over {len(calibration)} training texts)",
        "fp32_nodes": excluded,
    }
