"""Read and write tables of scored responses: CSV, TSV, JSON Lines and Parquet.

:func:`read_table` turns a file into string records with the row number a person would look up for each;
:func:`read_responses` maps columns onto tasks (:class:`ColumnMap`) and returns one :class:`TaskData` per task,
joined by response id; :func:`write_table` writes records atomically.

Row numbers in every message are what a person sees when they open the file:

* CSV / TSV: 1-based line numbers in the file, the header is line 1, so the first record is row 2 (a record whose
  quoted text spans several lines is numbered by the line it starts on; blank lines are skipped but counted);
* JSON Lines: 1-based line numbers (blank lines are skipped but counted);
* Parquet: a file has no lines, so the row number is the 0-based record index + 1 (the first record is row 1).

Spreadsheet exports read as they are (see :func:`iter_table` for the details):

* the delimiter of a ``.csv`` file is detected from its header line (``,`` ``;`` tab or ``|``; Excel writes ``;``
  where the decimal separator is a comma), or given with ``delimiter=``;
* a byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32) sets the encoding, so Excel's "Unicode text" reads as it is;
* header names are matched without surrounding whitespace or zero-width characters, and Excel's trailing empty
  columns (no name, no data) are dropped; error messages show names with invisible characters escaped;
* a cell may hold up to :data:`MAX_CELL_CHARS` characters.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from scoreplex.content import EMPTY_TEXT, EMPTY_TEXT_FIX, text_problem
from scoreplex.data.dataset import MISSING, TaskData
from scoreplex.errors import ConfigError, DataError, OffScaleError, ScoreplexError
from scoreplex.tasks import MAX_SCALE_POINTS, Dimension, TaskSpec, as_number, check_id

MAX_CLASSES = MAX_SCALE_POINTS
"""Classes a rubric dimension may have (scores 0..99), as :class:`scoreplex.tasks.Dimension` allows."""
OFF_SCALE = ("error", "skip")
"""What :func:`read_responses` does with a score off its dimension's scale: raise, or skip the row."""
FORMATS = ("csv", "tsv", "jsonl", "parquet")
"""Formats :func:`read_table` and :func:`write_table` understand."""

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""File extension -> format, used when ``fmt`` is not given."""

QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
"""``quoting=`` values for CSV/TSV: ``minimal`` honours ``"quoted"`` fields, ``none`` reads quotes as text."""

MAX_CELL_CHARS = 16 * 1024 * 1024
"""The longest CSV/TSV cell read, in characters (16 Mi: 16 MiB of ASCII text). Python's :mod:`csv` stops at 128 Ki
by default; reading a CSV/TSV file sets :func:`csv.field_size_limit` (process-wide) to this value. A longer cell is a
:class:`DataError` naming its row, most often an unclosed quote that swallowed the lines after it."""

SNIFFED_DELIMITERS = (",", ";", "\t", "|")
"""Delimiters :func:`iter_table` chooses among for a ``.csv`` file, in order of preference when counts tie."""

_DELIMITERS = {"csv": ",", "tsv": "\t"}
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")  # "3", "+3", "3.0", "2.25": read exactly as a Fraction
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that did not decode, kept by errors="surrogateescape"
# ... and, read as latin-1, C1 control characters: Windows-1252 punctuation (curly quotes, dashes) read wrongly
_SURROGATE_OR_C1 = re.compile("[\udc80-\udcff\x80-\x9f]")
_EDGES = re.compile("^[\\s\u00ad\u200b-\u200f\u2060\ufeff]+|[\\s\u00ad\u200b-\u200f\u2060\ufeff]+$")  # around names
_INVISIBLE = re.compile("[\\s\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_QUOTED = re.compile(r'"[^"]*"')  # a quoted header name, whose delimiters do not count when sniffing
_SNIFF_LINES, _SNIFF_CHARS = 64, 65536  # lines and characters per line read to find the header line
# byte-order marks, UTF-32 first: its little-endian mark starts with UTF-16's
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_WHOLE_FILE = sys.maxsize  # chunk_rows with which read_table reads a file as one chunk
_PARQUET_BATCH_ROWS = 65536  # Parquet records decoded at a time (chunks are re-cut to chunk_rows)


@dataclass(frozen=True)
class ColumnMap:
    """Which columns of a response table hold what.

    Defaults fit a file with columns ``id``, ``task``, ``text`` and one score column per rubric dimension, named
    like the dimension (a single-dimension task may call it ``score`` or ``label`` instead).
    """

    text: str = "text"
    """Column holding the response text."""
    task: str | None = "task"
    """Column holding the task id of each row; ``None`` for a single-task file (then give ``task_id``)."""
    task_id: str | None = None
    """Fixed task id of every row of a single-task file. Setting it with ``task`` left at its default means the
    file has no task column (``task`` becomes ``None``); naming both a task column and a task id is an error."""
    labels: Mapping[str, str] | None = None
    """Rubric dimension name -> score column. Dimensions not named here are read from a column named like the
    dimension, or for a single-dimension task from ``score`` or ``label``."""
    id: str | None = "id"
    """Column holding unique response ids. When the default ``id`` column is absent (or this is ``None``), ids are
    generated as ``f"{file_stem}:{row}"``; a column named explicitly here must exist."""
    second: Mapping[str, str] | None = None
    """Rubric dimension name -> second-rater score column (an empty cell means no second score)."""

    def __post_init__(self) -> None:
        for name in ("text", "task", "id"):
            value = getattr(self, name)
            if value is None and name != "text":
                continue
            if not isinstance(value, str) or not value:
                raise ConfigError(f"ColumnMap.{name} is {value!r}; expected a non-empty column name.")
        if self.task_id is not None:
            check_id(self.task_id, "ColumnMap.task_id")
            if self.task == "task":  # the default: the user means a single-task file
                object.__setattr__(self, "task", None)
            elif self.task is not None:
                raise ConfigError(
                    f"ColumnMap names both a task column ({self.task!r}) and a fixed task_id ({self.task_id!r}); "
                    "give task=None for a single-task file or drop task_id for a multi-task file."
                )
        elif self.task is None:
            raise ConfigError(
                "ColumnMap has task=None but no task_id: name the task column (task='...') or give the fixed "
                "task id of a single-task file (task_id='...')."
            )
        for name in ("labels", "second"):
            mapping = getattr(self, name)
            if mapping is None:
                continue
            if not isinstance(mapping, Mapping) or not mapping:
                raise ConfigError(
                    f"ColumnMap.{name} is {mapping!r}; expected a non-empty mapping of dimension name -> column, "
                    f"e.g. {{'score': 'Score1'}}, or None."
                )
            for dim, col in mapping.items():
                if not isinstance(dim, str) or not dim or not isinstance(col, str) or not col:
                    raise ConfigError(
                        f"ColumnMap.{name} maps {dim!r} -> {col!r}; dimension names and columns must be non-empty "
                        "strings."
                    )
            cols = list(mapping.values())
            dupes = sorted({c for c in cols if cols.count(c) > 1})
            if dupes:
                raise ConfigError(f"ColumnMap.{name} reads columns {dupes} for more than one dimension.")
            object.__setattr__(self, name, dict(mapping))
        if self.labels is not None and self.second is not None:
            shared = sorted(set(self.labels.values()) & set(self.second.values()))
            if shared:
                raise ConfigError(
                    f"ColumnMap uses columns {shared} for both first and second rater scores; give the second rater's "
                    "scores their own column (--second DIM=COLUMN), or leave --second out."
                )


class Table(list[dict[str, str]]):
    """The records of a file (a ``list[dict[str, str]]``), with the row number of each and the file's columns.

    ``rows[i]`` is the row number of ``self[i]`` (see the module docstring); ``header_row`` is the header's row
    (the first non-blank line for CSV/TSV, usually 1; ``None`` for formats without a header line); ``delimiter`` is
    the CSV/TSV delimiter read with (``None`` for other formats).
    """

    def __init__(
        self,
        records: Sequence[dict[str, str]],
        rows: Sequence[int],
        columns: Sequence[str],
        file: str,
        fmt: str,
        header_row: int | None,
        delimiter: str | None = None,
    ) -> None:
        super().__init__(records)
        self.rows = list(rows)
        self.columns = list(columns)
        self.file = file
        self.fmt = fmt
        self.header_row = header_row
        self.delimiter = delimiter


def resolve_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The table format of ``path``: ``fmt`` if given, else from the file extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"fmt={fmt!r} is not a supported table format; choose one of: {', '.join(FORMATS)}.")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    raise DataError(
        f"cannot tell the table format from the extension {suffix or '(none)'!r}.",
        file=str(path),
        fix=f"rename the file with one of the extensions {', '.join(EXTENSIONS)} (in Python, or pass fmt=).",
    )


def read_table(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
    delimiter: str | None = None,
) -> Table:
    """Read a CSV, TSV, JSON Lines or Parquet file into string records.

    Returns a :class:`Table`: a list of ``{column: cell}`` dicts whose ``rows`` attribute gives each record's row
    number (module docstring). Every cell is a string: JSON/Parquet ``null`` and NaN become ``""``, booleans ``"1"``
    / ``"0"``, integral floats ``"3"``, nested values their JSON text; a JSON line lacking a key gets ``""``.
    A byte-order mark sets the encoding (UTF-8, UTF-16 or UTF-32, whatever ``encoding`` says). ``quoting="none"``
    reads quote characters as ordinary text (needed for files whose texts hold stray quotes, such as ASAP-SAS).
    ``delimiter`` is the CSV/TSV field delimiter; ``None``: detected from the header line of a CSV file, a tab for
    TSV (see :func:`iter_table`). Raises :class:`DataError` for unreadable input; an undecodable byte is reported
    before any other error in the data.

    The file is parsed by the readers of :func:`iter_table`, as one chunk (so a JSON Lines table's columns are the
    keys of all its records).
    """
    file, fmt, enc = _source(path, fmt, encoding, quoting, _WHOLE_FILE, delimiter)
    try:
        (table,) = _chunks(path, file, fmt, enc, quoting, _WHOLE_FILE, delimiter)
    except _DecodeError:  # the file's first undecodable byte, made by _first_undecodable: nothing comes before it
        raise
    except DataError:
        if fmt == "parquet":  # no text to decode
            raise
        # the reader raised the first error in file order (parsing failed before reaching any undecodable byte);
        # an undecodable byte comes first here, reported as iter_table reports it (its column is unknown)
        bad = _first_undecodable(path, file, enc)
        if bad is not None:
            raise bad from None
        raise
    return table


def _cell(value: Any) -> str:
    """A JSON / Parquet value as the string a person would type in a CSV cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def read_responses(
    path: str | os.PathLike[str],
    columns: ColumnMap | None = None,
    tasks: Mapping[str, TaskSpec] | None = None,
    *,
    fmt: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
    delimiter: str | None = None,
    require_labels: bool = True,
    infer_max_score: bool = True,
    off_scale: str = "error",
) -> dict[str, TaskData]:
    """Read a table of responses and group its rows into one :class:`TaskData` per task.

    ``tasks`` maps each task id *as written in the file* to its spec; the result is keyed by ``spec.id`` (so a
    loader may map ASAP's ``"1"`` to a spec with id ``"asap-1"``). Scores are read through each dimension's scale
    (:meth:`scoreplex.tasks.Dimension.locate`): the declared classes ``0..num_classes-1``, or the values of a
    declared ``scale`` (``"2.5"``, ``"B"``), stored as class indices. A numeric value between two scale points is
    mapped by the dimension's ``between`` rule; ``TaskData.between_mapped`` counts such cells per dimension (both
    raters). Without ``tasks``, one ordinal spec per task is inferred (needs ``infer_max_score``): its dimensions are
    the keys of ``columns.labels`` (or one ``score``), each inferred from ALL rows of the file, every task and both
    raters (never per task): whole numbers give classes ``0..max`` (at least 2), fractional ones a numeric scale
    from 0 on the finest grid holding every value (quarter points: ``0, 0.25, ...``).

    ``off_scale``: ``"error"`` (default) raises for a score off its dimension's scale (outside it, or between
    points under ``between="error"``); ``"skip"`` drops that row from its task instead and records it in
    ``TaskData.skipped`` (row number -> reason), for evaluating held-out data with scores a suite cannot predict.
    A cell that is not a number on a numeric scale raises either way.

    With ``require_labels=False`` an empty score cell becomes :data:`MISSING`, and a task whose score columns are
    all absent from the file gets ``labels=None``. Second-rater cells may always be empty (``MISSING``). Texts are
    kept exactly as read; rows keep file order within a task. ``fmt``, ``encoding``, ``quoting`` and ``delimiter`` are
    passed to :func:`read_table`. Raises :class:`DataError` naming file, row, column and
    task for a missing column, an empty text, a non-integer or out-of-range score, a missing score, a duplicate
    response id or an unknown task id.
    """
    columns = ColumnMap() if columns is None else columns
    if not isinstance(columns, ColumnMap):
        raise ConfigError(f"columns must be a ColumnMap, got {type(columns).__name__}.")
    if tasks is None and not infer_max_score:
        raise ConfigError("no task specs given and infer_max_score=False: pass tasks= (task id -> TaskSpec).")
    if off_scale not in OFF_SCALE:
        raise ConfigError(f"off_scale={off_scale!r}; expected one of {', '.join(OFF_SCALE)}.")
    table = read_table(path, fmt=fmt, encoding=encoding, quoting=quoting, delimiter=delimiter)
    return _Reader(table, columns, tasks, require_labels, skip_off_scale=off_scale == "skip").read()


