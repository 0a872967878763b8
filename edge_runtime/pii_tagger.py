"""Person names and postal addresses, found by a token-classification bundle, as redaction spans.

The regex scanner (kernels.pii) finds structured identifiers; names and addresses need a model. This
runs the tagger over text of any length: the text is cut into windows of at most the bundle's
max_length tokens that overlap by OVERLAP tokens (a name on a window's edge is whole in the next one),
and every span is widened to whole words, so no fragment of a name ("Mc" of "McAllister") is left
behind. Spans that no name or address can be (a measurement tagged as an address, an acronym as a name)
are taken back (pii_vetoes). `find_spans` merges the scanner's spans with the tagger's into the
non-overlapping list that redaction takes.

The tagger reads the same normalised view of the text as the scanner (kernels.pure.pii.fold: NFKC,
invisible format characters removed, Unicode spaces as spaces), and its spans map back to the original:
a name written in full-width letters or split by a zero-width space is the name the model was trained on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from .errors import BundleError, EdgeRuntimeError, StoreError
from .pii_vetoes import plausible

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = "pii-tagger-minilm"
OVERLAP = 16
KINDS = ("PERSON", "ADDRESS")  # what a tagger bundle may tag (B-/I- labels); redaction.KINDS adds the scanner's


class PiiTagger:
    def __init__(self, model):
        if model.task != "token-classification":
            raise BundleError(f"{model.name} is a {model.task} model, not a token-classification tagger")
        unknown = {tag[2:] for tag in model.labels if tag[:2] in ("B-", "I-")} - set(KINDS)
        if unknown:
            raise BundleError(f"{model.name} tags {', '.join(sorted(unknown))}; redaction knows {', '.join(KINDS)}")
        self.model = model
        self.path = model.path
        self.name = f"{model.name}@{model.version}"
        tokenizer = model.preprocessor.tokenizer
        self._window = max(8, model.preprocessor.max_length - 2)  # [CLS] and [SEP]
        self._tokenizer = _untruncated(tokenizer)

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, kind) of every name and address in `text`, whole words, sorted, merged."""
        view, origin = _normalised(text)
        if not view.strip():
            return []
        windows = self._windows(view)
        found = []
        for (start, _end), entities in zip(windows, self.model.entities([view[s:e] for s, e in windows])):
            found += [(start + e.start, start + e.end, e.label) for e in entities if e.label in KINDS]
        if origin is not None:
            found = [(origin[s], origin[e - 1] + 1, kind) for s, e, kind in found]
        return merge(plausible(text, [_whole_words(text, s, e, kind) for s, e, kind in found]))

    def _windows(self, text: str) -> list[tuple[int, int]]:
        offsets = [o for o in self._tokenizer.encode(text, add_special_tokens=False).offsets if o[1] > o[0]]
        if len(offsets) <= self._window:
            return [(0, len(text))]
        step = self._window - OVERLAP
        windows = []
        for first in range(0, len(offsets), step):
            last = min(first + self._window, len(offsets)) - 1
            windows.append((offsets[first][0], offsets[last][1]))
            if last == len(offsets) - 1:
                break
        return windows


