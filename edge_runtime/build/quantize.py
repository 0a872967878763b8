"""Dynamic INT8 quantization: per-channel weights (per-tensor loses accuracy on MiniLM).

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


def quantize(src: Path, dst: Path, exclude: list[str] | None = None, per_channel: bool = True) -> dict:
    """Write the INT8 model; return the manifest's `quantization` section."""
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
