"""Progress bars (rich) on stderr, silent when stderr is not a terminal or when disabled."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

_console = Console(stderr=True)


def enabled() -> bool:
    """Bars show on an interactive stderr unless ``QUANTWISE_PROGRESS=0``."""
    flag = os.environ.get("QUANTWISE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=_console,
        transient=True,
        disable=not enabled(),
    )


def progress_iter(items: Iterable[T], label: str) -> Iterator[T]:
    """Iterate with a progress bar labelled ``label``."""
    total = len(items) if isinstance(items, Sized) else None
    with make_progress() as p:
        task = p.add_task(label, total=total)
        for item in items:
            yield item
            p.advance(task)


def status(message: str) -> None:
    """One line of status on stderr (only when progress is enabled)."""
    if enabled():
        _console.print(f"[dim]{message}[/dim]")
