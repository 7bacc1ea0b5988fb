"""Score a large response file as a stream: chunked reading, mixed-task scoring, incremental output, resume.

:func:`stream_scores` reads the input ``chunk_rows`` records at a time (:func:`scoreplex.data.readers.iter_table`),
checks every row as :func:`~scoreplex.data.readers.read_responses` does (text non-empty, task in the suite, ids
unique over the whole file; ids ``f"{file stem}:{row}"`` when the file has no id column), scores the chunk and
appends its rows to the output in input order. Memory holds one chunk plus the ids seen (about 100 bytes a row).

Scoring: the streamer is handed its scorer (any :class:`~scoreplex.predictions.MixedScorer`, or a factory of one);
by default :func:`scoreplex.scorer.open_scorer` picks it from the suite's method: the engine when the method's tasks
share one backbone pass (the rows of a chunk share one pass per batch, whatever their tasks), else
:class:`scoreplex.scorer.SuiteScorer`, task by task within a chunk.

Output: one row per response: ``id``, ``task``, ``pred_<dim>``, ``prob_<dim>_<k>``, ``confidence``, ``route``
(the columns of :meth:`scoreplex.predictions.Predictions.rows`, formatted by
:func:`scoreplex.predictions.ordered_rows`). The header is fixed at the start from the suite's task specs
(:func:`output_columns`): every dimension of every task, a dimension name shared by tasks getting the largest class
count's probability columns; cells that do not apply to a row's task are empty (``null`` in JSON Lines and Parquet).
CSV, TSV and JSON Lines outputs are appended to in place. Parquet cannot be appended to, so its rows go to a staging
JSON Lines file next to the output (``<output>.partial.jsonl``), converted at the end into a temporary Parquet file
that is renamed onto the output: a Parquet output is complete or absent.

Resume: after each chunk the rows are flushed and fsync'ed, then the progress file ``<output>.progress.json`` is
replaced atomically (temporary file, fsync, :func:`os.replace`). It records the rows done, the byte length of the
output holding them, a fingerprint of the input (name, size, mtime, SHA-256 of its first MiB), the SHA-256 of the
suite's manifest, the reading options and the output header. Re-running the same command after Ctrl-C or ``kill -9``
truncates the output to the recorded length (dropping a half-written chunk), re-reads the rows done without scoring
them (to re-check ids) and continues: every row is written exactly once. A progress file of another input, suite or
options is refused (``restart=True`` discards it); an existing output without a progress file is refused unless
``overwrite=True``. The progress file is removed when the run completes.

One writer per output: a run holds an exclusive ``flock`` on ``<output>.lock`` from before it reads the progress
file to the end, so a second run on the same output is refused at once (ResumeError) instead of "resuming" a live
run. The lock dies with its process: a file left by a killed run never blocks the next one, which removes it when it
completes. Checked up front, before the input is read or the model loaded: the output's folder can be created (not
under a file, not in a folder that cannot be made) and the output is not a folder (ConfigError). A full disk (or
quota) while writing raises :class:`NoSpaceError` naming the file; what was committed before stays valid, so the
same command resumes once space is freed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreplex.data.readers import QUOTING, ColumnMap, RowCheck, iter_table, resolve_format
from scoreplex.errors import ConfigError, DataError, NoSpaceError, ResumeError, ScoreplexError
from scoreplex.paths import prepare_output_folder
from scoreplex.predictions import MixedScorer, Row, score_rows
from scoreplex.progress import progress_bar
from scoreplex.tasks import TaskSpec

PROGRESS_FORMAT = "scoreplex-score-progress"
PROGRESS_VERSION = 1
PROGRESS_SUFFIX = ".progress.json"
"""The progress file of ``out.csv`` is ``out.csv.progress.json``."""
STAGING_SUFFIX = ".partial.jsonl"
"""The staging file of a Parquet output ``out.parquet`` is ``out.parquet.partial.jsonl``."""
LOCK_SUFFIX = ".lock"
"""The lock file of ``out.csv`` is ``out.csv.lock`` (held with ``flock`` while a run writes ``out.csv``)."""
FINGERPRINT_BYTES = 1 << 20
"""Bytes of the input hashed into its fingerprint (with its name, size and mtime)."""
DEFAULT_CHUNK_ROWS = 1024

_DELIMITERS = {"csv": ",", "tsv": "\t"}
_LOG = logging.getLogger(__name__)
_UNKNOWN_TASK_FIX = "correct the task id, or score with a suite that holds this task."
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}

ScorerSource = MixedScorer | Callable[[], MixedScorer]
"""A scorer, or a zero-argument factory of one (called once the first chunk checks out, so bad input fails before
the model loads)."""


@dataclass(frozen=True)
class StreamOptions:
    """How :func:`stream_scores` reads, scores and resumes."""

    chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Records read, scored and committed at a time: the unit of progress (an interruption loses at most one)."""
    batch_size: int | None = None
    """Rows per backbone pass of the engine (None: the engine's default); ``full`` suites use SuiteScorer's."""
    fmt: str | None = None
    """Input format, one of ``readers.FORMATS``; None: from the file extension."""
    encoding: str = "utf-8"
    """Text encoding of a CSV/TSV/JSON Lines input."""
    quoting: str = "minimal"
    """CSV/TSV quoting (``readers.QUOTING``): ``none`` reads quote characters as text."""
    delimiter: str | None = None
    """CSV/TSV field delimiter; None: detected from a CSV's header line (``,`` ``;`` tab ``|``), tab for TSV."""
    restart: bool = False
    """Discard the progress of an earlier, unfinished run on this output (even one of another input, suite or
    options) and start over."""
    overwrite: bool = False
    """Replace an existing output, finished or not, and start over."""
    progress: bool = True
    """Show a progress bar (rows, rows/s, ETA) on stderr."""

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_rows, int) or isinstance(self.chunk_rows, bool) or self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows={self.chunk_rows!r}; give a record count >= 1, e.g. {DEFAULT_CHUNK_ROWS}.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size={self.batch_size!r}; give a row count >= 1, or None for the default.")
        if self.quoting not in QUOTING:
            raise ConfigError(f"quoting={self.quoting!r} is not supported; choose one of: {', '.join(QUOTING)}.")


