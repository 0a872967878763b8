"""Signed release records (TUF-inspired): what a bundle archive is, who may install it, until when.

Envelope {"signed": {...}, "signatures": [...]}; signatures cover canonical_json(signed), so any edit
to the record (groups, expiry, hashes) breaks them. The record pins the archive's sha256, size and the
sha256 of every chunk, so a device can check each chunk on arrival and never writes a bad one.

Because every byte is pinned, the bytes may come from anywhere: the optional `mirrors` list names HTTP(S)
base URLs (object storage, a CDN, any static server) under which the archive lies content-addressed at
`<base>/<archive sha256>.erb` (mirror_url). Mirrors are untrusted; they are in the signed part only so that
nobody but the fleet signers can point devices at a host. Records without `mirrors` stay valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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
MAX_MIRRORS = 8
MAX_MIRROR_URL = 1024
MIRROR_SCHEMES = ("http", "https")
ARCHIVE_SUFFIX = ".erb"  # an archive's name on a mirror: <sha256>.erb, as in the fleet dir's releases/


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


def check_mirror(url: str) -> str:
    """A mirror base URL the device can use: http(s)://host[:port][/path], no credentials, query or fragment
    (the record is readable by every device, and the archive's name is appended to the path)."""
    plain = isinstance(url, str) and 0 < len(url) <= MAX_MIRROR_URL and url.isascii() and url.isprintable()
    if not plain or " " in url:
        raise ReleaseError(
            f"mirror {str(url)[:80]!r}: not a URL of at most {MAX_MIRROR_URL} printable ASCII characters "
            "(percent-encode the path, punycode the host)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ReleaseError(f"mirror {url!r}: {error}") from None
    if parts.scheme not in MIRROR_SCHEMES or not parts.hostname:
        raise ReleaseError(f"mirror {url!r}: must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.query or parts.fragment:
        raise ReleaseError(f"mirror {url!r}: credentials, a query or a fragment are not allowed in a mirror URL")
    return url


def mirror_url(base: str, sha256: str) -> str:
    """Where a mirror keeps the archive with this sha256 (the layout `fleet mirror sync` writes)."""
    return f"{base.rstrip('/')}/{sha256}{ARCHIVE_SUFFIX}"


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
    mirrors: list[str] | None = None,
) -> dict:
    """A signed release record for a bundle archive (.erb); the release number defaults to the bundle's.
    `mirrors`: HTTP(S) base URLs the devices try, in this order, before asking the fleet manager over MQTT."""
    archive = Path(archive)
    if not archive.is_file():
        raise ReleaseError(f"{archive}: no such bundle archive (make one with `edge-runtime models pack`)")
    if not keys:
        raise ReleaseError("a release needs at least one signing key (--key)")
    if not 1024 <= chunk_size <= 200 * 1024:
        raise ReleaseError(f"chunk size {chunk_size} must be between 1 KiB and 200 KiB")
    mirrors = list(dict.fromkeys(check_mirror(url) for url in mirrors or ()))
    if len(mirrors) > MAX_MIRRORS:
        raise ReleaseError(f"{len(mirrors)} mirrors: at most {MAX_MIRRORS}")
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
    if mirrors:  # absent rather than empty: a record without mirrors is byte for byte what it was before
        signed["mirrors"] = mirrors
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
    # Not checked URL by URL here: a device skips a mirror it cannot use (a scheme of a newer manager, say)
    # and falls back, rather than refusing the whole release.
    mirrors = property(lambda self: list(self.signed.get("mirrors") or []))


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
            and _mirrors_shape_ok(signed.get("mirrors", []))
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ReleaseError("release record: malformed")
    return Release(signed)


def _mirrors_shape_ok(mirrors) -> bool:
    return (
        isinstance(mirrors, list)
        and len(mirrors) <= MAX_MIRRORS
        and all(isinstance(url, str) and len(url) <= MAX_MIRROR_URL for url in mirrors)
    )


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
