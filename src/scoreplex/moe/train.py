"""Train the MoE student on all tasks at once (mixed batches), save it as a suite, adapt it to new tasks.

The objective is task loss + ``kd_weight`` x distillation + ``balance_weight`` x load balance, run by the one
training loop (:func:`scoreplex.training.fit`): only the objective is new. Distillation is per rubric dimension:
``kl`` (Hinton: KL(teacher_T || student_T) x T^2, the default; the heads are softmax heads) or ``bce`` (the authors'
trainer: BCE between sigmoid(student / T) and the teacher's probabilities, x T^2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scoreplex.data.dataset import TaskData
from scoreplex.encoding import Encoded, collate, encode_texts, train_batches
from scoreplex.errors import ConfigError, DataError, unknown_name
from scoreplex.heads import rubric_loss, split_logits
from scoreplex.metrics import evaluate_task, validation_qwk
from scoreplex.moe.distill import TeacherTargets
from scoreplex.moe.method import SHARED_NAME, MoEStudentMethod
from scoreplex.moe.model import MoEConfig, MoEStudent, load_balance_loss
from scoreplex.predictions import decode, embed_all, predict_logits
from scoreplex.training.loop import FitResult, TrainConfig, fit

KD_LOSSES = ("kl", "bce")


@dataclass(frozen=True)
class StudentObjective:
    kd_weight: float = 1.0
    temperature: float = 3.0
    kd_loss: str = "kl"
    balance_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.kd_loss not in KD_LOSSES:
            raise unknown_name("distillation loss", self.kd_loss, KD_LOSSES)
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0; give e.g. 3 (the UniMoE trainer's).")


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, class_counts, temperature: float, kind: str = "kl"
) -> torch.Tensor:
    """Soft-target loss summed over rubric dimensions, x T^2 (so gradients keep their scale as T changes)."""
    total = student.new_zeros(())
    t2 = temperature**2
    for s, t in zip(split_logits(student, class_counts), split_logits(teacher, class_counts), strict=True):
        p_teacher = torch.softmax(t / temperature, dim=-1)
        if kind == "kl":
            total = total + F.kl_div(F.log_softmax(s / temperature, dim=-1), p_teacher, reduction="batchmean") * t2
        else:
            total = total + F.binary_cross_entropy(torch.sigmoid(s / temperature), p_teacher) * t2
    return total


@dataclass
class _Mixed:
    """All tasks' training rows in one table: tokens, task index, labels padded to the widest rubric."""

    enc: Encoded
    task_index: np.ndarray
    labels: np.ndarray
    teacher: list[torch.Tensor | None]
    task_ids: list[str]


def _mixed(student: MoEStudent, datasets: Mapping[str, TaskData], tokenizer, max_length, teachers) -> _Mixed:
    ids_all, task_idx, label_rows, teacher_rows = [], [], [], []
    width = max(len(d.spec.dimensions) for d in datasets.values())
    for k, (task_id, data) in enumerate(datasets.items()):
        if not data.has_labels:
            raise DataError("training the student needs scored responses.", task=task_id)
        enc = encode_texts(tokenizer, data.texts, max_length)
        ids_all += enc.input_ids
        task_idx += [k] * len(data)
        pad = np.full((len(data), width), -1, dtype=np.int64)
        pad[:, : data.labels.shape[1]] = data.labels
        label_rows.append(pad)
        if teachers is not None:
            if task_id not in teachers:
                raise DataError("distillation needs this task's teacher targets; compute them first.", task=task_id)
            if list(teachers[task_id].class_counts) != list(data.spec.class_counts):
                raise DataError(
                    f"the teacher targets have classes {teachers[task_id].class_counts} but the task's rubric has "
                    f"{data.spec.class_counts}; recompute them with teachers of this rubric.",
                    task=task_id,
                )
            teacher_rows += list(teachers[task_id].lookup(data.ids))
        else:
            teacher_rows += [None] * len(data)
    pad_id = enc.pad_id
    return _Mixed(
        Encoded(ids_all, None, pad_id),
        np.asarray(task_idx),
        np.concatenate(label_rows),
        teacher_rows,
        list(datasets),
    )


