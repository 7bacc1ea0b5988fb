"""Scoring heads for any rubric: one logit block per dimension, sized by its number of classes.

A head maps a pooled response vector ``(B, H)`` to ``(B, sum_d K_d)`` logits. Ordinal and binary dimensions share
this path; see :mod:`scoreplex.tasks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoreplex.errors import ConfigError


class ScoringHead(nn.Module):
    """LayerNorm -> dropout -> (optional hidden layer) -> linear to the concatenated logits of every dimension.

    The LayerNorm matters: mean-pooled sentence-encoder features have a small, uneven scale (MiniLM's pooled vectors
    have per-feature std ~0.1), on which a freshly initialised linear head learns very slowly; normalising them first
    lets LoRA and head-only training converge in a few epochs.

    With ``length_feature``, the response's log token count (before any cut, :func:`length_feature`) adds a linear
    term to the logits (``length``: ``(1,) -> (sum K,)``, zero at initialisation, so it starts as the plain head); it
    bypasses the LayerNorm, which would otherwise let one large value rescale every pooled feature.
    """

    def __init__(
        self,
        in_dim: int,
        class_counts: Sequence[int],
        *,
        hidden: int = 0,
        dropout: float = 0.1,
        length_feature: bool = False,
    ) -> None:
        super().__init__()
        self.class_counts = [int(k) for k in class_counts]
        layers: list[nn.Module] = [nn.LayerNorm(in_dim), nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout)]
            in_dim = hidden
        layers.append(nn.Linear(in_dim, sum(self.class_counts)))
        self.net = nn.Sequential(*layers)
        self.length: nn.Linear | None = None
        if length_feature:
            self.length = nn.Linear(1, sum(self.class_counts))
            nn.init.zeros_(self.length.weight)
            nn.init.zeros_(self.length.bias)

    def forward(self, pooled: torch.Tensor, n_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, sum K)`` from pooled features ``(B, H)`` (and, with the length feature, the responses' token
        counts ``(B,)``; ConfigError when they are missing)."""
        logits = self.net(pooled)  # (B, sum K)
        if self.length is None:
            return logits
        if n_tokens is None:
            raise ConfigError(
                "this head uses the response-length feature, so it needs each response's token count (n_tokens); "
                "score through SuiteScorer or the Engine, which pass it."
            )
        return logits + self.length(length_feature(n_tokens).to(logits.dtype))


def length_feature(n_tokens: torch.Tensor) -> torch.Tensor:
    """The length feature ``(B, 1)``: log of each response's token count ``(B,)`` (special tokens included)."""
    return torch.log(n_tokens.float().clamp_min(1.0))[:, None]


def split_logits(logits: torch.Tensor, class_counts: Sequence[int]) -> list[torch.Tensor]:
    """Split ``(B, sum K)`` logits into one ``(B, K_d)`` block per dimension."""
    return list(torch.split(logits, list(class_counts), dim=-1))


def rubric_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_counts: Sequence[int],
    class_weights: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Sum over dimensions of the mean cross-entropy; labels ``(B, D)`` with -1 for "not scored" (ignored)."""
    total = logits.new_zeros(())
    for d, block in enumerate(split_logits(logits, class_counts)):
        w = None if class_weights is None else class_weights[d]
        y = labels[:, d]
        if bool((y >= 0).any()):
            total = total + F.cross_entropy(block, y, weight=w, ignore_index=-1)
    return total


def probabilities(logits: torch.Tensor, class_counts: Sequence[int]) -> list[torch.Tensor]:
    """Per-dimension class probabilities ``[(B, K_d)]``."""
    return [torch.softmax(b.float(), dim=-1) for b in split_logits(logits, class_counts)]


def balanced_class_weights(labels, class_counts: Sequence[int]) -> list[torch.Tensor]:
    """sklearn-style 'balanced' weights n / (K * count_k) per dimension; unseen classes get weight 1."""
    import numpy as np

    out = []
    for d, k in enumerate(class_counts):
        y = labels[:, d]
        y = y[y >= 0]
        counts = np.bincount(y, minlength=k).astype(np.float64)
        w = np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 1.0)
        out.append(torch.tensor(w, dtype=torch.float32))
    return out
