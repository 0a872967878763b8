"""Fleet topics and messages.

fleet/groups/<g>/desired     retained, signed desired state for a group        (fleet manager -> devices)
fleet/devices/<id>/desired   retained, signed desired state for one device     (fleet manager -> device)
edge/<id>/state              retained device report: active model, phase, last error (device -> all)
edge/<id>/chunks/request     {"indices": [...]} for one archive                  (device -> manager)
edge/<id>/chunks             one chunk per message: "ERC1" + header length + JSON header + bytes

Desired states are signed like release records and carry a sequence number per scope; devices refuse
any seq lower than the highest they have seen (replay), and ignore the one they already handled. Each
carries an expiry (expires_at, set when published): a device refuses an expired one, so a retained desired
state cannot be replayed forever.

What devices send (state reports, chunk requests) is not signed and may come from a hostile or broken
device: `parse_state` and `parse_request` check it against a strict schema with bounds (schema.py) and
raise `SchemaError` with a reason code the manager counts.
"""

from __future__ import annotations

import json
import re
import struct
import time

from .. import schema
from ..schema import SchemaError
from .errors import ReleaseError
from .release import GROUP_RE, check_group, iso, sign_envelope, verify_envelope
from .state import PHASES

DESIRED_TYPE = "fleet.desired"
STATE_TYPE = "fleet.state"
REQUEST_TYPE = "fleet.chunk_request"
ACTIONS = ("install", "halt", "rollback")
STAGES = ("canary", "all")
CHUNK_MAGIC = b"ERC1"
MAX_REQUEST_INDICES = 16  # a device keeps 8 in flight; 16 x 200 KiB bounds what one request can cost
DEFAULT_DESIRED_TTL_S = 7 * 86400
MAX_CHUNK_INDEX = 2**31 - 1
MAX_STATE_BYTES = 16 * 1024
MAX_REQUEST_BYTES = 4 * 1024
DEVICE_ID_PATTERN = r"[^/+#\x00]{1,128}"  # as escalation.check_device_id
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


def group_desired_topic(group: str) -> str:
    return f"fleet/groups/{group}/desired"


def device_desired_topic(device_id: str) -> str:
    return f"fleet/devices/{device_id}/desired"


def state_topic(device_id: str) -> str:
    return f"edge/{device_id}/state"


def chunk_request_topic(device_id: str) -> str:
    return f"edge/{device_id}/chunks/request"


def chunk_topic(device_id: str) -> str:
    return f"edge/{device_id}/chunks"


def device_of(topic: str, suffix: str) -> str | None:
    """The device id in edge/<id>/<suffix> (None unless it is a valid device id)."""
    parts = topic.split("/")
    want = suffix.split("/")
    if len(parts) == 2 + len(want) and parts[0] == "edge" and parts[2:] == want and _DEVICE_ID.fullmatch(parts[1]):
        return parts[1]
    return None


