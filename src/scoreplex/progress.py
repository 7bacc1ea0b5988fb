"""Progress for long work (training epochs, streamed scoring): a rich bar on a terminal, plain lines elsewhere.

A rich bar draws nothing when stderr is not a terminal (under ``nohup``, in CI, piped to a file), so long work there
also reports through :func:`progress_log`: one flushed line per step on stderr. rich is imported only when asked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class NullProgress:
    """Stands in for :class:`rich.progress.Progress` when bars are off: the same calls, nothing drawn."""

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


def progress_bar(enabled: bool, *, rate: bool = False, transient: bool = False) -> Any:
    """A rich ``Progress`` on stderr (description, bar, done/total, ETA, elapsed), or a :class:`NullProgress`.

    ``rate=True`` adds a column showing the task's ``rate`` field (give ``rate=""`` to ``add_task`` and a text such
    as ``"1,234 rows/s"`` to ``update``); ``transient=True`` clears the bar when it finishes.
    """
    if not enabled:
        return NullProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if rate:
        columns.append(TextColumn("{task.fields[rate]}"))
    columns += [TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn()]
    return Progress(*columns, console=Console(stderr=True), transient=transient)


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal rich draws live bars on (False under ``nohup``, in CI, in a pipe or a file)."""
    from rich.console import Console

    return Console(stderr=True).is_terminal


def progress_log(enabled: bool) -> Callable[[str], None] | None:
    """The plain-line channel of long work where no bar can be drawn.

    Returns a function writing one line to stderr (flushed at once, so ``nohup`` logs and CI consoles show it as it
    happens) when ``enabled`` and stderr is not a terminal; ``None`` when progress is off or a bar shows it.
    """
    if not enabled or stderr_is_terminal():
        return None

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    return log
