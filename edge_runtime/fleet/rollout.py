"""Staged rollout decisions, pure functions of the group's rollout record and the devices' reports.

A rollout record (fleet/groups/<g>.json on the manager): {"group", "seq", "release": {number, sha256, ref},
"stage": "canary" | "all" | "halted" | "rolled_back", "canaries": [...], "reason", "history": [...]}.
"""

from __future__ import annotations

import hashlib
import math

FAILED_PHASES = ("rolled_back", "failed")


def choose_canaries(devices: list[str], pct: float, salt: str) -> list[str]:
    """ceil(pct% of the group), at least one; the same devices for the same release (sha256-ordered)."""
    if not devices or pct <= 0:
        return []
    ordered = sorted(set(devices), key=lambda d: hashlib.sha256(f"{salt}:{d}".encode()).hexdigest())
    return sorted(ordered[: max(1, math.ceil(len(ordered) * pct / 100.0))])


def group_devices(states: dict[str, dict], group: str) -> list[str]:
    return sorted(d for d, s in states.items() if s.get("group") == group)


def _failure(state: dict, number: int) -> str | None:
    """Why the device failed release `number`, if it did. States come checked (protocol.parse_state); the
    isinstance guard is for a caller that passes one unchecked."""
    if state.get("release") == number and state.get("phase") in FAILED_PHASES:
        return f"{state['phase']}: {state.get('last_error') or 'no reason reported'}"
    refused = state.get("refused")
    if isinstance(refused, dict) and refused.get("release") == number:
        return f"refused: {refused.get('reason')}"
    return None


def committed(state: dict | None, rollout: dict) -> bool:
    return bool(state) and state.get("phase") == "committed" and state.get("active") == rollout["release"]["ref"]


def assess(rollout: dict | None, states: dict[str, dict]) -> tuple[str | None, str]:
    """('halt', why) | ('promote', why) | (None, what we wait for)."""
    if not rollout or rollout.get("stage") not in ("canary", "all"):
        return None, f"rollout is {rollout.get('stage') if rollout else 'absent'}"
    number = rollout["release"]["number"]
    watched = rollout["canaries"] if rollout["stage"] == "canary" else group_devices(states, rollout["group"])
    for device in watched:
        why = _failure(states.get(device) or {}, number)
        if why:
            role = "canary" if rollout["stage"] == "canary" else "device"
            return "halt", f"{role} {device} {why}"
    if rollout["stage"] == "canary":
        waiting = [d for d in rollout["canaries"] if not committed(states.get(d), rollout)]
        if not waiting:
            return "promote", f"all {len(rollout['canaries'])} canaries committed"
        return None, f"waiting for canaries: {', '.join(waiting)}"
    waiting = [d for d in watched if not committed(states.get(d), rollout)]
    return None, f"{len(watched) - len(waiting)}/{len(watched)} devices committed"
