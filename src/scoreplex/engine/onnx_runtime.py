"""ONNX Runtime encoder backend: serve an exported graph (:mod:`scoreplex.engine.onnx_export`) inside the engine.

:class:`OnnxEncoder` runs the graph's encoder pass; the rest is :class:`~scoreplex.engine.engine.Engine`'s
(tokenisation, length-aware mixed-task batches, the adapter store, the per-task PyTorch heads). The tasks' adapters
live in the same :class:`~scoreplex.engine.slots.LoRASlotTable` as in PyTorch, fed to the graph as zero-copy numpy
views. :class:`OnnxEngine` is the engine configured with this backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoreplex.encoding import DEFAULT_MAX_TOKENS
from scoreplex.errors import ConfigError, SuiteError
from scoreplex.suite import Suite, sha256_file

from .engine import Engine
from .onnx_export import FORMAT, FORMAT_VERSION, OUTPUT, SIDECAR_FILE, SLOT_INPUT, TOKENIZER_DIR
from .slots import LoRASlotTable

REEXPORT_HINT = "Re-export with export_onnx(..., lora_targets=...) covering these layers."


def onnx_slot_table(layers: Sequence[Mapping[str, Any]]) -> LoRASlotTable:
    """The slot table of a graph's adapted layers (sidecar ``lora_layers`` entries, with their input names); never
    empty, since the graph gathers slot 0 for rows without adapter (then masks it)."""
    return LoRASlotTable(
        layers, min_capacity=1, missing_layer_hint=f"The ONNX graph takes no LoRA tables for them. {REEXPORT_HINT}"
    )


def read_sidecar(onnx_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of an export folder; SuiteError if it is missing, corrupt or of another format."""
    path = Path(onnx_dir) / SIDECAR_FILE
    if not path.is_file():
        raise SuiteError(f"{Path(onnx_dir)} holds no ONNX export ({SIDECAR_FILE} missing); write one with export_onnx.")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path} is corrupt ({exc}); export again.") from exc
    if sidecar.get("format") != FORMAT or sidecar.get("format_version", 0) > FORMAT_VERSION:
        raise SuiteError(
            f"{path} is format {sidecar.get('format')!r} v{sidecar.get('format_version')}; this scoreplex reads "
            f"{FORMAT!r} up to v{FORMAT_VERSION}. Upgrade scoreplex or export again."
        )
    return sidecar


def session_options(intra_op_threads: int | None = None, inter_op_threads: int = 1):
    """ONNX Runtime options for a latency-bound scorer: all graph optimisations, sequential execution of nodes (a
    BERT graph is a chain), ``intra_op_threads`` threads inside each op (None: ONNX Runtime's default, one per
    physical core)."""
    import onnxruntime as ort

    for name, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name}={value!r}; give a thread count >= 1 (or 0 / None for the default).")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or 0
    opts.inter_op_num_threads = inter_op_threads
    opts.log_severity_level = 3
    return opts


