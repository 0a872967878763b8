"""The escalation wire format: versioned JSON requests (device -> worker) and answers (worker -> device).

Request  {"schema": 1, "type": "escalation.request", "id", "device", "created_at", "text",
          "prediction": {"label", "score", "top_k": [{"label", "score"}], "margin", "entropy", "ood"?} | null,
          "reason", "bundle": {"name", "version"}}
Answer   {"schema": 1, "type": "escalation.answer", "id", "answer": {...} | null, "error": str | null,
          "worker", "answered_at"}
The text is already redacted when it gets here. Encoded messages are at most 128 KB.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, is_dataclass

from .errors import InputError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 128 * 1024
REQUEST = "escalation.request"
ANSWER = "escalation.answer"


class EscalationError(InputError):
    """An escalation message is too large or does not follow the schema."""


def new_request_id() -> str:
    return uuid.uuid4().hex


def escalation_topic(device_id: str) -> str:
    return f"edge/{device_id}/escalations"


def answer_topic(device_id: str) -> str:
    return f"edge/{device_id}/answers"


def device_of_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "edge" and parts[2] in ("escalations", "answers") and parts[1]:
        return parts[1]
    return None


def check_device_id(device_id: str) -> str:
    if not device_id or any(ch in device_id for ch in "/+#\0") or len(device_id) > 128:
        raise EscalationError(f"device id {device_id!r} must be 1-128 characters without / + # or NUL")
    return device_id


def _prediction_dict(prediction) -> dict | None:
    if prediction is None:
        return None
    data = (
        prediction.to_dict()
        if hasattr(prediction, "to_dict")
        else (asdict(prediction) if is_dataclass(prediction) else dict(prediction))
    )
    top_k = []
    for item in data.get("top_k") or []:
        label, score = (item["label"], item["score"]) if isinstance(item, dict) else item
        top_k.append({"label": str(label), "score": float(score)})
    sent = {
        "label": str(data["label"]),
        "score": float(data["score"]),
        "top_k": top_k,
        "margin": float(data.get("margin", 0.0)),
        "entropy": float(data.get("entropy", 0.0)),
    }
    if data.get("ood") is not None:  # the out-of-scope score, when the device's bundle has one
        sent["ood"] = float(data["ood"])
    return sent


def build_request(
    text: str,
    prediction=None,
    *,
    device_id: str,
    request_id: str | None = None,
    reason: str = "",
    bundle: tuple[str, str] = ("", ""),
    created_at: float | None = None,
) -> dict:
    if not isinstance(text, str):
        raise EscalationError(f"escalation text must be a string, not {type(text).__name__}")
    return {
        "schema": SCHEMA_VERSION,
        "type": REQUEST,
        "id": request_id or new_request_id(),
        "device": device_id,
        "created_at": time.time() if created_at is None else created_at,
        "text": text,
        "prediction": _prediction_dict(prediction),
        "reason": reason,
        "bundle": {"name": bundle[0], "version": bundle[1]},
    }


def build_answer(request_id: str, answer: dict | None, *, worker: str, error: str | None = None) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "type": ANSWER,
        "id": request_id,
        "answer": answer,
        "error": error,
        "worker": worker,
        "answered_at": time.time(),
    }


def encode(message: dict) -> bytes:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise EscalationError(
            f"escalation message {message.get('id', '?')} is {len(data):,} bytes; "
            f"the limit is {MAX_MESSAGE_BYTES:,} bytes (shorten the text)"
        )
    return data


def _decode(data: bytes, kind: str, required: tuple[str, ...]) -> dict:
    if len(data) > MAX_MESSAGE_BYTES:
        raise EscalationError(f"{kind} is {len(data):,} bytes; the limit is {MAX_MESSAGE_BYTES:,}")
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EscalationError(f"{kind} is not valid JSON: {error}") from None
    if not isinstance(message, dict):
        raise EscalationError(f"{kind} must be a JSON object")
    if message.get("schema") != SCHEMA_VERSION:
        raise EscalationError(f"{kind} has schema {message.get('schema')!r}; this runtime speaks {SCHEMA_VERSION}")
    if message.get("type") != kind:
        raise EscalationError(f"expected a {kind}, got type {message.get('type')!r}")
    missing = [name for name in required if name not in message]
    if missing:
        raise EscalationError(f"{kind} lacks field(s): {', '.join(missing)}")
    if not isinstance(message["id"], str) or not message["id"]:
        raise EscalationError(f"{kind} id must be a non-empty string")
    return message


def decode_request(data: bytes) -> dict:
    message = _decode(data, REQUEST, ("id", "text", "prediction", "bundle"))
    if not isinstance(message["text"], str):
        raise EscalationError("escalation.request text must be a string")
    return message


def decode_answer(data: bytes) -> dict:
    return _decode(data, ANSWER, ("id", "answer", "error"))
