"""Where edge-runtime keeps its state: $EDGE_RUNTIME_HOME, else the user's data dir."""

from __future__ import annotations

import os
from pathlib import Path

SERVICE_HOME = Path("/var/lib/edge-runtime")


def home() -> Path:
    explicit = os.environ.get("EDGE_RUNTIME_HOME")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("edge-runtime", appauthor=False))


def models_dir(root: Path | None = None) -> Path:
    return (root or home()) / "models"


def keys_dir(root: Path | None = None) -> Path:
    return (root or home()) / "keys"


def state_dir(root: Path | None = None) -> Path:
    return (root or home()) / "state"


def cache_dir(root: Path | None = None) -> Path:
    return (root or home()) / "cache"
