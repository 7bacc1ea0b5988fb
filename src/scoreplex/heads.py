"""Scoring heads for any rubric: one logit block per dimension, sized by its number of classes.

A head maps a pooled response vector ``(B, H)`` to ``(B, sum_d K_d)`` logits. Ordinal and binary dimensions share
this path; see :mod:`scoreplex.tasks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoreplex.encoding import WINDOW_POOLS, pooled_width
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


class LatentScore(nn.Module):
    """One scalar quality score per response: ``s = w . dropout(LayerNorm(pooled)) + b``, ``(B, H) -> (B,)``.

    With ``length_feature``, ``+ v * log(n_tokens)`` (:func:`length_feature`; ``v`` starts at zero): one length
    slope, shared by every item that reads this latent."""

    def __init__(self, in_dim: int, *, dropout: float = 0.1, length_feature: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, 1)
        self.length: nn.Linear | None = None
        if length_feature:
            self.length = nn.Linear(1, 1, bias=False)
            nn.init.zeros_(self.length.weight)

    def forward(self, pooled: torch.Tensor, n_tokens: torch.Tensor | None = None) -> torch.Tensor:
        s = self.linear(self.dropout(self.norm(pooled))).squeeze(-1)  # (B,)
        if self.length is None:
            return s
        if n_tokens is None:
            raise ConfigError(
                "this latent score uses the response-length feature, so it needs each response's token count "
                "(n_tokens); score through SuiteScorer or the Engine, which pass it."
            )
        return s + self.length(length_feature(n_tokens).to(s.dtype)).squeeze(-1)


ORDINAL_RANGE = 2.0
"""Half-width of the normalised latent range over which a fresh ordinal head spreads its thresholds evenly."""


class OrdinalHead(nn.Module):
    """Cumulative-logit (ordered-logit) head: every dimension's classes come from ONE latent score of the response.

    With the latent ``s = w . LayerNorm(pooled) + b`` (:class:`LatentScore`; shared by every item of a cross-item
    model), dimension ``d`` with ``K`` classes has a scale ``a_d`` and ``K - 1`` increasing thresholds
    ``theta_0 < ... < theta_{K-2}`` (``theta_k = theta_0 + sum_{j<=k} softplus(g_j)``, so the order holds for any
    parameter value), and

        P(y > k) = sigmoid(a_d * s - theta_k),   P(y = k) = P(y > k - 1) - P(y > k),
        P(y > -1) = 1,  P(y > K - 1) = 0

    (McCullagh 1980, "Regression models for ordinal data", the proportional-odds model; Cao, Mirjalili & Raschka
    2020, CORAL, rank-consistent ordinal regression). The head returns ``log P(y = k)`` as its logits ``(B, sum K)``,
    so softmax gives back exactly these probabilities and the usual cross-entropy (:func:`rubric_loss`) is the
    ordinal model's negative log-likelihood. A binary dimension is the case ``K = 2`` (logistic regression on
    ``s``).

    A fresh head starts with ``a_d = 1`` and its thresholds evenly spaced over the normalised latent range
    ``[-ORDINAL_RANGE, ORDINAL_RANGE]`` (``theta_k = R (2 (k + 1) / K - 1)``): every item's boundaries sit at the same
    fractions of the shared latent scale, so an item whose head was never trained still ranks and scores its
    responses by the latent the other items trained.

    ``latent``: the :class:`LatentScore` to read (a cross-item model passes its shared one); a fresh one if None,
    with the length term when ``length_feature``.
    """

    def __init__(
        self,
        in_dim: int,
        class_counts: Sequence[int],
        *,
        dropout: float = 0.1,
        latent: LatentScore | None = None,
        length_feature: bool = False,
    ) -> None:
        super().__init__()
        self.class_counts = [int(k) for k in class_counts]
        if any(k < 2 for k in self.class_counts):
            raise ConfigError(f"an ordinal head needs >= 2 classes per dimension; got {self.class_counts}.")
        self.latent = (
            latent if latent is not None else LatentScore(in_dim, dropout=dropout, length_feature=length_feature)
        )
        self.scale = nn.Parameter(torch.ones(len(self.class_counts)))  # (D,)
        first, gaps = [], []
        for k in self.class_counts:
            step = 2 * ORDINAL_RANGE / k
            first.append(-ORDINAL_RANGE + step)
            gaps += [math.log(math.expm1(step))] * (k - 2)  # softplus^-1(step)
        self.first = nn.Parameter(torch.tensor(first))  # (D,)
        self.gaps = nn.Parameter(torch.tensor(gaps, dtype=torch.float32))  # (sum (K_d - 2),)

    @property
    def threshold_names(self) -> tuple[str, ...]:
        """Names of the parameters that place the thresholds (what a few-shot item fits)."""
        return ("first", "gaps")

    def thresholds(self) -> list[torch.Tensor]:
        """Per dimension its increasing thresholds ``(K_d - 1,)``."""
        out, start = [], 0
        for d, k in enumerate(self.class_counts):
            steps = F.softplus(self.gaps[start : start + k - 2])
            start += k - 2
            out.append(self.first[d] + torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)]))
        return out

    def forward(self, pooled: torch.Tensor, n_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Log class probabilities ``(B, sum K)`` from pooled features ``(B, H)`` (and the responses' token counts
        ``(B,)`` when the latent has the length term)."""
        s = self.latent(pooled, n_tokens)  # (B,)
        blocks = []
        for d, theta in enumerate(self.thresholds()):
            above = torch.sigmoid(self.scale[d] * s[:, None] - theta[None, :])  # (B, K-1): P(y > k)
            ones, zeros = above.new_ones(len(s), 1), above.new_zeros(len(s), 1)
            p = torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)  # (B, K)
            blocks.append(torch.log(p.clamp_min(1e-7)))
        return torch.cat(blocks, dim=1)


