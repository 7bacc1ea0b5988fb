"""``scoreplex train --ray``: one Ray task per task to train, each writing its module into the suite.

The driver does what the sequential path does before training (:func:`scoreplex.training.suite.plan_suite`: the
suite folder created with ``max_length`` picked once, specs checked, tasks already saved kept, every split made);
then each task left becomes one Ray task that loads the backbone (once per worker process), sets torch's threads to
its CPU allotment and runs :func:`~scoreplex.training.suite.train_suite_task`, the very code of the sequential loop
(same splits, seeds, configs, decoding and lexical fitting), which writes the module through the suite's locked
writer (:meth:`~scoreplex.suite.Suite.add_task`: an ``flock`` held across re-read, change and atomic replace of the
manifest, so workers adding tasks at the same time lose nothing). The workers therefore need the suite folder on a
filesystem they share with the driver (one node, or a shared mount on every node).

Failures: a scoreplex error in a task (bad data, a damaged checkpoint) is reported at once, without retries (it
would fail again); any other exception, or a worker lost (killed for memory, a node gone), is retried by Ray
``retries`` times. The other tasks go on; at the end :class:`RayTrainError` names the failed ones. A re-run of the
same command resumes: saved tasks are kept and an interrupted task continues from its epoch checkpoint.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoreplex.backbone import Backbone
from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError, ScoreplexError
from scoreplex.methods import get_method, methods_with
from scoreplex.suite import Suite
from scoreplex.training.suite import (
    TaskJob,
    TaskResult,
    TrainOptions,
    plan_suite,
    remove_empty_checkpoints,
    train_suite_task,
)


class RayTrainError(ScoreplexError, RuntimeError):
    """Some tasks failed on Ray after their retries; the others are saved in the suite."""

    def __init__(self, out_dir: Path, failed: Mapping[str, str], total: int) -> None:
        self.failed = dict(failed)
        """``{task id: the error}`` of each failed task."""
        shown = "; ".join(f"{t}: {why}" for t, why in self.failed.items())
        super().__init__(
            f"{len(self.failed)} of {total} tasks failed on Ray ({shown}). The other tasks are saved in {out_dir}; "
            "fix the cause and re-run the same command to resume: it trains only the tasks not saved yet."
        )


@dataclass(frozen=True)
class RayTrainResources:
    """What each task's Ray task asks of the cluster, and how often Ray retries it."""

    cpus_per_task: float = 1.0
    """Logical CPUs reserved per task (``--ray-cpus-per-task``); torch in the task uses this many threads (at
    least 1). A 2-core machine runs 2 tasks at once with 1, one at a time with 2."""
    memory_mb: int | None = None
    """Memory reserved per task in MB (``--ray-memory-per-task``): Ray schedules no more tasks on a node than its
    memory holds. None reserves nothing (MiniLM with LoRA needs about 1,000 MB per task)."""
    retries: int = 1
    """Times Ray retries a task after an unexpected error or a lost worker (``--ray-retries``); scoreplex's own
    errors (bad data) are not retried."""

    def __post_init__(self) -> None:
        if isinstance(self.cpus_per_task, bool) or not self.cpus_per_task > 0:
            raise ConfigError(
                f"cpus_per_task={self.cpus_per_task!r}; give the logical CPUs per task (> 0), e.g. 1 "
                "(--ray-cpus-per-task)."
            )
        if self.memory_mb is not None and (
            isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 1
        ):
            raise ConfigError(
                f"memory_mb={self.memory_mb!r}; give the MB reserved per task as a whole number >= 1, e.g. 1500, or "
                "leave it out (--ray-memory-per-task)."
            )
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries={self.retries!r}; give a whole number >= 0, e.g. 1 (--ray-retries).")

    @property
    def threads(self) -> int:
        """torch threads of one task: its CPUs, at least 1."""
        return max(1, int(self.cpus_per_task))

    def ray_options(self) -> dict[str, Any]:
        """The ``.options(...)`` of each task's Ray task."""
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_task,
            "max_retries": self.retries,
            "retry_exceptions": True,  # scoreplex errors are returned, not raised, so they are never retried
        }
        if self.memory_mb is not None:
            options["memory"] = self.memory_mb * 1024 * 1024
        return options


@dataclass(frozen=True)
class TaskFailure:
    """A task that failed with a scoreplex error inside its Ray task (returned, so that Ray does not retry it)."""

    task_id: str
    error: str
    """The error's type and message."""


