"""Representation surgery: a tiny per-task module that undoes what merging did to one task's features.

Yang, Shen, Wang, Guo, Chen, Wang & Tao 2024, "Representation Surgery for Multi-Task Model Merging" (ICML), §4.
A merged encoder gives task ``t``'s responses features ``z_mg`` that drift away from the features ``z_t`` of the
task's own model (the paper's *representation bias*), and the task's head, trained on ``z_t``, misreads them. The
surgery module ``z_hat = z_mg - W_up ReLU(W_down z_mg)`` (:class:`~scoreplex.heads.RepresentationSurgery`) is fitted
per task to minimise the mean L1 distance ``|z_t - z_hat|`` over unlabelled responses of the task, then the task keeps
its own head behind it (:class:`~scoreplex.heads.SurgicalHead`). No score is needed: the paper fits it on unlabelled
test inputs; scoreplex fits it on the task's *training* responses, so test.tsv stays unread.

Why this method: the paper applies it on top of Task Arithmetic, TIES-Merging and AdaMerging, for ViTs merged over
eight different vision tasks and for BERT-family models over text tasks, and reports it raising each of them; and
its per-task piece is ``2 H r`` numbers (12,288 for MiniLM at r = 16, 48 KB) next to a 90 MB encoder. It works on the
pooled features, after the encoder, so the inference engine serves a merged LoRA suite with surgery unchanged: one
shared encoder pass, each row's task adapter, then its task's surgery + head. Per-parameter per-task pieces
(EMR-merging's masks) would instead give every task its own encoder weights, which a shared pass cannot serve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from scoreplex.errors import ConfigError
from scoreplex.heads import RepresentationSurgery


@dataclass(frozen=True)
class SurgerySettings:
    """How one task's surgery module is fitted (the paper's defaults where it gives them: rank 16, Adam, lr 1e-3)."""

    rank: int = 16
    steps: int = 500
    """Adam steps over shuffled mini-batches."""
    lr: float = 1e-3
    batch_size: int = 64
    rows: int = 400
    """Unlabelled responses of the task used (a seeded subsample of its training split)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name, ok, fix in (
            ("rank", self.rank >= 1, "give a rank >= 1, e.g. 16"),
            ("steps", self.steps >= 1, "give at least 1 step, e.g. 500"),
            ("lr", self.lr > 0, "give a positive learning rate, e.g. 1e-3"),
            ("batch_size", self.batch_size >= 1, "give at least 1 row per batch"),
            ("rows", self.rows >= 2, "give at least 2 responses"),
        ):
            if not ok:
                raise ConfigError(f"surgery {name}={getattr(self, name)!r} is out of range; {fix}.")


def fit_surgery(
    merged: torch.Tensor, target: torch.Tensor, settings: SurgerySettings = SurgerySettings()
) -> tuple[RepresentationSurgery, dict[str, Any]]:
    """Fit a surgery module mapping merged features onto the task model's own features.

    Args:
        merged: ``(N, H)`` pooled features of N responses from the merged encoder.
        target: ``(N, H)`` the same responses' pooled features from the task's own (unmerged) model.
        settings: rank, steps, learning rate, batch size, seed.

    Returns:
        ``(module in eval mode, info)``; ``info`` has ``l1_before`` / ``l1_after`` (mean absolute difference per
        feature, over the N rows, without / with the module) and ``seconds``.

    Raises:
        ConfigError: shapes differ, fewer than 2 rows, or a rank above H.
    """
    if merged.shape != target.shape or merged.dim() != 2:
        raise ConfigError(
            f"surgery needs merged and target features of one shape (N, H); got {tuple(merged.shape)} and "
            f"{tuple(target.shape)}."
        )
    n, h = merged.shape
    if n < 2:
        raise ConfigError(f"surgery needs at least 2 responses of the task; got {n}.")
    if settings.rank > h:
        raise ConfigError(f"surgery rank {settings.rank} is above the feature size {h}; give a rank <= {h}.")
    t0 = time.perf_counter()
    x, y = merged.detach().float(), target.detach().float()
    gen = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        module = RepresentationSurgery(h, settings.rank)
    opt = torch.optim.Adam(module.parameters(), lr=settings.lr)
    bs = min(settings.batch_size, n)
    module.train()
    for _ in range(settings.steps):
        idx = torch.randperm(n, generator=gen)[:bs]
        loss = (module(x[idx]) - y[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        after = float((module(x) - y).abs().mean())
    before = float((x - y).abs().mean())
    return module, {"l1_before": before, "l1_after": after, "seconds": round(time.perf_counter() - t0, 3)}
