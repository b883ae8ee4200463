"""Progress of long batch commands: a rich progress bar on a terminal, a periodic line otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Counts done items; shows rate and time left. Use as a context manager."""

    def __init__(self, total: int, label: str, *, every_s: float = 5.0, stream: Any = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last = self.started
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.speed:>8.0f}/s" if False else "[progress.percentage]{task.percentage:>3.0f}%"),
                            TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f} s left" if left != float("inf") else "time left unknown"
        return f"{self.label}: {self.done}/{self.total} ({rate:.0f}/s, {eta})"

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            print(self.line(), file=self.stream, flush=True)