def student_objective(student: MoEStudent, batch: dict, specs, objective: StudentObjective) -> torch.Tensor:
    """Loss of one mixed batch: each task's rows through its head, weighted by their share of the batch."""
    pooled = student.embed(batch["input_ids"], batch["attention_mask"])
    tasks = batch["tasks"]
    z, gates = student.mix(pooled, tasks)
    total = z.new_zeros(())
    n = len(tasks)
    for task_id in dict.fromkeys(tasks):
        rows = torch.as_tensor([i for i, t in enumerate(tasks) if t == task_id])
        counts = specs[task_id].class_counts
        logits = student.task_logits(z[rows], task_id)
        labels = batch["labels"][rows][:, : len(counts)]
        loss = rubric_loss(logits, labels, counts)
        if objective.kd_weight > 0 and batch.get("teacher") is not None:
            teacher = torch.stack([batch["teacher"][i] for i in rows.tolist()])
            loss = loss + objective.kd_weight * distillation_loss(
                logits, teacher, counts, objective.temperature, objective.kd_loss
            )
        total = total + loss * (len(rows) / n)
    if objective.balance_weight > 0 and gates:
        total = total + objective.balance_weight * load_balance_loss(gates)
    return total


def _validator(student: MoEStudent, val_sets: Mapping[str, TaskData], tokenizer, max_length: int):
    encs = {t: encode_texts(tokenizer, d.texts, max_length) for t, d in val_sets.items()}

    def validate(model) -> float:
        scores = []
        for t, d in val_sets.items():
            pred = decode(d.spec, d.ids, predict_logits(model.task_view(t), encs[t]))
            scores.append(validation_qwk(d.spec, d.labels, pred.labels))
        return float(np.mean(scores))

    return validate


