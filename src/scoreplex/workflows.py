"""File-level workflows behind the CLI: read a data file into tasks, score a file, run the demo."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scoreplex.data.dataset import TaskData
from scoreplex.data.readers import ColumnMap, read_responses, write_table
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
) -> dict[str, Any]:
    """Score every response in ``input_path`` with the suite and write one row per response to ``output_path``.

    The output has the response id, the task, per rubric dimension the predicted score and the probability of every
    class, and a confidence (the smallest top-class probability over the dimensions). Rows are grouped by task, in file
    order within each task.
    """
    from scoreplex.pipeline import SuiteScorer
    from scoreplex.suite import Suite

    suite = Suite.open(suite_path)
    specs = {tid: suite.spec(tid) for tid in suite.task_ids}
    data = read_dataset(input_path, columns=columns, specs=specs, encoding=encoding, require_labels=False)
    scorer = SuiteScorer(suite, backbone=backbone)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for task_id, task in data.items():
        rows += scorer.predict(task_id, task.texts, task.ids).rows()
    write_table(output_path, rows)
    return {"rows": len(rows), "tasks": len(data), "seconds": time.perf_counter() - t0, "output": str(output_path)}


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
    scored = score_file(out / "suite", paths["test"], out / "scores.csv", columns=columns, backbone=backbone)
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
