"""Batch scoring on Ray Data: ``scoreplex score SUITE DATA OUTPUT --ray ADDRESS --ray-actors N``.

The output is the local command's (:func:`scoreplex.streaming.score_file`) byte for byte: same columns, same rows in
input order, same values. That holds by construction, because each piece is the local command's own:

* **Reading and checking** is done by the driver with the project's readers, chunk by chunk
  (:func:`~scoreplex.data.readers.iter_table` and :class:`~scoreplex.data.readers.RowCheck`, as the local command
  does), not by Ray Data's ``read_csv`` / ``read_parquet``. So a bad file fails the same way (a DataError naming the
  file, row and column; exit code 2 on the CLI) before any scoring, ids are unique over the whole file, generated
  ids are ``f"{file stem}:{row}"``, and the delimiter sniffing, quoting, encodings and JSON Lines records are the
  local ones. Ray Data's readers parse CSV differently (pyarrow) and would see a file in shards that cannot check ids
  across shards. The cost is one process parsing the file (far faster than scoring: ~10^5 rows/s against ~10^2
  rows/s per scoring core) and the texts held in Ray's object store (about 0.5 KB a response; it spills to disk).
* **Scoring** is a :class:`ray.data.Dataset` with one block per checked chunk of ``chunk_rows`` rows, mapped with
  ``map_batches`` (``batch_size=chunk_rows``, an ``ActorPoolStrategy`` of ``actors``) over :class:`ChunkScorer`: each
  actor opens the suite and builds its scorer (:func:`scoreplex.scorer.open_scorer`, the engine for a suite whose
  tasks share a backbone pass) once, in ``__init__``, and then scores whole chunks of mixed tasks, the very chunks the
  local command scores (so even the length-sorted micro-batches inside a chunk are the same), formatting each row with
  :func:`scoreplex.streaming.encode_rows`, the local writer's formatter.
* **Writing** is done by the driver: every formatted row carries its row index, the rows are written in index order
  (``preserve_order`` keeps Ray Data's output in order; a reorder buffer makes sure of it) to a temporary file that
  is renamed onto the output; a Parquet output is converted from JSON Lines by the local command's converter.

Not resumable, unlike the local command: an interrupted ``--ray`` run leaves no output and starts over when re-run.
The suite (and a ``backbone`` path) must be readable at the same path on every node of the cluster (a shared file
system); on one machine it always is.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreplex.errors import ConfigError, DataError, ResumeError

DEFAULT_ADDRESS = "local"


@dataclass(frozen=True)
class RayScoring:
    """Where and how wide :func:`score_file_ray` scores."""

    address: str = DEFAULT_ADDRESS
    """``local`` starts a Ray cluster in this process, ``auto`` joins the one started on this machine by
    ``ray start --head``, anything else is a cluster address (``host:6379``, ``ray://host:10001``);
    :func:`scoreplex.cluster.connect`."""
    actors: int = 1
    """Scoring actors (each holds one copy of the suite and its backbone: ~100 MB of memory for MiniLM)."""
    cpus_per_actor: float = 1.0
    """Logical CPUs each actor reserves; its torch threads are this rounded down (at least 1)."""
    num_cpus: int | None = None
    """Logical CPUs of a cluster started here (``address="local"``); None: the machine's cores. Ignored when
    joining a cluster."""

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise ConfigError(f"address={self.address!r}; give 'local', 'auto' or a Ray cluster address.")
        if not isinstance(self.actors, int) or isinstance(self.actors, bool) or self.actors < 1:
            raise ConfigError(f"actors={self.actors!r}; give a number of scoring actors >= 1 (--ray-actors).")
        if not isinstance(self.cpus_per_actor, int | float) or not (
            math.isfinite(self.cpus_per_actor) and self.cpus_per_actor > 0
        ):
            raise ConfigError(
                f"cpus_per_actor={self.cpus_per_actor!r}; give a positive number of CPUs, e.g. 1 "
                "(--ray-cpus-per-actor)."
            )
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            raise ConfigError(f"num_cpus={self.num_cpus!r}; give a CPU count >= 1, or None for the machine's cores.")

    @property
    def threads(self) -> int:
        """Torch threads of one actor: its CPU allotment rounded down, at least 1."""
        return max(1, math.floor(self.cpus_per_actor))


class ChunkScorer:
    """A Ray Data actor: scores chunks of checked rows into formatted output lines.

    Made once per actor (the suite opened and the scorer built here, not per batch). Called on a batch with columns
    ``index`` (int64, the row's position in the input), ``id``, ``task``, ``text`` (strings), it returns a table with
    ``index``, ``line`` (binary: the row as :func:`scoreplex.streaming.encode_rows` writes it in ``line_fmt``),
    ``ready`` and ``done`` (float64, Unix seconds: when this actor had loaded the suite, when it finished the batch),
    from which the driver tells actor start-up apart from the scoring rate.
    """

    def __init__(
        self,
        suite: str,
        backbone: str | None,
        batch_size: int | None,
        columns: list[str],
        line_fmt: str,
        threads: int,
    ) -> None:
        import torch

        from scoreplex.scorer import open_scorer

        torch.set_num_threads(threads)  # the actor's CPU allotment, not the node's cores
        self.scorer = open_scorer(suite, backbone, batch_size=batch_size)
        self.columns, self.line_fmt = columns, line_fmt
        self.ready = time.time()  # wall clock: comparable across the nodes of a cluster (NTP), unlike perf_counter

    def __call__(self, batch):
        import pyarrow as pa

        from scoreplex.predictions import score_rows
        from scoreplex.streaming import encode_rows

        ids, tasks, texts = (batch[c].to_pylist() for c in ("id", "task", "text"))
        rows = score_rows(self.scorer, ids, tasks, texts)
        lines = [encode_rows([row], self.columns, self.line_fmt) for row in rows]
        n = len(lines)
        return pa.table(
            {
                "index": batch["index"],
                "line": pa.array(lines, pa.binary()),
                "ready": pa.array([self.ready] * n, pa.float64()),
                "done": pa.array([time.time()] * n, pa.float64()),
            }
        )


def score_file_ray(
    suite,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    ray: RayScoring = RayScoring(),
    columns=None,
    backbone: str | os.PathLike[str] | None = None,
    scorer: None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score every response of ``input_path`` with ``suite`` into ``output_path`` on a Ray cluster (module
    docstring): the local :func:`scoreplex.streaming.score_file`'s output, from ``ray_options.actors`` actors.

    Args:
        suite: a suite folder or an open :class:`~scoreplex.suite.Suite`.
        input_path: CSV, TSV, JSON Lines or Parquet responses, any mix of the suite's tasks.
        output_path: the output; its extension picks the format (CSV, TSV, JSON Lines, Parquet).
        ray: the cluster and the actor pool.
        columns: the input's :class:`~scoreplex.data.readers.ColumnMap` (default: ``text``, ``task``, ``id``).
        backbone: the backbone (default: the suite's); a path must exist on every node.
        scorer: must be None: the actors build their scorers (the argument is here so that a caller of
            :func:`~scoreplex.streaming.score_file` can call this function with the same arguments).
        log: where progress messages go (default: this module's logger).
        **options: :class:`~scoreplex.streaming.StreamOptions`' fields, as :func:`~scoreplex.streaming.score_file`
            takes them (reading, ``chunk_rows``, ``batch_size``, ``overwrite``, ``progress``); ``restart=True`` is
            refused: a Ray run has nothing to resume.

    Returns:
        ``{"rows", "tasks", "scored", "resumed_from", "seconds", "startup_seconds", "actors_ready_seconds",
        "rows_per_second", "output", "truncation", "actors"}``: rows written, distinct tasks, rows scored (= rows),
        0, wall time (s), seconds from the start of scoring until the first and the last actor had loaded the suite,
        rows/s from the first actor ready to the last row scored, the output path, None (the actors' truncation
        counts are not gathered) and the actor count.

    Raises:
        DataError: a bad input row (naming file, row and column), or an input without rows; nothing is written.
        ResumeError: the output exists (or an unfinished local run on it does) and ``overwrite`` is not set, or
            another run is writing it.
        ConfigError: Ray is missing, the cluster cannot be reached or has fewer CPUs than the actors need, the output
            is a folder or the input itself, ``restart`` was asked for, or ``scorer`` given.
    """
    import logging

    from scoreplex import streaming

    log = log or logging.getLogger(__name__).info
    options = streaming.StreamOptions(**options)
    ray_options = ray
    if scorer is not None:
        raise ConfigError("a Ray run builds one scorer per actor from the suite; give scorer=None.")
    if options.restart:
        raise ConfigError("--restart does not apply to --ray: a Ray run is not resumable; use --overwrite.")
    t0 = time.perf_counter()
    run = streaming.open_run(suite, input_path, output_path, columns, options)
    suite, specs, source, target, header = run.suite, run.specs, run.source, run.target, run.header
    out_fmt = run.out_fmt
    line_fmt = "jsonl" if out_fmt == "parquet" else out_fmt  # Parquet goes through JSON Lines, as locally

    with streaming._one_writer(target):  # the local command's lock: one writer per output, local or Ray
        leftovers = (streaming.progress_path(target), streaming.staging_path(target))
        if options.overwrite:
            for path in leftovers:  # an unfinished local run on this output, now replaced
                path.unlink(missing_ok=True)
        elif target.exists() or leftovers[0].exists():
            raise ResumeError(
                f"{target} already exists (or an unfinished run on it does: {leftovers[0].name}); pass --overwrite "
                "(overwrite=True) to replace it, or choose another output."
            )
        cluster, refs, check, records = None, [], None, 0
        for chunk in run.chunks:
            check = check or run.row_check(chunk)
            checked = [check(record, row) for record, row in zip(chunk, chunk.rows, strict=True)]
            if not checked:
                continue
            if cluster is None:  # the cluster starts once the first chunk checks out, so bad input fails fast
                cluster = _connect(ray_options, log)
            refs.append(cluster.put(_chunk_table(records, checked)))
            records += len(checked)
        if records == 0:
            raise DataError("the file has no responses (no rows after the header).", file=str(source), fix="add rows.")
        scorer_args = {
            "suite": str(Path(suite.root).resolve()),
            "backbone": None if backbone is None else str(backbone),
            "batch_size": options.batch_size,
            "columns": header,
            "line_fmt": line_fmt,
            "threads": ray_options.threads,
        }
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.{line_fmt}.tmp")
        try:
            with open(tmp, "wb") as fh:
                if line_fmt != "jsonl":
                    fh.write(streaming.encode_rows([], header, line_fmt, header=True))
                timing = _write_in_order(
                    refs, scorer_args, ray_options, options, fh, records, f"scoring {source.name} on Ray"
                )
                fh.flush()
                os.fsync(fh.fileno())
            if out_fmt == "parquet":
                streaming._jsonl_to_parquet(tmp, target, header, streaming.pred_types(specs.values()))
            else:
                streaming._fsync_replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    return {
        "rows": records,
        "tasks": len(check.tasks),
        "scored": records,
        "resumed_from": 0,
        "seconds": seconds,
        **timing,
        "output": str(target),
        "truncation": None,
        "actors": ray_options.actors,
    }


def _connect(ray_options: RayScoring, log: Callable[[str], None]):
    """Start or join the cluster and check that it has the CPUs the actor pool reserves."""
    from scoreplex.cluster import connect

    ray = connect(ray_options.address, num_cpus=ray_options.num_cpus)
    need = ray_options.actors * ray_options.cpus_per_actor
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < need:
        raise ConfigError(
            f"the Ray cluster at {ray_options.address!r} has {have:g} CPUs but {ray_options.actors} actors of "
            f"{ray_options.cpus_per_actor:g} CPUs need {need:g}; lower --ray-actors or --ray-cpus-per-actor, or add "
            "nodes."
        )
    log(f"Ray cluster: {have:g} CPUs; scoring with {ray_options.actors} actor(s) of {ray_options.cpus_per_actor:g}")
    return ray


def _chunk_table(start: int, checked: list[tuple[str, str, str]]):
    """One checked chunk as an Arrow table ``index, id, task, text`` (its rows' positions from ``start``)."""
    import pyarrow as pa

    task_ids, ids, texts = zip(*checked, strict=True)
    return pa.table(
        {
            "index": pa.array(range(start, start + len(checked)), pa.int64()),
            "id": pa.array(ids, pa.string()),
            "task": pa.array(task_ids, pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )


def _write_in_order(refs, scorer_args, ray_options, options, fh, records: int, label: str) -> dict[str, float]:
    """Score the chunks ``refs`` on the actor pool and write their lines to ``fh`` in row order.

    Returns ``startup_seconds`` (from the start of scoring until the first actor has loaded the suite),
    ``actors_ready_seconds`` (until the last one has) and ``rows_per_second`` (rows over the time from the first actor
    ready to the last row scored: the scoring rate, start-up left out; with actors starting at different times it
    includes the lag)."""
    import pyarrow.compute as pc
    from ray.data import ActorPoolStrategy, DataContext, from_arrow_refs

    from scoreplex.streaming import _Progress

    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    # in order, so that each batch is one chunk (the last, short one last) and the reorder buffer stays small
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # our own bar counts rows written
    try:
        scored = from_arrow_refs(refs).map_batches(
            ChunkScorer,
            fn_constructor_kwargs=scorer_args,
            batch_size=options.chunk_rows,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=ray_options.actors),
            num_cpus=ray_options.cpus_per_actor,
        )
        pending: dict[int, bytes] = {}
        done, start, ready, finished = 0, time.time(), set(), 0.0
        with _Progress(options.progress, label, records, 0) as bar:
            for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                if not ready:
                    bar.start_clock()
                ready.update(batch["ready"].to_pylist())  # one value per actor
                finished = max(finished, pc.max(batch["done"]).as_py())
                pending.update(zip(batch["index"].to_pylist(), batch["line"].to_pylist(), strict=True))
                before = done
                while done in pending:
                    fh.write(pending.pop(done))
                    done += 1
                bar.advance(done - before)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    if done != records or pending:  # a Ray Data or scorer bug, not user input
        raise RuntimeError(f"Ray Data returned {done + len(pending)} rows in order {done} of {records}")
    scoring = finished - min(ready)
    return {
        "startup_seconds": min(ready) - start,
        "actors_ready_seconds": max(ready) - start,
        "rows_per_second": records / scoring if scoring > 0 else float("nan"),
    }
