"""File-level workflows behind the CLI: read a data file into tasks, score a file, run the demo."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
) -> dict[str, TaskData]:
    """Read a response file; task specs come from ``specs``, a tasks JSON file, or are inferred from the scores."""
    if specs is None and tasks_file is not None:
        specs = {s.id: s for s in load_task_specs(str(tasks_file))}
    return read_responses(
        path, columns or ColumnMap(), specs, fmt=fmt, encoding=encoding, require_labels=require_labels
    )


def score_file(
    suite_path: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    backbone: str | None = None,
    encoding: str = "utf-8",
    fmt: str | None = None,
    quoting: str = "minimal",
    chunk_rows: int = 1024,
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
    options (then it is resumed) or ``overwrite=True``; ``restart=True`` discards an unfinished run. See
    :mod:`scoreplex.streaming` and :func:`scoreplex.streaming.stream_scores` for the returned summary.
    """
    from scoreplex.streaming import StreamOptions, stream_scores

    options = StreamOptions(
        chunk_rows=chunk_rows,
        batch_size=batch_size,
        fmt=fmt,
        encoding=encoding,
        quoting=quoting,
        restart=restart,
        overwrite=overwrite,
        progress=progress,
    )
    return stream_scores(
        suite_path, input_path, output_path, columns=columns, backbone=backbone, options=options, log=log
    )


def run_demo(
    out: str | os.PathLike[str] = "build/demo",
    *,
    backbone: str = "minilm",
    epochs: int = 4,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Generate the demo items, train a LoRA suite on them, evaluate it on held-out responses, score a file."""
    from scoreplex.data.demo import demo_column_labels, demo_specs, write_demo
    from scoreplex.pipeline import SuiteScorer, TrainOptions, default_config, evaluate_suite, train_suite

    out = Path(out)
    paths = write_demo(out / "data")
    specs = {s.id: s for s in demo_specs()}
    labels = demo_column_labels(specs.values())
    columns = ColumnMap(labels=labels, second={d: f"{d}_rater2" for d in labels})
    train = read_dataset(paths["train"], columns=columns, specs=specs)
    test = read_dataset(paths["test"], columns=columns, specs=specs)
    log(
        f"demo data: {sum(map(len, train.values()))} training and {sum(map(len, test.values()))} test responses, "
        f"{len(specs)} tasks ({sum(s.is_multilabel for s in specs.values())} multi-label) in {out / 'data'}"
    )
    t0 = time.perf_counter()
    options = TrainOptions(
        method="lora", backbone=backbone, config=default_config("lora", epochs=epochs), progress=progress
    )
    suite = train_suite(
        train,
        out / "suite",
        options,
        on_task_done=lambda r: log(
            f"  trained {r.task_id}: validation QWK {r.val_metrics['qwk']:.3f} "
            f"({r.fit.epochs_run} epochs, {r.fit.seconds:.0f} s, module {r.module_bytes:,} B)"
        ),
    )
    train_seconds = time.perf_counter() - t0
    scorer = SuiteScorer(suite, backbone=backbone)
    report = evaluate_suite(scorer, test)
    scored = score_file(
        out / "suite", paths["test"], out / "scores.csv", columns=columns, backbone=backbone, overwrite=True
    )
    report.update(
        train_seconds=train_seconds, suite=str(out / "suite"), scores=scored["output"], suite_bytes=suite.total_bytes
    )
    return report


def evaluation_table(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows ``[task, n, QWK, accuracy, exact match, human QWK]`` for printing."""
    rows = []
    for tid, m in report["tasks"].items():
        human = m.get("human", {}).get("qwk")
        rows.append(
            [
                tid,
                str(m.get("n", "")),
                f"{m['qwk']:.3f}",
                f"{m['accuracy']:.3f}",
                "" if m.get("exact_match") is None else f"{m['exact_match']:.3f}",
                "" if human is None else f"{human:.3f}",
            ]
        )
    return rows


def check_nonempty(data: Mapping[str, TaskData], path: str | os.PathLike[str]) -> None:
    if not data:
        raise DataError("the file holds no responses.", file=str(path), fix="check the file and its column names.")
