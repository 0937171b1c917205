"""The commands' progress on the terminal: one class for a status line and for bars, quiet under -q."""

from __future__ import annotations

import sys
import time


class Progress:
    """Progress with rich, only when stderr is a terminal and without --quiet. progress("loading weights") shows
    a status line; progress("layer conv5_3", done, total) a bar for that phase (one per phase), with `rate` per
    second beside it when given: one unit (e.g. "images"), or one per phase's first word ({"drawing": "maps"}).
    stop() clears what is shown; `with Progress(q) as p:` stops on the way out, also on error."""

    def __init__(self, quiet: bool, *, rate: str | dict[str, str] | None = None):
        self.on = not quiet and sys.stderr.isatty()
        self.rate = rate
        self._status, self._bar, self._tasks = None, None, {}

    def __call__(self, text: str, done: int | None = None, total: int | None = None) -> None:
        if not self.on:
            return
        if done is None:
            self._line(text)
        else:
            self._step(text, done, total)

    def _line(self, text: str) -> None:
        from rich.console import Console

        if self._status is None:
            self._status = Console(stderr=True).status(text)
            self._status.start()
        self._status.update(text)

    def _step(self, phase: str, done: int, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._bar is None:
            rate = [TextColumn("{task.fields[rate]}")] if self.rate else []
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate]
            self._bar = Progress(*columns, TimeRemainingColumn())
            self._bar.start()
        if phase not in self._tasks:
            task = self._bar.add_task(phase, total=total, completed=done, rate="")
            self._tasks[phase] = (task, done, time.monotonic())
        task, first, start = self._tasks[phase]
        seconds = time.monotonic() - start
        unit = self.rate.get(phase.split()[0]) if isinstance(self.rate, dict) else self.rate
        rate = f"{(done - first) / seconds:.1f} {unit}/s" if unit and done > first and seconds > 0 else ""
        self._bar.update(task, completed=done, total=total, rate=rate)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for shown in (self._status, self._bar):
            if shown is not None:
                shown.stop()
