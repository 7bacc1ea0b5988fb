"""Teachers' soft targets, stored once and joined to responses by id (never by row order).

The authors' trainer joined teacher outputs to responses by row index, which silently pairs the wrong targets with
a response as soon as a file is re-sorted, filtered or split differently. Here each task's teacher logits are stored
as ``<task>.safetensors`` (``logits`` (N, sum K)) next to ``<task>.json`` (the response ids in row order, the
teacher's module hash, the class counts), and :meth:`TeacherTargets.lookup` fetches rows by response id, naming any
id the teacher never saw. Logits are kept rather than probabilities so any temperature can be applied later;
:meth:`TeacherTargets.probabilities` gives the probabilities.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scoreplex.data.dataset import TaskData
from scoreplex.errors import DataError, SuiteError
from scoreplex.heads import probabilities


@dataclass
class TeacherTargets:
    task_id: str
    ids: list[str]
    logits: torch.Tensor
    class_counts: list[int]
    teacher: str = ""

    def __post_init__(self) -> None:
        self._row = {rid: i for i, rid in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            raise DataError("teacher targets have duplicate response ids; ids must be unique.", task=self.task_id)

    def lookup(self, ids: Sequence[str]) -> torch.Tensor:
        """Teacher logits ``(len(ids), sum K)`` for these response ids."""
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise DataError(
                f"{len(missing)} responses have no teacher output (e.g. {missing[:3]}); recompute the teacher targets "
                "for this data (scoreplex joins them by response id).",
                task=self.task_id,
            )
        return self.logits[torch.as_tensor([self._row[i] for i in ids], dtype=torch.long)]

    def probabilities(self, ids: Sequence[str], temperature: float = 1.0) -> list[torch.Tensor]:
        return probabilities(self.lookup(ids) / temperature, self.class_counts)


def compute_teacher_targets(
    scorer,
    datasets: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
) -> dict[str, TeacherTargets]:
    """Run each task's teacher (a task of the suite behind ``scorer``) over its responses; cached in ``out_dir``.

    A cached file is reused when it was made by the same teacher module and covers every requested id."""
    from safetensors.torch import save_file

    from scoreplex.encoding import encode_texts
    from scoreplex.predictions import predict_logits
    from scoreplex.progress import progress_bar
    from scoreplex.suite import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite = scorer.suite
    result: dict[str, TeacherTargets] = {}
    with progress_bar(progress) as bar:
        job = bar.add_task("teacher targets", total=len(datasets))
        for task_id, data in datasets.items():
            if not suite.has_task(task_id):
                raise SuiteError(f"no teacher for task {task_id!r} in {suite.root}; it holds {suite.task_ids}.")
            module_hash = suite.manifest["tasks"][task_id]["files"]["module.safetensors"]
            shared = suite.shared_of(task_id)
            if shared is not None:
                module_hash += "+" + suite.manifest["shared"][shared]["sha256"]
            cached = None
            if (out / f"{task_id}.json").is_file():
                try:
                    cached = load_teacher_targets(out, task_id)
                except (DataError, OSError, ValueError, KeyError):
                    cached = None  # an interrupted or inconsistent cache is recomputed
            if cached is not None and cached.teacher == module_hash and set(data.ids) <= set(cached.ids):
                result[task_id] = cached
                bar.update(job, advance=1)
                continue
            enc = encode_texts(scorer.bb.tokenizer, data.texts, scorer.max_length, long_inputs=scorer.long_inputs)
            logits = predict_logits(scorer.model(task_id), enc).float().contiguous()
            tmp = out / f".{task_id}.safetensors.tmp"
            save_file({"logits": logits}, str(tmp), metadata={"ids_sha256": _ids_digest(data.ids)})
            os.replace(tmp, out / f"{task_id}.safetensors")
            meta = {
                "task": task_id,
                "ids": list(data.ids),
                "class_counts": data.spec.class_counts,
                "teacher": module_hash,
                "teacher_suite": str(suite.root),
            }
            write_json_atomic(out / f"{task_id}.json", meta)
            result[task_id] = TeacherTargets(task_id, list(data.ids), logits, list(data.spec.class_counts), module_hash)
            bar.update(job, advance=1)
    return result


def _ids_digest(ids: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\0".join(ids).encode()).hexdigest()


def load_teacher_targets(folder: str | os.PathLike[str], task_id: str) -> TeacherTargets:
    """Read one task's stored targets; the logits file must carry the digest of the ids its JSON lists (in order),
    so a logits file and an ids list from different runs are never paired."""
    from safetensors import safe_open

    folder = Path(folder)
    meta = json.loads((folder / f"{task_id}.json").read_text(encoding="utf-8"))
    with safe_open(str(folder / f"{task_id}.safetensors"), framework="pt") as f:
        digest = (f.metadata() or {}).get("ids_sha256")
        logits = f.get_tensor("logits")
    if digest != _ids_digest(meta["ids"]):
        raise DataError(
            f"{folder / task_id}.safetensors was not written for the ids in {task_id}.json (an interrupted run?); "
            "recompute the teacher targets.",
            task=task_id,
        )
    if logits.shape[0] != len(meta["ids"]):
        raise DataError(
            f"{folder / task_id}.safetensors has {logits.shape[0]} rows but its JSON lists {len(meta['ids'])} ids; "
            "recompute the teacher targets.",
            task=task_id,
        )
    return TeacherTargets(task_id, meta["ids"], logits, list(meta["class_counts"]), meta.get("teacher", ""))


def teacher_agreement(targets: TeacherTargets, data: TaskData) -> float:
    """Share of responses where the teacher's top class equals the human score (first dimension): a sanity check."""
    probs = targets.probabilities(data.ids)
    pred = np.stack([p.argmax(dim=1).numpy() for p in probs], axis=1)
    ok = data.labels >= 0
    return float((pred[ok] == data.labels[ok]).mean()) if ok.any() else float("nan")
