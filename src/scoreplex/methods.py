"""Training methods as a small registry: what is trainable per task, and what a task module stores.

* ``full`` — per-task full fine-tuning: a private copy of the encoder plus a head (the usual practice, the baseline
  and later the teachers). Stores the whole encoder.
* ``lora`` — a LoRA adapter (PEFT) on the frozen shared encoder plus a head (paper 001). Stores A/B and the head.
* ``head`` — a head on frozen pooled features. Stores the head only.

Every method produces a :class:`TaskModel` that maps a token batch to logits, trained by the one loop in
:mod:`scoreplex.training`; methods differ by which parameters train and what is saved, not by their loops.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from scoreplex.backbone import lora_target_modules, pool
from scoreplex.errors import SuiteError, unknown_name
from scoreplex.heads import ScoringHead
from scoreplex.tasks import TaskSpec


class TaskModel(nn.Module):
    """Encoder (or none, for precomputed features) -> pooling -> rubric head."""

    def __init__(self, encoder: nn.Module | None, head: ScoringHead, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.pooling = pooling

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))

    def forward(self, input_ids=None, attention_mask=None, features=None, **_: Any) -> torch.Tensor:
        pooled = features if features is not None else self.embed(input_ids, attention_mask)  # (B, H)
        return self.head(pooled)  # (B, sum K)


@dataclass(frozen=True)
class MethodSettings:
    """Method-specific settings carried into the task module's JSON (so loading can rebuild the model)."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: str = "qv"
    head_hidden: int = 0
    head_dropout: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: build a trainable TaskModel and (de)serialise its task-specific tensors."""

    name = "base"
    uses_features = False
    """True when training runs on precomputed pooled features (the encoder is frozen and untouched)."""

    def build(self, encoder: nn.Module, hidden: int, spec: TaskSpec, settings: MethodSettings, pooling: str):
        raise NotImplementedError

    def module_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """The tensors that make this task's module (saved to its safetensors file)."""
        raise NotImplementedError

    def module_config(self, model: TaskModel, settings: MethodSettings) -> dict[str, Any]:
        return {"head_hidden": settings.head_hidden, "head_dropout": settings.head_dropout}

    def load(self, encoder: nn.Module, hidden: int, spec: TaskSpec, config: dict[str, Any], state, pooling: str):
        """Rebuild a scoring TaskModel from a saved module around the shared ``encoder``."""
        raise NotImplementedError

    @staticmethod
    def _head(hidden: int, spec: TaskSpec, hidden_units: int, dropout: float) -> ScoringHead:
        return ScoringHead(hidden, spec.class_counts, hidden=hidden_units, dropout=dropout)

    @staticmethod
    def _split(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    @staticmethod
    def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # strict=False still raises on a shape mismatch
            raise SuiteError(
                f"{what} do not fit their model ({exc}). The module file and task.json disagree; retrain or restore "
                "the suite."
            ) from exc
        if missing or unexpected:
            raise SuiteError(
                f"{what} does not fit its model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}. "
                "The module file and task.json disagree; retrain or restore the suite."
            )


class FullFineTune(Method):
    name = "full"

    def build(self, encoder, hidden, spec, settings, pooling):
        enc = copy.deepcopy(encoder)
        for p in enc.parameters():
            p.requires_grad_(True)
        return TaskModel(enc, self._head(hidden, spec, settings.head_hidden, settings.head_dropout), pooling)

    def module_state(self, model):
        state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
        return state

    def load(self, encoder, hidden, spec, config, state, pooling):
        enc = copy.deepcopy(encoder)
        self._load_strict(enc, self._split(state, "encoder."), "encoder weights")
        head = self._head(hidden, spec, config.get("head_hidden", 0), config.get("head_dropout", 0.1))
        self._load_strict(head, self._split(state, "head."), "head weights")
        return TaskModel(enc, head, pooling).eval()


class LoRA(Method):
    name = "lora"

    def _wrap(self, encoder, r, alpha, dropout, targets):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        with warnings.catch_warnings():  # peft 0.21 calls a transformers API that transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(copy.deepcopy(encoder), cfg)

    def build(self, encoder, hidden, spec, settings, pooling):
        targets = lora_target_modules(encoder, settings.lora_targets)
        enc = self._wrap(encoder, settings.lora_r, settings.lora_alpha, settings.lora_dropout, targets)
        return TaskModel(enc, self._head(hidden, spec, settings.head_hidden, settings.head_dropout), pooling)

    def module_state(self, model):
        from peft import get_peft_model_state_dict

        state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(model.encoder).items()}
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
        return state

    def module_config(self, model, settings):
        cfg = super().module_config(model, settings)
        pc = model.encoder.peft_config["default"]
        cfg.update(
            lora_r=pc.r, lora_alpha=pc.lora_alpha, lora_dropout=pc.lora_dropout, lora_targets=sorted(pc.target_modules)
        )
        return cfg

    def load(self, encoder, hidden, spec, config, state, pooling):
        from peft import set_peft_model_state_dict

        enc = self._wrap(encoder, config["lora_r"], config["lora_alpha"], 0.0, list(config["lora_targets"]))
        try:
            result = set_peft_model_state_dict(enc, self._split(state, "lora."))
        except RuntimeError as exc:  # a shape mismatch (e.g. another rank)
            raise SuiteError(f"LoRA weights do not fit the backbone or task.json ({exc}).") from exc
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise SuiteError(f"LoRA weights do not fit the backbone: unexpected {bad[:5]}.")
        head = self._head(hidden, spec, config.get("head_hidden", 0), config.get("head_dropout", 0.1))
        self._load_strict(head, self._split(state, "head."), "head weights")
        return TaskModel(enc, head, pooling).eval()


