"""Signed release records (TUF-inspired): what a bundle archive is, who may install it, until when.

Envelope {"signed": {...}, "signatures": [...]}; signatures cover canonical_json(signed), so any edit
to the record (groups, expiry, hashes) breaks them. The record pins the archive's sha256, size and the
sha256 of every chunk, so a device can check each chunk on arrival and never writes a bad one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .. import bundle, signing
from ..errors import BundleError
from ..fsutil import atomic_write_bytes
from .errors import ReleaseError

RELEASE_TYPE = "fleet.release"
SCHEMA = 1
DEFAULT_CHUNK_SIZE = 128 * 1024  # well under the broker's max_packet_size (256 KiB)
SUFFIX = ".release.json"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_duration(text: str) -> int:
    """'90s', '45m', '12h', '30d' -> seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ReleaseError(f"duration {text!r} must look like 90s, 45m, 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def check_group(group: str) -> str:
    if not isinstance(group, str) or not GROUP_RE.match(group):
        raise ReleaseError(f"group {group!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return group


def chunk_hashes(archive: Path, chunk_size: int) -> list[str]:
    hashes = []
    with open(archive, "rb") as handle:
        while data := handle.read(chunk_size):
            hashes.append(hashlib.sha256(data).hexdigest())
    return hashes


def iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def sign_envelope(signed: dict, keys) -> dict:
    data = bundle.canonical_json(signed)
    return {"signed": signed, "signatures": [signing.sign(key, data) for key in keys]}


def verify_envelope(envelope, trusted: dict, threshold: int, what: str) -> dict:
    """The signed part, once `threshold` of the `trusted` keys (the device's fleet role) sign it."""
    if not (isinstance(envelope, dict) and isinstance(envelope.get("signed"), dict)):
        raise ReleaseError(f'{what}: malformed (expected {{"signed": ..., "signatures": [...]}})')
    try:
        signing.verify_signatures(
            bundle.canonical_json(envelope["signed"]), envelope.get("signatures"), trusted, threshold, role="fleet"
        )
    except BundleError as error:
        raise ReleaseError(f"{what}: {error}") from None
    return envelope["signed"]


def create(
    archive: Path,
    groups: list[str],
    keys,
    expires_in_s: int,
    release: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    now: float | None = None,
) -> dict:
    """A signed release record for a bundle archive (.erb); the release number defaults to the bundle's."""
    archive = Path(archive)
    if not archive.is_file():
        raise ReleaseError(f"{archive}: no such bundle archive (make one with `edge-runtime models pack`)")
    if not keys:
        raise ReleaseError("a release needs at least one signing key (--key)")
    if not 1024 <= chunk_size <= 200 * 1024:
        raise ReleaseError(f"chunk size {chunk_size} must be between 1 KiB and 200 KiB")
    manifest = bundle.read_manifest(archive)
    number = manifest.release if release is None else release
    if not isinstance(number, int) or number < 1:
        raise ReleaseError(f"release number {number!r} must be a positive integer")
    now = time.time() if now is None else now
    signed = {
        "type": RELEASE_TYPE,
        "schema": SCHEMA,
        "release": number,
        "bundle": {"name": manifest.name, "version": manifest.version, "release": manifest.release},
        "archive": {
            "sha256": bundle.sha256_file(archive),
            "size": archive.stat().st_size,
            "chunk_size": chunk_size,
            "chunks": chunk_hashes(archive, chunk_size),
        },
        "groups": sorted({check_group(g) for g in groups}),
        "min_runtime": manifest.min_runtime,
        "created_at": int(now),
        "expires_at": int(now) + int(expires_in_s),
    }
    return sign_envelope(signed, keys)


def write(envelope: dict, path: Path) -> Path:
    atomic_write_bytes(Path(path), bundle.canonical_json(envelope))
    return Path(path)


def read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ReleaseError(f"{path}: cannot read release record ({error.strerror})") from None
    except ValueError as error:
        raise ReleaseError(f"{path}: not a JSON release record ({error})") from None


@dataclass(frozen=True)
class Release:
    """A verified release record."""

    signed: dict

    number = property(lambda self: self.signed["release"])
    name = property(lambda self: self.signed["bundle"]["name"])
    version = property(lambda self: self.signed["bundle"]["version"])
    ref = property(lambda self: f"{self.name}@{self.version}")
    sha256 = property(lambda self: self.signed["archive"]["sha256"])
    size = property(lambda self: self.signed["archive"]["size"])
    chunk_size = property(lambda self: self.signed["archive"]["chunk_size"])
    chunks = property(lambda self: self.signed["archive"]["chunks"])
    groups = property(lambda self: self.signed["groups"])
    expires_at = property(lambda self: self.signed["expires_at"])


def check_shape(signed) -> Release:
    try:
        archive = signed["archive"]
        ok = (
            signed["type"] == RELEASE_TYPE
            and signed["schema"] == SCHEMA
            and isinstance(signed["release"], int)
            and signed["release"] >= 1
            and bundle.NAME_RE.match(signed["bundle"]["name"])
            and bundle.SEMVER_RE.match(signed["bundle"]["version"])
            and re.fullmatch(r"[0-9a-f]{64}", archive["sha256"])
            and isinstance(archive["size"], int)
            and isinstance(archive["chunk_size"], int)
            and archive["chunk_size"] > 0
            and len(archive["chunks"]) == math.ceil(archive["size"] / archive["chunk_size"])
            and isinstance(signed["groups"], list)
            and isinstance(signed["expires_at"], int)
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ReleaseError("release record: malformed")
    return Release(signed)


def _semver_core(text: str) -> tuple[int, ...]:
    return bundle._semver_core(text)


def verify(
    envelope,
    trusted: dict,
    *,
    group: str,
    installed_release: int,
    threshold: int = 1,
    now: float | None = None,
    runtime: str | None = None,
) -> Release:
    """Signature (k of n trusted keys), shape, expiry, group, anti-rollback and minimum runtime."""
    signed = verify_envelope(envelope, trusted, threshold, "release record")
    release = check_shape(signed)
    now = time.time() if now is None else now
    if now > release.expires_at:
        raise ReleaseError(f"release {release.number} ({release.ref}) expired at {iso(release.expires_at)}")
    if group not in release.groups:
        raise ReleaseError(
            f"release {release.number} is for group(s) {', '.join(release.groups)}, this device is in {group}"
        )
    if release.number <= installed_release:
        raise ReleaseError(
            f"release {release.number} is not newer than installed release {installed_release} (rollback refused)"
        )
    needed = signed.get("min_runtime")
    if runtime and isinstance(needed, str) and _semver_core(runtime) < _semver_core(needed):
        raise ReleaseError(f"release {release.number} needs edge-runtime >= {needed} (this is {runtime})")
    return release
