"""The flywheel dataset: what the upstream worker answered, kept as training data for the next device model.

Writing (`DatasetWriter`, used by `edge-runtime upstream --dataset DIR`): every escalation the worker answers
becomes one JSON line in an append-only file of DIR, through a writer thread that writes what is queued as one
batch, then flushes and fsyncs it. Files are `escalations-<UTC time>-<number>.jsonl`; a file is closed and the
next one started when it would grow past `max_bytes`, and every start of a writer opens a new file, so a line
torn by a crash (kill -9 mid-write) is always the last line of its file. Record (SCHEMA 1):

    {"schema": 1, "id": "<32 hex>", "received_at": "2026-12-02T03:14:23.123456Z",
     "device": "<device id of the request's topic>", "request_id": "<the device's request id>",
     "text": "<the redacted text exactly as the device sent it>",
     "device_prediction": {"label", "score", "top_k": [{"label", "score"}], "margin", "entropy"} | null,
     "reason": "<the device's routing reason>", "bundle": {"name", "version"}    (the device's bundle),
     "upstream": {"label", "score", "top_k": [{"label", "score"}], "combined": bool,
                  "bundle": {"name", "version"}}                                    (the worker's answer)}

Only fields the device sent and the worker answered are kept: `text`, `device_prediction`, `reason` and
`bundle` come from the request, unchanged; `upstream` from the answer (its top-k, not the full distribution:
that is what the worker computes and sends). A request is untrusted: anything off these shapes or over the
caps below (`RecordError`) is dropped and counted, never written, and so is a text in which the PII scanner
(`kernels.pii`, the one the device redacts with) still finds something. The device still gets its answer.

Reading (`read_records`): every file of DIR in name order; a last line without its newline (torn) and a line
that is not a valid record are skipped and counted, never fatal.

Exporting (`export`, `edge-runtime flywheel export`): training data in the project's JSONL layout
({"text", "label"}, datasets.read_jsonl) plus `teacher_probs` ({label: upstream probability} of the upstream's
top-k; they sum to at most 1, the rest of the mass is on labels outside the top-k) for distillation, and
`flywheel_id` (the record id). Records whose text the PII scanner flags are dropped and counted; then those
below `min_confidence` (the upstream's score); then duplicates by normalised text (NFKC, casefolded,
whitespace collapsed; placeholders such as `<PERSON_1>` kept exactly; the latest record wins); then at most
`max_per_label` per upstream label (the most confident kept). The file is written atomically.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InputError
from .fsutil import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

SCHEMA = 1
FILE_PREFIX = "escalations-"
FILE_SUFFIX = ".jsonl"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_QUEUE = 10_000  # records waiting for the writer thread; beyond it new ones are dropped and counted
# Caps on what a device sends. Text: the longest a device model reads is a few hundred tokens; a longer text
# is not training data for it. It is dropped, not cut, so a record holds the text exactly as sent.
MAX_TEXT_CHARS = 4096
MAX_LABEL_CHARS = 128
MAX_NAME_CHARS = 128  # bundle names and versions, device and request ids
MAX_REASON_CHARS = 256
MAX_TOP_K = 64
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9]*(?:_[0-9]+)?>")  # what redaction writes: <EMAIL_1>, <PERSON_2>, <EMAIL>


class RecordError(InputError):
    """A record (or the escalation it would come from) is off the schema or over a cap."""


class LeftoverPII(RecordError):
    """The text still holds what the PII scanner finds: a device sent it unredacted."""


# ---------------------------------------------------------------------------------------------------- records


def _utc_now(clock: Callable[[], float]) -> str:
    return dt.datetime.fromtimestamp(clock(), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _string(value, what: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise RecordError(f"{what} is {len(value):,} characters; the limit is {limit:,}")
    if not empty and not value.strip():
        raise RecordError(f"{what} is empty")
    if "\x00" in value:
        raise RecordError(f"{what} holds a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise RecordError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


def _probability(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(f"{what} must be a finite number")
    if not 0.0 <= value <= 1.0:
        raise RecordError(f"{what} must be a probability (0-1), not {value}")
    return float(value)


def _top_k(value, what: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TOP_K:
        raise RecordError(f"{what} must be a list of at most {MAX_TOP_K} items")
    items = []
    for item in value:
        if not isinstance(item, dict):
            raise RecordError(f'{what} items must be {{"label", "score"}} objects')
        items.append(
            {
                "label": _string(item.get("label"), f"{what} label", MAX_LABEL_CHARS),
                "score": _probability(item.get("score"), f"{what} score"),
            }
        )
    return items


def _bundle(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"{what} must be an object with name and version")
    return {
        "name": _string(value.get("name", ""), f"{what} name", MAX_NAME_CHARS, empty=True),
        "version": _string(value.get("version", ""), f"{what} version", MAX_NAME_CHARS, empty=True),
    }


def _device_prediction(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecordError("device prediction must be an object or null")
    prediction = {
        "label": _string(value.get("label"), "device prediction label", MAX_LABEL_CHARS),
        "score": _probability(value.get("score"), "device prediction score"),
        "top_k": _top_k(value.get("top_k"), "device prediction top_k"),
    }
    for name in ("margin", "entropy", "ood"):  # optional: build_request sends the first two, ood when the bundle has it
        if value.get(name) is not None:
            prediction[name] = _probability(value[name], f"device prediction {name}")
    return prediction


def _upstream(value) -> dict:
    if not isinstance(value, dict):
        raise RecordError("upstream answer must be an object")
    return {
        "label": _string(value.get("label"), "upstream label", MAX_LABEL_CHARS),
        "score": _probability(value.get("score"), "upstream score"),
        "top_k": _top_k(value.get("top_k"), "upstream top_k"),
        "combined": bool(value.get("combined", False)),
        "bundle": _bundle(value.get("bundle", {}), "upstream bundle"),
    }


def check_record(record) -> dict:
    """The record with exactly the schema's fields, checked and capped; RecordError when it is off the schema."""
    if not isinstance(record, dict):
        raise RecordError("a record must be a JSON object")
    if record.get("schema") != SCHEMA:
        raise RecordError(f"record schema {record.get('schema')!r}; this runtime reads {SCHEMA}")
    return {
        "schema": SCHEMA,
        "id": _string(record.get("id"), "id", MAX_NAME_CHARS),
        "received_at": _string(record.get("received_at"), "received_at", 40),
        "device": _string(record.get("device"), "device", MAX_NAME_CHARS),
        "request_id": _string(record.get("request_id"), "request id", MAX_NAME_CHARS),
        "text": _string(record.get("text"), "text", MAX_TEXT_CHARS),
        "device_prediction": _device_prediction(record.get("device_prediction")),
        "reason": _string(record.get("reason", ""), "reason", MAX_REASON_CHARS, empty=True),
        "bundle": _bundle(record.get("bundle"), "bundle"),
        "upstream": _upstream(record.get("upstream")),
    }


