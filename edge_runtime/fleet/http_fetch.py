"""Chunks of a release archive from untrusted HTTP(S) mirrors, by range request (docs/fleet.md#mirrors).

For each mirror of the signed release record, in order, the device asks for the runs of chunks its bitmap
still lacks (`Range: bytes=a-b`, at most MAX_REQUEST_BYTES per request, one keep-alive connection per
mirror) and hands every chunk to Download.write, which refuses bytes whose sha256 is not the record's.
Nothing a mirror says is trusted beyond the bytes that verify: the status and Content-Range only decide
whether to go on reading, and no more than the bytes asked for are ever read from an answer.

An https:// mirror's certificate is verified (the system trust store, plus the device's mirror CA file), and
the device's credentials for a mirror's origin go to that origin only (mirror_access.py).

A mirror is left for the next one (and, after the last, for the MQTT chunk loop) when it serves a bad chunk
(it is not asked again: the next mirror gets the chunk), answers anything but 206/200 (401/403: credentials
missing or refused; a redirect is never followed, so no header reaches another origin), describes another
range or file, encodes the body, presents a certificate that does not verify (before any request is sent),
overruns a request's time (timeout_s + bytes / min_rate; a watchdog cuts even a read that keeps trickling),
or its connection fails twice in a row without a chunk stored between.

A server that ignores ranges answers 200 with the whole archive (nginx with `max_ranges 0`, Python's
http.server, some CDNs for an uncached object). That answer is used, not refused: the body is cut into
chunks as it streams, each chunk still missing is verified and stored, the others are read past, and the
connection is closed after the last missing chunk. The cost is at most one archive over HTTP per attempt,
which is what a mirror is for; refusing it would send those bytes through the broker instead.
"""

from __future__ import annotations

import functools
import http.client
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .. import __version__
from .chunks import BadChunk, Download
from .errors import ReleaseError
from .mirror_access import MirrorAccess, MirrorAccessError
from .release import Release, check_mirror, mirror_url

log = logging.getLogger(__name__)
READ_PIECE = 64 * 1024  # read an answer in pieces, so a trickling mirror meets its deadline between them
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # one range request covers at most this many bytes of chunks
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
COUNTERS = ("mirror_chunks", "mirror_bytes", "mirror_bad", "mirror_errors")


@dataclass
class MirrorConfig:
    timeout_s: float = 10.0  # connecting, and each wait for bytes from the socket
    min_rate: float = 8 * 1024  # bytes/s: an answer of N bytes must be read within timeout_s + N / min_rate
    reconnects: int = 1  # fresh connections after a failed request before the mirror is left
    access: MirrorAccess = field(default_factory=MirrorAccess)  # TLS trust and credentials (device config)


class MirrorFailed(Exception):
    """This mirror cannot, or must not, supply more chunks of this archive; the message says why."""


def _chunk_length(release: Release, index: int) -> int:
    return min(release.chunk_size, release.size - index * release.chunk_size)


def _runs(missing: list[int], most: int) -> list[tuple[int, int]]:
    """Consecutive missing chunks as (first, last) runs of at most `most` chunks."""
    runs: list[tuple[int, int]] = []
    for index in missing:
        if runs and runs[-1][1] == index - 1 and index - runs[-1][0] < most:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _read_exactly(response: http.client.HTTPResponse, length: int, deadline: float) -> bytes:
    parts, got = [], 0
    while got < length:
        if time.monotonic() > deadline:  # the watchdog cuts a blocked read; this, one that keeps trickling
            raise MirrorFailed(f"too slow: {got} of {length} bytes of a chunk before the deadline")
        piece = response.read(min(READ_PIECE, length - got))
        if not piece:  # the connection ended early: handled like any broken connection (one fresh try)
            raise http.client.IncompleteRead(b"".join(parts), length - got)
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