@functools.lru_cache(maxsize=2)
def _worker_backbone(name: str) -> Backbone:
    """The backbone, loaded once per worker process (Ray reuses a worker for the next task)."""
    return Backbone.load(name)


def _train_on_worker(
    out_dir: str, job: TaskJob, options: TrainOptions, max_length: int, threads: int
) -> TaskResult | TaskFailure:
    """The body of one task's Ray task: :func:`train_suite_task` with this worker's backbone and threads."""
    import copy

    import torch

    torch.set_num_threads(threads)
    # Ray hands numpy arrays over read-only (zero copy from its object store); the training code may write to the
    # tensors it makes from them (the sequential path hands it writable arrays), so the task data is copied once
    job = copy.deepcopy(job)
    try:
        bb = _worker_backbone(options.backbone)
        suite = Suite.open(out_dir, verify=False)
        # on another node, the path may hold another model: the manifest's fingerprint decides
        suite.check_backbone(bb.info.sha256, bb.info.name)
        return train_suite_task(bb, suite, job, options, max_length)
    except ScoreplexError as exc:
        return TaskFailure(job.task_id, f"{type(exc).__name__}: {exc}")


def _describe(exc: BaseException) -> str:
    """A Ray error as one line: the task's own exception when it raised one, else what Ray says (a lost worker)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"


def train_suite_ray(
    datasets: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    options: TrainOptions = TrainOptions(),
    *,
    address: str | None = "local",
    resources: RayTrainResources = RayTrainResources(),
    val_sets: Mapping[str, TaskData] | None = None,
    backbone: Backbone | None = None,
    on_task_done: Callable[[TaskResult], None] | None = None,
    on_task_failed: Callable[[str, str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Suite:
    """:func:`~scoreplex.training.suite.train_suite` with one Ray task per task: the same suite, module for module.

    ``address``: ``"local"`` starts a cluster in this process, ``"auto"`` joins ``ray start --head`` on this
    machine, or a cluster's address (:func:`scoreplex.cluster.connect`); it is not contacted when every task is
    already saved. ``backbone``: the driver's loaded backbone (it picks ``max_length``; each worker loads its own
    from ``options.backbone``). ``on_task_done`` is called here as each task finishes (in finishing order),
    ``on_task_failed(task_id, error)`` as each fails after its retries.

    Raises:
        ConfigError: a method that trains all tasks jointly (it cannot be split into per-task Ray tasks), no
            tasks, Ray missing or unreachable, and every check of :func:`~scoreplex.training.suite.plan_suite`.
        RayTrainError: some tasks failed (each named with its error) after the others were saved.
    """
    if not datasets:
        raise ConfigError("no tasks to train: the data held no responses.")
    method = get_method(options.method)
    if not method.capabilities.trains_per_task:
        raise ConfigError(
            f"--method {method.name} trains all tasks jointly in one model, so it cannot run as one Ray task per "
            f"task; drop --ray, or choose a per-task method ({', '.join(methods_with('trains_per_task'))})."
        )
    bb = backbone or Backbone.load(options.backbone)
    plan = plan_suite(datasets, out_dir, options, bb, val_sets=val_sets, on_warning=on_warning)
    if not plan.jobs:
        return plan.suite
    from scoreplex.cluster import connect
    from scoreplex.cluster.waiting import as_completed

    ray = connect(address)
    remote = ray.remote(_train_on_worker).options(**resources.ray_options())
    root = str(plan.suite.root)
    options_ref = ray.put(options)
    pending = {
        remote.remote(root, job, options_ref, plan.max_length, resources.threads): job.task_id for job in plan.jobs
    }
    failed: dict[str, str] = {}
    # an interruption cancels the tasks still queued or running (their checkpoints stay for the re-run)
    with as_completed(ray, pending, force=True) as finished:
        for task_id, ref in finished:
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # raised after its retries, or its worker lost for good
                outcome = TaskFailure(task_id, _describe(exc))
            if isinstance(outcome, TaskFailure):
                failed[task_id] = outcome.error
                if on_task_failed is not None:
                    on_task_failed(task_id, outcome.error)
            elif on_task_done is not None:
                on_task_done(outcome)
    remove_empty_checkpoints(out_dir)
    if failed:
        raise RayTrainError(plan.suite.root, failed, len(plan.jobs))
    return Suite.open(out_dir, verify=False)  # the manifest as the workers left it
