"""The cross-item scorer: one LoRA-adapted encoder read by every item, a rubric head per item.

Input is the text pair ``[CLS] item text [SEP] response [SEP]`` (:func:`scoreplex.encoding.encode_pairs`), so the one
encoder sees which question a response answers. Heads are keyed by task id (``ModuleDict``), so a new item adds one
head and touches nothing else. Two head types (:data:`CROSS_ITEM_HEADS`):

* ``per-item``: each item its own :class:`~scoreplex.heads.ScoringHead` (softmax over its classes);
* ``shared-ordinal``: one latent quality score ``s = w . LayerNorm(pooled) + b`` shared by every item, and per item
  only an ordinal link (its thresholds and scale, :class:`~scoreplex.heads.OrdinalHead`): every item's classes come
  from the same latent, so an item with few (or no) scored answers borrows the scale the others trained. Each item's
  head holds (a reference to) the shared latent, so its saved module scores the item alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn as nn

from scoreplex.errors import ConfigError
from scoreplex.heads import build_rubric_head
from scoreplex.methods.base import TaskModel
from scoreplex.tasks import TaskSpec

QUESTION_KEY = "question"
"""``TaskSpec.metadata`` key of an item's question text (the ASAP-SAS loader fills it); else its ``prompt``."""
CROSS_ITEM_HEADS = {"per-item": "softmax", "shared-ordinal": "ordinal"}
"""Cross-item head choices (``CrossItemSettings.head``) -> the head type stored in each item's config
(:data:`scoreplex.heads.HEAD_TYPES`)."""
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

    fresh_prefixes = ("heads.", "latent.")
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
        head: str = "per-item",
        length_feature: bool = False,
    ) -> None:
        super().__init__()
        if head not in CROSS_ITEM_HEADS:
            raise ConfigError(f"unknown cross-item head {head!r}; give one of {sorted(CROSS_ITEM_HEADS)}.")
        self.encoder = encoder
        self.hidden = hidden
        self.pooling = pooling
        self.head_hidden = head_hidden
        self.head_dropout = head_dropout
        self.head_kind = head
        self.length_feature = length_feature
        self.latent: nn.Module | None = None
        """The latent score every item's head reads (``shared-ordinal``); None for per-item heads."""
        self.heads = nn.ModuleDict()
        self.specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add_task(spec)

    @property
    def head_config(self) -> dict[str, object]:
        """The head part of every item's task config (what :func:`scoreplex.methods.base.build_head` reads)."""
        config: dict[str, object] = {
            "head_type": CROSS_ITEM_HEADS[self.head_kind],
            "head_hidden": self.head_hidden,
            "head_dropout": self.head_dropout,
        }
        if self.length_feature:  # absent when off: task.json as before
            config["length_feature"] = True
        return config

    def add_task(self, spec: TaskSpec) -> int:
        """Add an item's fresh head (reading the shared latent, if any); returns the number of parameters added."""
        if spec.id in self.specs:
            raise ConfigError(f"item {spec.id!r} is already in the model; give the new item another id.")
        head = build_rubric_head(self.hidden, spec.class_counts, self.head_config)
        own = sum(p.numel() for p in head.parameters())
        latent = getattr(head, "latent", None)
        if latent is not None:  # the head reads a latent score: make it the one every item shares
            if self.latent is None:
                self.latent = latent
            else:
                head.latent = self.latent
                own -= sum(p.numel() for p in latent.parameters())
        self.heads[spec.id] = head
        self.specs[spec.id] = spec
        return own

    embed = TaskModel.embed
    """``(input_ids (B, T), attention_mask (B, T)) -> pooled (B, H)``: the shared encoder, then pooling."""

    def task_view(self, task: str) -> TaskModel:
        """One item's scoring model, sharing this model's encoder and that item's head."""
        return TaskModel(self.encoder, self.heads[task], self.pooling)