def progress_path(output: str | os.PathLike[str]) -> Path:
    """The progress file kept next to ``output`` while a run is unfinished."""
    output = Path(output)
    return output.with_name(output.name + PROGRESS_SUFFIX)


def staging_path(output: str | os.PathLike[str]) -> Path:
    """The JSON Lines file a Parquet ``output`` is streamed into before its conversion."""
    output = Path(output)
    return output.with_name(output.name + STAGING_SUFFIX)


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The file a run on ``output`` holds an exclusive ``flock`` on: one writer per output."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


def output_columns(specs: Iterable[TaskSpec]) -> list[str]:
    """The output header for a suite: ``id``, ``task``, per dimension ``pred_<dim>`` and ``prob_<dim>_<k>``,
    ``confidence``, ``route`` (``auto`` / ``human``, :mod:`scoreplex.decoding`). Dimensions in order of first
    appearance; a name shared by tasks gets its largest class count."""
    classes: dict[str, int] = {}
    for spec in specs:
        for dim in spec.dimensions:
            classes[dim.name] = max(classes.get(dim.name, 0), dim.num_classes)
    columns = ["id", "task"]
    for name, k in classes.items():
        columns += [f"pred_{name}"] + [f"prob_{name}_{i}" for i in range(k)]
    return columns + ["confidence", "route"]


def pred_types(specs: Iterable[TaskSpec]) -> dict[str, str]:
    """``pred_<dim>`` column -> ``int``, ``float`` or ``string``: the type its scores take in every task that has the
    dimension (a scale with fractional points makes it ``float``, one of letters or words ``string``)."""
    rank = {"int": 0, "float": 1, "string": 2}
    out: dict[str, str] = {}
    for spec in specs:
        for dim in spec.dimensions:
            values = dim.values
            kind = (
                "string"
                if any(isinstance(v, str) for v in values)
                else "float"
                if any(isinstance(v, float) for v in values)
                else "int"
            )
            col = f"pred_{dim.name}"
            out[col] = max(out.get(col, "int"), kind, key=rank.__getitem__)
    return out