class LazyTagger:
    """A verified tagger bundle whose session is created on the first text that needs it, and dropped again
    after `idle_unload_s` seconds without use (0: kept once loaded). A device that escalates a few texts an
    hour does not keep the tagger's ~40 MB in memory between them; the first text after a pause waits for the
    load (~0.1 s). The bundle is resolved and verified at once, so a missing or untrusted tagger is reported
    at start, as with an eager load. Presents PiiTagger's `name`, `path` and `spans`."""

    def __init__(
        self,
        ref: str,
        *,
        threads: int = 1,
        root=None,
        idle_unload_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        from .store import Store

        store = Store(root)
        self.path = store.resolve(ref)
        manifest = store.verify(self.path)
        if manifest.task != "token-classification":
            raise BundleError(f"{manifest.name} is a {manifest.task} model, not a token-classification tagger")
        self.name = f"{manifest.name}@{manifest.version}"
        self.idle_unload_s = idle_unload_s
        self.loads = self.unloads = 0
        self._threads, self._root, self._clock = threads, root, clock
        self._tagger: PiiTagger | None = None
        self._last_used = clock()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tagger is not None

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        with self._lock:
            if self._tagger is None:
                from .model import load

                self._tagger = PiiTagger(load(self.path, threads=self._threads, root=self._root, max_batch=8))
                self.loads += 1
            self._last_used = self._clock()
            tagger = self._tagger  # a call in flight keeps its own reference through an unload
        return tagger.spans(text)

    def unload_if_idle(self) -> bool:
        """Drop the session when it has not been used for idle_unload_s; True when it did."""
        with self._lock:
            if self._tagger is None or self.idle_unload_s <= 0:
                return False
            if self._clock() - self._last_used < self.idle_unload_s:
                return False
            self._tagger = None
            self.unloads += 1
        from .session import release_free_memory

        release_free_memory()  # the session's memory went back to the heap, not to the system
        log.info("PII tagger %s unloaded after %.0f s idle", self.name, self.idle_unload_s)
        return True


def _normalised(text: str) -> tuple[str, list[int] | None]:
    """(view, origin): the text as the scanner reads it, and the original index of each view character
    (None when the view is the text itself: plain ASCII)."""
    if text.isascii():
        return text, None
    from .kernels.pure.pii import normalise

    codes, origin = normalise(text)
    return "".join(map(chr, codes)), origin


def _untruncated(tokenizer):
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char in "'’-"


def _whole_words(text: str, start: int, end: int, kind: str) -> tuple[int, int, str]:
    while start > 0 and _is_word_char(text[start - 1]):
        start -= 1
    while end < len(text) and _is_word_char(text[end]):
        end += 1
    return start, end, kind


def merge(spans: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping spans become one. Its kind: the scanner's, when a scanner span is part of it (checksums
    and formats beat a model: an e-mail stays EMAIL though the tagger sees a name in it); else the kind of
    its longest part (ties: the earlier)."""
    merged: list[list] = []
    for start, end, kind in sorted(spans):
        rank = (kind not in KINDS, end - start)  # scanner kinds first, then length
        if merged and start < merged[-1][1]:
            last = merged[-1]
            if rank > last[3]:
                last[2], last[3] = kind, rank
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, kind, rank])
    return [(start, end, kind) for start, end, kind, _ in merged]


def find_spans(text: str, tagger: PiiTagger | None = None) -> list[tuple[int, int, str]]:
    """The regex scanner's spans plus, with a tagger, names and addresses: merged, non-overlapping."""
    from .kernels import pii

    spans = pii.scan(text)
    if tagger is None:
        return spans
    return merge(list(spans) + tagger.spans(text))


def load_tagger(
    ref: str, *, required: bool = False, threads: int = 1, root=None, idle_unload_s: float | None = None
) -> PiiTagger | LazyTagger | None:
    """The tagger bundle `ref` from the store; None when `ref` is empty, or cannot be loaded and is not
    required (not installed, not a tagger, not trusted...): then the text goes out with the scanner's
    redaction only, and the log says why. With `idle_unload_s` (a number, 0 included) the tagger is a
    LazyTagger: verified now, loaded on first use, unloaded when idle."""
    if not ref:
        return None
    from .model import load

    try:
        if idle_unload_s is not None:
            return LazyTagger(ref, threads=threads, root=root, idle_unload_s=idle_unload_s)
        return PiiTagger(load(ref, threads=threads, root=root, max_batch=8))
    except EdgeRuntimeError as error:
        if required:
            raise
        # Not installed is an expected state the callers report in their own words; any other reason is a
        # misconfiguration nobody would otherwise see.
        level = logging.INFO if isinstance(error, StoreError) else logging.WARNING
        log.log(level, "PII tagger %s not loaded: %s", ref, error)
        return None
