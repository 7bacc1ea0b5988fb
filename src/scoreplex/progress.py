"""Progress bars for long work (training epochs, streamed scoring): a rich bar on stderr, or one that draws nothing.

rich is imported only when a bar is shown.
"""

from __future__ import annotations

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
