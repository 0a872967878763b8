"""Progress for long build steps: rich bars on a terminal, plain timestamped lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    """`step(name)` times a step; `bar(name, total)` yields an `advance(n)` callable."""

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.rich = enabled and self.stream.isatty()
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str):
        began = time.perf_counter()
        if self.rich:
            from rich.console import Console

            with Console(file=self.stream).status(name):
                yield
        else:
            self.log(f"{name} ...")
            yield
        self.timings[name] = round(time.perf_counter() - began, 2)
        self.log(f"{name}: done in {self.timings[name]:.1f}s")

    @contextlib.contextmanager
    def bar(self, name: str, total: int):
        began = time.perf_counter()
        if self.rich:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            with RichProgress(*columns, console=_console(self.stream), transient=False) as bar:
                task = bar.add_task(name, total=total)
                yield lambda n=1, note=None: bar.update(task, advance=n, description=_describe(name, note))
        else:
            self.log(f"{name}: 0/{total}")
            state = {"done": 0, "printed": 0, "at": time.perf_counter()}

            def advance(n=1, note=None):
                state["done"] += n
                # a line per ~10% or per 30 s, so logs stay short
                due = state["done"] - state["printed"] >= max(1, total // 10) or time.perf_counter() - state["at"] > 30
                if due or state["done"] >= total:
                    state["printed"], state["at"] = state["done"], time.perf_counter()
                    self.log(f"{_describe(name, note)}: {state['done']}/{total}")

            yield advance
        self.timings[name] = round(time.perf_counter() - began, 2)
        self.log(f"{name}: done in {self.timings[name]:.1f}s")


def _describe(name: str, note: str | None) -> str:
    return f"{name} ({note})" if note else name


def _console(stream):
    from rich.console import Console

    return Console(file=stream)


class Silent(Progress):
    def __init__(self):
        super().__init__(enabled=False)