def train_student(
    encoder,
    tokenizer,
    hidden: int,
    train_sets: Mapping[str, TaskData],
    val_sets: Mapping[str, TaskData],
    *,
    pooling: str = "mean",
    max_length: int = 128,
    moe: MoEConfig = MoEConfig(),
    objective: StudentObjective = StudentObjective(),
    config: TrainConfig = TrainConfig(epochs=3, lr=5e-5, head_lr=1e-3),
    teachers: Mapping[str, TeacherTargets] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[MoEStudent, FitResult]:
    """Train a student (a copy of ``encoder`` fine-tuned, MoE, heads) on every task in mixed batches."""
    import copy

    if set(train_sets) != set(val_sets):
        raise ConfigError("train_sets and val_sets must hold the same tasks.")
    if objective.kd_weight > 0 and teachers is None:
        raise ConfigError("kd_weight > 0 needs teacher targets; pass teachers=... or set kd_weight=0.")
    torch.manual_seed(config.seed)
    enc = copy.deepcopy(encoder)
    for p in enc.parameters():
        p.requires_grad_(True)
    specs = {t: d.spec for t, d in train_sets.items()}
    student = MoEStudent(enc, hidden, list(specs.values()), moe, pooling)
    mixed = _mixed(student, train_sets, tokenizer, max_length, teachers if objective.kd_weight > 0 else None)
    lengths = mixed.enc.lengths
    labels = torch.as_tensor(mixed.labels, dtype=torch.long)

    def make_batches(rng: np.random.Generator):
        for idx in train_batches(lengths, config.batch_size, rng):
            batch = collate(mixed.enc, idx)
            batch["tasks"] = [mixed.task_ids[mixed.task_index[i]] for i in idx]
            batch["labels"] = labels[torch.as_tensor(idx)]
            batch["teacher"] = None if mixed.teacher[0] is None else [mixed.teacher[i] for i in idx]
            yield batch

    steps = (len(lengths) + config.batch_size - 1) // config.batch_size
    result = fit(
        student,
        make_batches,
        steps,
        lambda m, b: student_objective(m, b, specs, objective),
        _validator(student, val_sets, tokenizer, max_length),
        config,
        checkpoint_dir=checkpoint_dir,
        description="MoE student" if moe.n_layers else "multi-task student",
        progress=progress,
    )
    return student, result


# -- suites ---------------------------------------------------------------------------------------------------------
def save_student(
    student: MoEStudent,
    out_dir: str | os.PathLike[str],
    backbone_info: dict[str, Any],
    max_length: int,
    *,
    summary: dict[str, Any] | None = None,
):
    """Write the student as a suite: ``shared/student.safetensors`` (encoder + MoE), per task embedding + head."""
    from scoreplex.suite import Suite

    suite = Suite.create(
        out_dir,
        method=MoEStudentMethod.name,
        backbone=backbone_info,
        pooling=student.pooling,
        max_length=max_length,
        exist_ok=False,
    )
    suite.update(moe=student.cfg.to_dict())  # before any task: a partial suite still loads its block
    shared = {f"encoder.{k}": v for k, v in student.encoder.state_dict().items()}
    shared.update({f"moe.{k}": v for k, v in student.moe.state_dict().items()})
    suite.add_shared(SHARED_NAME, shared, {"moe": student.cfg.to_dict()})
    for task_id in student.task_ids:
        write_student_task(suite, student, task_id, (summary or {}).get(task_id, {}))
    return suite


def write_student_task(suite, student: MoEStudent, task_id: str, summary: dict[str, Any]) -> None:
    tensors = {"task_embedding": student.task_embedding[task_id].detach()}
    tensors.update({f"head.{k}": v for k, v in student.heads[task_id].state_dict().items()})
    config = {
        "moe": student.cfg.to_dict(),
        "head_hidden": student.cfg.head_hidden,
        "head_dropout": student.cfg.head_dropout,
    }
    suite.add_task(student.specs[task_id], tensors, config, summary, shared=SHARED_NAME)


def load_student(suite, backbone: str | None = None) -> tuple[MoEStudent, Any]:
    """Rebuild a whole student (all tasks) from its suite (an open Suite or its folder); returns (student, the loaded
    Backbone)."""
    import copy

    from scoreplex.backbone import Backbone
    from scoreplex.methods.base import load_strict, split_state
    from scoreplex.suite import Suite

    suite = suite if isinstance(suite, Suite) else Suite.open(suite)
    if not isinstance(suite.method_object, MoEStudentMethod):
        raise ConfigError(f"{suite.root} is a {suite.method!r} suite, not a MoE student ({MoEStudentMethod.name!r}).")
    bb = Backbone.for_suite(suite, backbone)
    cfg = MoEConfig(**suite.manifest["moe"])
    student = MoEStudent(copy.deepcopy(bb.encoder), bb.hidden, [], cfg, suite.pooling)
    student.moe = suite.method_object.install_shared(suite, student.encoder, bb.hidden)
    for task_id in suite.task_ids:
        tensors = suite.module_tensors(task_id)
        student.add_task(suite.spec(task_id), tensors["task_embedding"])
        load_strict(student.heads[task_id], split_state(tensors, "head."), "head")
    return student.eval(), bb


# -- adapting to a new task -------------------------------------------------------------------------------------------
@dataclass
class AdaptResult:
    task_id: str
    new_parameters: int
    total_parameters: int
    fit: FitResult
    val_metrics: dict[str, Any]
    seconds: float

    @property
    def new_fraction(self) -> float:
        return self.new_parameters / self.total_parameters

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fit"] = asdict(self.fit)
        d["new_fraction"] = self.new_fraction
        return d


def adapt_to_task(
    student: MoEStudent,
    tokenizer,
    train: TaskData,
    val: TaskData,
    *,
    max_length: int,
    config: TrainConfig = TrainConfig(epochs=40, lr=2e-3, patience=5),
    progress: bool = True,
) -> AdaptResult:
    """Add ``train.spec`` to a trained student: only its task embedding (started at the mean of the others) and its
    head train; the encoder, the experts and the gates stay frozen. Runs on cached pooled features (one encoder
    pass), since nothing before the MoE block changes."""
    t0 = time.perf_counter()
    spec = train.spec
    for p in student.parameters():
        p.requires_grad_(False)
    init = torch.stack(list(student.task_embedding.values())).mean(0) if len(student.task_embedding) else None
    added = student.add_task(spec, init)
    student.task_embedding[spec.id].requires_grad_(True)
    for p in student.heads[spec.id].parameters():
        p.requires_grad_(True)
    view = student.task_view(spec.id)
    f_train = embed_all(view, encode_texts(tokenizer, train.texts, max_length))
    f_val = embed_all(view, encode_texts(tokenizer, val.texts, max_length))
    y = torch.as_tensor(train.labels, dtype=torch.long)

    def make_batches(rng):
        order = rng.permutation(len(f_train))
        for i in range(0, len(order), config.batch_size):
            idx = torch.as_tensor(order[i : i + config.batch_size])
            yield {"features": f_train[idx], "labels": y[idx]}

    def objective(model, batch):
        return rubric_loss(model(features=batch["features"]), batch["labels"], spec.class_counts)

    def validate(model) -> float:
        pred = decode(spec, val.ids, model(features=f_val))
        return validation_qwk(spec, val.labels, pred.labels)

    steps = (len(train) + config.batch_size - 1) // config.batch_size
    view.fresh_prefixes = ("head.", "task_vec")
    result = fit(
        view, make_batches, steps, objective, validate, config, description=f"adapt {spec.id}", progress=progress
    )
    with torch.no_grad():
        val_metrics = evaluate_task(spec, val.labels, decode(spec, val.ids, view(features=f_val)).labels)
    total = sum(p.numel() for p in student.parameters())
    return AdaptResult(spec.id, added, total, result, val_metrics, time.perf_counter() - t0)