def scope_of(topic: str) -> tuple[str, str] | None:
    """('group', g) or ('device', id) for a desired-state topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "fleet" and parts[3] == "desired" and parts[2]:
        return {"groups": ("group", parts[2]), "devices": ("device", parts[2])}.get(parts[1])
    return None


# --- desired state ------------------------------------------------------------------------------


def build_desired(
    keys,
    *,
    scope: str,
    target: str,
    seq: int,
    action: str,
    release: dict | None = None,
    stage: str = "all",
    canaries: list[str] | None = None,
    reason: str = "",
    ttl_s: int = DEFAULT_DESIRED_TTL_S,
    now: float | None = None,
) -> dict:
    if action not in ACTIONS or stage not in STAGES or scope not in ("group", "device"):
        raise ValueError(f"bad desired state: {scope}/{action}/{stage}")
    if ttl_s <= 0:
        raise ValueError("a desired state needs a positive time to live")
    now = time.time() if now is None else now
    signed = {
        "type": DESIRED_TYPE,
        "schema": 1,
        "scope": scope,
        "target": target,
        "seq": int(seq),
        "action": action,
        "release": release,
        "stage": stage,
        "canaries": sorted(canaries or []),
        "reason": reason,
        "issued_at": now,
        "expires_at": int(now + ttl_s),
    }
    return sign_envelope(signed, keys)


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def verify_desired(
    data: bytes, trusted: dict, threshold: int, scope: str, target: str, now: float | None = None
) -> dict:
    """The signed part of a desired-state message, after checking signature, shape, expiry and addressee."""
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ReleaseError("desired state: not JSON") from None
    signed = verify_envelope(envelope, trusted, threshold, "desired state")
    try:
        ok = (
            signed["type"] == DESIRED_TYPE
            and signed["action"] in ACTIONS
            and signed["stage"] in STAGES
            and isinstance(signed["seq"], int)
            and isinstance(signed["canaries"], list)
            and (signed["release"] is None or isinstance(signed["release"], dict))
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ReleaseError("desired state: malformed")
    expires_at = signed.get("expires_at")
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        raise ReleaseError(f"desired state seq {signed['seq']} has no expiry (published by an older fleet manager?)")
    if (time.time() if now is None else now) > expires_at:
        raise ReleaseError(f"desired state seq {signed['seq']} expired at {iso(expires_at)}")
    if (signed["scope"], signed["target"]) != (scope, target):
        raise ReleaseError(
            f"desired state is addressed to {signed['scope']} {signed['target']}, "
            f"published on the topic of {scope} {target}"
        )
    if signed["action"] != "halt" and signed["release"] is None:
        raise ReleaseError(f"desired state: {signed['action']} without a release")
    return signed


# --- device state report ------------------------------------------------------------------------


def build_state(device_id: str, group: str, **fields) -> dict:
    check_group(group)
    return {"type": STATE_TYPE, "schema": 1, "device": device_id, "group": group, "reported_at": time.time(), **fields}


_TEXT = schema.nullable(schema.string(4096))
_REF = schema.nullable(schema.string(200))
_COUNT = schema.integer(0, 2**53)
# A report's download counters: the MQTT chunk loop's (requested .. duplicates, mqtt_bytes), the mirrors'
# (http_fetch.COUNTERS), chunks already on disk when it (re)started, and the archive's chunks and bytes.
DOWNLOAD_COUNTERS = (
    "requested",
    "received",
    "bad",
    "duplicates",
    "mqtt_bytes",
    "mirror_chunks",
    "mirror_bytes",
    "mirror_bad",
    "mirror_errors",
    "resumed",
    "chunks",
    "bytes",
)
_RELEASE_NUMBER = schema.integer(0, 2**53)
STATE_SCHEMA = schema.record(
    {
        "type": schema.one_of(STATE_TYPE),
        "schema": schema.one_of(1),
        "device": schema.string(128, DEVICE_ID_PATTERN),
        "group": schema.string(64, GROUP_RE.pattern),
        "reported_at": schema.number(0, 2**40),
    },
    {
        "phase": schema.one_of(*PHASES),
        "active": _REF,
        "previous": _REF,
        "release": schema.nullable(_RELEASE_NUMBER),
        "target": _REF,
        "installed_release": _RELEASE_NUMBER,
        "last_error": _TEXT,
        "state_error": _TEXT,  # update.json unreadable: the device refuses updates until it is repaired
        "refused": schema.nullable(
            schema.record(
                {"release": schema.nullable(_RELEASE_NUMBER), "reason": schema.string(4096)},
                {"at": schema.number(0, 2**40)},
            )
        ),
        "note": _TEXT,
        "escalation_rate": schema.nullable(schema.number(0.0, 1.0)),
        "download": schema.nullable(
            schema.record(
                {},
                {k: _COUNT for k in DOWNLOAD_COUNTERS},
            )
        ),
        "runtime": schema.nullable(schema.string(64)),
    },
)


def parse_state(data: bytes, topic_device: str | None = None) -> dict:
    """A device's state report, checked; `topic_device` (the <id> of edge/<id>/state) must be its device."""
    message = STATE_SCHEMA(schema.parse_json(data, MAX_STATE_BYTES), "state")
    if topic_device is not None and message["device"] != topic_device:
        raise SchemaError(
            f"state: report for device {message['device']!r} on the topic of {topic_device!r}", "device_mismatch"
        )
    return message


def decode_state(data: bytes) -> dict | None:
    """parse_state, or None for a report that does not check out."""
    try:
        return parse_state(data)
    except SchemaError:
        return None


# --- chunks -------------------------------------------------------------------------------------


def build_request(device_id: str, sha256: str, indices: list[int]) -> bytes:
    return encode(
        {
            "type": REQUEST_TYPE,
            "device": device_id,
            "sha256": sha256,
            "indices": [int(i) for i in indices[:MAX_REQUEST_INDICES]],
        }
    )


REQUEST_SCHEMA = schema.record(
    {
        "type": schema.one_of(REQUEST_TYPE),
        "device": schema.string(128, DEVICE_ID_PATTERN),
        "sha256": schema.string(64, r"[0-9a-f]{64}"),
        "indices": schema.array(schema.integer(0, MAX_CHUNK_INDEX), MAX_REQUEST_INDICES, min_items=1, unique=True),
    }
)


def parse_request(data: bytes, topic_device: str) -> dict:
    """A chunk request, checked; `topic_device` (the <id> of edge/<id>/chunks/request) must be its device."""
    message = REQUEST_SCHEMA(schema.parse_json(data, MAX_REQUEST_BYTES), "request")
    if message["device"] != topic_device:
        raise SchemaError(
            f"request: from device {message['device']!r} on the topic of {topic_device!r}", "device_mismatch"
        )
    return message


def encode_chunk(sha256: str, index: int, data: bytes, error: str | None = None) -> bytes:
    header = encode({"sha256": sha256, "index": index, "error": error})
    return CHUNK_MAGIC + struct.pack(">I", len(header)) + header + data


def decode_chunk(payload: bytes) -> tuple[dict, bytes] | None:
    if len(payload) < 8 or payload[:4] != CHUNK_MAGIC:
        return None
    (length,) = struct.unpack(">I", payload[4:8])
    try:
        header = json.loads(payload[8 : 8 + length])
        if not (isinstance(header["sha256"], str) and isinstance(header["index"], int)):
            return None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return header, payload[8 + length :]
