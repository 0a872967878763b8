"""A bounded, forward-only reader of the tar stream inside a `.erb` archive.

CPython's tarfile reads a PAX extended header or a GNU long name into memory whatever its size, and
accepts links, devices and sparse files; an archive from a hostile peer could make it allocate gigabytes
before a single check runs. This reader parses the 512-byte ustar headers itself, caps every extended
header, refuses every member kind a bundle never holds, and hands out member data in bounded reads, so
the caller (bundle.unpack) decides what to keep before anything is written.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from dataclasses import dataclass
from typing import BinaryIO

from .errors import BundleError

BLOCK = 512
MAX_PAX_HEADER_BYTES = 8 * 1024  # path and size of one member; bundles need far less
_FILE_TYPES = (b"0", b"\x00", b"7")
_DIR_TYPE = b"5"
_PAX_TYPE = b"x"
_REFUSED_TYPES = {
    b"1": "links are not allowed",
    b"2": "links are not allowed",
    b"3": "devices, fifos and other special files are not allowed",
    b"4": "devices, fifos and other special files are not allowed",
    b"6": "devices, fifos and other special files are not allowed",
    b"g": "global PAX headers are not allowed",
    b"L": "GNU long-name headers are not allowed (pack with PAX)",
    b"K": "GNU long-name headers are not allowed (pack with PAX)",
    b"S": "sparse files are not allowed",
}


@dataclass(frozen=True)
class Member:
    name: str  # checked: relative, POSIX, no '..', no leading './'
    size: int
    is_dir: bool


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large numbers
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise BundleError(f"not a bundle archive (bad tar header {what} field)") from None


def _text(field: bytes) -> str:
    raw = field.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError("archive header: name is not UTF-8") from None


def check_member_name(raw: str, is_dir: bool) -> str | None:
    """The safe relative name of a member; None for the archive's '.' entry."""
    name = raw[2:] if raw.startswith("./") else raw
    name = name.rstrip("/") if is_dir else name
    if name in ("", "."):
        return None
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise BundleError(f"archive member {raw!r}: unsafe path")
    return name


def _parse_pax(data: bytes) -> dict[str, str]:
    """'<length> <key>=<value>\\n' records (POSIX.1-2001)."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        try:
            length = int(data[position:space])
        except ValueError:
            raise BundleError("archive: malformed PAX header") from None
        record = data[space + 1 : position + length]
        if length <= 0 or space < 0 or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError("archive: malformed PAX header")
        key, _, value = record[:-1].partition(b"=")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError("archive: PAX header is not UTF-8") from None
        position += length
    return records


class TarStream:
    """Members of a tar (plain, or gzip/bzip2/xz-compressed) stream, one at a time; `read` yields the current
    one's data. Decompression is streamed too, so a compressed archive is bounded by the same checks."""

    def __init__(self, handle: BinaryIO):
        magic = handle.read(6)
        handle.seek(0)
        if magic[:2] == b"\x1f\x8b":
            handle = gzip.GzipFile(fileobj=handle, mode="rb")  # noqa: SIM115 - the caller closes the file
        elif magic[:3] == b"BZh":
            handle = bz2.BZ2File(handle, mode="rb")
        elif magic == b"\xfd7zXZ\x00":
            handle = lzma.LZMAFile(handle, mode="rb")  # noqa: SIM115 - wraps the caller's handle, which it closes
        self._handle: BinaryIO = handle
        self._left = 0  # unread data bytes of the current member
        self._padding = 0
        self._done = False

    def _read_exact(self, size: int) -> bytes:
        try:
            data = self._handle.read(size)
        except (OSError, EOFError, lzma.LZMAError) as error:  # a damaged compressed stream
            raise BundleError(f"archive: cannot read ({error})") from None
        if len(data) != size:
            raise BundleError("archive: truncated")
        return data

    def _skip_current(self) -> None:
        while self._left:
            self._left -= len(self._read_exact(min(self._left, 1 << 20)))
        if self._padding:
            self._read_exact(self._padding)
            self._padding = 0

    def _header(self) -> tuple[bytes, str, int] | None:
        try:
            first = self._handle.read(1)
        except (OSError, EOFError, lzma.LZMAError) as error:
            raise BundleError(f"archive: cannot read ({error})") from None
        if not first:
            return None  # the end of the data without end-of-archive blocks: some writers omit them
        block = first + self._read_exact(BLOCK - 1)
        if block == bytes(BLOCK):
            return None  # end of archive
        stored = _octal(block[148:156], "checksum")
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
        if stored not in (unsigned, signed):
            raise BundleError("not a bundle archive (bad tar header checksum)")
        name = _text(block[0:100])
        if block[257:263] == b"ustar\x00":  # POSIX ustar: a prefix extends the name
            prefix = _text(block[345:500])
            name = f"{prefix}/{name}" if prefix else name
        size = _octal(block[124:136], "size")
        if size < 0:
            raise BundleError("archive header: negative size")
        return block[156:157], name, size

    def next(self) -> Member | None:
        """The next member's header (data not read yet); None at the end of the archive."""
        if self._done:
            return None
        self._skip_current()
        header = self._header()
        overrides: dict[str, str] = {}
        if header is not None and header[0] == _PAX_TYPE:
            _, _, pax_size = header
            if pax_size > MAX_PAX_HEADER_BYTES:
                raise BundleError(
                    f"archive: a PAX header of {pax_size} bytes exceeds the {MAX_PAX_HEADER_BYTES} byte limit"
                )
            data = self._read_exact(pax_size)
            self._read_exact(-pax_size % BLOCK)
            overrides = _parse_pax(data)
            if any(key.startswith("GNU.sparse") for key in overrides):
                raise BundleError("archive: sparse files are not allowed")
            header = self._header()
            if header is None or header[0] == _PAX_TYPE:
                raise BundleError("archive: a PAX header must be followed by a member")
        if header is None:
            self._done = True
            return None
        kind, name, size = header
        name = overrides.get("path", name)
        if "size" in overrides:
            try:
                size = int(overrides["size"])
            except ValueError:
                size = -1
            if size < 0:
                raise BundleError("archive: malformed PAX size")
        if kind in _REFUSED_TYPES:
            raise BundleError(f"archive member {name!r}: {_REFUSED_TYPES[kind]}")
        if kind not in _FILE_TYPES + (_DIR_TYPE,):
            raise BundleError(f"archive member {name!r}: unsupported tar member type {kind!r}")
        is_dir = kind == _DIR_TYPE
        if is_dir and size:
            raise BundleError(f"archive member {name!r}: a directory with data")
        checked = check_member_name(name, is_dir)
        self._left, self._padding = size, -size % BLOCK
        if checked is None:
            return self.next()
        return Member(checked, size, is_dir)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of the current member's data (b'' at its end)."""
        data = self._read_exact(min(size, self._left)) if self._left else b""
        self._left -= len(data)
        return data
