"""Merge a group's fine-tuned encoders (or LoRA adapters) into one: TIES, task arithmetic, DARE-TIES; optionally
with a per-task representation surgery module (:mod:`scoreplex.merging.surgery`).

Task vectors are taken against the PRETRAINED base, tau_t = theta_t - theta_0 (the authors' notebooks took them
against task 1's fine-tuned model, which zeroes task 1's vector), combined per tensor with PEFT's merge utilities
(trim to the top-``density`` magnitudes, elect the sign with the larger total mass, disjoint mean), and added back:
theta = theta_0 + lambda * merged. A group of one task keeps its model unchanged (merging one model with itself only
trims it). LoRA adapters are merged as their dense updates Delta W = (alpha / r) B A and factored back to rank
``lora_rank`` by truncated SVD, so a merged group is again a LoRA adapter the engine serves.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from scoreplex.errors import ConfigError, SuiteError, unknown_name

MERGE_METHODS = ("ties", "task_arithmetic", "dare_ties")
PER_TASK_PIECES = ("none", "surgery")
"""What each task keeps beside its group's shared merged weights: nothing (its head only) or a representation
surgery module in front of its head (:mod:`scoreplex.merging.surgery`; Yang et al. 2024)."""


@dataclass(frozen=True)
class MergeSettings:
    method: str = "ties"
    density: float = 0.2
    """Share of each task vector's entries kept by trimming (TIES, DARE-TIES)."""
    scale: float = 1.0
    """lambda in theta_0 + lambda * merged task vector."""
    majority: str = "total"
    """Sign election: 'total' (sum of values, TIES) or 'frequency' (count)."""
    seed: int = 0
    """DARE's random drops."""
    lora_rank: int | None = None
    """Rank of a merged LoRA adapter: the merged update is factored back to this rank by truncated SVD, so a
    group's adapter can be as small as one member's (None: the sum of the group's ranks, capped at 64, which keeps
    the merged update all but exactly and saves no storage)."""
    per_task: str = "none"
    """The per-task piece kept beside the shared weights (:data:`PER_TASK_PIECES`)."""
    surgery_rank: int = 16
    """Rank r of each task's surgery module (``per_task="surgery"``): ``2 H r`` numbers per task."""

    def __post_init__(self) -> None:
        if self.method not in MERGE_METHODS:
            raise unknown_name("merge method", self.method, MERGE_METHODS)
        if self.per_task not in PER_TASK_PIECES:
            raise unknown_name("per-task piece", self.per_task, PER_TASK_PIECES)
        if self.lora_rank is not None and (isinstance(self.lora_rank, bool) or self.lora_rank < 1):
            raise ConfigError(f"merged LoRA rank={self.lora_rank}; give a rank >= 1, e.g. 8 (one member's rank).")
        if self.surgery_rank < 1:
            raise ConfigError(f"surgery rank={self.surgery_rank}; give a rank >= 1, e.g. 16.")
        if not 0 < self.density <= 1:
            raise ConfigError(f"merge density={self.density} is outside (0, 1]; give e.g. 0.2 to keep the top 20%.")
        if self.majority not in ("total", "frequency"):
            raise unknown_name("sign election", self.majority, ("total", "frequency"))


def combine(task_vectors: Sequence[torch.Tensor], settings: MergeSettings) -> torch.Tensor:
    """Merge task vectors of one tensor (all the same shape) into one update."""
    from peft.utils import merge_utils

    weights = torch.ones(len(task_vectors), dtype=task_vectors[0].dtype)
    if settings.method == "task_arithmetic":
        return merge_utils.task_arithmetic(list(task_vectors), weights)
    with warnings.catch_warnings():  # density 1 (no trimming) is a valid choice here, not a mistake to warn about
        warnings.filterwarnings("ignore", message=".*no pruning will be performed.*")
        if settings.method == "ties":
            return merge_utils.ties(list(task_vectors), weights, settings.density, settings.majority)
        return merge_utils.dare_ties(list(task_vectors), weights, settings.density, settings.majority)