def pii_kinds(text: str) -> list[str]:
    """The kinds the PII scanner (the device's, kernels.pii) finds in `text`; [] when it finds nothing."""
    from .kernels import pii

    kinds: list[str] = []
    for _, _, kind in pii.scan(text):
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def record_from_escalation(
    device: str,
    request: dict,
    answer: dict,
    *,
    teacher: tuple[str, str] = ("", ""),
    clock: Callable[[], float] = time.time,
) -> dict:
    """The record of one answered escalation: the request's fields as sent, the answer's label and top-k.
    `device` is the one of the request's topic (the broker's ACLs vouch for it); a request naming another
    device, off the schema, over a cap or holding what the PII scanner finds raises RecordError."""
    if request.get("device", device) != device:
        raise RecordError("the request names another device than its topic")
    record = check_record(
        {
            "schema": SCHEMA,
            "id": uuid.uuid4().hex,
            "received_at": _utc_now(clock),
            "device": device,
            "request_id": request.get("id"),
            "text": request.get("text"),
            "device_prediction": request.get("prediction"),
            "reason": request.get("reason", ""),
            "bundle": request.get("bundle"),
            "upstream": {**answer, "bundle": {"name": teacher[0], "version": teacher[1]}}
            if isinstance(answer, dict)
            else answer,
        }
    )
    kinds = pii_kinds(record["text"])
    if kinds:
        raise LeftoverPII(f"the PII scanner finds {', '.join(kinds)} in the text: not kept")
    return record


