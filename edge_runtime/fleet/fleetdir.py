"""The fleet manager's files: releases/<sha>.erb (+ .release.json) it serves, groups/<g>.json rollouts,
registry.sqlite (the enrolled devices, registry.py) and devices/<sha256 of id>.json, the desired state
`fleet publish --device` gave one device (which then follows it instead of its group's rollouts).

Several CLI processes (publish, promote, serve) change rollouts, so read-modify-write happens under
an flock on .lock and every write is atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import bundle, paths
from ..fsutil import atomic_write_json, exclusive_lock, fsync_dir
from .errors import ReleaseError
from .registry import FILE as REGISTRY_FILE
from .registry import UNCHANGED as UNCHANGED_SITE
from .registry import Registry, check_device_id
from .release import Release, check_group
from .release import write as write_release


def default_dir() -> Path:
    return paths.home() / "fleet"


class FleetDir:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_dir()
        self.releases = self.root / "releases"
        self.groups = self.root / "groups"
        self.devices = self.root / "devices"
        self.registry = Registry(self.root / REGISTRY_FILE)

    def locked(self):
        return exclusive_lock(self.root)

    def add_release(self, envelope: dict, release: Release, archive: Path) -> Path:
        """Copy the archive in (checked against the record) so `fleet serve` can answer chunk requests."""
        target = self.releases / f"{release.sha256}.erb"
        if not target.exists():
            if bundle.sha256_file(archive) != release.sha256 or archive.stat().st_size != release.size:
                raise ReleaseError(f"{archive}: does not match the release record (sha256/size differ)")
            self.releases.mkdir(parents=True, exist_ok=True)
            tmp = self.releases / f".{release.sha256}.tmp"
            shutil.copyfile(archive, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            fsync_dir(self.releases)
        write_release(envelope, self.releases / f"{release.sha256}.release.json")
        return target

    def archive(self, sha256: str) -> Path | None:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        path = self.releases / f"{sha256}.erb"
        return path if path.is_file() else None

    def rollout(self, group: str) -> dict | None:
        try:
            return json.loads((self.groups / f"{check_group(group)}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def rollouts(self) -> list[dict]:
        if not self.groups.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.groups.glob("*.json"))]

    def save_rollout(self, rollout: dict, event: str) -> dict:
        rollout.setdefault("history", []).append({"at": time.time(), "event": event, "stage": rollout["stage"]})
        atomic_write_json(self.groups / f"{check_group(rollout['group'])}.json", rollout)
        return rollout

    # --- per-device desired states ------------------------------------------------------------------
    def _device_file(self, device: str) -> Path:
        # hashed: any device id is a topic level, not necessarily a safe file name ("..", 128 characters)
        return self.devices / f"{hashlib.sha256(check_device_id(device).encode()).hexdigest()}.json"

    def device_rollout(self, device: str) -> dict | None:
        try:
            return json.loads(self._device_file(device).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def device_rollouts(self) -> list[dict]:
        if not self.devices.is_dir():
            return []
        records = [json.loads(p.read_text(encoding="utf-8")) for p in self.devices.glob("*.json")]
        return sorted(records, key=lambda r: r["device"])

    def save_device_rollout(self, rollout: dict, event: str) -> dict:
        rollout.setdefault("history", []).append({"at": time.time(), "event": event, "stage": rollout["stage"]})
        atomic_write_json(self._device_file(rollout["device"]), rollout)
        return rollout

    def unpin(self, device: str) -> bool:
        """Drop the device's own desired state: its group's next change reaches it again."""
        try:
            self._device_file(device).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.devices)
        return True

    # --- enrollment -------------------------------------------------------------------------------
    def move_device(self, device: str, group: str | None = None, site=UNCHANGED_SITE):
        """Move an enrolled device to another group, site (None: no site), or both; when its group changes, its
        own desired state (for a release of the old group) goes with the old group."""
        with self.locked():
            moved = self.registry.move(device, group, site)
            if group is not None:
                self.unpin(device)
            return moved

    def remove_device(self, device: str) -> None:
        with self.locked():
            self.registry.remove(device)
            self.unpin(device)


def next_seq(rollout: dict | None) -> int:
    """Monotonic even if the fleet dir is lost: never below the wall clock in milliseconds."""
    return max((rollout or {}).get("seq", 0) + 1, int(time.time() * 1000))