def input_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Name, size, mtime and SHA-256 of the first :data:`FINGERPRINT_BYTES` of a file: cheap, and it changes when
    the file is edited, replaced or appended to."""
    stat = os.stat(path)
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(FINGERPRINT_BYTES)).hexdigest()
    return {"name": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head}


def estimate_rows(path: str | os.PathLike[str], fmt: str) -> int | None:
    """Records in a file, for the progress bar: exact for Parquet (metadata), the line count for CSV/TSV (less the
    header) and JSON Lines, which overcounts blank lines and texts spanning lines. None if it cannot tell."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:  # an estimate only: iter_table reports an unreadable file
            return None
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(lines - (fmt != "jsonl"), 0)


# -- the output and its progress file --------------------------------------------------------------------------------


@contextlib.contextmanager
def _space_for(path: Path, target: Path, rows_done: int) -> Iterator[None]:
    """Turn a full disk (or quota) while writing ``path`` into one NoSpaceError saying how to go on."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE or isinstance(exc, ScoreplexError):
            raise
        kept = f"the {rows_done} rows committed before it are kept" if rows_done else "no rows were committed yet"
        error = NoSpaceError(
            f"no space left writing {path} ({exc.strerror or 'disk full'}); {kept}. Free some space (or choose an "
            f"output on another disk) and re-run the same command: it resumes {target} where it stopped."
        )
        error.errno = exc.errno  # (no filename: OSError would then format the message itself)
        raise error from exc


def _holder(fd: int) -> str:
    """`` (pid N)`` as written into a lock file by the process holding it, or ``""``."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def _one_writer(target: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``<target>.lock`` for the block, or raise ResumeError at once.

    The lock belongs to the open file, so it dies with the process (``kill -9`` included): a lock file left behind
    blocks nobody. It is removed on exit while still locked; a process that opened it before the removal finds the
    path gone or replaced once it gets the lock, and retries on the current file.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks (documented limitation)
        yield
        return
    path = lock_path(target)
    for _ in range(10):
        with _space_for(path, target, 0):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ResumeError(
                f"another process{holder} is writing {target} (it holds {path}); two runs on one output would "
                "write rows twice. Wait for it to finish (or stop it), then re-run to resume; or choose another "
                "output."
            ) from None
        except OSError as exc:  # a file system without flock (some network mounts)
            os.close(fd)
            _LOG.warning("cannot lock %s (%s): make sure no other process writes %s", path, exc.strerror, target)
            yield
            return
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # locked a file its last holder had removed: lock the one at the path now
    else:
        raise ResumeError(f"could not lock {path}: other runs on {target} keep replacing it. Try again.")
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the pid only improves the message of a refused run
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked (see above)
        os.close(fd)


