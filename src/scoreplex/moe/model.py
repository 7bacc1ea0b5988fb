"""The UniMoE-Guided student: one shared encoder, a gated mixture-of-experts block, light per-task heads.

Pooled encoder output ``x`` (B, H) -> ``n_layers`` MoE layers -> per-task :class:`~scoreplex.heads.ScoringHead`.
Each MoE layer mixes ``n_experts`` experts (Linear-ReLU-Dropout-Linear) with a gate over ``[x ; task embedding]``
(dense softmax as in the authors' trainer, or top-k), adds the mixture to ``x`` and normalises (residual +
LayerNorm). With ``n_layers = 0`` the model is a plain multi-task model (shared encoder + heads): the ablation.

Task embeddings and heads are keyed by task id (``ParameterDict`` / ``ModuleDict``), so adapting to a new task adds
one embedding and one head and touches nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from scoreplex.backbone import pool
from scoreplex.errors import ConfigError
from scoreplex.heads import ScoringHead
from scoreplex.tasks import TaskSpec


@dataclass(frozen=True)
class MoEConfig:
    n_layers: int = 2
    n_experts: int = 4
    expert_hidden: int | None = None
    """Width of each expert's inner layer (None: the encoder's hidden size)."""
    task_dim: int = 64
    top_k: int | None = None
    """Route each row to its k best experts (renormalised); None: dense softmax over all (the authors' code)."""
    dropout: float = 0.1
    head_hidden: int = 0
    head_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.n_layers < 0 or self.n_experts < 1 or self.task_dim < 1:
            raise ConfigError(
                f"MoE config n_layers={self.n_layers}, n_experts={self.n_experts}, task_dim={self.task_dim}: "
                "give layers >= 0, experts and task_dim >= 1."
            )
        if self.top_k is not None and not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(
                f"top_k={self.top_k} is outside 1..n_experts ({self.n_experts}); give a k in that range, or none for "
                "dense routing."
            )

    def to_dict(self) -> dict:
        return asdict(self)


class MoELayer(nn.Module):
    def __init__(self, hidden: int, cfg: MoEConfig) -> None:
        super().__init__()
        inner = cfg.expert_hidden or hidden
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, inner), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(inner, hidden))
            for _ in range(cfg.n_experts)
        )
        self.gate = nn.Linear(hidden + cfg.task_dim, cfg.n_experts)
        self.norm = nn.LayerNorm(hidden)
        self.top_k = cfg.top_k

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, H), ``task`` (B, E) -> (output (B, H), gate probabilities (B, n_experts) before top-k)."""
        logits = self.gate(torch.cat([x, task], dim=-1))
        probs = torch.softmax(logits, dim=-1)
        weights = probs
        if self.top_k is not None and self.top_k < probs.shape[-1]:
            top = torch.topk(logits, self.top_k, dim=-1)
            masked = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
            weights = torch.softmax(masked, dim=-1)
        mixed = torch.stack([e(x) for e in self.experts], dim=1)  # (B, n_experts, H)
        y = (weights.unsqueeze(-1) * mixed).sum(dim=1)
        return self.norm(x + y), probs


class MoEBlock(nn.Module):
    def __init__(self, hidden: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MoELayer(hidden, cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        gates = []
        for layer in self.layers:
            x, g = layer(x, task)
            gates.append(g)
        return x, gates


def load_balance_loss(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean squared distance of the batch-mean gate distribution from uniform, averaged over layers."""
    if not gates:
        return torch.zeros(())
    losses = []
    for g in gates:
        mean = g.mean(dim=0)
        losses.append(((mean - 1.0 / g.shape[-1]) ** 2).mean())
    return torch.stack(losses).mean()


class MoEStudent(nn.Module):
    """Shared encoder + MoE block + per-task embeddings and heads."""

    fresh_prefixes = ("heads.", "moe.", "task_embedding.")
    """Parameters that start from scratch (trained at the head learning rate by the training loop)."""

    def __init__(self, encoder: nn.Module, hidden: int, specs: Sequence[TaskSpec], cfg: MoEConfig, pooling: str):
        super().__init__()
        self.encoder = encoder
        self.hidden = hidden
        self.cfg = cfg
        self.pooling = pooling
        self.moe = MoEBlock(hidden, cfg)
        self.task_embedding = nn.ParameterDict()
        self.heads = nn.ModuleDict()
        self.specs: dict[str, TaskSpec] = {}
        for spec in specs:
            self.add_task(spec)

    @property
    def task_ids(self) -> list[str]:
        return list(self.specs)

    def add_task(self, spec: TaskSpec, init: torch.Tensor | None = None) -> int:
        """Add a task's embedding and head; returns the number of parameters added."""
        if spec.id in self.specs:
            raise ConfigError(f"task {spec.id!r} is already in the student; give the new task another id.")
        emb = init.clone() if init is not None else torch.randn(self.cfg.task_dim) * 0.02
        self.task_embedding[spec.id] = nn.Parameter(emb)
        self.heads[spec.id] = ScoringHead(
            self.hidden, spec.class_counts, hidden=self.cfg.head_hidden, dropout=self.cfg.head_dropout
        )
        self.specs[spec.id] = spec
        return emb.numel() + sum(p.numel() for p in self.heads[spec.id].parameters())

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def mix(self, pooled: torch.Tensor, tasks: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pooled features of rows of the given tasks -> MoE output and gate probabilities per layer."""
        emb = (
            torch.stack([self.task_embedding[t] for t in tasks]) if tasks else pooled.new_zeros((0, self.cfg.task_dim))
        )
        return self.moe(pooled, emb)

    def task_logits(self, z: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](z)

    def task_view(self, task: str) -> MoETaskModel:
        """A single-task scoring model sharing this student's modules (what a suite loads per task)."""
        return MoETaskModel(self.encoder, self.moe, self.task_embedding[task], self.heads[task], self.pooling)


class MoETaskModel(nn.Module):
    """One task of a student: encoder -> pooling -> MoE (with the task's embedding) -> the task's head."""

    def __init__(self, encoder, moe: MoEBlock, task_vec: torch.Tensor, head: ScoringHead, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.moe = moe
        self.task_vec = task_vec if isinstance(task_vec, nn.Parameter) else nn.Parameter(task_vec, requires_grad=False)
        self.head = head
        self.pooling = pooling

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def forward(self, input_ids=None, attention_mask=None, features=None, **_) -> torch.Tensor:
        pooled = features if features is not None else self.embed(input_ids, attention_mask)
        z, _ = self.moe(pooled, self.task_vec.expand(pooled.shape[0], -1))
        return self.head(z)
