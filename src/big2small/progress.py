"""Progress bars with an ETA for long work (rich), or nothing when disabled."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: float, *, enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """Yield `advance(amount)`. The bar goes to stderr so that --json output on stdout stays clean."""
    if not enabled:
        yield lambda amount=1: None
        return
    from rich.console import Console

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda amount=1: bar.advance(task, amount)
