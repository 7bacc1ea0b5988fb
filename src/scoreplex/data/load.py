"""Read a response file into per-task data, with task specs from the caller, a tasks JSON file, or the scores."""

from __future__ import annotations

import os
from collections.abc import Mapping

from scoreplex.data.dataset import TaskData
from scoreplex.data.readers import ColumnMap, read_responses
from scoreplex.errors import DataError
from scoreplex.tasks import TaskSpec, load_task_specs


def read_dataset(
    path: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    tasks_file: str | os.PathLike[str] | None = None,
    specs: Mapping[str, TaskSpec] | None = None,
    encoding: str = "utf-8",
    fmt: str | None = None,
    require_labels: bool = True,
    delimiter: str | None = None,
    off_scale: str = "error",
) -> dict[str, TaskData]:
    """Read a response file; task specs come from ``specs``, a tasks JSON file, or are inferred from the scores.
    ``delimiter``: the CSV/TSV field delimiter (None: detected from a CSV's header line, tab for TSV); ``off_scale``:
    ``"skip"`` leaves out rows whose score is off the task's scale (see :func:`read_responses`)."""
    if specs is None and tasks_file is not None:
        specs = {s.id: s for s in load_task_specs(str(tasks_file))}
    return read_responses(
        path,
        columns or ColumnMap(),
        specs,
        fmt=fmt,
        encoding=encoding,
        require_labels=require_labels,
        delimiter=delimiter,
        off_scale=off_scale,
    )


def check_nonempty(data: Mapping[str, TaskData], path: str | os.PathLike[str]) -> None:
    if not data:
        raise DataError("the file holds no responses.", file=str(path), fix="check the file and its column names.")