def reading_notes(datasets: Mapping[str, TaskData], *, most_rows: int = 5) -> list[str]:
    """One line per task and fact a person should know about how its scores were read: scores between scale points
    mapped by the rule (:attr:`TaskData.between_mapped`), rows skipped for a score off the scale
    (:attr:`TaskData.skipped`, the first ``most_rows`` row numbers and the first reason), and an inferred scale."""
    lines = []
    for task_id, data in datasets.items():
        for name, count in data.between_mapped.items():
            dim = next(d for d in data.spec.dimensions if d.name == name)
            lines.append(
                f"task {task_id}: {count} {name!r} score(s) between the points of the scale "
                f"{dim.describe_scale()} mapped to the {dim.between} point (halfway: up)"
            )
        if data.skipped:
            rows = list(data.skipped)
            shown = ", ".join(map(str, rows[:most_rows])) + (", ..." if len(rows) > most_rows else "")
            lines.append(
                f"task {task_id}: skipped {len(rows)} row(s) whose score is off the task's scale (rows {shown}; "
                f"first: {data.skipped[rows[0]]})"
            )
    return lines


def _shown(name: str) -> str:
    """A column name for a message: as it is, or quoted with invisible characters escaped (``'score\\u200b'``)."""
    return name if name and name.isprintable() and name == name.strip() else repr(name)


