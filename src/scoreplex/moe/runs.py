"""What ``scoreplex distill`` and ``scoreplex adapt`` run: teachers -> student suite, and new tasks into a student."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError
from scoreplex.moe.method import MoEStudentMethod
from scoreplex.moe.model import MoEConfig
from scoreplex.moe.train import (
    StudentObjective,
    adapt_to_task,
    load_student,
    save_student,
    train_student,
    write_student_task,
)
from scoreplex.training.loop import TrainConfig

STUDENT_CONFIG = TrainConfig(**MoEStudentMethod.training_defaults)
"""The student's training settings (the ``moe`` method's defaults)."""
ADAPT_CONFIG = TrainConfig(epochs=40, lr=2e-3, patience=5)


def student_input_note(teachers_long_inputs, max_length: int, distilled: bool = True) -> str | None:
    """What a user must know when the teachers read long answers in windows: the student reads each answer's first
    ``max_length`` tokens (it has no windows mode; with ``distilled`` the teachers' targets still cover whole
    answers). None otherwise."""
    if not teachers_long_inputs.windowed:
        return None
    return (
        f"the teachers read long answers in windows ({teachers_long_inputs.pool} pooled); the MoE student has no "
        f"windows mode and reads the first {max_length} tokens of each answer"
        + (" (its distillation targets still come from the teachers' whole-answer scores)" if distilled else "")
        + ". Check the student's validation QWK on long answers before deploying it."
    )


def run_distill(
    teachers_suite,
    data: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    *,
    student_backbone: str = "minilm",
    layers: int | None = 3,
    moe: MoEConfig = MoEConfig(),
    objective: StudentObjective = StudentObjective(),
    config: TrainConfig = STUDENT_CONFIG,
    val_fraction: float = 0.1,
    progress: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Distil the teachers (a suite with a model per task) into one MoE student suite at ``out_dir``.

    ``teachers_suite`` is an open :class:`~scoreplex.suite.Suite` (or its folder). The student's encoder is
    ``student_backbone`` cut to its first ``layers`` layers (written next to the suite as ``<out>.backbone``;
    None keeps every layer). Teacher targets are cached in
    ``<out>.teacher-targets``; training checkpoints every epoch and resumes after an interruption. ``on_warning``
    receives :func:`student_input_note` before training when the teachers read windows (also in the result's
    ``notes``)."""
    from scoreplex.backbone import Backbone, truncated_backbone
    from scoreplex.data.splits import train_val_split
    from scoreplex.moe.distill import compute_teacher_targets
    from scoreplex.scorer import SuiteScorer, evaluate_suite

    out = Path(out_dir)
    if (out / "manifest.json").is_file():
        raise ConfigError(f"{out} already holds a suite; choose a new folder for the student or delete it.")
    teachers = SuiteScorer(teachers_suite)
    missing = [t for t in data if not teachers.suite.has_task(t)]
    if missing:
        raise ConfigError(f"the teachers at {teachers.suite.root} have no model for tasks {missing}; train them first.")
    note = student_input_note(teachers.long_inputs, teachers.max_length, distilled=objective.kd_weight > 0)
    if note and on_warning is not None:
        on_warning(note)
    t0 = time.perf_counter()
    splits = {t: train_val_split(d, val_fraction=val_fraction, seed=config.seed) for t, d in data.items()}
    train_sets = {t: s[0] for t, s in splits.items()}
    val_sets = {t: s[1] for t, s in splits.items()}
    targets = None
    if objective.kd_weight > 0:
        targets = compute_teacher_targets(teachers, train_sets, f"{out}.teacher-targets", progress=progress)
    path = student_backbone
    if layers is not None:
        path = truncated_backbone(student_backbone, layers, f"{out}.backbone")
    bb = Backbone.load(path)
    max_length = teachers.max_length
    student, fit = train_student(
        bb.encoder,
        bb.tokenizer,
        bb.hidden,
        train_sets,
        val_sets,
        pooling=teachers.pooling,
        max_length=max_length,
        moe=moe,
        objective=objective,
        config=config,
        teachers=targets,
        checkpoint_dir=f"{out}.checkpoints",
        progress=progress,
    )
    suite = save_student(student, out, bb.info.to_dict(), max_length)
    val = evaluate_suite(SuiteScorer(suite, bb), val_sets, progress=False)
    import shutil

    shutil.rmtree(f"{out}.checkpoints", ignore_errors=True)
    return {
        "suite": str(out),
        "validation": val,
        "best_epoch": fit.best_epoch,
        "history": fit.history,
        "bytes": suite.model_bytes,
        "teacher_bytes": sum(teachers.suite.task_bytes(t) for t in data),
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": [note] if note else [],
    }


def run_adapt(
    student_suite,
    data: Mapping[str, TaskData],
    *,
    config: TrainConfig = ADAPT_CONFIG,
    val_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, Any]:
    """Add every task of ``data`` to the student suite (an open Suite or its folder) in place: a task embedding and a
    head each, nothing else changes (the shared encoder and MoE block files are untouched)."""
    from scoreplex.data.splits import train_val_split
    from scoreplex.suite import Suite

    suite = student_suite if isinstance(student_suite, Suite) else Suite.open(student_suite)
    if not suite.method_object.capabilities.adaptable:
        raise ConfigError(
            f"{suite.root} is a {suite.method!r} suite; only a student adapts to new tasks: pass a suite made by "
            "`scoreplex distill`, or train the new tasks into this suite with `scoreplex train`."
        )
    known = [t for t in data if suite.has_task(t)]
    if known:
        raise ConfigError(f"tasks {known} are already in the student at {suite.root}; give new tasks new ids.")
    student, bb = load_student(suite)
    max_length = suite.max_length
    results = {}
    for task_id, d in data.items():
        train, val = train_val_split(d, val_fraction=val_fraction, seed=config.seed)
        r = adapt_to_task(student, bb.tokenizer, train, val, max_length=max_length, config=config, progress=progress)
        summary = {"metrics": {"validation": r.val_metrics}, "adapted": {"new_parameters": r.new_parameters}}
        write_student_task(suite, student, task_id, summary)
        results[task_id] = {k: v for k, v in r.to_dict().items() if k != "fit"}
    return results
