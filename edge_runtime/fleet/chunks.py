"""Hashed chunks of a release archive: read them (manager side), store them resumably (device side).

The device writes a chunk at its offset in <sha>.part, fsyncs it, and only then records it in
<sha>.json (the bitmap, replaced atomically). A chunk whose sha256 is not the one in the signed release
record is never written. On resume the recorded chunks are re-hashed, so a torn write is re-fetched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

from ..bundle import sha256_file
from ..fsutil import atomic_write_json
from .errors import ChunkError
from .release import Release


class BadChunk(ChunkError):
    """A chunk's bytes do not match the release record."""


def read_chunk(archive: Path, chunk_size: int, index: int) -> bytes:
    with open(archive, "rb") as handle:
        handle.seek(index * chunk_size)
        return handle.read(chunk_size)


def _disk_error(error: OSError, what: str) -> ChunkError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ChunkError(f"disk full while {what}")
    return ChunkError(f"cannot write the download ({what}): {error.strerror}")


class Download:
    def __init__(self, directory: Path, release: Release):
        self.release = release
        self.directory = Path(directory)
        self.part = self.directory / f"{release.sha256}.part"
        self.bitmap = self.directory / f"{release.sha256}.json"
        self.done: set[int] = set()
        self.bytes_written = 0

    @property
    def total(self) -> int:
        return len(self.release.chunks)

    def open(self) -> Download:
        """Create or resume; recorded chunks that no longer hash right are dropped."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self.part.exists():
                self.part.touch()
        except OSError as error:
            raise _disk_error(error, "creating the download file") from None
        try:
            recorded = set(json.loads(self.bitmap.read_text())["done"])
        except (OSError, ValueError, KeyError, TypeError):
            recorded = set()
        self.done = {i for i in recorded if isinstance(i, int) and 0 <= i < self.total and self._on_disk_ok(i)}
        return self

    def _length(self, index: int) -> int:
        return min(self.release.chunk_size, self.release.size - index * self.release.chunk_size)

    def _on_disk_ok(self, index: int) -> bool:
        data = read_chunk(self.part, self.release.chunk_size, index)
        return len(data) == self._length(index) and hashlib.sha256(data).hexdigest() == self.release.chunks[index]

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if i not in self.done]

    def write(self, index: int, data: bytes) -> None:
        if not 0 <= index < self.total:
            raise BadChunk(f"chunk {index}: not in this release (it has {self.total})")
        if len(data) != self._length(index) or hashlib.sha256(data).hexdigest() != self.release.chunks[index]:
            raise BadChunk(f"chunk {index}: sha256 does not match the release record")
        try:
            fd = os.open(self.part, os.O_WRONLY)
            try:
                view, offset = memoryview(data), index * self.release.chunk_size
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
                os.fsync(fd)
            finally:
                os.close(fd)
            self.done.add(index)
            atomic_write_json(self.bitmap, {"sha256": self.release.sha256, "done": sorted(self.done)})
        except OSError as error:
            self.done.discard(index)
            raise _disk_error(error, f"writing chunk {index}") from None
        self.bytes_written += len(data)

    def finish(self) -> Path:
        """The complete archive, checked against the record's size and sha256."""
        if self.missing():
            raise ChunkError(f"download incomplete: {len(self.missing())} of {self.total} chunks missing")
        if self.part.stat().st_size != self.release.size or sha256_file(self.part) != self.release.sha256:
            raise ChunkError("downloaded archive does not match the release record's sha256")
        return self.part

    def discard(self) -> None:
        for path in (self.part, self.bitmap):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