def _fsync_replace(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    try:  # make the rename itself durable where directories can be fsync'ed (POSIX)
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_durable(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file, fsync it, rename it onto ``path``: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_progress(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The progress record of an unfinished run on ``output``, or None if there is none."""
    path = progress_path(output)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResumeError(
            f"the progress file {path} is corrupt ({exc}); pass --restart (restart=True) to score {output} from the "
            "start."
        ) from exc
    if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT:
        raise ResumeError(f"{path} is not a scoreplex progress file; move it away or pass --restart.")
    return data


def _differences(saved: dict[str, Any], job: dict[str, Any]) -> list[str]:
    names = {"input": "input file", "suite": "suite", "options": "reading options", "columns": "output header"}
    out = []
    for key, what in names.items():
        if saved.get(key) == job[key]:
            continue
        if key == "input":
            changed = [k for k in job["input"] if (saved.get("input") or {}).get(k) != job["input"][k]]
            what += f" ({', '.join(changed)} differ)"
        elif key == "options":
            old = saved.get("options") or {}
            what += " (" + ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in job[key].items() if old.get(k) != v)
            what += ")"
        out.append(what)
    return out


def encode_rows(rows: Sequence[Row], columns: Sequence[str], fmt: str, *, header: bool = False) -> bytes:
    """UTF-8 lines of output ``rows`` as the output file holds them: ``fmt`` ``csv`` / ``tsv`` (a header line first
    when ``header``; an absent cell empty) or ``jsonl`` (one object a line, absent cells ``null``; also a Parquet
    output's staging format). Every writer of score rows formats them here, so their files agree byte for byte."""
    if fmt == "jsonl":
        text = "".join(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False) + "\n" for r in rows)
        return text.encode("utf-8")
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=_DELIMITERS[fmt], lineterminator="\n")  # as write_table
    if header:
        writer.writerow(columns)
    writer.writerows(["" if r.get(c) is None else r.get(c) for c in columns] for r in rows)
    return buf.getvalue().encode("utf-8")


class _Output:
    """The file rows are appended to (the output, or a Parquet output's staging file), and its progress file."""

    def __init__(
        self, target: Path, fmt: str, columns: list[str], job: dict[str, Any], types: dict[str, str] | None = None
    ) -> None:
        self.target, self.fmt, self.columns, self.job = target, fmt, columns, job
        self.types = types or {}  # pred_<dim> -> int / float / string (pred_types), for a Parquet output
        self.stream = staging_path(target) if fmt == "parquet" else target
        self.line_fmt = "jsonl" if fmt == "parquet" else fmt
        self.progress = progress_path(target)
        self.fh: io.BufferedRandom | None = None
        self.rows_done = 0
        """Records committed (output flushed and recorded in the progress file)."""

    def resume(self, offset: int, rows_done: int) -> None:
        """Reopen after ``offset`` bytes, dropping anything written after the last commit."""
        self.fh = open(self.stream, "r+b")
        self.fh.truncate(offset)
        self.fh.seek(offset)
        self.rows_done = rows_done

    def encode(self, rows: Sequence[Row], *, header: bool = False) -> bytes:
        return encode_rows(rows, self.columns, self.line_fmt, header=header)

    def commit(self, rows: Sequence[Row], rows_done: int, last_row: int, chunk_rows: int) -> None:
        """Append ``rows`` durably, then record that the first ``rows_done`` records (up to ``last_row``) are done."""
        data = self.encode(rows, header=self.fh is None)
        with _space_for(self.stream, self.target, self.rows_done):
            if self.fh is None:  # the first commit of a fresh run creates (or truncates) the file
                self.fh = open(self.stream, "w+b")
            self.append(data)
        state = {
            "format": PROGRESS_FORMAT,
            "version": PROGRESS_VERSION,
            **self.job,
            "rows_done": rows_done,
            "last_row": last_row,
            "bytes": self.fh.tell(),
            "chunk_rows": chunk_rows,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with _space_for(self.progress, self.target, self.rows_done):
            _write_json_durable(self.progress, state)
        self.rows_done = rows_done

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end of the stream and make it durable (flush + fsync)."""
        self.fh.write(data)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            fh, self.fh = self.fh, None
            try:
                fh.close()
            except OSError:  # flushing bytes of a failed write, past the last commit: a resume truncates them anyway
                pass

    def finish(self) -> None:
        """Complete the output (convert a staged Parquet one), then drop the progress and staging files."""
        self.close()
        if self.fmt == "parquet":
            with _space_for(self.target, self.target, self.rows_done):
                _jsonl_to_parquet(self.stream, self.target, self.columns, self.types)
        self.progress.unlink(missing_ok=True)
        if self.stream != self.target:
            self.stream.unlink(missing_ok=True)


def _jsonl_to_parquet(
    source: Path, target: Path, columns: list[str], types: dict[str, str] | None = None, batch_rows: int = 65536
) -> None:
    """Convert the staging JSON Lines into ``target`` a batch at a time, via a temporary file renamed into place.
    ``types``: ``pred_<dim>`` -> ``int`` (default), ``float`` or ``string`` (:func:`pred_types`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = types or {}
    texts = {c for c, t in types.items() if t == "string"}  # scores of a text scale: every value as text

    def kind(col: str) -> pa.DataType:
        if col in ("id", "task", "route") or col in texts:
            return pa.string()
        if col.startswith("pred_"):
            return pa.float64() if types.get(col) == "float" else pa.int64()
        return pa.float64()

    schema = pa.schema([(c, kind(c)) for c in columns])
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer, open(source, encoding="utf-8") as fh:
            batch: list[Row] = []
            for line in fh:
                row = json.loads(line)
                for col in texts:
                    if row.get(col) is not None:
                        row[col] = str(row[col])
                batch.append(row)
                if len(batch) == batch_rows:
                    writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- progress bar ----------------------------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on stderr (rows, rows/s, ETA), or nothing when disabled. The rate counts from
    :meth:`start_clock` (after the model loads), so it is the scoring rate."""

    def __init__(self, enabled: bool, label: str, total: int | None, done: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total
        self.start = self.done = done
        self.t0 = time.perf_counter()
        self.bar = self.task = None

    def start_clock(self) -> None:
        self.start, self.t0 = self.done, time.perf_counter()

    @property
    def rate(self) -> float:
        seconds = time.perf_counter() - self.t0
        return (self.done - self.start) / seconds if seconds > 0 else float("nan")

    def __enter__(self) -> _Progress:
        self.bar = progress_bar(self.enabled, rate=True).__enter__()
        self.task = self.bar.add_task(self.label, total=self.total, completed=self.done, rate="")
        return self

    def advance(self, n: int) -> None:
        self.done += n
        # the total is a line count for CSV / JSON Lines: never let the bar run past it
        total = None if self.total is None else max(self.total, self.done)
        self.bar.update(self.task, completed=self.done, total=total, rate=f"{self.rate:,.0f} rows/s")

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.bar.update(self.task, total=self.done)
        self.bar.__exit__(*exc)


# -- the stream ------------------------------------------------------------------------------------------------------


def _plan(output: _Output, saved: dict[str, Any] | None, options: StreamOptions, log) -> dict[str, Any] | None:
    """Decide between a fresh start (returns None) and a resume (returns the saved progress), or refuse."""
    target, stream = output.target, output.stream
    if options.overwrite or (saved is not None and options.restart):
        if saved is not None:
            log(f"starting over: discarding the unfinished run on {target} ({saved.get('rows_done', 0)} rows)")
        output.progress.unlink(missing_ok=True)
        if stream != target or options.restart:
            stream.unlink(missing_ok=True)  # a partial output (or staging file); a finished one is replaced later
        return None
    if saved is None:
        if target.exists():
            raise ResumeError(
                f"{target} already exists and has no progress file ({output.progress.name}), so it is not an "
                "unfinished run to resume. Pass --overwrite (overwrite=True) to replace it, or choose another output."
            )
        stream.unlink(missing_ok=True)  # a staging file left by a run that never committed a chunk
        return None
    diffs = _differences(saved, output.job)
    if diffs:
        raise ResumeError(
            f"cannot resume the unfinished run on {target} recorded in {output.progress}: this command's "
            f"{'; '.join(diffs)} differ from that run's. Delete {target} and {output.progress}, or pass --restart "
            "(restart=True) to start over; or re-run with the original input, suite and options."
        )
    if not stream.exists():
        log(f"{stream} is gone: starting over")
        output.progress.unlink(missing_ok=True)
        return None
    if stream.stat().st_size < saved["bytes"]:
        raise ResumeError(
            f"{stream} holds {stream.stat().st_size} bytes but its progress file records {saved['bytes']}: it was "
            "changed after the interruption. Pass --restart (restart=True) to score it from the start."
        )
    return saved


@dataclass(frozen=True)
class ScoringRun:
    """A scoring run of a file, checked and opened by :func:`open_run` before any row is read."""

    suite: Any
    """The open :class:`~scoreplex.suite.Suite` (it holds at least one task)."""
    specs: dict[str, TaskSpec]
    """Task id -> spec, for every task of the suite."""
    columns: ColumnMap
    """The input's columns."""
    source: Path
    """The input file."""
    target: Path
    """The output file (not a folder, not the input; its folder exists)."""
    in_fmt: str
    """The input's format (``readers.FORMATS``)."""
    out_fmt: str
    """The output's format, from its extension."""
    chunks: Iterator[Any]
    """The input's :class:`~scoreplex.data.readers.Table` chunks of ``chunk_rows`` records, not read yet."""
    header: list[str]
    """The output's columns (:func:`output_columns`)."""

    def row_check(self, chunk) -> RowCheck:
        """The check of every input row (task, id, text) made against the first chunk's columns, with the
        scoring run's fix for an unknown task: the same for every scorer of a file."""
        return RowCheck(chunk, self.columns, self.specs, unknown_fix=_UNKNOWN_TASK_FIX, most=20)


def open_run(
    suite, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], columns, options: StreamOptions
) -> ScoringRun:
    """The checks every scorer of a file makes (locally or on a cluster) before reading a row: ``columns`` (a
    ColumnMap or None for the default) and ``suite`` (a folder or a Suite) with tasks; the output is not a folder, not
    the input (nor its progress, staging or lock file) and its folder can be made; the input opens in its format.

    Raises ConfigError, or DataError for an input that cannot be opened (missing, bad format)."""
    from scoreplex.suite import Suite

    cmap = columns if columns is not None else ColumnMap()
    if not isinstance(cmap, ColumnMap):
        raise ConfigError(f"columns must be a ColumnMap, got {type(cmap).__name__}.")
    suite = suite if isinstance(suite, Suite) else Suite.open(suite, verify=False)  # modules verify on load
    specs = {tid: suite.spec(tid) for tid in suite.task_ids}
    if not specs:
        raise ConfigError(f"the suite at {suite.root} holds no tasks; train some with `scoreplex train`.")
    source, target = Path(input_path), Path(output_path)
    if target.is_dir():
        raise ConfigError(f"the output {target} is a folder; give a file path, e.g. {target / 'scores.csv'}.")
    in_fmt, out_fmt = resolve_format(source, options.fmt), resolve_format(target)
    prepare_output_folder(target.parent, output=target)
    chunks = iter_table(
        source,
        fmt=in_fmt,
        encoding=options.encoding,
        quoting=options.quoting,
        chunk_rows=options.chunk_rows,
        delimiter=options.delimiter,
    )
    for path in (target, staging_path(target), progress_path(target), lock_path(target)):
        if path.exists() and os.path.samefile(path, source):
            raise ConfigError(f"the output {target} would overwrite the input {source}; choose another output file.")
    return ScoringRun(suite, specs, cmap, source, target, in_fmt, out_fmt, chunks, output_columns(specs.values()))


def stream_scores(
    suite,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    backbone: str | os.PathLike[str] | None = None,
    scorer: ScorerSource | None = None,
    options: StreamOptions = StreamOptions(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every response of ``input_path`` with ``suite`` (a folder or an open Suite) into ``output_path``,
    streaming and resumable (module docstring). The output's extension picks its format. ``scorer`` scores the
    rows (default: :func:`scoreplex.scorer.open_scorer` on the suite with ``backbone``).

    Returns ``{"rows", "tasks", "scored", "resumed_from", "seconds", "rows_per_second", "output", "truncation"}``:
    rows in the output, distinct tasks, rows scored by this call, rows found done at the start (0 for a fresh run),
    wall time, rows scored per second once the model was loaded, and the :class:`~scoreplex.encoding.LengthCounts`
    of the responses scored by this call (None for a remote scorer). Raises DataError naming the row for a bad row
    (the chunks before it stay committed), ResumeError when the output belongs to another run or another process is
    writing it, ConfigError (before any reading or scoring) when the output cannot be created where it is asked for, and
    NoSpaceError when the disk fills up (the chunks before stay committed: the same call resumes once space is freed).
    """
    log = log or _LOG.info
    t0 = time.perf_counter()
    run = open_run(suite, input_path, output_path, columns, options)
    suite, specs, cmap, source, target = run.suite, run.specs, run.columns, run.source, run.target
    chunks, header = run.chunks, run.header
    in_fmt, out_fmt = run.in_fmt, run.out_fmt
    manifest = json.dumps(suite.manifest, sort_keys=True).encode("utf-8")
    job = {
        "input": input_fingerprint(source),
        "suite": {"manifest_sha256": hashlib.sha256(manifest).hexdigest(), "method": suite.method},
        "options": {
            "text": cmap.text,
            "task": cmap.task,
            "task_id": cmap.task_id,
            "id": cmap.id,
            "fmt": in_fmt,
            "encoding": options.encoding,
            "quoting": options.quoting,
            "delimiter": options.delimiter,
            "output_format": out_fmt,
        },
        "columns": header,
    }
    with _one_writer(target):  # held until the output is complete, or the run fails
        output = _Output(target, out_fmt, header, job, pred_types(specs.values()))
        saved = _plan(output, read_progress(target), options, log)
        resumed = int(saved["rows_done"]) if saved else 0
        if saved:
            output.resume(int(saved["bytes"]), resumed)
            log(f"resuming {target}: {resumed} rows already scored (up to row {saved['last_row']} of {source})")
        if scorer is None:

            def scorer():
                from scoreplex.scorer import open_scorer

                return open_scorer(suite, backbone, batch_size=options.batch_size)

        source_of_scorer, scorer = scorer, None
        check: RowCheck | None = None
        records = 0
        try:
            total = estimate_rows(source, in_fmt) if options.progress else None
            with _Progress(options.progress, f"scoring {source.name}", total, resumed) as bar:
                for chunk in chunks:
                    # columns are checked once, against the first chunk's (for JSON Lines, the keys of its records)
                    check = check or run.row_check(chunk)
                    ids, task_ids, texts, rows = [], [], [], []
                    for record, row in zip(chunk, chunk.rows, strict=True):
                        task_id, rid, text = check(record, row)  # rows done before are re-checked, for their ids
                        records += 1
                        if records < resumed:
                            continue
                        if records == resumed:
                            if row != saved["last_row"]:
                                raise ResumeError(
                                    f"the progress file records row {saved['last_row']} as the last row scored, but "
                                    f"record {records} of {source} is row {row}: the input changed. Pass --restart."
                                )
                            continue
                        ids.append(rid)
                        task_ids.append(task_id)
                        texts.append(text)
                        rows.append(row)
                    if not ids:
                        continue
                    if scorer is None:  # loaded once the first chunk checks out, so bad input fails fast
                        scorer = source_of_scorer() if callable(source_of_scorer) else source_of_scorer
                        bar.start_clock()
                    scored = score_chunk(scorer, ids, task_ids, texts)
                    output.commit(scored, records, rows[-1], options.chunk_rows)
                    bar.advance(len(ids))
            if records < resumed:
                raise ResumeError(
                    f"the progress file records {resumed} rows done but {source} now holds {records}: the input "
                    "changed. Pass --restart (restart=True) to score it from the start."
                )
            if records == 0:
                raise DataError(
                    "the file has no responses (no rows after the header).", file=str(source), fix="add rows."
                )
            output.finish()
        finally:
            output.close()
        return {
            "rows": records,
            "tasks": len(check.tasks) if check is not None else 0,
            "scored": records - resumed,
            "resumed_from": resumed,
            "seconds": time.perf_counter() - t0,
            "rows_per_second": bar.rate if scorer is not None else 0.0,
            "output": str(target),
            # responses scored now that were longer than the suite's max_length (a local scorer counts them)
            "truncation": getattr(scorer, "length_counts", None),
        }


def score_chunk(scorer: MixedScorer, ids: list[str], task_ids: list[str], texts: list[str]) -> list[Row]:
    """Score one chunk's rows into output rows (a seam for tests that interrupt a run between chunks)."""
    return score_rows(scorer, ids, task_ids, texts)


def score_file(
    suite,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    backbone: str | None = None,
    scorer: ScorerSource | None = None,
    encoding: str = "utf-8",
    fmt: str | None = None,
    quoting: str = "minimal",
    delimiter: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    batch_size: int | None = None,
    restart: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every response in ``input_path`` with the suite and write one row per response to ``output_path``.

    The output has the response id, the task, per rubric dimension the predicted score and the probability of every
    class, and a confidence (the smallest top-class probability over the dimensions), one row per response in input
    order; a file mixing tasks gets the columns of every task, empty where they do not apply. The file is read,
    scored and written ``chunk_rows`` rows at a time, so it may be larger than memory, and the run is resumable:
    after an interruption (Ctrl-C, ``kill -9``) the same call continues where it stopped, without losing or
    repeating rows. An existing output is refused unless it is an unfinished run of the same input, suite and
    options (then it is resumed) or ``overwrite=True``; ``restart=True`` discards an unfinished run. Keyword
    arguments are :class:`StreamOptions`' fields; see :func:`stream_scores` for the returned summary.
    """
    options = StreamOptions(
        chunk_rows=chunk_rows,
        batch_size=batch_size,
        fmt=fmt,
        encoding=encoding,
        quoting=quoting,
        delimiter=delimiter,
        restart=restart,
        overwrite=overwrite,
        progress=progress,
    )
    return stream_scores(
        suite, input_path, output_path, columns=columns, backbone=backbone, scorer=scorer, options=options, log=log
    )
