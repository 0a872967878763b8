"""Reading and checking request bodies: content type, size, UTF-8, JSON, texts. Every refusal is a
RequestError with a one-line reason that never quotes the text itself."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiohttp import web

from .errors import RequestError

JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_text_bytes: int
    max_texts: int
    body_timeout_s: float

    @classmethod
    def from_config(cls, config) -> Limits:
        server = config["server"]
        return cls(server["max_body_bytes"], server["max_text_bytes"], server["max_texts"], server["body_timeout_s"])


async def read_body(request: web.Request, limits: Limits, allowed_types=JSON_TYPES) -> bytes:
    """The raw body, refused when it has the wrong content type (415), is too big (413) or too slow (408).

    A missing Content-Type is accepted: some V2 clients (tritonclient) send JSON without one."""
    if "Content-Type" in request.headers and request.content_type not in allowed_types:
        raise RequestError(415, f"unsupported content type {request.content_type!r}: send application/json")
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise RequestError(413, f"body too large: {request.content_length} bytes (max {limits.max_body_bytes})")
    try:
        async with asyncio.timeout(limits.body_timeout_s):  # in this task: wait_for would start another one
            return await request.read()
    except TimeoutError:
        raise RequestError(408, f"body not received within {limits.body_timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, f"body too large (max {limits.max_body_bytes} bytes)") from None


def parse_json(body: bytes):
    if not body:
        raise RequestError(400, "empty body: send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(
            400, f"body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except (ValueError, RecursionError):
        raise RequestError(400, "body is not valid JSON (nested too deeply or a number too large)") from None


def check_texts(texts, limits: Limits, field: str = "texts") -> list[str]:
    if not isinstance(texts, list):
        raise RequestError(400, f"{field}: expected a list of strings, got {_kind(texts)}")
    if not texts:
        raise RequestError(400, f"{field}: empty list: send at least one text")
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{field}: too many texts: {len(texts)} (max {limits.max_texts} per request)")
    for number, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise RequestError(400, f"text {number}: expected a string, got {_kind(text)}")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise RequestError(400, f"text {number}: not valid Unicode (a lone surrogate escape)") from None
        if size > limits.max_text_bytes:
            raise RequestError(413, f"text {number}: too long: {size} bytes (max {limits.max_text_bytes})")
        if not text.strip():
            raise RequestError(400, f"text {number}: empty")
    return texts


def _kind(value) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
