"""The demo: generate the demo items, train a LoRA suite on them, evaluate it on held-out responses, score a file."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from scoreplex.data.load import read_dataset
from scoreplex.data.readers import ColumnMap
from scoreplex.streaming import score_file


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
    from scoreplex.scorer import SuiteScorer, evaluate_suite
    from scoreplex.training.suite import TrainOptions, default_config, train_suite

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
            f"({r.fit.epochs_run} epochs, {r.seconds:.0f} s, module {r.module_bytes:,} B)"
        ),
    )
    train_seconds = time.perf_counter() - t0
    scorer = SuiteScorer(suite, backbone=backbone)
    report = evaluate_suite(scorer, test)
    scored = score_file(suite, paths["test"], out / "scores.csv", columns=columns, backbone=backbone, overwrite=True)
    report.update(
        train_seconds=train_seconds, suite=str(out / "suite"), scores=scored["output"], suite_bytes=suite.total_bytes
    )
    return report
