"""Strict, bounded checks for JSON that arrives from peers we do not trust.

A schema is a function `(value, path) -> value` that returns the value or raises `SchemaError` naming the
path and what is wrong. The builders below make them: every string has a length bound, every list an item
bound, every number a range, and a record rejects unknown and missing keys. `parse_json` bounds the
payload's size before parsing and turns every way `json.loads` can fail into `SchemaError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Schema = Callable[[Any, str], Any]


class SchemaError(ValueError):
    """The message does not fit its schema; `reason` is a short code for metrics, str() the detail."""

    def __init__(self, detail: str, reason: str = "schema"):
        super().__init__(detail)
        self.reason = reason


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, max_bytes: int) -> Any:
    """`data` (at most `max_bytes`) decoded as JSON, refusing NaN and Infinity."""
    if not isinstance(data, bytes | bytearray):
        raise SchemaError(f"payload is {type(data).__name__}, not bytes", "not_json")
    if len(data) > max_bytes:
        raise SchemaError(f"payload of {len(data)} bytes exceeds {max_bytes}", "too_large")
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # RecursionError: deep nesting
        raise SchemaError(f"not JSON: {str(error)[:100]}", "not_json") from None


def string(max_length: int, pattern: str | None = None, min_length: int = 0) -> Schema:
    compiled = re.compile(pattern) if pattern else None

    def check(value, path):
        if not isinstance(value, str):
            raise SchemaError(f"{path}: expected a string, got {_kind(value)}")
        if not min_length <= len(value) <= max_length:
            raise SchemaError(f"{path}: length {len(value)} is outside {min_length}..{max_length}")
        if compiled and not compiled.fullmatch(value):
            raise SchemaError(f"{path}: {value[:40]!r} does not match {compiled.pattern}")
        return value

    return check


def integer(minimum: int, maximum: int) -> Schema:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{path}: expected an integer, got {_kind(value)}")
        if not minimum <= value <= maximum:
            raise SchemaError(f"{path}: {_short(value)} is outside {minimum}..{maximum}")
        return value

    return check


def number(minimum: float, maximum: float) -> Schema:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{path}: expected a number, got {_kind(value)}")
        if not (math.isfinite(value) and minimum <= value <= maximum):
            raise SchemaError(f"{path}: {_short(value)} is outside {minimum}..{maximum}")
        return value

    return check


def one_of(*allowed) -> Schema:
    """Exactly one of these values, of the same type (1.0 and True are not 1)."""

    def check(value, path):
        if not any(type(value) is type(choice) and value == choice for choice in allowed):
            raise SchemaError(f"{path}: {_short(value)} is not one of {', '.join(map(str, allowed))}")
        return value

    return check


def nullable(schema: Schema) -> Schema:
    return lambda value, path: None if value is None else schema(value, path)


def array(item: Schema, max_items: int, min_items: int = 0, unique: bool = False) -> Schema:
    def check(value, path):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {_kind(value)}")
        if not min_items <= len(value) <= max_items:
            raise SchemaError(f"{path}: {len(value)} items, outside {min_items}..{max_items}")
        items = [item(element, f"{path}[{i}]") for i, element in enumerate(value)]
        if unique and len(set(items)) != len(items):
            raise SchemaError(f"{path}: repeated items")
        return items

    return check


def record(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    """A JSON object with exactly these keys (the optional ones may be absent); unknown keys are refused."""
    optional = dict(optional or {})
    known = {**required, **optional}

    def check(value, path):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {_kind(value)}")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise SchemaError(f"{path}: unknown key {_short(unknown[0])}")
        missing = [key for key in required if key not in value]
        if missing:
            raise SchemaError(f"{path}: missing key {missing[0]!r}")
        return {key: known[key](element, f"{path}.{key}") for key, element in value.items()}

    return check


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
