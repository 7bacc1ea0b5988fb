"""Inference engine: mixed-task batches in one shared backbone pass, per-row LoRA adapters, an LRU adapter store.

* :mod:`.multilora` — per-row LoRA on one shared encoder (slot tables, gathered / grouped implementations).
* :mod:`.store` — task modules loaded lazily, hash-checked, kept under a budget; add / replace / remove while serving.
* :mod:`.engine` — :class:`Engine`: score ``(task id, response)`` pairs that mix any tasks.
"""

from .engine import Engine
from .multilora import (
    DEFAULT_LORA_IMPL,
    LORA_IMPLS,
    LoRAContext,
    MultiLoRA,
    MultiLoRALinear,
    gathered_lora,
    get_lora_impl,
    grouped_lora,
    lora_weights_from_peft,
    matches_peft_target,
    peft_key_to_module,
    target_module_names,
)
from .store import AdapterStore, TaskModule

__all__ = [
    "DEFAULT_LORA_IMPL",
    "LORA_IMPLS",
    "AdapterStore",
    "Engine",
    "LoRAContext",
    "MultiLoRA",
    "MultiLoRALinear",
    "TaskModule",
    "gathered_lora",
    "get_lora_impl",
    "grouped_lora",
    "lora_weights_from_peft",
    "matches_peft_target",
    "peft_key_to_module",
    "target_module_names",
]