class HeadOnly(Method):
    name = "head"
    uses_features = True

    def build(self, encoder, hidden, spec, settings, pooling):
        return TaskModel(None, self._head(hidden, spec, settings.head_hidden, settings.head_dropout), pooling)

    def module_state(self, model):
        return {f"head.{k}": v for k, v in model.head.state_dict().items()}

    def load(self, encoder, hidden, spec, config, state, pooling):
        head = self._head(hidden, spec, config.get("head_hidden", 0), config.get("head_dropout", 0.1))
        self._load_strict(head, self._split(state, "head."), "head weights")
        return TaskModel(encoder, head, pooling).eval()


class MoEStudentMethod(Method):
    """A UniMoE-Guided student (:mod:`scoreplex.moe`): the suite's shared module holds the fine-tuned encoder and the
    MoE block; each task module its task embedding and head. Trained by :func:`scoreplex.moe.train.train_student`
    for all tasks at once (not per task), so :meth:`build` is not used."""

    name = "moe"

    def build(self, encoder, hidden, spec, settings, pooling):
        raise SuiteError(
            "a MoE student is trained on all tasks at once: use scoreplex.moe.train_student (or `scoreplex "
            "distill`), not per-task training."
        )

    def load(self, encoder, hidden, spec, config, state, pooling):
        from scoreplex.moe.model import MoEBlock, MoEConfig, MoETaskModel

        cfg = MoEConfig(**config["moe"])
        enc = copy.deepcopy(encoder)
        self._load_strict(enc, self._split(state, "encoder."), "student encoder weights")
        moe = MoEBlock(hidden, cfg)
        self._load_strict(moe, self._split(state, "moe."), "MoE block weights")
        head = self._head(hidden, spec, cfg.head_hidden, cfg.head_dropout)
        self._load_strict(head, self._split(state, "head."), "head weights")
        if "task_embedding" not in state:
            raise SuiteError(f"task {spec.id!r} has no task embedding in its module; the student suite is incomplete.")
        return MoETaskModel(enc, moe, state["task_embedding"], head, pooling).eval()


METHODS: dict[str, Method] = {m.name: m for m in (FullFineTune(), LoRA(), HeadOnly(), MoEStudentMethod())}
PER_TASK_METHODS = ("full", "lora", "head")
"""Methods that train one task at a time (``train_suite``); ``moe`` suites come from :mod:`scoreplex.moe`."""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown_name("training method", name, list(PER_TASK_METHODS))
    return METHODS[name]