def _softmax_head(in_dim: int, class_counts: Sequence[int], config: Mapping[str, Any]) -> nn.Module:
    return ScoringHead(
        in_dim,
        class_counts,
        hidden=int(config.get("head_hidden", 0)),
        dropout=float(config.get("head_dropout", 0.1)),
        length_feature=bool(config.get("length_feature", False)),
    )


def _ordinal_head(in_dim: int, class_counts: Sequence[int], config: Mapping[str, Any]) -> nn.Module:
    if int(config.get("head_hidden", 0)):
        raise ConfigError(
            "the ordinal head is linear in the pooled features; give head_hidden=0, or head_type='softmax'."
        )
    return OrdinalHead(
        in_dim,
        class_counts,
        dropout=float(config.get("head_dropout", 0.1)),
        length_feature=bool(config.get("length_feature", False)),
    )


HEAD_TYPES: dict[str, Callable[[int, Sequence[int], Mapping[str, Any]], nn.Module]] = {
    "softmax": _softmax_head,
    "ordinal": _ordinal_head,
}
"""Head constructors by a task module's ``config["head_type"]`` (absent: ``"softmax"``, :class:`ScoringHead`)."""


def build_rubric_head(in_dim: int, class_counts: Sequence[int], config: Mapping[str, Any]) -> nn.Module:
    """A fresh head ``(B, in_dim) -> (B, sum K)`` of the type ``config["head_type"]`` names (see :data:`HEAD_TYPES`);
    ConfigError naming the known types for an unknown one. With ``config["surgery_rank"]`` (a merged task's
    representation surgery) the head is a :class:`SurgicalHead` around it. With ``config["window_pool"] ==
    "mean+max"`` it reads ``(B, 2 in_dim)`` (:func:`scoreplex.encoding.pool_windows`); the head's ``window_pool``
    attribute says which, for :class:`~scoreplex.methods.base.TaskModel` and the engine."""
    kind = str(config.get("head_type", "softmax"))
    if kind not in HEAD_TYPES:
        raise ConfigError(f"unknown head_type {kind!r}; the known ones are {sorted(HEAD_TYPES)}.")
    window_pool = config.get("window_pool", "mean")
    if window_pool not in WINDOW_POOLS:
        raise ConfigError(
            f"window_pool={window_pool!r} in task.json is not one of {', '.join(WINDOW_POOLS)}; restore the task "
            "module."
        )
    width = pooled_width(in_dim, window_pool)  # the features the head reads
    head = HEAD_TYPES[kind](width, class_counts, config)
    rank = config.get("surgery_rank")
    if rank is not None:
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= width:
            raise ConfigError(
                f"surgery_rank={rank!r} in task.json is not a rank in 1..{width}; restore the task module."
            )
        head = SurgicalHead(head, width, rank)
    head.window_pool = window_pool  # what TaskModel.embed and the engine pool a long response's windows into
    return head


class RepresentationSurgery(nn.Module):
    """Representation surgery (Yang et al. 2024, "Representation Surgery for Multi-Task Model Merging", ICML, §4):
    ``z_hat = z - W_up ReLU(W_down z)`` on pooled features ``(B, H) -> (B, H)``, ``W_down (r, H)``, ``W_up (H, r)``.

    The low-rank term estimates the *representation bias* a merged encoder adds to one task's features, so that the
    task's own head can read them again; fitted per task (:func:`scoreplex.merging.surgery.fit_surgery`). ``W_up``
    starts at zero, so a fresh module is the identity. ``2 H r`` parameters (12,288 for MiniLM at r = 16).
    """

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z - self.up(F.relu(self.down(z)))  # (B, H)


class SurgicalHead(nn.Module):
    """A rubric head read through a :class:`RepresentationSurgery`: ``base(surgery(pooled), n_tokens)``.

    State keys ``surgery.*`` and ``base.*`` (the task's own head as trained); ``(B, H) -> (B, sum K)``.
    """

    def __init__(self, base: nn.Module, dim: int, rank: int) -> None:
        super().__init__()
        self.surgery = RepresentationSurgery(dim, rank)
        self.base = base
        self.class_counts = getattr(base, "class_counts", None)

    def forward(self, pooled: torch.Tensor, n_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.base(self.surgery(pooled), n_tokens)


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
