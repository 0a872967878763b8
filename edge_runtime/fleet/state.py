"""The device update state machine, persisted in state/fleet/update.json before each step is acted on.

idle -> downloading -> verifying -> staged -> selftest -> activating -> probation -> committed
                                                             \\-> rolling_back -> rolled_back
any step before activating can end in `failed` (nothing activated, partial files removed).
The phase on disk names the step in progress; every step is idempotent, so a restarted agent simply
runs it again (see agent.Agent.resume).

installed_release is the anti-rollback floor. A missing file starts from the store's highest installed
release (`seed`), never from 0. A file that exists but cannot be read fails closed: `error` says why, the
agent refuses every update and reports it, and the file is never overwritten (an operator inspects it, then
removes it to start again from the store).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import paths
from ..fsutil import atomic_write_json
from .errors import FleetError

PHASES = (
    "idle",
    "downloading",
    "verifying",
    "staged",
    "selftest",
    "activating",
    "probation",
    "committed",
    "rolling_back",
    "rolled_back",
    "failed",
)
TERMINAL = ("idle", "committed", "rolled_back", "failed")
BEFORE_ACTIVATION = ("downloading", "verifying", "staged", "selftest")


def state_path(root: Path | None = None) -> Path:
    return paths.state_dir(root) / "fleet" / "update.json"


def _fresh() -> dict:
    return {
        "phase": "idle",
        "release": None,
        "installed_release": 0,
        "seen_seq": {},
        "previous": None,
        "last_error": None,
        "refused": None,
        "selftest": None,
        "probation": None,
        "updated_at": None,
    }


def _problem(data) -> str | None:
    """Why a parsed update.json cannot be trusted, or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("phase", "idle") not in PHASES:
        return f"unknown phase {data.get('phase')!r}"
    installed = data.get("installed_release", 0)
    if not isinstance(installed, int) or isinstance(installed, bool) or installed < 0:
        return f"installed_release {installed!r} is not a non-negative integer"
    seen = data.get("seen_seq", {})
    if not (isinstance(seen, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in seen.values())):
        return "seen_seq is malformed"
    return None


class UpdateState:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.error: str | None = None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            problem = _problem(data)
        except FileNotFoundError:
            data, problem = {}, None
        except (OSError, ValueError) as error:
            data, problem = {}, str(error)
        if problem:
            self.error = (
                f"update state {self.path} is unreadable ({problem}): updates are refused until it is repaired "
                "(inspect it, then remove it to start again from the store's highest installed release)"
            )
            data = {}
        self.data = {**_fresh(), **data}

    phase = property(lambda self: self.data["phase"])
    release = property(lambda self: self.data["release"])
    installed_release = property(lambda self: int(self.data["installed_release"] or 0))

    def seen(self, scope_key: str) -> int:
        return int(self.data["seen_seq"].get(scope_key, 0))

    def seed(self, floor: int) -> None:
        """Raise installed_release to `floor` (the store's highest installed release) and persist it."""
        if floor > self.installed_release:
            self.save(installed_release=floor)

    def save(self, **changes) -> None:
        """Persist the changes atomically; while the file on disk is unreadable they stay in memory only
        (overwriting it would turn a corrupt anti-rollback floor into a fresh one)."""
        self.data.update(changes)
        self.data["updated_at"] = time.time()
        if self.error is None:
            atomic_write_json(self.path, self.data)

    def transition(self, phase: str, **changes) -> None:
        """Persist the new phase (and any fields) atomically."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase}")
        if self.error is not None:
            raise FleetError(self.error)
        self.save(phase=phase, **changes)
