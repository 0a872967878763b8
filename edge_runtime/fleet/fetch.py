"""The device's chunk loop: keep a window of requests in flight, store each good chunk, re-request bad
or lost ones. Other messages that arrive meanwhile go to `on_other` (which may raise Halted)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import protocol
from .chunks import BadChunk, Download
from .errors import ChunkError


@dataclass
class FetchConfig:
    window: int = 8  # chunks requested at once
    timeout_s: float = 10.0  # re-request a chunk not answered in this time
    deadline_s: float = 3600.0  # give up on the whole download after this
    max_bad: int = 5  # bad hashes tolerated per chunk before giving up


def fetch(
    download: Download,
    inbox: queue.Queue,
    *,
    chunk_topic: str,
    request: Callable[[list[int]], None],
    on_other: Callable[[object], None],
    config: FetchConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Fill `download`; returns counters {"requested", "received", "bad", "duplicates"}."""
    counters = {"requested": 0, "received": 0, "bad": 0, "duplicates": 0}
    bad: dict[int, int] = {}
    inflight: dict[int, float] = {}
    deadline = time.monotonic() + config.deadline_s
    sha = download.release.sha256
    while download.missing():
        now = time.monotonic()
        if now > deadline:
            raise ChunkError(
                f"download not complete after {config.deadline_s:.0f} s ({len(download.missing())} chunks missing)"
            )
        for index, sent in list(inflight.items()):
            if now - sent > config.timeout_s:
                del inflight[index]
        wanted = [i for i in download.missing() if i not in inflight][: max(0, config.window - len(inflight))]
        if wanted:
            request(wanted)
            counters["requested"] += len(wanted)
            inflight.update((i, now) for i in wanted)
        try:
            message = inbox.get(timeout=min(1.0, config.timeout_s))
        except queue.Empty:
            continue
        if message.topic != chunk_topic:
            on_other(message)
            continue
        decoded = protocol.decode_chunk(message.payload)
        if decoded is None or decoded[0]["sha256"] != sha:
            continue  # not ours (an older download's late answer)
        header, data = decoded
        index = header["index"]
        if header.get("error"):
            raise ChunkError(f"fleet manager cannot serve chunk {index}: {header['error']}")
        if index in download.done:
            counters["duplicates"] += 1
            continue
        inflight.pop(index, None)
        try:
            download.write(index, data)
        except BadChunk as error:
            counters["bad"] += 1
            bad[index] = bad.get(index, 0) + 1
            if bad[index] > config.max_bad:
                raise ChunkError(f"{error} ({bad[index]} times; giving up)") from None
            continue  # missing() still lists it: re-requested on the next pass
        counters["received"] += 1
        if on_progress:
            on_progress(len(download.done), download.total)
    return counters
