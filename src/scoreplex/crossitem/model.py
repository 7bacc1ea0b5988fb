"""The cross-item scorer: one LoRA-adapted encoder read by every item, a rubric head per item.

Input is the text pair ``[CLS] item text [SEP] response [SEP]`` (:func:`scoreplex.encoding.encode_pairs`), so the one
encoder sees which question a response answers; each item keeps its own :class:`~scoreplex.heads.ScoringHead` with
its own classes. Heads are keyed by task id (``ModuleDict``), so a new item adds one head and touches nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn as nn

from scoreplex.errors import ConfigError
from scoreplex.heads import ScoringHead
from scoreplex.methods.base import TaskModel
from scoreplex.tasks import TaskSpec

QUESTION_KEY = "question"
"""``TaskSpec.metadata`` key of an item's question text (the ASAP-SAS loader fills it); else its ``prompt``."""
REFERENCE_KEY = "reference_answer"
"""``TaskSpec.metadata`` key of an item's reference answer, appended to the question when present."""


def pairing_text(spec: TaskSpec, *, with_rubric: bool = False) -> str:
    """The text an item's responses are paired with: its question (``metadata["question"]``, else ``prompt``), then
    its reference answer (``metadata["reference_answer"]``) and, with ``with_rubric``, its rubric text; blank parts
    are left out (an item without any text pairs with nothing: only its head tells it apart)."""
    meta: Mapping = spec.metadata or {}
    parts = [str(meta.get(QUESTION_KEY) or spec.prompt), str(meta.get(REFERENCE_KEY) or "")]
    if with_rubric:
        parts.append(spec.rubric)
    return "\n".join(p.strip() for p in parts if p and p.strip())


class CrossItemModel(nn.Module):
    """The shared (LoRA-wrapped) encoder, pooling, and one head per item.

    ``task_view(task)`` is that item's :class:`~scoreplex.methods.base.TaskModel`: ``(input_ids (B, T),
    attention_mask (B, T)) -> logits (B, sum K_d)``, sharing this model's modules (no copy).
    """

    fresh_prefixes = ("heads.",)
    """Parameters that start from scratch (trained at the head learning rate by the training loop)."""

    def __init__(
        self,
        encoder: nn.Module,
        hidden: int,
        specs: Sequence[TaskSpec],
        pooling: str,
        *,
        head_hidden: int = 0,
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.hidden = hidden
        self.pooling = pooling
        self.head_hidden = head_hidden
        self.head_dropout = head_dropout
        self.heads = nn.ModuleDict()
        self.specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add_task(spec)

    def add_task(self, spec: TaskSpec) -> int:
        """Add an item's fresh head; returns the number of parameters added."""
        if spec.id in self.specs:
            raise ConfigError(f"item {spec.id!r} is already in the model; give the new item another id.")
        self.heads[spec.id] = ScoringHead(
            self.hidden, spec.class_counts, hidden=self.head_hidden, dropout=self.head_dropout
        )
        self.specs[spec.id] = spec
        return sum(p.numel() for p in self.heads[spec.id].parameters())

    embed = TaskModel.embed
    """``(input_ids (B, T), attention_mask (B, T)) -> pooled (B, H)``: the shared encoder, then pooling."""

    def task_view(self, task: str) -> TaskModel:
        """One item's scoring model, sharing this model's encoder and that item's head."""
        return TaskModel(self.encoder, self.heads[task], self.pooling)