def encode_record(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# ---------------------------------------------------------------------------------------------------- writer


class DatasetWriter:
    """Appends records to DIR from a thread of its own: `append` never blocks nor raises on a full disk.

    `stats`: written, write_errors (records lost to a failed write: logged), overflow (queue full), files
    (opened), batches (fsynced). A failed write is cut back off the file (or, if that fails too, the file is
    left and the next batch starts a new one), so no record is ever glued to a partial line."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, queue_size: int = DEFAULT_QUEUE):
        if max_bytes < 1:
            raise InputError("the dataset's file size limit must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.queue_size = queue_size
        self.stats: collections.Counter = collections.Counter()
        self.path: Path | None = None
        self._file = None
        self._size = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name="flywheel-dataset", daemon=True)
        self._thread.start()

    def append(self, record: dict) -> bool:
        """Queues a checked record (check_record / record_from_escalation); False when the queue is full."""
        line = encode_record(record)
        with self._wake:
            if self._closing or len(self._queue) >= self.queue_size:
                self.stats["overflow"] += 1
                return False
            self._queue.append(line)
            self._wake.notify_all()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything queued is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or not self._idle:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._thread.join(timeout)
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._idle = True
                    self._wake.notify_all()
                    self._wake.wait()
                if not self._queue and self._closing:
                    self._idle = True
                    self._wake.notify_all()
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._idle = False
            self._write(batch)

    def _next_path(self) -> Path:
        numbers = [0]
        for path in self.directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"):
            tail = path.name[: -len(FILE_SUFFIX)].rsplit("-", 1)[-1]
            if tail.isdigit():
                numbers.append(int(tail))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.directory / f"{FILE_PREFIX}{stamp}-{max(numbers) + 1:06d}{FILE_SUFFIX}"

    def _open(self) -> None:
        while True:
            path = self._next_path()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
                break
            except FileExistsError:  # another worker on the same directory took that number
                continue
        self._file = os.fdopen(fd, "ab", buffering=0)
        self.path, self._size = path, 0
        self.stats["files"] += 1
        fsync_dir(self.directory)

    def _chunks(self, batch: list[bytes]) -> Iterator[tuple[bool, list[bytes]]]:
        """(rotate first?, lines) per file: a file takes lines until the next would pass max_bytes."""
        size, lines = self._size, []
        rotate = self._file is None
        for line in batch:
            if (lines or size) and size + len(line) > self.max_bytes:
                if lines:
                    yield rotate, lines
                rotate, size, lines = True, 0, []
            lines.append(line)
            size += len(line)
        if lines:
            yield rotate, lines

    def _write(self, batch: list[bytes]) -> None:
        for rotate, lines in self._chunks(batch):
            good = self._size
            try:
                if rotate:
                    if self._file is not None:
                        self._file.close()
                        self._file = None
                    self._open()
                    good = 0
                data = b"".join(lines)
                view = memoryview(data)
                while view:  # a short write (the disk or the file size limit reached) goes on until it raises
                    view = view[os.write(self._file.fileno(), view) :]
                os.fsync(self._file.fileno())
            except OSError as error:
                self.stats["write_errors"] += len(lines)
                log.error("flywheel dataset: %d record(s) not written to %s: %s", len(lines), self.directory, error)
                self._cut_back(good)
                continue
            self._size += len(data)
            self.stats["written"] += len(lines)
            self.stats["batches"] += 1

    def _cut_back(self, good: int) -> None:
        """After a failed write: the file back to its last whole line, or else a new file for the next batch."""
        if self._file is None:
            return
        try:
            os.ftruncate(self._file.fileno(), good)
            os.fsync(self._file.fileno())
            self._size = good
        except OSError:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


# ---------------------------------------------------------------------------------------------------- reader


def dataset_files(directory: Path) -> list[Path]:
    """The dataset's files, oldest first; InputError when DIR is missing or holds none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"no such dataset directory: {directory}")
    files = sorted(p for p in directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}") if p.is_file())
    if not files:
        raise InputError(f"{directory}: no dataset files ({FILE_PREFIX}*{FILE_SUFFIX})")
    return files


def read_records(directory: Path, stats: collections.Counter | None = None) -> Iterator[dict]:
    """Every valid record of every file; counts `read`, `torn` (a last line without its newline: a write cut
    short by a crash) and `malformed` (not JSON, or off the schema) in `stats`."""
    stats = collections.Counter() if stats is None else stats
    for path in dataset_files(directory):
        stats["files"] += 1
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    stats["torn"] += 1
                    continue
                if not line.strip():
                    continue
                try:
                    record = check_record(json.loads(line))
                except (ValueError, RecordError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    stats["malformed"] += 1
                    continue
                stats["read"] += 1
                yield record


# ---------------------------------------------------------------------------------------------------- export


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def normalise(text: str) -> str:
    """The key duplicates share: NFKC, casefolded, whitespace collapsed; placeholders (<PERSON_1>) unchanged."""
    parts, cursor = [], 0
    for match in PLACEHOLDER.finditer(text):
        parts += [_fold(text[cursor : match.start()]), f" {match.group(0)} "]
        cursor = match.end()
    parts.append(_fold(text[cursor:]))
    return " ".join("".join(parts).split())


def teacher_probs(upstream: dict) -> dict[str, float]:
    probs = {item["label"]: item["score"] for item in upstream["top_k"]}
    probs.setdefault(upstream["label"], upstream["score"])
    return probs


def export(
    directory: Path,
    out: Path,
    *,
    min_confidence: float = 0.0,
    max_per_label: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Writes the training set to `out` (atomically) and returns the summary; InputError when nothing is left."""
    say = progress or (lambda message: None)
    stats: collections.Counter = collections.Counter()
    pii_found: collections.Counter = collections.Counter()
    latest: dict[str, tuple[tuple, dict]] = {}
    for order, record in enumerate(read_records(directory, stats)):
        kinds = pii_kinds(record["text"])
        if kinds:
            stats["pii"] += 1
            pii_found.update(kinds)
            continue
        if record["upstream"]["score"] < min_confidence:
            stats["low_confidence"] += 1
            continue
        key = normalise(record["text"])
        rank = (record["received_at"], order)
        if key in latest:
            stats["duplicates"] += 1
            if latest[key][0] > rank:
                continue
        latest[key] = (rank, record)
    say(f"read {stats['read']} record(s) from {stats['files']} file(s)")
    kept = [entry for entry in latest.values()]
    if max_per_label is not None:
        by_label: dict[str, list] = collections.defaultdict(list)
        for rank, record in kept:
            by_label[record["upstream"]["label"]].append((rank, record))
        kept = []
        for entries in by_label.values():
            entries.sort(key=lambda entry: (-entry[1]["upstream"]["score"], entry[0]))
            kept += entries[:max_per_label]
            stats["capped"] += max(0, len(entries) - max_per_label)
    kept.sort(key=lambda entry: entry[0])
    if not kept:
        raise InputError(f"{directory}: no record left to export ({_counts(stats)})")
    rows = [
        {
            "text": record["text"],
            "label": record["upstream"]["label"],
            "teacher_probs": teacher_probs(record["upstream"]),
            "flywheel_id": record["id"],
        }
        for _, record in kept
    ]
    atomic_write_bytes(Path(out), b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows))
    labels = collections.Counter(row["label"] for row in rows)
    teachers = sorted({f"{r['upstream']['bundle']['name']}@{r['upstream']['bundle']['version']}" for _, r in kept})
    say(f"wrote {len(rows)} example(s) in {len(labels)} label(s) to {out}")
    return {
        "out": str(out),
        "files": stats["files"],
        "read": stats["read"],
        "torn": stats["torn"],
        "malformed": stats["malformed"],
        "pii": stats["pii"],
        "pii_kinds": dict(sorted(pii_found.items())),
        "low_confidence": stats["low_confidence"],
        "duplicates": stats["duplicates"],
        "capped": stats["capped"],
        "written": len(rows),
        "labels": dict(sorted(labels.items())),
        "teachers": teachers,
        "min_confidence": min_confidence,
        "max_per_label": max_per_label,
    }


def _counts(stats: collections.Counter) -> str:
    names = ("read", "torn", "malformed", "pii", "low_confidence", "duplicates")
    return ", ".join(f"{name} {stats[name]}" for name in names)
