"""Read and write tables of scored responses: CSV, TSV, JSON Lines and Parquet.

:func:`read_table` turns a file into string records with the row number a person would look up for each;
:func:`read_responses` maps columns onto tasks (:class:`ColumnMap`) and returns one :class:`TaskData` per task,
joined by response id; :func:`write_table` writes records atomically.

Row numbers in every message are what a person sees when they open the file:

* CSV / TSV: 1-based line numbers in the file, the header is line 1, so the first record is row 2 (a record whose
  quoted text spans several lines is numbered by the line it starts on; blank lines are skipped but counted);
* JSON Lines: 1-based line numbers (blank lines are skipped but counted);
* Parquet: a file has no lines, so the row number is the 0-based record index + 1 (the first record is row 1).
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoreplex.data.dataset import MISSING, TaskData
from scoreplex.errors import ConfigError, DataError, ScoreplexError
from scoreplex.tasks import Dimension, TaskSpec, check_id

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

_DELIMITERS = {"csv": ",", "tsv": "\t"}
_INTEGER = re.compile(r"^[+-]?\d+(\.0*)?$")  # "3", "+3", "3.0" (spreadsheets write integral scores as floats)
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that did not decode, kept by errors="surrogateescape"
_ENCODING_FIX = "re-save the file as UTF-8, or pass encoding='latin-1' (--encoding latin-1 on the command line)."
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
                raise ConfigError(f"ColumnMap uses columns {shared} for both first and second rater scores.")


class Table(list[dict[str, str]]):
    """The records of a file (a ``list[dict[str, str]]``), with the row number of each and the file's columns.

    ``rows[i]`` is the row number of ``self[i]`` (see the module docstring); ``header_row`` is the header's row
    (1 for CSV/TSV, ``None`` for formats without a header line).
    """

    def __init__(
        self,
        records: Sequence[dict[str, str]],
        rows: Sequence[int],
        columns: Sequence[str],
        file: str,
        fmt: str,
        header_row: int | None,
    ) -> None:
        super().__init__(records)
        self.rows = list(rows)
        self.columns = list(columns)
        self.file = file
        self.fmt = fmt
        self.header_row = header_row


def resolve_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The table format of ``path``: ``fmt`` if given, else from the file extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"fmt={fmt!r} is not a supported table format; choose one of: {', '.join(FORMATS)}.")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    exts = ", ".join(EXTENSIONS)
    raise DataError(
        f"cannot tell the table format from the extension {suffix or '(none)'!r}; supported extensions: {exts}.",
        file=str(path),
        fix=f"rename the file or pass fmt= one of {', '.join(FORMATS)} (--format on the command line).",
    )


def read_table(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    encoding: str = "utf-8",
    quoting: str = "minimal",
) -> Table:
    """Read a CSV, TSV, JSON Lines or Parquet file into string records.

    Returns a :class:`Table`: a list of ``{column: cell}`` dicts whose ``rows`` attribute gives each record's row
    number (module docstring). Every cell is a string: JSON/Parquet ``null`` and NaN become ``""``, booleans ``"1"``
    / ``"0"``, integral floats ``"3"``, nested values their JSON text; a JSON line lacking a key gets ``""``.
    A UTF-8 byte-order mark is accepted. ``quoting="none"`` reads quote characters as ordinary text (needed for
    files whose texts hold stray quotes, such as ASAP-SAS). Raises :class:`DataError` for unreadable input; an
    undecodable byte is reported before any other error in the data.

    The file is parsed by the readers of :func:`iter_table`, as one chunk (so a JSON Lines table's columns are the
    keys of all its records).
    """
    file, fmt, codec = _source(path, fmt, encoding, quoting, _WHOLE_FILE)
    try:
        (table,) = _chunks(path, file, fmt, codec, encoding, quoting, _WHOLE_FILE)
    except DataError as exc:
        if codec is None:  # Parquet: no text to decode
            raise
        data = Path(path).read_bytes()
        try:
            data.decode(codec)
        except UnicodeDecodeError as bad:
            # the reader raised the first error in file order; this byte comes first here. Its column is known
            # when that error was about this byte (it carries the encoding fix), not when parsing failed before it
            column = exc.column if exc.fix == _ENCODING_FIX else None
            raise _decode_error(bad, data, file, encoding, codec, column) from None
        raise
    return table


def _decode_error(
    exc: UnicodeDecodeError, data: bytes, file: str, encoding: str, codec: str, column: str | None
) -> DataError:
    start = exc.start
    if codec == "utf-8-sig" and data.startswith(codecs.BOM_UTF8):
        start += len(codecs.BOM_UTF8)  # the utf-8-sig decoder counts from after the BOM
    line = data.count(b"\n", 0, start) + 1
    return DataError(
        f"byte {data[start]:#04x} at line {line} cannot be decoded as {encoding} (the encoding tried).",
        file=file,
        row=line,
        column=column,
        fix=_ENCODING_FIX,
    )


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
    require_labels: bool = True,
    infer_max_score: bool = True,
) -> dict[str, TaskData]:
    """Read a table of responses and group its rows into one :class:`TaskData` per task.

    ``tasks`` maps each task id *as written in the file* to its spec; the result is keyed by ``spec.id`` (so a
    loader may map ASAP's ``"1"`` to a spec with id ``"asap-1"``). Scores are checked against the declared classes
    ``0..num_classes-1``. Without ``tasks``, one ordinal spec per task is inferred (needs ``infer_max_score``): its
    dimensions are the keys of ``columns.labels`` (or one ``score``), each with ``num_classes = max observed + 1``
    (at least 2) over both raters.

    With ``require_labels=False`` an empty score cell becomes :data:`MISSING`, and a task whose score columns are
    all absent from the file gets ``labels=None``. Second-rater cells may always be empty (``MISSING``). Texts are
    kept exactly as read; rows keep file order within a task. Raises :class:`DataError` naming file, row, column and
    task for a missing column, an empty text, a non-integer or out-of-range score, a missing score, a duplicate
    response id or an unknown task id.
    """
    columns = ColumnMap() if columns is None else columns
    if not isinstance(columns, ColumnMap):
        raise ConfigError(f"columns must be a ColumnMap, got {type(columns).__name__}.")
    if tasks is None and not infer_max_score:
        raise ConfigError("no task specs given and infer_max_score=False: pass tasks= (task id -> TaskSpec).")
    table = read_table(path, fmt=fmt, encoding=encoding, quoting=quoting)
    return _Reader(table, columns, tasks, require_labels).read()


def _missing_column(table: Table, column: str, fix: str, task: str | None = None) -> DataError:
    """The error for a column ``table`` lacks, listing the columns it has."""
    have = ", ".join(table.columns) or "(none)"
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
        text = self.filled(
            record,
            row,
            self.cmap.text,
            task,
            "the response text is empty or only whitespace.",
            "remove the row or fill in the text (an empty answer is best scored by a rule, not a model).",
        )
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
        self, table: Table, columns: ColumnMap, tasks: Mapping[str, TaskSpec] | None, require_labels: bool
    ) -> None:
        self.table, self.cmap, self.tasks, self.require = table, columns, tasks, require_labels
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
        for i, (record, row) in enumerate(zip(table, table.rows, strict=True)):
            key, rid, _ = check(record, row)
            ids.append(rid)
            groups.setdefault(key, []).append(i)

        out: dict[str, TaskData] = {}
        for key, index in groups.items():
            data = self.task_data(key, index, ids)
            out[data.spec.id] = data
        return out

    def task_data(self, key: str, index: list[int], ids: list[str]) -> TaskData:
        table, cmap = self.table, self.cmap
        spec = self.tasks[key] if self.tasks is not None else None
        dims = spec.dimension_names if spec is not None else list(cmap.labels or {"score": ""})
        classes = spec.class_counts if spec is not None else None
        single = len(dims) == 1

        label_cols = [self.label_column(d, single) for d in dims]
        absent = [d for d, c in zip(dims, label_cols, strict=True) if c is None]
        labels: np.ndarray | None = None
        if absent and (self.require or len(absent) < len(dims)):
            dim = absent[0]
            alt = " (or 'score' / 'label')" if single else ""
            raise _missing_column(
                self.table,
                dim,
                f"add a score column named {dim!r}{alt}, or map it with ColumnMap(labels={{{dim!r}: '<column>'}})"
                + ("" if not self.require else ", or pass require_labels=False for unscored data")
                + ".",
                task=spec.id if spec is not None else key,
            )
        task_name = spec.id if spec is not None else key
        if not absent:
            labels = self.scores(index, label_cols, classes, task_name, required=self.require)

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
                        task=task_name,
                    )
                second_cols.append(col)
            if any(c is not None for c in second_cols):
                second = self.scores(index, second_cols, classes, task_name, required=False)

        if spec is None:
            spec = self.infer_spec(key, dims, labels, second, index)
        return TaskData(
            spec=spec,
            ids=[ids[i] for i in index],
            texts=[table[i][cmap.text] for i in index],
            labels=labels,
            second=second,
            source=self.file,
        )

    def scores(
        self, index: list[int], cols: list[str | None], classes: list[int] | None, task: str, required: bool
    ) -> np.ndarray:
        """Parse score cells into ``(N, D)`` int64; ``MISSING`` for an empty cell or an unread dimension."""
        table = self.table
        out = np.full((len(index), len(cols)), MISSING, dtype=np.int64)  # (N, D)
        for j, col in enumerate(cols):
            if col is None:
                continue
            for n, i in enumerate(index):
                cell, row = table[i][col], table.rows[i]
                where = {"file": self.file, "row": row, "column": col, "task": task}
                value = cell.strip()
                if not value:
                    if required:
                        raise DataError(
                            "the score is missing (empty cell).",
                            **where,
                            fix="fill in the score, drop the row, or pass require_labels=False (it becomes MISSING).",
                        )
                    continue
                if not _INTEGER.match(value):
                    raise DataError(
                        f"score {cell!r} is not an integer.",
                        **where,
                        fix="write scores as whole numbers 0..K (map letter grades or fractions to classes first).",
                    )
                score = int(float(value)) if "." in value else int(value)
                if classes is not None and not 0 <= score < classes[j]:
                    raise DataError(
                        f"score {score} is outside the declared range 0..{classes[j] - 1}.",
                        **where,
                        fix="correct the score, or declare more classes in the task spec.",
                    )
                if score < 0:
                    raise DataError(
                        f"score {score} is negative; scores are classes 0..K.",
                        **where,
                        fix="shift the scale so that the lowest score is 0.",
                    )
                out[n, j] = score
        return out

    def infer_spec(
        self, key: str, dims: list[str], labels: np.ndarray | None, second: np.ndarray | None, index: list[int]
    ) -> TaskSpec:
        row = self.table.rows[index[0]]
        stacked = [a for a in (labels, second) if a is not None]
        if not stacked or all((a == MISSING).all() for a in stacked):
            raise DataError(
                "cannot infer the score range: the task has no scores.",
                file=self.file,
                row=row,
                task=key,
                fix="pass tasks= with a TaskSpec for this task.",
            )
        top = np.concatenate(stacked, axis=0).max(axis=0)  # (D,)
        try:
            return TaskSpec(
                id=key,
                dimensions=tuple(Dimension(d, "ordinal", max(int(m), 1) + 1) for d, m in zip(dims, top, strict=True)),
            )
        except ScoreplexError as exc:
            raise DataError(
                f"cannot build a task spec for task {key!r}: {exc}",
                file=self.file,
                row=row,
                column=self.cmap.task,
                task=key,
                fix="use task ids of letters, digits, '.', '_' or '-' (or map ids with tasks=), and scores 0..99.",
            ) from exc


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
) -> Iterator[Table]:
    """Read a table incrementally: yield :class:`Table` chunks of ``chunk_rows`` records (the last one fewer).

    These are the readers behind :func:`read_table` (which reads the file as one chunk), so cells, row numbers
    (module docstring) and error messages are the same, but memory holds one chunk: CSV/TSV are parsed with
    :mod:`csv` from the open file, JSON Lines line by line, Parquet a record batch at a time. A chunk's ``columns``
    are the file's columns; for JSON Lines, the keys seen so far (a record lacking one of them gets ``""``; earlier
    chunks are not revisited). A file with a header but no records yields one empty chunk, so its columns are always
    known.

    Bad arguments (format, quoting, encoding, chunk size) and a missing file raise at the call; errors in the data
    when the chunk holding them is read, so in file order (:func:`read_table` reports an undecodable byte before any
    other error; here it is reported when its record is reached, with the same message, line and column).
    """
    file, fmt, codec = _source(path, fmt, encoding, quoting, chunk_rows)
    return _chunks(path, file, fmt, codec, encoding, quoting, chunk_rows)


def _source(
    path: str | os.PathLike[str], fmt: str | None, encoding: str, quoting: str, chunk_rows: int
) -> tuple[str, str, str | None]:
    """Check the arguments of :func:`read_table` / :func:`iter_table` and that the file exists.

    Returns ``(file, format, codec)``; the codec reads a text format (``utf-8-sig`` for UTF-8, to accept a BOM) and
    is ``None`` for Parquet.
    """
    file = str(path)
    fmt = resolve_format(path, fmt)
    if quoting not in QUOTING:
        raise ConfigError(f"quoting={quoting!r} is not supported; choose one of: {', '.join(QUOTING)}.")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows!r}; give a record count >= 1, e.g. 1024.")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError as exc:
        raise ConfigError(f"unknown encoding {encoding!r}; use e.g. 'utf-8', 'latin-1' or 'cp1252'.") from exc
    if not Path(path).is_file():
        raise DataError("file not found (or not a file).", file=file, fix="check the path.")
    if fmt == "parquet":
        return file, fmt, None
    return file, fmt, "utf-8-sig" if codec == "utf-8" else encoding


def _chunks(
    path: str | os.PathLike[str],
    file: str,
    fmt: str,
    codec: str | None,
    encoding: str,
    quoting: str,
    chunk_rows: int,
) -> Iterator[Table]:
    """The chunks of a file whose arguments :func:`_source` checked."""
    if codec is None:
        return _iter_parquet(path, file, encoding, chunk_rows)
    if fmt == "jsonl":
        return _iter_jsonl(path, file, codec, encoding, chunk_rows)
    return _iter_delimited(path, file, fmt, QUOTING[quoting], codec, encoding, chunk_rows)


def _undecodable(
    values: Sequence[str], names: Sequence[str] | None, row: int, file: str, encoding: str
) -> DataError | None:
    """The error for the first byte that did not decode (kept as a surrogate escape) in a record's ``values``.

    ``row`` is the record's first line; the byte's line adds the line breaks before it inside the record.
    """
    if _SURROGATE.search("".join(values)) is None:  # the common case, checked in one pass
        return None
    lines = 0
    for j, value in enumerate(values):
        match = _SURROGATE.search(value)
        if match is None:
            lines += value.count("\n")
            continue
        line = row + lines + value.count("\n", 0, match.start())
        return DataError(
            f"byte {ord(match.group()) - 0xDC00:#04x} at line {line} cannot be decoded as {encoding} "
            "(the encoding tried).",
            file=file,
            row=line,
            column=names[j] if names is not None and j < len(names) else None,
            fix=_ENCODING_FIX,
        )
    return None


def _iter_delimited(
    path: str | os.PathLike[str], file: str, fmt: str, quoting: int, codec: str, encoding: str, chunk_rows: int
) -> Iterator[Table]:
    header: list[str] | None = None
    records: list[dict[str, str]] = []
    rows: list[int] = []
    previous, yielded = 0, False
    with open(path, encoding=codec, errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=_DELIMITERS[fmt], quoting=quoting)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(
                    f"cannot parse the {fmt.upper()} text ({exc}).",
                    file=file,
                    row=reader.line_num,
                    fix="check the quotes near this line; if texts hold stray quote characters pass quoting='none'.",
                ) from exc
            start, previous = previous + 1, reader.line_num
            bad = _undecodable(fields, header, start, file, encoding)
            if bad is not None:
                raise bad
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if header is None:
                header = fields
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise DataError(
                        f"the header repeats column names {dupes}.",
                        file=file,
                        row=start,
                        column=dupes[0],
                        fix="give every column a unique name.",
                    )
                continue
            if len(fields) != len(header):
                hint = (
                    "a text probably holds the delimiter; quote that field"
                    if quoting == csv.QUOTE_NONE
                    else "a text probably holds a stray quote or the delimiter; pass quoting='none' if texts hold "
                    "stray quotes, or quote that field"
                )
                raise DataError(
                    f"this record has {len(fields)} fields but the header has {len(header)} ({', '.join(header)}).",
                    file=file,
                    row=start,
                    fix=hint + ".",
                )
            records.append(dict(zip(header, fields, strict=True)))
            rows.append(start)
            if len(records) == chunk_rows:
                yield Table(records, rows, header, file, fmt, header_row=1)
                records, rows, yielded = [], [], True
    if header is None:
        raise DataError("the file is empty: no header line.", file=file, fix="write a header row of column names.")
    if records or not yielded:
        yield Table(records, rows, header, file, fmt, header_row=1)


def _iter_jsonl(path: str | os.PathLike[str], file: str, codec: str, encoding: str, chunk_rows: int) -> Iterator[Table]:
    columns: dict[str, None] = {}  # ordered set
    records: list[dict[str, str]] = []
    rows: list[int] = []
    yielded = False

    def chunk() -> Table:
        for record in records:
            for col in columns:
                record.setdefault(col, "")
        return Table(records, rows, list(columns), file, "jsonl", header_row=None)

    with open(path, encoding=codec, errors="surrogateescape", newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line[:-1] if line.endswith("\n") else line
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                bad = _undecodable([line], None, lineno, file, encoding)
                if bad is not None:
                    raise bad from None
                raise DataError(
                    f"malformed JSON ({exc.msg} at character {exc.colno}).",
                    file=file,
                    row=lineno,
                    fix=f'make line {lineno} one complete JSON object ({{"text": ..., ...}}) or remove it.',
                ) from exc
            if not isinstance(obj, dict):
                bad = _undecodable([line], None, lineno, file, encoding)
                if bad is not None:
                    raise bad
                raise DataError(
                    f"expected a JSON object, got {type(obj).__name__}.",
                    file=file,
                    row=lineno,
                    fix='write one object per line, e.g. {"id": "r1", "text": "...", "score": 2}.',
                )
            record = {str(k): _cell(v) for k, v in obj.items()}
            if _SURROGATE.search(line):
                bad = _undecodable(list(record.values()), list(record), lineno, file, encoding)
                raise bad or _undecodable([line], None, lineno, file, encoding)
            columns.update(dict.fromkeys(record))
            records.append(record)
            rows.append(lineno)
            if len(records) == chunk_rows:
                yield chunk()
                records, rows, yielded = [], [], True
    if records or not yielded:
        yield chunk()


def _iter_parquet(path: str | os.PathLike[str], file: str, encoding: str, chunk_rows: int) -> Iterator[Table]:
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
                        value = value.decode(encoding)
                    except UnicodeDecodeError as exc:
                        raise DataError(
                            f"binary cell cannot be decoded as {encoding} (the encoding tried).",
                            file=file,
                            row=row,
                            column=col,
                            fix="store texts as a string column, or pass encoding='latin-1'.",
                        ) from exc
                record[col] = _cell(value)
            records.append(record)
            if len(records) == chunk_rows:  # row groups may cut batches short: re-chunk to exactly chunk_rows
                yield Table(records, range(done + 1, done + chunk_rows + 1), columns, file, "parquet", None)
                done, records, yielded = done + chunk_rows, [], True
    if records or not yielded:
        yield Table(records, range(done + 1, done + len(records) + 1), columns, file, "parquet", None)