class _Watchdog:
    """Shuts a connection's socket down when a request overruns its time. The socket timeout bounds each
    wait for bytes, not the whole answer: a mirror trickling a byte at a time (headers included, which
    http.client reads without a deadline) would otherwise hold the device as long as it likes."""

    def __init__(self):
        self.timer: threading.Timer | None = None
        self.fired = False

    def arm(self, sock, seconds: float) -> None:
        self.cancel()
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire, (sock,))
        self.timer.daemon = True
        self.timer.start()

    def _fire(self, sock) -> None:
        self.fired = True
        try:
            # socket.socket's shutdown, not SSLSocket's: that one unwraps TLS under the reading thread's feet.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Mirror:
    """One mirror's copy of one archive, over one keep-alive connection."""

    def __init__(self, base: str, release: Release, config: MirrorConfig, tls: Callable[[], ssl.SSLContext]):
        """ReleaseError for a URL this device cannot use, MirrorAccessError when its CA file or credentials
        cannot be read."""
        self.release, self.config = release, config
        self.url = mirror_url(check_mirror(base), release.sha256)
        parts = urlsplit(self.url)
        self.scheme, self.host, self.port, self.path = parts.scheme, parts.hostname, parts.port, parts.path
        self.context = tls() if self.scheme == "https" else None
        self.authorization = config.access.authorization(self.url)  # for this origin only, or None
        self.connection: http.client.HTTPConnection | None = None
        self.watchdog = _Watchdog()

    def _connection(self) -> http.client.HTTPConnection:
        if self.connection is None:
            if self.scheme == "https":
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.config.timeout_s, context=self.context
                )
            else:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.config.timeout_s)
        return self.connection

    def close(self) -> None:
        self.watchdog.cancel()
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def fill(self, download: Download, counters: dict, between: Callable[[], None]) -> None:
        """Store what this mirror has of the download's missing chunks; MirrorFailed to move on."""
        per_request = max(1, MAX_REQUEST_BYTES // self.release.chunk_size)
        failures = 0
        while runs := _runs(download.missing(), per_request):
            before = len(download.done)
            try:
                whole = self._fetch(download, *runs[0], counters, between)
            except ssl.SSLCertVerificationError as error:  # another try would meet the same certificate
                self.close()
                raise MirrorFailed(f"TLS certificate not trusted: {error.verify_message or error}") from None
            except (OSError, http.client.HTTPException, ValueError) as error:  # refused, reset, cut, garbled
                self.close()
                if self.watchdog.fired:
                    raise MirrorFailed(f"too slow: a request took longer than it may ({error})") from None
                failures = 0 if len(download.done) > before else failures + 1
                if failures > self.config.reconnects:
                    raise MirrorFailed(f"{type(error).__name__}: {error}") from None
                continue
            if whole:
                if download.missing():
                    raise MirrorFailed("answered without ranges and did not hold every missing chunk")
                return

    def _fetch(self, download: Download, first: int, last: int, counters: dict, between) -> bool:
        """One request for chunks first..last; True when the mirror answered with the whole archive."""
        release = self.release
        start = first * release.chunk_size
        end = min(release.size, (last + 1) * release.chunk_size) - 1
        connection = self._connection()
        if connection.sock is None:
            connection.connect()  # bounded by the socket timeout; the watchdog needs the socket
        limit = self.config.timeout_s + (end - start + 1) / self.config.min_rate
        deadline = time.monotonic() + limit
        self.watchdog.arm(connection.sock, limit)
        try:
            headers = {"Range": f"bytes={start}-{end}", "User-Agent": f"edge-runtime/{__version__}"}
            if self.authorization:
                headers["Authorization"] = self.authorization
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            try:
                if response.status in (401, 403):
                    held = "refused the device's credentials" if self.authorization else "no credentials for it"
                    raise MirrorFailed(f"HTTP {response.status} {response.reason[:80]} ({held})")
                if response.status not in (200, 206):
                    raise MirrorFailed(f"HTTP {response.status} {response.reason[:80]}")
                encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
                if encoding != "identity":
                    raise MirrorFailed(f"answered with Content-Encoding {encoding[:40]!r}")
                if response.status == 200:
                    limit = self.config.timeout_s + release.size / self.config.min_rate
                    self.watchdog.arm(connection.sock, limit)
                    self._store_whole(download, response, counters, between, time.monotonic() + limit)
                    return True
                self._check_range(response.getheader("Content-Range"), start, end)
                for index in range(first, last + 1):
                    between()
                    data = _read_exactly(response, _chunk_length(release, index), deadline)
                    self._store(download, index, data, counters)
                return False
            finally:
                if not response.isclosed():  # a longer answer than asked, or one left early: never read on
                    self.close()
        finally:
            self.watchdog.cancel()

    def _check_range(self, header: str | None, start: int, end: int) -> None:
        match = _CONTENT_RANGE.fullmatch((header or "").strip())
        if not match:
            raise MirrorFailed(f"206 with Content-Range {str(header)[:80]!r}, expected bytes {start}-{end}")
        if (int(match[1]), int(match[2])) != (start, end):
            raise MirrorFailed(f"answered range {match[1]}-{match[2]}, asked for {start}-{end}")
        if match[3] != "*" and int(match[3]) != self.release.size:
            raise MirrorFailed(f"holds a file of {match[3]} bytes, the release's archive has {self.release.size}")

    def _store_whole(self, download: Download, response, counters: dict, between, deadline: float) -> None:
        """A 200 answer: the archive from byte 0. Missing chunks are stored, the others read past."""
        wanted = set(download.missing())
        for index in range(max(wanted) + 1):
            between()
            data = _read_exactly(response, _chunk_length(self.release, index), deadline)
            if index in wanted and index not in download.done:
                self._store(download, index, data, counters)

    def _store(self, download: Download, index: int, data: bytes, counters: dict) -> None:
        try:
            download.write(index, data)
        except BadChunk as error:
            counters["mirror_bad"] += 1
            raise MirrorFailed(f"{error} (the mirror is not asked again)") from None
        counters["mirror_chunks"] += 1
        counters["mirror_bytes"] += len(data)


def fetch_from_mirrors(
    download: Download,
    mirrors: list[str],
    config: MirrorConfig | None = None,
    *,
    between: Callable[[], None] = lambda: None,
) -> dict:
    """Fill what the mirrors can of `download`, in their order; returns counters (COUNTERS). The caller
    fetches whatever is still missing some other way. `between` runs before each chunk (the agent acts on
    its other messages there; an exception it raises, e.g. Halted, stops the download)."""
    config = config or MirrorConfig()
    counters = dict.fromkeys(COUNTERS, 0)
    tls = functools.cache(config.access.context)  # built once per download, when a first https:// mirror is tried
    for base in mirrors:
        if not download.missing():
            break
        try:
            mirror = Mirror(base, download.release, config, tls)
        except ReleaseError as error:  # a URL this device cannot use: the others still can
            counters["mirror_errors"] += 1
            log.warning("skipping %s", error)
            continue
        except MirrorAccessError as error:  # its CA file or credentials file cannot be used now
            counters["mirror_errors"] += 1
            log.warning("skipping mirror %s: %s", base, error)
            continue
        had = len(download.done)
        try:
            mirror.fill(download, counters, between)
        except MirrorFailed as error:
            counters["mirror_errors"] += 1
            log.warning(
                "mirror %s: %s (%d chunks from it; %d still missing)",
                mirror.url,
                error,
                len(download.done) - had,
                len(download.missing()),
            )
        finally:
            mirror.close()
    return counters
