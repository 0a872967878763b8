"""The device update state machine, persisted in state/fleet/update.json before each step is acted on.

idle -> downloading -> verifying -> staged -> selftest -> activating -> probation -> committed
                                                             \\-> rolling_back -> rolled_back
any step before activating can end in `failed` (nothing activated, partial files removed).
The phase on disk names the step in progress; every step is idempotent, so a restarted agent simply
runs it again (see agent.Agent.resume).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import paths
from ..fsutil import atomic_write_json

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


class UpdateState:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError):
            data = {}  # unreadable: start idle; the store alone decides what serves
        self.data = {**_fresh(), **(data if isinstance(data, dict) else {})}
        if self.data["phase"] not in PHASES:
            self.data["phase"] = "idle"

    phase = property(lambda self: self.data["phase"])
    release = property(lambda self: self.data["release"])
    installed_release = property(lambda self: int(self.data["installed_release"] or 0))

    def seen(self, scope_key: str) -> int:
        return int(self.data["seen_seq"].get(scope_key, 0))

    def save(self, **changes) -> None:
        self.data.update(changes)
        self.data["updated_at"] = time.time()
        atomic_write_json(self.path, self.data)

    def transition(self, phase: str, **changes) -> None:
        """Persist the new phase (and any fields) atomically."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase}")
        self.save(phase=phase, **changes)
