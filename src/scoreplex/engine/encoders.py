"""Encoder backends of the engine: what runs the shared encoder pass over a batch with per-row adapter slots.

An encoder backend has ``tokenizer``, ``hidden``, ``device``, an ``impl`` name, and
``check(task_id, lora)`` / ``install(key, task_id, lora, scaling) -> slot`` / ``release(key)`` for task adapters,
and ``pool(input_ids (B, T), attention_mask (B, T), slots [B]) -> (B, H)``. :class:`TorchEncoder` is the PyTorch one;
:class:`scoreplex.engine.onnx_runtime.OnnxEncoder` runs an exported ONNX graph. Both keep adapters in one
:class:`~scoreplex.engine.slots.LoRASlotTable`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn as nn

from scoreplex.backbone import pool
from scoreplex.errors import ConfigError

from .multilora import DEFAULT_LORA_IMPL, MultiLoRA

Weights = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


class EncoderBackend(Protocol):
    tokenizer: Any
    hidden: int
    device: torch.device
    impl: str | None

    def check(self, task_id: str, lora: Weights) -> None: ...

    def fits(self, task_id: str, lora: Weights) -> None: ...

    def install(self, key: str, task_id: str, lora: Weights, scaling: float) -> int: ...

    def release(self, key: str) -> None: ...

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, slots: Sequence[int]) -> torch.Tensor: ...


class TorchEncoder:
    """The PyTorch encoder + pooling; with ``adapters``, per-row LoRA through :class:`MultiLoRA` (its layers are
    wrapped in place, so pass an encoder the engine may own)."""

    def __init__(
        self, encoder: nn.Module, tokenizer: Any, pooling: str, *, adapters: bool, impl: str = DEFAULT_LORA_IMPL
    ) -> None:
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.hidden = int(encoder.config.hidden_size)
        self.device = next(encoder.parameters()).device
        self.lora = MultiLoRA(encoder, impl) if adapters else None

    @property
    def table(self):
        return None if self.lora is None else self.lora.table

    @property
    def impl(self) -> str | None:
        return None if self.lora is None else self.lora.impl

    @impl.setter
    def impl(self, name: str) -> None:
        if self.lora is None:
            raise ConfigError("this suite has no LoRA adapters to compute (a head-only or student suite).")
        self.lora.impl = name

    def check(self, task_id: str, lora: Weights) -> None:
        if lora and self.lora is None:
            raise ConfigError(f"task {task_id!r} has LoRA adapters but this suite's method takes none.")
        if self.lora is not None:
            self.lora.check(task_id, lora)

    fits = check  # before a module is written: the same test as on load

    def install(self, key: str, task_id: str, lora: Weights, scaling: float) -> int:
        self.check(task_id, lora)
        return self.lora.install(key, lora, scaling) if self.lora is not None else -1

    def release(self, key: str) -> None:
        if self.lora is not None:
            self.lora.release(key)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        """ONE encoder pass for every row, each with its task's slot (-1: none); pooled features ``(B, H)``."""
        rows = None
        if self.lora is not None:
            rows = torch.tensor(list(slots), dtype=torch.long, device=self.device)
            if bool((rows < 0).all()):
                rows = None  # no row has an adapter: a plain forward
        with self.lora.use(rows) if self.lora is not None else contextlib.nullcontext():
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))
