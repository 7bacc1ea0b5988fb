"""Inference engine: mixed-task batches in one shared backbone pass, per-row LoRA adapters, an LRU adapter store.

* :mod:`.engine` — :class:`Engine`: score ``(task id, response)`` pairs that mix any tasks, with a pluggable encoder.
* :mod:`.encoders` — the PyTorch encoder backend; :mod:`.onnx_runtime` — the ONNX Runtime one (:class:`OnnxEngine`).
* :mod:`.slots` — the one slot table of per-row LoRA adapters both backends use.
* :mod:`.multilora` — per-row LoRA layers on a PyTorch encoder (gathered / grouped implementations).
* :mod:`.store` — task modules loaded lazily, hash-checked, kept under a budget; add / replace / remove while serving.
* :mod:`.onnx_export` — writing the ONNX graph (apart from the runtime).
"""

from .encoders import TorchEncoder
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
from .slots import LoRASlotTable
from .store import AdapterStore, ResidentModule

__all__ = [
    "DEFAULT_LORA_IMPL",
    "LORA_IMPLS",
    "AdapterStore",
    "Engine",
    "LoRAContext",
    "LoRASlotTable",
    "MultiLoRA",
    "MultiLoRALinear",
    "ResidentModule",
    "TorchEncoder",
    "gathered_lora",
    "get_lora_impl",
    "grouped_lora",
    "lora_weights_from_peft",
    "matches_peft_target",
    "peft_key_to_module",
    "target_module_names",
]
