"""The slot tables of per-row LoRA adapters: which task holds which slot, and every adapted layer's stacked weights.

One class for every encoder backend. For each adapted layer ``i`` the table holds::

    A_i      (S, R, in_i)    lora_A of the task in each slot
    B_i      (S, out_i, R)   lora_B of the task in each slot
    scaling  (S,)            lora_alpha / lora_r of that task (0: empty slot)

as float tensors. The PyTorch encoder's :class:`~scoreplex.engine.multilora.MultiLoRALinear` layers read them at
forward time; the ONNX encoder feeds zero-copy numpy views of them (:attr:`LoRASlotTable.feeds`) to its graph.

Tasks take a slot when they load (:meth:`LoRASlotTable.install`) and give it back when they leave
(:meth:`LoRASlotTable.release`), written in place: the resident set changes only that task's rows, and the tensors
are reallocated only when the table grows (more slots: doubled; a larger rank: zero-padded, which leaves
``(x @ A^T) @ B^T`` unchanged since the extra rank components are zero). A released slot is zeroed, so a stale index
can never apply another task's weights. A task that does not adapt some layer keeps zeros in that layer's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from scoreplex.errors import SuiteError

Weights = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
"""``{layer name: (A (r, in), B (out, r))}`` of one task."""


class LoRASlotTable:
    """Slots of LoRA adapters for a set of layers (see the module docstring).

    Args:
        layers: entries ``{"name", "in_features", "out_features"}`` (and ``"inputs"``: the graph input names of
            A, B and scaling, for :attr:`feeds`); more layers can join with :meth:`add_layer`.
        min_capacity: slots allocated from the start (an ONNX graph gathers slot 0 for rows without adapter, then
            masks it: its tables are never empty).
        missing_layer_hint: what to do when a task adapts a layer the table lacks (appended to the error).
        dtype, device: of the tables.
    """

    def __init__(
        self,
        layers: Sequence[Mapping[str, Any]] = (),
        *,
        min_capacity: int = 0,
        missing_layer_hint: str = "",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.dtype, self.device = dtype, torch.device(device)
        self.missing_layer_hint = missing_layer_hint
        self.layers: dict[str, dict[str, Any]] = {}
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self.capacity = 0
        self.rank = 0
        self.rebuilds = 0
        """How many times the tables were (re)allocated (and the ONNX feeds rebuilt)."""
        self._feeds: dict[str, np.ndarray] | None = None
        for entry in layers:
            self.add_layer(
                str(entry["name"]), int(entry["in_features"]), int(entry["out_features"]), entry.get("inputs")
            )
        if min_capacity:
            self._allocate(min_capacity, 1)

    # -- layout --------------------------------------------------------------------------------------------------------
    def _zeros(self, name: str, capacity: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        entry = self.layers[name]
        kw = {"dtype": self.dtype, "device": self.device}
        return (
            torch.zeros((capacity, rank, entry["in_features"]), **kw),  # (S, R, in)
            torch.zeros((capacity, entry["out_features"], rank), **kw),  # (S, out, R)
            torch.zeros((capacity,), **kw),  # (S,)
        )

    def add_layer(self, name: str, in_features: int, out_features: int, inputs: Sequence[str] | None = None) -> None:
        """Give the table a layer (idempotent); existing slots hold zeros for it."""
        if name in self.layers:
            return
        self.layers[name] = {"in_features": in_features, "out_features": out_features, "inputs": inputs}
        self.tensors[name] = self._zeros(name, self.capacity, self.rank)
        self._feeds = None

    def _allocate(self, capacity: int, rank: int) -> None:
        if capacity > self.capacity:
            self._free.extend(range(capacity - 1, self.capacity - 1, -1))  # hand out low slots first
        s, r = self.capacity, self.rank
        self.capacity, self.rank = max(capacity, s), max(rank, r)
        for name, (old_a, old_b, old_c) in self.tensors.items():
            a, b, c = self._zeros(name, self.capacity, self.rank)
            a[:s, :r], b[:s, :, :r], c[:s] = old_a, old_b, old_c
            self.tensors[name] = (a, b, c)
        self.rebuilds += 1
        self._feeds = None

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """``{graph input name: numpy view}`` of every layer's A, B and scaling (rebuilt only after a reallocation,
        so the same arrays are fed while the resident set changes in place)."""
        if self._feeds is None:
            self._feeds = {
                n: t.numpy()
                for name, entry in self.layers.items()
                if entry["inputs"]
                for n, t in zip(entry["inputs"], self.tensors[name], strict=True)
            }
        return self._feeds

    # -- slots ---------------------------------------------------------------------------------------------------------
    def check(self, task_id: str, weights: Weights) -> None:
        """SuiteError naming the task if it adapts a layer the table lacks or its shapes do not fit."""
        missing = sorted(set(weights) - set(self.layers))
        if missing:
            raise SuiteError(
                f"task {task_id!r} adapts {missing}, which are not among the adapted layers "
                f"({list(self.layers) or 'none'}). {self.missing_layer_hint}".rstrip()
            )
        for name, (a, b) in weights.items():
            entry = self.layers[name]
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != entry["in_features"] or b.shape[0] != entry["out_features"]:
                raise SuiteError(
                    f"task {task_id!r}: LoRA weights for {name!r} have A {tuple(a.shape)}, B {tuple(b.shape)} but the "
                    f"layer is {entry['in_features']} -> {entry['out_features']}; it was trained on another backbone."
                )

    @torch.no_grad()
    def install(self, key: str, weights: Weights, scaling: float, *, task_id: str = "") -> int:
        """Write one task's adapters into a slot (re-installing a key overwrites its slot); returns the slot."""
        self.check(task_id or key, weights)
        rank = max((a.shape[0] for a, _ in weights.values()), default=0)
        slot = self._slot_of.get(key)
        if slot is None:
            if not self._free:
                self._allocate(max(4, 2 * self.capacity), rank)
            slot = self._free.pop()
        if rank > self.rank:
            self._allocate(self.capacity, rank)
        for name, (a_all, b_all, c_all) in self.tensors.items():
            a_all[slot].zero_(), b_all[slot].zero_(), c_all[slot].zero_()
            if name in weights:
                a, b = weights[name]
                r = a.shape[0]
                a_all[slot, :r] = a.detach().to(a_all)
                b_all[slot, :, :r] = b.detach().to(b_all)
                c_all[slot] = scaling
        self._slot_of[key] = slot
        return slot

    @torch.no_grad()
    def release(self, key: str) -> None:
        """Free ``key``'s slot and zero it (no-op for an unknown key)."""
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return
        for a_all, b_all, c_all in self.tensors.values():
            a_all[slot].zero_(), b_all[slot].zero_(), c_all[slot].zero_()
        self._free.append(slot)

    def slot_of(self, key: str) -> int:
        return self._slot_of[key]

    @property
    def installed(self) -> list[str]:
        return list(self._slot_of)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.tensors.values() for t in ts)