def _missing_column(table: Table, column: str, fix: str, task: str | None = None) -> DataError:
    """The error for a column ``table`` lacks, listing the columns it has (names escaped, see :func:`_shown`).

    It points out a column that differs from ``column`` only in case or invisible characters, and a header that was
    read as one column holding another delimiter.
    """
    have = ", ".join(_shown(c) for c in table.columns) or "(none)"
    wanted = _INVISIBLE.sub("", column).casefold()
    alike = [c for c in table.columns if _INVISIBLE.sub("", c).casefold() == wanted]
    if alike:
        fix = f"column {_shown(alike[0])} differs only in case or invisible characters: rename it, or {fix}"
    if table.delimiter is not None and len(table.columns) == 1:
        others = [d for d in SNIFFED_DELIMITERS if d != table.delimiter and d in table.columns[0]]
        if others:
            fix += (
                f" The header was read as one column with the delimiter {table.delimiter!r}; if the file uses "
                f"{others[0]!r}, pass delimiter={others[0]!r}."
            )
    return DataError(
        f"column {column!r} not found; the file has columns: {have}.",
        file=table.file,
        row=table.header_row,
        column=column,
        task=task,
        fix=fix,
    )


class RowCheck:
    """The per-row checks of :func:`read_responses`, shared with :func:`scoreplex.streaming.stream_scores`.

    Made from a table (for a stream, its first chunk), it checks that the text, task and id columns of ``cmap``
    exist. Called on each ``(record, row)`` in file order, it checks the row: the task id is non-empty and, when
    ``known`` is given, one of ``known``; the response id is non-empty and unique over the rows checked so far (ids
    are ``f"{file stem}:{row}"`` when the file has no id column); the text is not blank. It returns ``(task id,
    response id, text)`` and keeps the task ids seen in :attr:`tasks`. Errors are :class:`DataError` naming the row;
    ``unknown_fix`` is the fix an unknown task id suggests, and ``most`` caps how many known ids it lists.
    """

    def __init__(
        self,
        table: Table,
        cmap: ColumnMap,
        known: Collection[str] | None = None,
        *,
        unknown_fix: str = "correct the task id, or add a spec for it to tasks=.",
        most: int | None = None,
    ) -> None:
        self.cmap, self.known, self.unknown_fix, self.most = cmap, known, unknown_fix, most
        self.file = table.file
        present = set(table.columns)
        if cmap.text not in present:
            raise _missing_column(table, cmap.text, "name the text column with ColumnMap(text=...) (CLI: --text-col).")
        if cmap.task is not None and cmap.task not in present:
            raise _missing_column(
                table,
                cmap.task,
                "name the task column with ColumnMap(task=...), or for a single-task file give "
                "ColumnMap(task=None, task_id='...') (CLI: --task-col, or --task-id).",
            )
        self.id_col = cmap.id if cmap.id is not None and cmap.id in present else None
        if cmap.id is not None and self.id_col is None and cmap.id != "id":
            raise _missing_column(
                table,
                cmap.id,
                "name the id column with ColumnMap(id=...) (CLI: --id-col), or id=None to generate ids.",
            )
        self.stem = Path(self.file).stem
        self.seen: dict[str, int] = {}  # id -> row; generated ids are unique by construction and not kept
        self.tasks: set[str] = set()

    def __call__(self, record: dict[str, str], row: int) -> tuple[str, str, str]:
        """``(task id, response id, text)`` of a valid row; raises DataError naming the row otherwise."""
        task = self.task(record, row)
        if self.id_col is None:
            rid = f"{self.stem}:{row}"
        else:
            rid = self.filled(
                record,
                row,
                self.id_col,
                task,
                "the response id is empty.",
                "give every row a unique id, or pass ColumnMap(id=None) to generate ids.",
            )
            if rid in self.seen:
                raise self.error(
                    f"response id {rid!r} appears twice: at rows {self.seen[rid]} and {row}.",
                    row,
                    self.id_col,
                    task,
                    "give every response a unique id (ids join scores, predictions and splits).",
                )
            self.seen[rid] = row
        text = self.filled(record, row, self.cmap.text, task, EMPTY_TEXT, EMPTY_TEXT_FIX)
        problem = text_problem(text)  # only zero-width / control characters, a lone surrogate: every scorer's rule
        if problem is not None:
            raise self.error(problem[0], row, self.cmap.text, task, problem[1])
        self.tasks.add(task)
        return task, rid, text

    def task(self, record: dict[str, str], row: int) -> str:
        """The row's task id: the task column's cell (stripped), or the map's fixed ``task_id``."""
        cmap = self.cmap
        if cmap.task is None:
            task = cmap.task_id or ""
        else:
            task = self.filled(
                record, row, cmap.task, None, "the task id is empty.", "fill in the task id of every row."
            )
            task = task.strip()
        if self.known is not None and task not in self.known:
            known = sorted(self.known)
            listed = ", ".join(known[: self.most])
            if self.most is not None and len(known) > self.most:
                listed += f", ... ({len(known)} in all)"
            raise self.error(
                f"unknown task id {task!r}; known task ids: {listed}.", row, cmap.task, task, self.unknown_fix
            )
        return task

    def filled(self, record: dict[str, str], row: int, column: str, task: str | None, message: str, fix: str) -> str:
        """The cell of ``column``; raises DataError(``message``) when it is empty or only whitespace."""
        value = record.get(column, "")
        if not value.strip():
            raise self.error(message, row, column, task, fix)
        return value

    def error(self, message: str, row: int, column: str | None, task: str | None, fix: str) -> DataError:
        """A DataError at ``row`` of this file."""
        return DataError(message, file=self.file, row=row, column=column, task=task, fix=fix)


