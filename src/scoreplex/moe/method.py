"""The ``moe`` method: a UniMoE-Guided student suite's module format.

The suite's one shared module (``shared/student.safetensors``) holds the fine-tuned student encoder (``encoder.*``)
and the MoE block (``moe.*``); each task module its task embedding (``task_embedding``, ``(E,)``) and head
(``head.*``). The student is trained on all tasks at once by :func:`scoreplex.moe.train.train_student` (``scoreplex
distill``), not per task; new tasks join by adaptation (``scoreplex adapt``).
"""

from __future__ import annotations

import copy

from scoreplex.errors import SuiteError
from scoreplex.methods.base import (
    MODULE_FIX,
    Capabilities,
    Method,
    ParsedModule,
    load_head,
    load_strict,
    split_state,
)

SHARED_NAME = "student"
"""Name of the student's shared module in its suite."""


class MoEStudentMethod(Method):
    name = "moe"
    description = "a distilled multi-task mixture-of-experts student (task embedding + head per task)"
    capabilities = Capabilities(
        trains_per_task=False,
        shares_backbone_pass=True,
        exportable_onnx=False,
        mergeable=False,
        adaptable=True,
        suite_wide_shared=True,
    )
    training_defaults = {"epochs": 3, "lr": 5e-5, "head_lr": 1e-3, "batch_size": 32, "patience": 2}
    own_prefixes = ("head.", "task_embedding")

    def build(self, encoder, hidden, spec, settings, pooling):
        raise SuiteError(
            "a MoE student is trained on all tasks at once: use scoreplex.moe.train_student (or `scoreplex "
            "distill`), not per-task training."
        )

    def parse(self, task_id, spec, config, tensors, hidden) -> ParsedModule:
        parsed = super().parse(task_id, spec, config, tensors, hidden)
        parsed.task_vec = tensors.get("task_embedding")
        if parsed.task_vec is None:
            raise SuiteError(f"its module has no task embedding (a MoE student task needs one); {MODULE_FIX}.")
        return parsed

    def load(self, encoder, hidden, spec, config, state, pooling):
        from scoreplex.moe.model import MoEBlock, MoEConfig, MoETaskModel

        cfg = MoEConfig(**config["moe"])
        enc = copy.deepcopy(encoder)
        load_strict(enc, split_state(state, "encoder."), "student encoder weights")
        moe = MoEBlock(hidden, cfg)
        load_strict(moe, split_state(state, "moe."), "MoE block weights")
        if "task_embedding" not in state:
            raise SuiteError(f"task {spec.id!r} has no task embedding in its module; the student suite is incomplete.")
        head = load_head(hidden, spec, {"head_hidden": cfg.head_hidden, "head_dropout": cfg.head_dropout}, state)
        return MoETaskModel(enc, moe, state["task_embedding"], head, pooling).eval()

    def install_shared(self, suite, encoder, hidden):
        """Load the student's encoder weights into ``encoder`` and return its MoE block (eval mode)."""
        from scoreplex.moe.model import MoEBlock, MoEConfig

        shared = suite.shared_tensors(SHARED_NAME)
        load_strict(encoder, split_state(shared, "encoder."), "student encoder weights")
        moe = MoEBlock(hidden, MoEConfig(**suite.manifest["moe"]))
        load_strict(moe, split_state(shared, "moe."), "MoE block weights")
        return moe.eval()