def merge_state_dicts(
    base: Mapping[str, torch.Tensor],
    finetuned: Sequence[Mapping[str, torch.Tensor]],
    settings: MergeSettings = MergeSettings(),
) -> dict[str, torch.Tensor]:
    """theta_0 + lambda * combine(theta_t - theta_0) for every floating tensor; other tensors (ids) from the base."""
    if not finetuned:
        raise ConfigError("nothing to merge: the group has no models.")
    if len(finetuned) == 1:
        return {k: v.clone() for k, v in finetuned[0].items()}
    keys = set(base)
    for i, sd in enumerate(finetuned):
        if set(sd) != keys:
            diff = sorted(set(sd) ^ keys)[:5]
            raise SuiteError(
                f"model {i + 1} of the group does not have the base encoder's tensors (differs in {diff})."
            )
    torch.manual_seed(settings.seed)
    out: dict[str, torch.Tensor] = {}
    for k, b in base.items():
        if not torch.is_floating_point(b):
            out[k] = b.clone()
            continue
        taus = [sd[k].to(torch.float32) - b.to(torch.float32) for sd in finetuned]
        if any(t.shape != b.shape for t in taus):
            raise SuiteError(f"tensor {k!r} has different shapes across the group; they are not one architecture.")
        out[k] = (b.to(torch.float32) + settings.scale * combine(taus, settings)).to(b.dtype)
    return out


def lora_deltas(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Dense updates ``{module: scaling * B @ A}`` from a PEFT LoRA state dict (keys ``*.lora_A.weight``)."""
    out = {}
    for k, a in state.items():
        if k.endswith("lora_A.weight"):
            module = k[: -len(".lora_A.weight")]
            b = state.get(f"{module}.lora_B.weight")
            if b is None:
                raise SuiteError(f"LoRA tensor {module}.lora_B.weight is missing; the adapter file is incomplete.")
            out[module] = scaling * (b.float() @ a.float())
    return out


def merged_lora_rank(ranks: Sequence[int], lora_rank: int | None = None) -> int:
    """Rank of the adapter :func:`merge_lora` writes for members of ``ranks``: a group of one keeps its own; else
    ``lora_rank`` (None: the sum of the ranks, capped at 64), never above the sum of the ranks."""
    if len(ranks) == 1:
        return int(ranks[0])
    return min(lora_rank or 64, sum(ranks))


def merge_lora(
    adapters: Sequence[tuple[Mapping[str, torch.Tensor], float]], settings: MergeSettings = MergeSettings()
) -> tuple[dict[str, torch.Tensor], int, float]:
    """Merge LoRA adapters ``[(state, scaling), ...]`` into one of rank r (scaling 1).

    The rank r is :func:`merged_lora_rank` (``settings.lora_rank`` for a group of two or more). Returns
    ``(state, r, relative error)`` where the error is ||merged - factored||_F / ||merged||_F over all modules.
    """
    deltas = [lora_deltas(s, sc) for s, sc in adapters]
    modules = set(deltas[0])
    if any(set(d) != modules for d in deltas):
        raise SuiteError("the group's LoRA adapters adapt different modules; merge adapters of one target set.")
    ranks = [next(v.shape[0] for k, v in s.items() if k.endswith("lora_A.weight")) for s, _ in adapters]
    r = merged_lora_rank(ranks, settings.lora_rank)
    out: dict[str, torch.Tensor] = {}
    num = den = 0.0
    for m in sorted(modules):
        if len(deltas) == 1:
            merged = deltas[0][m]
        else:
            merged = settings.scale * combine([d[m] for d in deltas], settings)
        u, s, vh = torch.linalg.svd(merged, full_matrices=False)
        rr = min(r, len(s))
        root = s[:rr].sqrt()
        b = u[:, :rr] * root  # (out, r)
        a = root[:, None] * vh[:rr]  # (r, in)
        if rr < r:  # keep one rank for every module
            b = torch.cat([b, b.new_zeros(b.shape[0], r - rr)], dim=1)
            a = torch.cat([a, a.new_zeros(r - rr, a.shape[1])], dim=0)
        out[f"{m}.lora_A.weight"] = a.contiguous()
        out[f"{m}.lora_B.weight"] = b.contiguous()
        num += float(((b @ a) - merged).pow(2).sum())
        den += float(merged.pow(2).sum())
    return out, r, (num / den) ** 0.5 if den > 0 else 0.0