class OnnxEncoder:
    """An exported encoder graph in ONNX Runtime, as an engine encoder backend (see :mod:`.encoders`).

    Args:
        suite: the suite it serves (checked: same backbone hash, pooling and method as at export).
        onnx_dir: a folder written by :func:`~scoreplex.engine.onnx_export.export_onnx`.
        intra_op_threads: threads per op (None: one per physical core); see :func:`session_options`.
        providers: ONNX Runtime execution providers (default CPU).
        verify: check the graph file against the sha256 in the sidecar before loading it.
    """

    impl_name = "onnx-gathered"

    def __init__(
        self,
        suite: Suite,
        onnx_dir: str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
    ) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        method = suite.method_object
        if not method.capabilities.exportable_onnx:
            from scoreplex.methods import methods_with

            raise ConfigError(
                f"the ONNX engine serves suites of method {' or '.join(methods_with('exportable_onnx'))}; the suite "
                f"at {suite.root} is {suite.method!r}. Score it with scoreplex.scorer.SuiteScorer or the PyTorch "
                "engine."
            )
        self.onnx_dir = Path(onnx_dir)
        self.sidecar = read_sidecar(self.onnx_dir)
        suite.check_backbone(self.sidecar["backbone"]["sha256"], f"the ONNX export at {self.onnx_dir}")
        clash = {
            k: (self.sidecar[key], suite.manifest[k])
            for k, key in (("pooling", "pooling"), ("method", "suite_method"))
            if self.sidecar[key] != suite.manifest[k]
        }
        if clash:
            raise SuiteError(
                f"the ONNX export at {self.onnx_dir} was made for another kind of suite: {clash} (export, suite). "
                "Export this suite with export_onnx."
            )
        model = self.onnx_dir / self.sidecar["model_file"]
        if not model.is_file():
            raise SuiteError(f"{model} is missing; export again with export_onnx.")
        if verify and sha256_file(model) != self.sidecar["sha256"]:
            raise SuiteError(
                f"{model} does not match the sha256 in {SIDECAR_FILE} (corrupt, or an interrupted export); "
                "export again."
            )
        self.session = ort.InferenceSession(
            str(model), session_options(intra_op_threads), providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.onnx_dir / TOKENIZER_DIR), local_files_only=True)
        self.hidden = int(self.sidecar["hidden"])
        self.device = torch.device("cpu")
        layers = self.sidecar["lora_layers"]
        self.table = onnx_slot_table(layers) if layers else None

    @property
    def impl(self) -> str:
        return self.impl_name

    @impl.setter
    def impl(self, name: str) -> None:
        raise ConfigError(
            "the ONNX engine computes LoRA inside its graph (gathered); there is no implementation to set."
        )

    def check(self, task_id: str, lora) -> None:
        if lora and self.table is None:
            raise SuiteError(
                f"task {task_id!r} has LoRA adapters but the ONNX graph at {self.onnx_dir} takes none; "
                "export this suite with export_onnx."
            )
        if self.table is not None:
            self.table.check(task_id, lora)

    def fits(self, task_id: str, lora) -> None:
        """Before a module is written: its adapters fit the backbone (layer widths). A layer the graph has no tables
        for is not refused here: the module is valid for the suite, and fails alone when served (re-export)."""
        if self.table is not None:
            self.table.check(task_id, {k: v for k, v in lora.items() if k in self.table.layers})

    def install(self, key: str, task_id: str, lora, scaling: float) -> int:
        self.check(task_id, lora)
        return self.table.install(key, lora, scaling, task_id=task_id)

    def release(self, key: str) -> None:
        if self.table is not None:
            self.table.release(key)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        feeds: dict[str, np.ndarray] = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if self.table is not None:
            feeds[SLOT_INPUT] = np.fromiter(slots, np.int64, len(slots))  # (B,)
            feeds.update(self.table.feeds)
        (pooled,) = self.session.run([OUTPUT], feeds)  # (B, H)
        return torch.from_numpy(pooled)


class OnnxEngine(Engine):
    """:class:`Engine` with its encoder pass in ONNX Runtime (:class:`OnnxEncoder`); the same API (``score``,
    ``predict``, ``predict_mixed``, ``preload``, the store).

    Args:
        suite: a suite folder (or :class:`Suite`) whose method exports to ONNX, on the export's backbone.
        onnx_dir: a folder written by :func:`~scoreplex.engine.onnx_export.export_onnx`.
        max_tasks, max_bytes, batch_size, max_tokens: as for :class:`Engine`.
        intra_op_threads, providers, verify: as for :class:`OnnxEncoder`.
    """

    def __init__(
        self,
        suite: Suite | str | os.PathLike[str],
        onnx_dir: str | os.PathLike[str],
        *,
        max_tasks: int | None = None,
        max_bytes: int | None = None,
        batch_size: int = 32,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
    ) -> None:
        from .engine import check_batching

        check_batching(batch_size, max_tokens)
        suite = suite if isinstance(suite, Suite) else Suite.open(suite, verify=False)  # files verify on first read
        encoder = OnnxEncoder(suite, onnx_dir, intra_op_threads=intra_op_threads, providers=providers, verify=verify)
        super().__init__(
            suite,
            encoder=encoder,
            max_tasks=max_tasks,
            max_bytes=max_bytes,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )

    @property
    def tables(self) -> LoRASlotTable | None:
        """The graph's slot table (None for a graph without LoRA inputs)."""
        return self.backend.table

    @property
    def input_names(self) -> set[str]:
        return self.backend.input_names

    @property
    def onnx_dir(self) -> Path:
        return self.backend.onnx_dir

    @property
    def sidecar(self) -> dict[str, Any]:
        return self.backend.sidecar