class _Reader:
    """The steps of :func:`read_responses` over one table."""

    def __init__(
        self,
        table: Table,
        columns: ColumnMap,
        tasks: Mapping[str, TaskSpec] | None,
        require_labels: bool,
        *,
        skip_off_scale: bool = False,
    ) -> None:
        self.table, self.cmap, self.tasks, self.require = table, columns, tasks, require_labels
        self.skip_off_scale = skip_off_scale
        self.inferred: list[Dimension | None] = []  # file-wide dimensions when no specs are given
        self.file = table.file
        self.present = set(table.columns)
        if tasks is not None:
            self._check_specs(tasks)

    def _check_specs(self, tasks: Mapping[str, TaskSpec]) -> None:
        ids: dict[str, str] = {}
        for key, spec in tasks.items():
            if not isinstance(spec, TaskSpec):
                raise ConfigError(f"tasks[{key!r}] is a {type(spec).__name__}; expected a TaskSpec.")
            if spec.id in ids:
                raise ConfigError(f"tasks {ids[spec.id]!r} and {key!r} both map to a spec with id {spec.id!r}.")
            ids[spec.id] = key
        known = {d for spec in tasks.values() for d in spec.dimension_names}
        for option in ("labels", "second"):
            mapping = getattr(self.cmap, option) or {}
            unknown = sorted(set(mapping) - known)
            if unknown:
                raise ConfigError(
                    f"ColumnMap.{option} names dimensions {unknown}, but the task specs have dimensions "
                    f"{sorted(known)}; use the dimension names as keys."
                )

    # -- columns -----------------------------------------------------------------------------------------------

    def label_column(self, dim: str, single: bool) -> str | None:
        """The column holding dimension ``dim`` (``None`` if the file has none); raises if an explicit one is absent."""
        mapped = (self.cmap.labels or {}).get(dim)
        if mapped is not None:
            if mapped not in self.present:
                raise _missing_column(
                    self.table,
                    mapped,
                    f"name the right column with ColumnMap(labels={{{dim!r}: ...}}) (CLI: --label {dim}=COLUMN).",
                )
            return mapped
        candidates = [dim] + (["score", "label"] if single else [])
        return next((c for c in candidates if c in self.present), None)

    # -- rows ----------------------------------------------------------------------------------------------------

    def read(self) -> dict[str, TaskData]:
        table = self.table
        check = RowCheck(table, self.cmap, self.tasks)
        if not table:
            raise DataError("the file has no responses (no rows after the header).", file=self.file, fix="add rows.")
        groups: dict[str, list[int]] = {}
        ids: list[str] = []
        keys: list[str] = []
        for i, (record, row) in enumerate(zip(table, table.rows, strict=True)):
            key, rid, _ = check(record, row)
            ids.append(rid)
            keys.append(key)
            groups.setdefault(key, []).append(i)
        if self.tasks is None:
            self.inferred = self.infer_dimensions(keys)

        out: dict[str, TaskData] = {}
        for key, index in groups.items():
            data = self.task_data(key, index, ids)
            out[data.spec.id] = data
        return out

    def task_data(self, key: str, index: list[int], ids: list[str]) -> TaskData:
        table, cmap = self.table, self.cmap
        spec = self.tasks[key] if self.tasks is not None else self.inferred_spec(key, index)
        dims = spec.dimension_names
        single = len(dims) == 1

        label_cols = [self.label_column(d, single) for d in dims]
        absent = [d for d, c in zip(dims, label_cols, strict=True) if c is None]
        labels: np.ndarray | None = None
        if absent and (self.require or len(absent) < len(dims)):
            dim = absent[0]
            alt = " (or 'label')" if single and dim == "score" else " (or 'score' / 'label')" if single else ""
            raise _missing_column(
                self.table,
                dim,
                f"name the score column with --label {dim}=COLUMN (Python: ColumnMap(labels={{{dim!r}: 'COLUMN'}})), "
                f"or add a column named {dim!r}{alt}"
                + ("" if not self.require else "; unscored data is for `scoreplex score`")
                + ".",
                task=spec.id,
            )
        skipped: dict[int, str] = {}  # position in index -> reason (off_scale="skip")
        mapped = dict.fromkeys(dims, 0)  # cells between scale points mapped by the dimension's rule
        if not absent:
            labels = self.scores(index, label_cols, spec, required=self.require, skipped=skipped, mapped=mapped)

        second: np.ndarray | None = None
        if cmap.second:
            second_cols: list[str | None] = []
            for d in dims:
                col = cmap.second.get(d)
                if col is not None and col not in self.present:
                    raise _missing_column(
                        self.table,
                        col,
                        f"name the second-rater column with ColumnMap(second={{{d!r}: ...}}) "
                        f"(CLI: --second {d}=COLUMN).",
                        task=spec.id,
                    )
                second_cols.append(col)
            if any(c is not None for c in second_cols):
                second = self.scores(index, second_cols, spec, required=False, skipped=skipped, mapped=mapped)

        if self.tasks is None:
            self.check_scored(key, labels, second, index)
        keep = [n for n in range(len(index)) if n not in skipped]
        return TaskData(
            spec=spec,
            ids=[ids[index[n]] for n in keep],
            texts=[table[index[n]][cmap.text] for n in keep],
            labels=None if labels is None else labels[keep],
            second=None if second is None else second[keep],
            source=self.file,
            between_mapped={d: c for d, c in mapped.items() if c},
            skipped={table.rows[index[n]]: reason for n, reason in sorted(skipped.items())},
        )

    def scores(
        self,
        index: list[int],
        cols: list[str | None],
        spec: TaskSpec,
        *,
        required: bool,
        skipped: dict[int, str],
        mapped: dict[str, int],
    ) -> np.ndarray:
        """Parse score cells into ``(N, D)`` int64 classes through each dimension's scale
        (:meth:`~scoreplex.tasks.Dimension.locate`); ``MISSING`` for an empty cell or an unread dimension.

        A value between scale points mapped by the dimension's rule adds one to ``mapped[dimension]``. A value off
        the scale raises DataError, or with ``off_scale="skip"`` records the row's position in ``skipped`` (a value
        that is not a number on a numeric scale always raises: it is a typo, not a score off the scale).
        """
        table = self.table
        out = np.full((len(index), len(cols)), MISSING, dtype=np.int64)  # (N, D)
        for j, (col, dim) in enumerate(zip(cols, spec.dimensions, strict=True)):
            if col is None:
                continue
            for n, i in enumerate(index):
                cell, row = table[i][col], table.rows[i]
                where = {"file": self.file, "row": row, "column": col, "task": spec.id}
                value = cell.strip()
                if not value:
                    if required:
                        raise DataError(
                            "the score is missing (empty cell).",
                            **where,
                            fix="fill in the score, drop the row, or pass require_labels=False (it becomes MISSING).",
                        )
                    continue
                try:
                    point = dim.locate(value)
                except OffScaleError as exc:
                    if self.skip_off_scale and (not dim.numeric or as_number(value) is not None):
                        skipped.setdefault(n, f"column {col!r}: {exc.reason}")
                        continue
                    raise DataError(exc.reason, **where, fix=exc.fix) from None
                if not point.exact:
                    mapped[dim.name] += 1
                out[n, j] = point.cls
        return out

    def infer_dimensions(self, keys: list[str]) -> list[Dimension | None]:
        """One ordinal dimension per score column, from ALL rows of the file (every task, both raters) — never per
        task — so that every task read from one file gets the same range.

        Whole numbers give classes ``0..max`` (at least 2); any fractional value gives a numeric scale from 0 to the
        largest value on the finest grid that holds every value (quarter points: 0, 0.25, ...). ``None`` for a
        dimension whose columns hold no score. ``keys[i]`` is the task of table row ``i`` (for messages).
        """
        dims = list(self.cmap.labels or {"score": ""})
        single = len(dims) == 1
        out: list[Dimension | None] = []
        for d in dims:
            cols = [self.label_column(d, single), (self.cmap.second or {}).get(d)]
            cells = [
                (record[c].strip(), i, c)
                for c in cols
                if c is not None and c in self.present
                for i, record in enumerate(self.table)
                if record[c].strip()
            ]
            out.append(self.infer_dimension(d, cells, keys) if cells else None)
        return out

    def infer_dimension(self, name: str, cells: list[tuple[str, int, str]], keys: list[str]) -> Dimension:
        """The dimension ``name`` whose score cells ``(value, table row index, column)`` are ``cells``."""
        values: list[Fraction] = []
        for text, i, col in cells:
            where = {"file": self.file, "row": self.table.rows[i], "column": col, "task": keys[i]}
            x = as_number(text)
            if x is None:
                raise DataError(
                    f"score {text!r} is not an integer or a number on a scale.",
                    **where,
                    fix="write scores as numbers (0..K, or points of a scale such as 0, 0.5, ..., 5); for letter "
                    'grades declare the scale in a tasks file (--tasks), e.g. "scale": ["A", "B", "C"].',
                )
            if x < 0:
                raise DataError(
                    f"score {text} is negative; inferred scores start at 0.",
                    **where,
                    fix="shift the scale so that the lowest score is 0, or declare the scale in a tasks file.",
                )
            if x >= MAX_CLASSES:
                raise DataError(
                    f"score {text} is beyond the largest class a rubric dimension may have ({MAX_CLASSES - 1}).",
                    **where,
                    fix="correct the score, or declare the dimension's scale in a tasks file (--tasks).",
                )
            values.append(Fraction(text) if _DECIMAL.match(text) else Fraction(x))
        top = max(values)
        if all(v.denominator == 1 for v in values):
            return Dimension(name, "ordinal", max(int(top), 1) + 1)
        step = values[0]
        for v in values[1:]:
            step = _fraction_gcd(step, v)
        points = int(top / step) + 1
        if points > MAX_SCALE_POINTS:
            text, i, col = max(zip(cells, values, strict=True), key=lambda cv: cv[1].denominator)[0]  # the finest
            raise DataError(
                f"the scores of {name!r} need {points} points on a grid of step {float(step):g} from 0 to "
                f"{float(top):g} (e.g. {text!r}); a scale has at most {MAX_SCALE_POINTS}.",
                file=self.file,
                row=self.table.rows[i],
                column=col,
                task=keys[i],
                fix="declare the scale in a tasks file (--tasks) with between='nearest', e.g. \"scale\": "
                '["0", "0.5", ..., "5"], so that averaged scores map to the nearest point.',
            )
        return Dimension(name, "ordinal", scale=tuple(_decimal(k * step) for k in range(points)))

    def inferred_spec(self, key: str, index: list[int]) -> TaskSpec:
        """The inferred spec of task ``key``: the file-wide dimensions (:meth:`infer_dimensions`) under its id."""
        row = self.table.rows[index[0]]
        dims = self.inferred
        if any(d is None for d in dims):  # no score anywhere: the missing column (or no scores) is reported below
            names = list(self.cmap.labels or {"score": ""})
            dims = [d or Dimension(n, "ordinal", 2) for d, n in zip(dims, names, strict=True)]
        try:
            return TaskSpec(id=key, dimensions=tuple(dims))
        except ScoreplexError as exc:
            raise DataError(
                f"cannot build a task spec for task {key!r}: {exc}",
                file=self.file,
                row=row,
                column=self.cmap.task,
                task=key,
                fix="use task ids of letters, digits, '.', '_' or '-' (or map ids with tasks=).",
            ) from exc

    def check_scored(self, key: str, labels: np.ndarray | None, second: np.ndarray | None, index: list[int]) -> None:
        """Raise when an inferred task has no score at all (nothing tells its range)."""
        stacked = [a for a in (labels, second) if a is not None]
        if not stacked or all((a == MISSING).all() for a in stacked):
            raise DataError(
                "cannot infer the score range: the task has no scores.",
                file=self.file,
                row=self.table.rows[index[0]],
                task=key,
                fix="pass tasks= with a TaskSpec for this task.",
            )


