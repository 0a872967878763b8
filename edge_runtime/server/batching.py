"""The dynamic batcher: texts from concurrent requests share one inference run in a worker thread.

Requests wait in a bounded queue (counted in texts, from admission until their batch is done):
past `max_queue` a request is refused at once (QueueFull -> 503 Retry-After), so memory is bounded.
The worker waits up to `max_delay_s` for a batch to fill, but only as far as the recent load says
more texts are coming (as many as the last batch): a lone client never pays the delay. With a
backlog larger than `max_batch` it takes several batches' worth at once and the model splits them
into length buckets (Model.max_batch), so short texts are not padded to long ones.
Requests whose deadline passed while queued are dropped before inference.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BUCKET_RUNS = 4  # with a backlog, take up to this many batches per run (bucketed by length)


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__("the request queue is full")
        self.retry_after_s = retry_after_s


class Stopped(Exception):
    pass


@dataclass
class Job:
    texts: Sequence[str]
    future: asyncio.Future
    deadline: float  # time.monotonic()
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        run: Callable[[list[str]], list],
        *,
        max_batch: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        workers: int = 1,
    ):
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.workers = workers  # inference runs at once: each worker takes its own batch
        self.on_batch = on_batch
        self._jobs: collections.deque[Job] = collections.deque()
        self._queued_texts = 0  # waiting for the worker
        self._admitted = 0  # waiting or being inferred
        self._expected = 1  # texts the next batch may expect (recent load)
        self._cond = threading.Condition()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self.batches = 0

    # -- event loop side -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{n}", daemon=True) for n in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def depth(self) -> int:
        """Texts admitted and not yet answered."""
        return self._admitted

    def submit(self, texts: Sequence[str], deadline: float) -> asyncio.Future:
        future = self._loop.create_future()
        with self._cond:
            if self._stopping:
                raise Stopped()
            if self._admitted + len(texts) > self.max_queue:
                raise QueueFull(retry_after_s=1)
            self._admitted += len(texts)
            self._queued_texts += len(texts)
            self._jobs.append(Job(texts, future, deadline))
            self._cond.notify()
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- worker thread ---------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            target = min(self.max_batch, self._expected)
            if self._queued_texts < target and self.max_delay_s > 0:
                until = time.monotonic() + self.max_delay_s
                while self._queued_texts < target and not self._stopping:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            limit = self.max_batch if self._queued_texts <= self.max_batch else self.max_batch * BUCKET_RUNS
            taken, count = [], 0
            while self._jobs and (not taken or count + len(self._jobs[0].texts) <= limit):
                job = self._jobs.popleft()
                taken.append(job)
                count += len(job.texts)
            self._queued_texts -= count
            return taken

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            now = time.monotonic()
            live = [j for j in jobs if j.deadline > now and not j.future.done()]
            texts = [text for job in live for text in job.texts]
            outcome: list | BaseException = []
            if texts:
                started = time.perf_counter()
                try:
                    outcome = self.run(texts)
                except Exception as error:  # delivered to each request of the batch
                    log.exception("batch of %d texts failed", len(texts))
                    outcome = error
                if self.on_batch:
                    self.on_batch(len(texts), time.perf_counter() - started)
            self._expected = max(len(texts), self._expected // 2, 1)
            deliveries, offset = [], 0
            for job in live:
                n = len(job.texts)
                deliveries.append(
                    (job.future, outcome if isinstance(outcome, BaseException) else outcome[offset : offset + n])
                )
                offset += n
            if deliveries:
                try:
                    self._loop.call_soon_threadsafe(_deliver, deliveries)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass
            with self._cond:
                self._admitted -= sum(len(job.texts) for job in jobs)
                self.batches += bool(texts)


def _deliver(deliveries) -> None:
    for future, result in deliveries:
        if future.done():  # the handler gave up (deadline) meanwhile
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
