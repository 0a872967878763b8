"""Open Inference Protocol (KServe V2) REST mapping: metadata documents, infer request parsing and
response building, including the binary tensor data extension (what tritonclient sends by default).

One input, `text` (BYTES, shape [-1]); outputs label, decision, reason, request_id, top_k (BYTES; top_k
holds a JSON list per text), score and ood (FP32; ood, the out-of-scope score, only for a bundle that has
one: else 400).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from .. import __version__
from .errors import RequestError

SERVER_NAME = "edge-runtime"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "text"
OUTPUTS = {
    "label": "BYTES",
    "score": "FP32",
    "decision": "BYTES",
    "reason": "BYTES",
    "request_id": "BYTES",
    "top_k": "BYTES",
    "ood": "FP32",  # the out-of-scope score (0..1), for a bundle that has one
}
DEFAULT_OUTPUTS = ("label", "score", "decision", "reason", "request_id")


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def model_metadata(engine) -> dict:
    return {
        "name": engine.name,
        "versions": [engine.version],
        "platform": "onnxruntime",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": name, "datatype": dtype, "shape": [-1]} for name, dtype in OUTPUTS.items()],
    }


@dataclass
class InferRequest:
    texts: list
    id: str | None
    outputs: list[tuple[str, bool]]  # (name, binary)


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 <= size <= len(body):
        raise RequestError(400, f"{HEADER_LENGTH}: must be an integer 0-{len(body)}")
    return body[:size], body[size:]


def _flatten(data, into: list, depth: int = 0) -> None:
    if depth > 8:
        raise RequestError(400, "input 'text': data nested too deeply")
    for item in data:
        if isinstance(item, list):
            _flatten(item, into, depth + 1)
        else:
            into.append(item)


def _decode_bytes_tensor(raw: bytes) -> list:
    """BYTES elements in binary form: a 4-byte little-endian length before each element."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RequestError(400, "input 'text': truncated binary BYTES element")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise RequestError(400, "input 'text': truncated binary BYTES element")
        try:
            items.append(raw[offset : offset + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(400, f"input 'text': element {len(items) + 1} is not valid UTF-8") from None
        offset += size
    return items


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RequestError(400, f"{where}: expected a JSON object")
    return value


def parse_infer(body: bytes, header_length: str | None, parse_json) -> InferRequest:
    head, binary = _split_binary(body, header_length)
    request = _object(parse_json(head), "request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise RequestError(400, f"inputs: expected a list with one tensor named '{INPUT}'")
    tensor = _object(inputs[0], "inputs[0]")
    if tensor.get("name") != INPUT:
        raise RequestError(400, f"inputs[0].name: this model takes one input named '{INPUT}'")
    if tensor.get("datatype") != "BYTES":
        raise RequestError(400, f"input '{INPUT}': datatype must be BYTES")
    shape = tensor.get("shape")
    if not (
        isinstance(shape, list)
        and 1 <= len(shape) <= 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and (len(shape) == 1 or shape[1] == 1)
    ):
        raise RequestError(400, f"input '{INPUT}': shape must be [N] or [N, 1]")
    params = tensor.get("parameters") or {}
    _object(params, f"input '{INPUT}' parameters")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= len(binary)):
            raise RequestError(400, f"input '{INPUT}': binary_data_size does not match the body")
        texts = _decode_bytes_tensor(binary[:size])
    elif "data" in tensor:
        if not isinstance(tensor["data"], list):
            raise RequestError(400, f"input '{INPUT}': data must be a list")
        texts = []
        _flatten(tensor["data"], texts)
    else:
        raise RequestError(400, f"input '{INPUT}': no data")
    if len(texts) != math.prod(shape):
        raise RequestError(400, f"input '{INPUT}': shape {shape} does not match {len(texts)} elements")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, "id: must be a string")
    return InferRequest(texts, request_id, _outputs(request))


def _binary_flag(params, where: str) -> bool:
    params = _object(params or {}, where)
    flag = params.get("binary_data_output", params.get("binary_data", False))
    if not isinstance(flag, bool):
        raise RequestError(400, f"{where}: binary_data must be true or false")
    return flag


def _outputs(request: dict) -> list[tuple[str, bool]]:
    default_binary = _binary_flag(request.get("parameters"), "parameters")
    wanted = request.get("outputs")
    if wanted is None:
        return [(name, default_binary) for name in DEFAULT_OUTPUTS]
    if not isinstance(wanted, list) or not wanted:
        raise RequestError(400, 'outputs: expected a non-empty list of {"name": ...}')
    chosen = []
    for number, item in enumerate(wanted):
        item = _object(item, f"outputs[{number}]")
        name = item.get("name")
        if name not in OUTPUTS:
            raise RequestError(400, f"outputs[{number}].name: unknown output (known: {', '.join(OUTPUTS)})")
        chosen.append((name, _binary_flag(item.get("parameters"), f"outputs[{number}].parameters")))
    return chosen


def _values(name: str, predictions) -> list:
    if name == "score":
        return [float(p.score) for p in predictions]
    if name == "ood":
        if any(p.ood is None for p in predictions):
            raise RequestError(400, "outputs: this model has no out-of-scope score (ood)")
        return [float(p.ood) for p in predictions]
    if name == "top_k":
        return [json.dumps([{"label": label, "score": score} for label, score in p.top_k]) for p in predictions]
    return [getattr(p, name) or "" for p in predictions]


def _binary(datatype: str, values: list) -> bytes:
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    parts = []
    for value in values:
        data = value.encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def infer_response(engine, request: InferRequest, predictions) -> tuple[bytes, dict]:
    """(body, headers); binary outputs follow the JSON header, whose length goes in a header."""
    outputs, blobs = [], []
    for name, binary in request.outputs:
        datatype, values = OUTPUTS[name], _values(name, predictions)
        tensor = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if binary:
            blob = _binary(datatype, values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values
        outputs.append(tensor)
    document = {"model_name": engine.name, "model_version": engine.version, "outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    head = json.dumps(document, ensure_ascii=False).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