def _fraction_gcd(a: Fraction, b: Fraction) -> Fraction:
    """The largest step of which both ``a`` and ``b`` are whole multiples."""
    return Fraction(math.gcd(a.numerator * b.denominator, b.numerator * a.denominator), a.denominator * b.denominator)


def _decimal(x: Fraction) -> str:
    """A scale point as written: ``"2"``, ``"2.5"``, ``"0.25"``."""
    return str(x.numerator) if x.denominator == 1 else repr(float(x))


def write_table(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    fmt: str | None = None,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write records to a CSV, TSV, JSON Lines or Parquet file atomically; return the path.

    The file is written to a temporary file in the same folder and moved into place with :func:`os.replace`, so a
    reader never sees half a file. ``columns`` fixes the column order (default: keys in first-seen order); a
    record lacking a column gets an empty cell (``null`` in JSON/Parquet). Parent folders are created.
    """
    target = Path(path)
    fmt = resolve_format(target, fmt)
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    columns = list(columns)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, as for any new file (mkstemp would force 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if fmt == "parquet":
            os.close(fd)
            _write_parquet(tmp, rows, columns, str(target))
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                if fmt == "jsonl":
                    for row in rows:
                        obj = {c: _plain(row.get(c)) for c in columns}
                        fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
                else:
                    writer = csv.writer(fh, delimiter=_DELIMITERS[fmt], lineterminator="\n")
                    writer.writerow(columns)
                    for row in rows:
                        writer.writerow(["" if row.get(c) is None else _plain(row.get(c)) for c in columns])
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _write_parquet(tmp: str, rows: Sequence[Mapping[str, Any]], columns: list[str], file: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist([{c: _plain(row.get(c)) for c in columns} for row in rows])
        if not rows:
            table = pa.table({c: pa.array([], type=pa.string()) for c in columns})
    except (pa.ArrowException, TypeError) as exc:
        raise DataError(
            f"cannot store these values as Parquet ({exc}).",
            file=file,
            fix="give each column one type (all strings or all numbers).",
        ) from exc
    pq.write_table(table, tmp)


def _plain(value: Any) -> Any:
    """Numpy scalars as Python values (JSON and Arrow want those)."""
    return value.item() if isinstance(value, np.generic) else value


# -- the readers (incremental) ----------------------------------------------------------------------------------------


def iter_table(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
    chunk_rows: int = 1024,
    delimiter: str | None = None,
) -> Iterator[Table]:
    """Read a table incrementally: yield :class:`Table` chunks of ``chunk_rows`` records (the last one fewer).

    These are the readers behind :func:`read_table` (which reads the file as one chunk), so cells, row numbers
    (module docstring) and error messages are the same, but memory holds one chunk: CSV/TSV are parsed with
    :mod:`csv` from the open file, JSON Lines line by line, Parquet a record batch at a time. A chunk's ``columns``
    are the file's columns; for JSON Lines, the keys seen so far (a record lacking one of them gets ``""``; earlier
    chunks are not revisited). A file with a header but no records yields one empty chunk, so its columns are always
    known.

    Text files: a byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE) is skipped and sets the encoding, whatever
    ``encoding`` says (so Excel's "Unicode text", UTF-16 with a mark, reads as it is); without one, ``encoding`` is
    used. An undecodable byte, or with ``encoding='latin-1'`` a C1 control character (a Windows-1252 curly quote
    or dash read as latin-1), is a :class:`DataError` whose fix names the likely encoding (``cp1252`` for Excel's
    CSV on Windows).

    CSV/TSV files, as spreadsheets export them:

    * ``delimiter``: the field delimiter. ``None`` means a tab for TSV and, for CSV, the one of
      :data:`SNIFFED_DELIMITERS` (``,`` ``;`` tab ``|``) found most often outside quotes in the header line (the
      first non-blank line), ``,`` on a tie or when there is none;
    * header names are stripped of surrounding whitespace and zero-width characters (``"score\\u200b "`` is read as
      ``score``; invisible characters inside a name are kept, and messages show them escaped);
    * trailing columns whose header cell is empty are dropped when their cells are empty too (Excel's ``a,b,c,,,``;
      a record may also leave their cells out); one holding data is an error naming its position;
      a record of only empty cells is skipped like a blank line;
    * a cell may hold up to :data:`MAX_CELL_CHARS` characters.

    Bad arguments (format, quoting, encoding, delimiter, chunk size) and a missing file raise at the call; errors in
    the data when the chunk holding them is read, so in file order (:func:`read_table` reports an undecodable byte
    before any other error; here it is reported when its record is reached, with the same message, line and column).
    """
    file, fmt, enc = _source(path, fmt, encoding, quoting, chunk_rows, delimiter)
    return _chunks(path, file, fmt, enc, quoting, chunk_rows, delimiter)


@dataclass(frozen=True)
class _Encoding:
    """How a text file is decoded: ``codec`` after skipping the ``skip`` bytes of its byte-order mark."""

    codec: str
    """Python codec name (from :func:`codecs.lookup`)."""
    skip: int
    """Length of the byte-order mark, 0 without one."""
    name: str
    """The encoding as messages name it: what the caller asked for, or the codec its byte-order mark gave."""
    why: str = "the encoding tried"
    """Where the encoding came from, for messages."""

    @property
    def suspect(self) -> re.Pattern[str]:
        """Characters that mean the bytes were not this encoding (C1 controls only matter for latin-1)."""
        return _SURROGATE_OR_C1 if self.codec == "iso8859-1" else _SURROGATE

    def open(self, path: str | os.PathLike[str], newline: str) -> io.TextIOWrapper:
        """The file as text, past its byte-order mark; undecodable bytes are kept as surrogate escapes."""
        raw = open(path, "rb")  # the wrapper owns it and closes it
        raw.seek(self.skip)
        return io.TextIOWrapper(raw, encoding=self.codec, errors="surrogateescape", newline=newline)


class _DecodeError(DataError):
    """The :class:`DataError` about the first undecodable byte of a file, only made by :func:`_first_undecodable`.

    Both :func:`read_table` and :func:`iter_table` report such a byte with this error, so their messages (line, byte
    offset, column) are the same.
    """


def _source(
    path: str | os.PathLike[str], fmt: str | None, encoding: str, quoting: str, chunk_rows: int, delimiter: str | None
) -> tuple[str, str, _Encoding]:
    """Check the arguments of :func:`read_table` / :func:`iter_table` and that the file exists.

    Returns ``(file, format, encoding)``; for a text format, the file's byte-order mark, if any, sets the encoding
    (Parquet decodes binary cells with ``encoding``).
    """
    file = str(path)
    fmt = resolve_format(path, fmt)
    if quoting not in QUOTING:
        raise ConfigError(f"quoting={quoting!r} is not supported; choose one of: {', '.join(QUOTING)}.")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows!r}; give a record count >= 1, e.g. 1024.")
    if delimiter is not None:
        if fmt not in _DELIMITERS:
            raise ConfigError(f"delimiter={delimiter!r} applies to CSV/TSV files; this one is read as {fmt}.")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
            raise ConfigError(
                f"delimiter={delimiter!r}; give one character other than a quote or a line break, e.g. ';' or '\\t'."
            )
    try:
        codec = codecs.lookup(encoding).name
    except LookupError as exc:
        raise ConfigError(f"unknown encoding {encoding!r}; use e.g. 'utf-8', 'cp1252' or 'utf-16'.") from exc
    if not Path(path).is_file():
        raise DataError("file not found (or not a file).", file=file, fix="check the path.")
    if fmt != "parquet":
        with open(path, "rb") as fh:
            head = fh.read(4)
        for bom, bom_codec in _BOMS:
            if head.startswith(bom):
                return file, fmt, _Encoding(bom_codec, len(bom), bom_codec, "from the file's byte-order mark")
    return file, fmt, _Encoding("utf-8" if codec == "utf-8-sig" else codec, 0, encoding)


def _chunks(
    path: str | os.PathLike[str],
    file: str,
    fmt: str,
    enc: _Encoding,
    quoting: str,
    chunk_rows: int,
    delimiter: str | None,
) -> Iterator[Table]:
    """The chunks of a file whose arguments :func:`_source` checked."""
    if fmt == "parquet":
        return _iter_parquet(path, file, enc, chunk_rows)
    if fmt == "jsonl":
        return _iter_jsonl(path, file, enc, chunk_rows)
    if delimiter is None:
        delimiter = _sniff_delimiter(path, enc) if fmt == "csv" else _DELIMITERS[fmt]
    return _iter_delimited(path, file, fmt, QUOTING[quoting], enc, chunk_rows, delimiter)


def _sniff_delimiter(path: str | os.PathLike[str], enc: _Encoding) -> str:
    """The delimiter of a CSV file: the one of :data:`SNIFFED_DELIMITERS` its header line holds most often.

    The header line is the first non-blank line; delimiters inside ``"quoted"`` names do not count; a tie goes to
    the earlier delimiter in :data:`SNIFFED_DELIMITERS` (so ``,`` when the line holds none of them).
    """
    try:
        with enc.open(path, newline="") as fh:
            for _ in range(_SNIFF_LINES):
                line = fh.readline(_SNIFF_CHARS)
                if not line:
                    break
                if line.strip():
                    bare = _QUOTED.sub("", line)
                    return max(SNIFFED_DELIMITERS, key=bare.count)  # max keeps the first of equal counts
    except UnicodeDecodeError:  # a damaged multi-byte file: the reader reports it
        pass
    return _DELIMITERS["csv"]


def _encoding_fix(byte: int, enc: _Encoding) -> str:
    """The fix for ``byte`` that did not decode as ``enc`` (or, read as latin-1, became a control character)."""
    if enc.codec.startswith(("utf-16", "utf-32")):
        return f"the file is not valid {enc.codec.upper()} (damaged or cut short): re-save it as UTF-8 (CSV UTF-8)."
    cp1252 = ""
    if 0x80 <= byte <= 0x9F and enc.codec != "cp1252":
        try:
            cp1252 = bytes([byte]).decode("cp1252")
        except UnicodeDecodeError:  # one of the five bytes Windows-1252 leaves undefined
            pass
    if cp1252:
        return (
            f"the file is probably Windows-1252 (Excel's CSV on Windows), where byte {byte:#04x} is {cp1252!r}: "
            "pass encoding='cp1252' (--encoding cp1252 on the command line), or re-save the file as UTF-8. Not "
            "latin-1: it reads curly quotes and dashes as invisible control characters."
        )
    if enc.codec == "cp1252":
        return "re-save the file as UTF-8, or pass encoding='latin-1' (it maps every byte; check the texts it reads)."
    return (
        "re-save the file as UTF-8, or pass encoding='cp1252' (--encoding cp1252 on the command line), the encoding "
        "of Excel's CSV on Windows, which also reads latin-1 text (encoding='latin-1' if cp1252 fails)."
    )


def _first_undecodable(
    path: str | os.PathLike[str], file: str, enc: _Encoding, column: str | None = None
) -> DataError | None:
    """The error for the first byte of the file that does not decode as ``enc``; ``None`` if all of it decodes.

    The file is decoded a block at a time, so memory stays small for a large file; ``column`` is the byte's column
    when the caller knows it. This is the one place the message for an undecodable byte is written (the readers call
    it when they meet one, :func:`read_table` when parsing failed before the byte was reached).
    """
    decoder = codecs.getincrementaldecoder(enc.codec)("strict")
    line, consumed = 1, 0  # the line of the next character; bytes fed to the decoder
    with open(path, "rb") as fh:
        fh.seek(enc.skip)
        while True:
            block = fh.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:  # exc.object is the pending bytes + this block
                at = line + exc.object[: exc.start].decode(enc.codec, "replace").count("\n")
                offset = enc.skip + consumed - pending + exc.start
                byte = exc.object[exc.start]
                what = f"byte {byte:#04x}"
                if exc.end - exc.start > 1:  # a multi-byte code unit (UTF-16, UTF-32): show all its bytes
                    what = "bytes " + " ".join(f"{b:#04x}" for b in exc.object[exc.start : exc.end])
                return _DecodeError(
                    f"{what} at line {at} (byte offset {offset}) cannot be decoded as {enc.name} ({enc.why}).",
                    file=file,
                    row=at,
                    column=column,
                    fix=_encoding_fix(byte, enc),
                )
            line += text.count("\n")
            consumed += len(block)
            if not block:
                return None


def _undecodable(
    path: str | os.PathLike[str],
    values: Sequence[str],
    names: Sequence[str] | None,
    row: int,
    file: str,
    enc: _Encoding,
) -> DataError | None:
    """The error for the first byte that did not decode (kept as a surrogate escape) in a record's ``values``.

    The readers check every record in file order, so that byte is the file's first undecodable one: its error is
    :func:`_first_undecodable`'s (line and byte offset counted in the file), with the column found here. Read as
    latin-1, a C1 control character is an error too (see :func:`_encoding_fix`). ``row`` is the record's first
    line; the character's line adds the line breaks before it inside the record.
    """
    suspect = enc.suspect
    if suspect.search("".join(values)) is None:  # the common case, checked in one pass
        return None
    lines = 0
    for j, value in enumerate(values):
        match = suspect.search(value)
        if match is None:
            lines += value.count("\n")
            continue
        line = row + lines + value.count("\n", 0, match.start())
        column = names[j] if names is not None and j < len(names) else None
        char = ord(match.group())
        if char < 0xDC80:  # a C1 control character read as latin-1
            return DataError(
                f"character U+{char:04X} at line {line} is an invisible control character (byte {char:#04x} read "
                f"as {enc.name}).",
                file=file,
                row=line,
                column=column,
                fix=_encoding_fix(char, enc),
            )
        bad = _first_undecodable(path, file, enc, column)
        return bad or DataError(  # a surrogate escape is a byte strict decoding rejects, unless the file changed
            f"byte {char - 0xDC00:#04x} at line {line} did not decode as {enc.name} but did when read again.",
            file=file,
            row=line,
            column=column,
            fix="the file changed while it was read; read it again once it is written.",
        )
    return None


def _header(fields: list[str], file: str, row: int) -> tuple[list[str], int]:
    """The column names of a CSV/TSV header line and how many of them are kept.

    Names are stripped of surrounding whitespace and zero-width characters. Trailing unnamed columns are not kept
    (their cells must be empty; :func:`_iter_delimited` checks). Raises for NUL characters (UTF-16 read as 8-bit
    text), repeated names and several unnamed columns among named ones.
    """
    if any("\x00" in f for f in fields):
        raise DataError(
            "the header holds NUL characters: the file is probably UTF-16 without a byte-order mark.",
            file=file,
            row=row,
            fix="pass encoding='utf-16-le' (or 'utf-16-be'), or re-save the file as UTF-8.",
        )
    names = [_EDGES.sub("", f) for f in fields]
    kept = len(names)
    while kept > 0 and not names[kept - 1]:
        kept -= 1
    header = names[:kept]
    unnamed = [i + 1 for i, n in enumerate(header) if not n]
    if len(unnamed) > 1:
        raise DataError(
            f"the header has {len(unnamed)} columns without a name, at positions {', '.join(map(str, unnamed))}.",
            file=file,
            row=row,
            fix="name every column (or delete the empty columns).",
        )
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raw = [_shown(f) for f, n in zip(fields, header, strict=False) if n in dupes]
        raise DataError(
            f"the header repeats column names {dupes} (as written: {', '.join(raw)}; surrounding spaces and "
            "zero-width characters are ignored).",
            file=file,
            row=row,
            column=dupes[0],
            fix="give every column a unique name.",
        )
    return names, kept


def _iter_delimited(
    path: str | os.PathLike[str],
    file: str,
    fmt: str,
    quoting: int,
    enc: _Encoding,
    chunk_rows: int,
    delimiter: str,
) -> Iterator[Table]:
    header: list[str] | None = None  # the kept column names
    named, width, header_row = 0, 0, 1  # kept columns; fields of the header line (with unnamed ones); its line
    records: list[dict[str, str]] = []
    rows: list[int] = []
    previous, yielded = 0, False
    suspect = enc.suspect
    csv.field_size_limit(MAX_CELL_CHARS)  # read here, not at import, so that a changed limit applies
    with enc.open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        while True:
            start = previous + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:  # only a multi-byte codec (UTF-16) fails; 8-bit ones keep surrogate escapes
                bad = _first_undecodable(path, file, enc)
                raise bad or DataError(
                    f"the text after line {previous} cannot be decoded as {enc.name}.",
                    file=file,
                    row=start,
                    fix=_encoding_fix(0, enc),
                ) from None
            except csv.Error as exc:
                raise _parse_error(exc, fmt, file, start, reader.line_num) from exc
            previous = reader.line_num
            if suspect.search("".join(fields)) is not None:  # one pass over the record; rarely true
                bad = _undecodable(path, fields, header, start, file, enc)
                if bad is not None:
                    raise bad
            if not (fields and fields[0].strip()) and not any(map(str.strip, fields)):
                continue  # a blank line, or a spreadsheet row of empty cells
            if header is None:
                names, kept = _header(fields, file, start)
                header, named, width, header_row = names[:kept], kept, len(names), start
                continue
            if len(fields) != named and not named <= len(fields) <= width:  # trailing unnamed cells may be left out
                hint = (
                    "a text probably holds the delimiter; quote that field"
                    if quoting == csv.QUOTE_NONE
                    else "a text probably holds a stray quote or the delimiter; pass quoting='none' if texts hold "
                    "stray quotes, or quote that field"
                )
                raise DataError(
                    f"this record has {len(fields)} fields but the header has {named} "
                    f"({', '.join(_shown(c) for c in header)}; delimiter {delimiter!r}).",
                    file=file,
                    row=start,
                    fix=hint + ".",
                )
            if len(fields) > named:  # cells of trailing unnamed columns: they must be empty
                extra = _filled(fields, named)
                if extra is not None:
                    raise DataError(
                        f"column {extra + 1} has no name in the header (line {header_row}) but this record holds "
                        f"{fields[extra][:40]!r} there.",
                        file=file,
                        row=start,
                        fix=f"name column {extra + 1} in the header, or delete its cells.",
                    )
                del fields[named:]
            records.append(dict(zip(header, fields, strict=True)))
            rows.append(start)
            if len(records) == chunk_rows:
                yield Table(records, rows, header, file, fmt, header_row, delimiter)
                records, rows, yielded = [], [], True
    if header is None:
        raise DataError("the file is empty: no header line.", file=file, fix="write a header row of column names.")
    if records or not yielded:
        yield Table(records, rows, header, file, fmt, header_row, delimiter)


def _filled(fields: list[str], start: int) -> int | None:
    """The index of the first non-empty cell from ``start`` on (cells of unnamed columns), ``None`` if none."""
    return next((i for i in range(start, len(fields)) if fields[i].strip()), None)


def _parse_error(exc: csv.Error, fmt: str, file: str, start: int, line: int) -> DataError:
    """The error for a record starting at line ``start`` that :mod:`csv` could not parse (it stopped at ``line``)."""
    if "field larger than field limit" in str(exc):
        swallowed = (
            f" It runs from line {start} to past line {line}: if no text is meant to be this long, a quote in "
            "this record is probably never closed and swallowed the lines after it; close it, or pass "
            "quoting='none' if texts hold stray quotes."
            if line > start
            else ""
        )
        return DataError(
            f"a cell is longer than {MAX_CELL_CHARS:,} characters, the limit of scoreplex.data.readers."
            f"MAX_CELL_CHARS (reading stopped at line {line}, inside it).",
            file=file,
            row=start,
            fix="shorten or split that text, or raise scoreplex.data.readers.MAX_CELL_CHARS." + swallowed,
        )
    return DataError(
        f"cannot parse the {fmt.upper()} text ({exc}).",
        file=file,
        row=line,
        fix="check the quotes near this line; if texts hold stray quote characters pass quoting='none'.",
    )


def _iter_jsonl(path: str | os.PathLike[str], file: str, enc: _Encoding, chunk_rows: int) -> Iterator[Table]:
    columns: dict[str, None] = {}  # ordered set
    records: list[dict[str, str]] = []
    rows: list[int] = []
    yielded = False

    def chunk() -> Table:
        for record in records:
            for col in columns:
                record.setdefault(col, "")
        return Table(records, rows, list(columns), file, "jsonl", header_row=None)

    suspect = enc.suspect
    with enc.open(path, newline="\n") as fh:
        lines = enumerate(fh, start=1)
        while True:
            try:
                lineno, line = next(lines)
            except StopIteration:
                break
            except UnicodeDecodeError:  # only a multi-byte codec (UTF-16) fails; 8-bit ones keep surrogate escapes
                bad = _first_undecodable(path, file, enc)
                raise bad or DataError(
                    f"the text cannot be decoded as {enc.name}.",
                    file=file,
                    fix=_encoding_fix(0, enc),
                ) from None
            line = line[:-1] if line.endswith("\n") else line
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                bad = _undecodable(path, [line], None, lineno, file, enc)
                if bad is not None:
                    raise bad from None
                raise DataError(
                    f"malformed JSON ({exc.msg} at character {exc.colno}).",
                    file=file,
                    row=lineno,
                    fix=f'make line {lineno} one complete JSON object ({{"text": ..., ...}}) or remove it.',
                ) from exc
            if not isinstance(obj, dict):
                bad = _undecodable(path, [line], None, lineno, file, enc)
                if bad is not None:
                    raise bad
                raise DataError(
                    f"expected a JSON object, got {type(obj).__name__}.",
                    file=file,
                    row=lineno,
                    fix='write one object per line, e.g. {"id": "r1", "text": "...", "score": 2}.',
                )
            record = {str(k): _cell(v) for k, v in obj.items()}
            if suspect.search(line):
                bad = _undecodable(path, list(record.values()), list(record), lineno, file, enc)
                raise bad or _undecodable(path, [line], None, lineno, file, enc)
            columns.update(dict.fromkeys(record))
            records.append(record)
            rows.append(lineno)
            if len(records) == chunk_rows:
                yield chunk()
                records, rows, yielded = [], [], True
    if records or not yielded:
        yield chunk()


def _iter_parquet(path: str | os.PathLike[str], file: str, enc: _Encoding, chunk_rows: int) -> Iterator[Table]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc: Exception) -> DataError:
        return DataError(
            f"cannot read the file as Parquet ({exc}).", file=file, fix="check that it is a Parquet file or pass fmt="
        )

    try:
        dataset = pq.ParquetDataset(path)  # opened as pq.read_table opens a file: the same columns and errors
        columns = list(dataset.schema.names)
        (fragment,) = dataset.fragments  # one file, one fragment
        batches = iter(fragment.to_batches(batch_size=min(chunk_rows, _PARQUET_BATCH_ROWS)))
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(exc) from exc
    records: list[dict[str, str]] = []
    done, yielded = 0, False  # records yielded so far: the next record's row number is done + len(records) + 1
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(exc) from exc
        if batch is None:
            break
        for raw in batch.to_pylist():
            row = done + len(records) + 1
            record = {}
            for col, value in raw.items():
                if isinstance(value, bytes):
                    try:
                        value = value.decode(enc.codec)
                    except UnicodeDecodeError as exc:
                        raise DataError(
                            f"binary cell cannot be decoded as {enc.name} ({enc.why}).",
                            file=file,
                            row=row,
                            column=col,
                            fix="store texts as a string column, or pass the encoding they were written in, "
                            "e.g. encoding='cp1252'.",
                        ) from exc
                record[col] = _cell(value)
            records.append(record)
            if len(records) == chunk_rows:  # row groups may cut batches short: re-chunk to exactly chunk_rows
                yield Table(records, range(done + 1, done + chunk_rows + 1), columns, file, "parquet", None)
                done, records, yielded = done + chunk_rows, [], True
    if records or not yielded:
        yield Table(records, range(done + 1, done + len(records) + 1), columns, file, "parquet", None)
