"""Token buckets (per key, bounded) and a log that says a repeated thing once per interval.

Both take the clock as an argument so a test can drive time without sleeping.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take(cost)` spends them or refuses without spending."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate < 0 or burst <= 0:
            raise ValueError(f"token bucket needs rate >= 0 and burst > 0 (got {rate}, {burst})")
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self, cost: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if cost > self.tokens:
            return False
        self.tokens -= cost
        return True


class KeyedBuckets:
    """One TokenBucket per key (a device id); the least recently used are forgotten beyond `max_keys`,
    so a stream of made-up keys cannot grow memory (a forgotten key starts again with a full bucket)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        TokenBucket(rate, burst, clock)  # validates the arguments now, not at the first message
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> bool:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, self.clock)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket.take(cost)


class ThrottledLog:
    """Logs a message of a given kind at most once per `interval_s`, saying how many it held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def log(self, level: int, kind: str, message: str, *args, exc_info: bool = False) -> bool:
        """True if the line was written."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] += 1
            return False
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        suffix = f" (and {held} more like it in the last {self.interval_s:g} s)" if held else ""
        self.logger.log(level, message + suffix, *args, exc_info=exc_info)
        return True
