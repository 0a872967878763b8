"""`fleet mirror sync`: lay the fleet's archives out for any static HTTP server (nginx, an S3 bucket, a CDN
origin), in the content-addressed layout devices ask mirrors for (release.mirror_url):

    DIR/<sha256>.erb            the archive, byte for byte
    DIR/<sha256>.release.json   its signed release record (not used by devices, which get records in the
                                desired state; it says which bundle and release an archive is)

A name says what the file holds, so a file once right never changes: syncing again only checks what is
there, replaces what does not hash right, and never deletes (devices may still be fetching an older
release). Each file appears atomically (temp file in DIR, then rename), so a server never serves half of
one. Archives are hard-linked from the source when DIR is on the same filesystem (no copy; both are
immutable), copied otherwise.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import bundle
from ..fsutil import atomic_write_bytes, fsync_dir
from .errors import FleetError, ReleaseError
from .fleetdir import FleetDir
from .release import ARCHIVE_SUFFIX, SUFFIX, check_shape, read

_ARCHIVE_NAME = re.compile(r"[0-9a-f]{64}" + re.escape(ARCHIVE_SUFFIX))


@dataclass(frozen=True)
class Source:
    """An archive to put on the mirror, and its release record when there is one."""

    sha256: str
    archive: Path
    envelope: dict | None


def from_fleet_dir(fleet: FleetDir) -> list[Source]:
    """Every archive the fleet manager has published (releases/<sha256>.erb and its record)."""
    if not fleet.releases.is_dir():
        raise FleetError(f"{fleet.releases}: no releases to sync (publish one, or name RELEASE_FILEs)")
    sources = []
    for archive in sorted(fleet.releases.iterdir()):
        if not _ARCHIVE_NAME.fullmatch(archive.name) or not archive.is_file():
            continue  # temp files, records, the lock
        sha256 = archive.name[: -len(ARCHIVE_SUFFIX)]
        record = fleet.releases / f"{sha256}{SUFFIX}"
        sources.append(Source(sha256, archive, read(record) if record.is_file() else None))
    if not sources:
        raise FleetError(f"{fleet.releases}: no releases to sync (publish one, or name RELEASE_FILEs)")
    return sources


def from_release_file(release_file: Path, archive: Path | None = None) -> Source:
    """A release record and its archive (default: beside it, the record's name without .release.json), so a
    mirror can hold a release before it is published."""
    release_file = Path(release_file)
    envelope = read(release_file)
    target = check_shape(envelope.get("signed") if isinstance(envelope, dict) else None)
    if archive is None:
        if not release_file.name.endswith(SUFFIX):
            raise ReleaseError(f"{release_file}: not named *{SUFFIX}, so its archive cannot be found beside it")
        archive = release_file.with_name(release_file.name[: -len(SUFFIX)])
    if not Path(archive).is_file():
        raise ReleaseError(f"{archive}: no such archive (the release record {release_file.name} names it)")
    return Source(target.sha256, Path(archive), envelope)


def _place_archive(source: Source, target: Path) -> str:
    """Link or copy the archive to `target` through a temp name; 'linked' or 'copied'."""
    if bundle.sha256_file(source.archive) != source.sha256:
        raise ReleaseError(f"{source.archive}: sha256 is not {source.sha256} (a damaged copy?)")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source.archive, tmp)
            how = "linked"
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source.archive, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # the web server reads it as another user
            how = "copied"
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return how


def sync(directory: Path, sources: list[Source]) -> list[dict]:
    """Put each source in `directory`; one entry per archive: sha256, file, action (linked, copied,
    replaced: it was there but did not hash right, unchanged), and the release it is when known."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FleetError(f"{directory}: not a directory")
    done = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for source in sources:
            target = directory / f"{source.sha256}{ARCHIVE_SUFFIX}"
            if target.is_file() and bundle.sha256_file(target) == source.sha256:
                action = "unchanged"
            else:
                existed = target.exists()
                action = _place_archive(source, target)
                action = "replaced" if existed else action
            entry = {"sha256": source.sha256, "file": str(target), "action": action}
            if source.envelope is not None:
                record = directory / f"{source.sha256}{SUFFIX}"
                data = bundle.canonical_json(source.envelope)
                if not (record.is_file() and record.read_bytes() == data):
                    atomic_write_bytes(record, data)
                signed = source.envelope.get("signed") or {}
                entry.update(release=signed.get("release"), bundle=signed.get("bundle"))
            done.append(entry)
    except OSError as error:
        raise FleetError(f"{directory}: cannot write the mirror ({error.strerror or error})") from None
    return done
