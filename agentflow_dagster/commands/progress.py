"""Live progress of `ingest --wait` and `submit --wait`: a rich bar on a terminal, plain lines otherwise.

Progress goes to stderr, so the result a command prints on stdout stays parseable (`... --wait | jq`).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LiveProgress:
    """`update(done, total, step)`; a terminal gets a redrawn bar, a pipe or file one line per change."""

    def __init__(self, what: str, unit: str, *, stream: IO[str] | None = None, tty: bool | None = None):
        self.what, self.unit = what, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._last: tuple[Any, ...] | None = None
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> LiveProgress:
        if self.tty:
            self._bar = Progress(
                TextColumn("[bold]{task.fields[what]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(file=self.stream),
            )
            self._bar.start()
            self._task = self._bar.add_task("starting", total=None, what=self.what, unit=self.unit)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, done: int, total: int | None, step: str, unit: str | None = None) -> None:
        """Show the new state; plain output prints only when something changed."""
        unit = unit or self.unit
        state = (done, total, step, unit)
        if state == self._last:
            return
        self._last = state
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total or None, description=step, unit=unit)
            return
        of = f"/{total}" if total else ""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:5.0f}s] {self.what}: {done}{of} {unit} | {step}", file=self.stream, flush=True)
