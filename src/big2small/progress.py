"""Progress of long work on stderr (so that --json output on stdout stays clean): a rich bar with an
ETA on a terminal; plain lines (what, how far, elapsed, ETA) when stderr is a pipe or a file, at most
one every `PLAIN_INTERVAL_S` seconds plus one at the start and one at the end; nothing when disabled.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_INTERVAL_S = 10.0  # seconds between two plain progress lines


@contextlib.contextmanager
def progress_bar(description: str, total: float, *, enabled: bool = True,
                 unit: str = "") -> Iterator[Callable[[float], None]]:
    """Yield `advance(amount)`: `total` amounts of work (in `unit`, e.g. "windows") described as
    `description`."""
    if not enabled:
        yield lambda amount=1: None
        return
    if not sys.stderr.isatty():
        yield from _plain_lines(description, total, unit, sys.stderr)
        return
    from rich.console import Console

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount=1: bar.advance(task, amount)


def _plain_lines(description: str, total: float, unit: str, out: TextIO,
                 interval: float | None = None) -> Iterator[Callable[[float], None]]:
    interval = PLAIN_INTERVAL_S if interval is None else interval
    start = time.monotonic()
    state = {"done": 0.0, "printed_at": start}

    def line(now: float) -> None:
        done, elapsed = state["done"], now - start
        share = done / total if total else 1.0
        eta = f"ETA {_clock(elapsed * (1 - share) / share)}" if 0 < share < 1 else ("done" if share >= 1 else "ETA ?")
        out.write(f"{description}: {done:,.0f}/{total:,.0f}{' ' + unit if unit else ''} ({share:.0%}), "
                  f"{_clock(elapsed)} elapsed, {eta}\n")
        out.flush()
        state["printed_at"] = now

    def advance(amount: float = 1) -> None:
        state["done"] += amount
        now = time.monotonic()
        if now - state["printed_at"] >= interval and state["done"] < total:
            line(now)

    line(start)
    yield advance
    line(time.monotonic())


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
