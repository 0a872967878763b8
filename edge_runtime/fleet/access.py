"""Who may fetch which release's chunks: an enrolled device, only those released to its group.

`ChunkAccess` is the one place that decides. It asks a directory for the device's group: the manager's
device registry (registry.py), never the group a device reports. A device that is not enrolled gets no
answer; while the registry is unreadable nobody does (fail closed).
"""

from __future__ import annotations

from typing import Protocol

from .errors import FleetError, ReleaseError
from .fleetdir import FleetDir
from .registry import RegistryError
from .release import Release, check_shape
from .release import read as read_release


class GroupDirectory(Protocol):
    def group_of(self, device: str) -> str | None: ...


class Refused(FleetError):
    """A well-formed request the manager will not serve. `reason` is the metric label; `reply` the error the
    device is sent, or None to stay silent (the device asks again after its chunk timeout)."""

    def __init__(self, reason: str, detail: str, reply: str | None):
        super().__init__(detail)
        self.reason, self.reply = reason, reply


# One answer for a release that does not exist and one of another group: no oracle for what exists.
UNKNOWN_RELEASE = "unknown release"


class ChunkAccess:
    def __init__(self, fleet: FleetDir, groups: GroupDirectory):
        self.fleet, self.groups = fleet, groups
        self._records: dict[tuple[str, int], Release] = {}

    def release_for(self, device: str, sha256: str) -> Release:
        """The release `device` may fetch chunks of, or Refused."""
        try:
            group = self.groups.group_of(device)
        except RegistryError as error:
            raise Refused("registry_unreadable", str(error), reply=None) from None
        if group is None:
            raise Refused("unknown_device", f"device {device} is not enrolled", reply=None)
        release = self._release(sha256)
        if release is None:
            raise Refused(
                "unknown_release", f"device {device} asked for unknown release {sha256[:12]}", UNKNOWN_RELEASE
            )
        if group not in release.groups:
            raise Refused(
                "not_in_group",
                f"device {device} (group {group}) asked for release {release.number}, "
                f"which is for {', '.join(release.groups)}",
                UNKNOWN_RELEASE,
            )
        return release

    def _release(self, sha256: str) -> Release | None:
        if self.fleet.archive(sha256) is None:
            return None
        path = self.fleet.releases / f"{sha256}.release.json"
        try:
            key = (sha256, path.stat().st_mtime_ns)
        except OSError:
            return None
        cached = self._records.get(key)
        if cached is None:
            try:
                envelope = read_release(path)
                cached = check_shape(envelope.get("signed") if isinstance(envelope, dict) else None)
            except ReleaseError:
                return None  # an unreadable record serves nothing (fail closed)
            if cached.sha256 != sha256:
                return None
            self._records = {k: v for k, v in self._records.items() if k[0] != sha256}
            self._records[key] = cached
        return cached
