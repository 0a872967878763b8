"""Fold the linear head (after pooling, or on every token) into the encoder graph, so the bundle maps
token ids to logits. A sentence classifier also outputs the pooled embedding the head reads (`pooled`):
the out-of-scope score (edge_runtime/ood.py) measures how far it lies from the training classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BuildError
from .head import LinearHead

HIDDEN = "last_hidden_state"
LOGITS = "logits"
POOLED = "pooled"


def _const(name: str, values, dtype):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def fold_head(encoder_path: Path, head: LinearHead, out_path: Path) -> Path:
    """encoder (-> last_hidden_state) + masked mean pooling [+ L2 norm] + linear head -> `logits` (B, C), and
    the pooled features the head reads -> `pooled` (B, H), second."""
    from onnx import TensorProto, helper

    model = _load_encoder(encoder_path)
    graph = model.graph
    p = "head/"
    graph.initializer.extend(
        [
            _const(p + "axis_seq", [1], np.int64),
            _const(p + "axis_last", [-1], np.int64),
            _const(p + "eps", 1e-9, np.float32),
            _const(p + "norm_eps", 1e-12, np.float32),
            _const(p + "weight_t", head.weight.T, np.float32),
            _const(p + "bias", head.bias, np.float32),
        ]
    )
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [p + "mask_f"], to=TensorProto.FLOAT, name=p + "cast"),
        helper.make_node("Unsqueeze", [p + "mask_f", p + "axis_last"], [p + "mask3"], name=p + "unsqueeze"),
        helper.make_node("Mul", [HIDDEN, p + "mask3"], [p + "masked"], name=p + "mask_mul"),
        helper.make_node("ReduceSum", [p + "masked", p + "axis_seq"], [p + "sum"], keepdims=0, name=p + "sum"),
        helper.make_node("ReduceSum", [p + "mask3", p + "axis_seq"], [p + "count"], keepdims=0, name=p + "count"),
        helper.make_node("Max", [p + "count", p + "eps"], [p + "count_safe"], name=p + "count_safe"),
        helper.make_node("Div", [p + "sum", p + "count_safe"], [p + "mean"], name=p + "mean"),
    ]
    pooled = p + "mean"
    if head.normalize:
        nodes += [
            helper.make_node("Mul", [pooled, pooled], [p + "sq"], name=p + "sq"),
            helper.make_node("ReduceSum", [p + "sq", p + "axis_last"], [p + "sumsq"], keepdims=1, name=p + "sumsq"),
            helper.make_node("Sqrt", [p + "sumsq"], [p + "norm"], name=p + "norm"),
            helper.make_node("Max", [p + "norm", p + "norm_eps"], [p + "norm_safe"], name=p + "norm_safe"),
            helper.make_node("Div", [pooled, p + "norm_safe"], [p + "unit"], name=p + "unit"),
        ]
        pooled = p + "unit"
    nodes += _linear(pooled, head, p)
    # a named copy, not the internal tensor: the output keeps its name whatever the pooling above is called
    nodes.append(helper.make_node("Identity", [pooled], [POOLED], name=p + "pooled"))
    graph.node.extend(nodes)
    return _save(
        model,
        [(LOGITS, ["batch_size", head.weight.shape[0]]), (POOLED, ["batch_size", head.weight.shape[1]])],
        out_path,
    )


def fold_token_head(encoder_path: Path, head: LinearHead, out_path: Path) -> Path:
    """encoder (-> last_hidden_state) + the linear head on every token -> `logits` (B, T, C)."""
    model = _load_encoder(encoder_path)
    model.graph.initializer.extend(
        [_const("head/weight_t", head.weight.T, np.float32), _const("head/bias", head.bias, np.float32)]
    )
    model.graph.node.extend(_linear(HIDDEN, head, "head/"))
    return _save(model, [(LOGITS, ["batch_size", "sequence_length", head.weight.shape[0]])], out_path)


def _load_encoder(encoder_path: Path):
    import onnx

    model = onnx.load(str(encoder_path))
    if HIDDEN not in [output.name for output in model.graph.output]:
        raise BuildError(f"{encoder_path} has no '{HIDDEN}' output")
    if "attention_mask" not in [item.name for item in model.graph.input]:
        raise BuildError(f"{encoder_path} has no 'attention_mask' input")
    return model


def _linear(features: str, head: LinearHead, p: str) -> list:
    # MatMul + Add rather than Gemm: the quantizer would rewrite a Gemm; this way the head stays fp32 by name
    from onnx import helper

    return [
        helper.make_node("MatMul", [features, p + "weight_t"], [p + "scores"], name=p + "matmul"),
        helper.make_node("Add", [p + "scores", p + "bias"], [LOGITS], name=p + "add"),
    ]


def _save(model, outputs: list[tuple[str, list]], out_path: Path) -> Path:
    """Make `outputs` ((name, shape), logits first) the graph's outputs, check, save."""
    import onnx
    from onnx import TensorProto, helper

    while len(model.graph.output):
        model.graph.output.pop()
    for name, shape in outputs:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return Path(out_path)
