"""UniMoE-Guided: a knowledge-distilled multi-task mixture-of-experts student that adapts to new tasks.

model.py    the student (shared encoder, gated MoE block, per-task embeddings and heads) and its per-task view
distill.py  teachers' soft targets, stored once and joined to responses by id
method.py   the ``moe`` method: the student suite's module format (registered in scoreplex.methods)
runs.py     what `scoreplex distill` and `scoreplex adapt` run
train.py    mixed-batch training by the one training loop (task + distillation + load-balance loss), saving the
            student as a suite, adapting it to a new task with only a task embedding and a head
"""

import scoreplex.methods  # noqa: F401  (the method registry imports scoreplex.moe.method: it must load first)
from scoreplex.moe.distill import TeacherTargets, compute_teacher_targets, load_teacher_targets
from scoreplex.moe.model import MoEConfig, MoEStudent, MoETaskModel, load_balance_loss
from scoreplex.moe.train import (
    AdaptResult,
    StudentObjective,
    adapt_to_task,
    distillation_loss,
    load_student,
    save_student,
    train_student,
    write_student_task,
)

__all__ = [
    "AdaptResult",
    "MoEConfig",
    "MoEStudent",
    "MoETaskModel",
    "StudentObjective",
    "TeacherTargets",
    "adapt_to_task",
    "compute_teacher_targets",
    "distillation_loss",
    "load_balance_loss",
    "load_student",
    "load_teacher_targets",
    "save_student",
    "train_student",
    "write_student_task",
]
