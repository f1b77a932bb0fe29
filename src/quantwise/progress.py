"""Progress bars (rich) on stderr, silent when stderr is not a terminal or when disabled."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
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


_active: list[Progress] = []


@contextmanager
def live_progress() -> Iterator[Progress]:
    """A progress display that nested :func:`progress_iter` calls add their bars to."""
    with make_progress() as p:
        _active.append(p)
        try:
            yield p
        finally:
            _active.pop()


def progress_iter(items: Iterable[T], label: str) -> Iterator[T]:
    """Iterate with a progress bar labelled ``label`` (inside the active display, if any)."""
    total = len(items) if isinstance(items, Sized) else None
    if _active:
        p = _active[-1]
        task = p.add_task(label, total=total)
        try:
            for item in items:
                yield item
                p.advance(task)
        finally:
            p.remove_task(task)
        return
    with live_progress() as p:
        task = p.add_task(label, total=total)
        for item in items:
            yield item
            p.advance(task)


def status(message: str) -> None:
    """One line of status on stderr (only when progress is enabled)."""
    if enabled():
        _console.print(f"[dim]{message}[/dim]")


def warn(message: str) -> None:
    """One line on stderr, always (something the user must know, not progress)."""
    _console.print(f"[yellow]warning: {message}[/yellow]", soft_wrap=True)
