"""The methods that train one task at a time, each on the shared pretrained encoder.

* ``full`` — per-task full fine-tuning: a private copy of the encoder plus a head (the usual practice, the baseline
  and the teachers / merge sources). Stores the whole encoder.
* ``lora`` — a LoRA adapter (PEFT; Hu et al. 2021) on the frozen shared encoder plus a head (paper 001). Stores A/B
  and the head.
* ``head`` — a head on frozen pooled features. Stores the head only.

Every method produces a :class:`~scoreplex.methods.base.TaskModel` trained by the one loop in
:mod:`scoreplex.training.loop`; methods differ by which parameters train and what is saved, not by their loops.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from scoreplex.backbone import lora_target_modules
from scoreplex.errors import SuiteError

from .base import (
    MODULE_FIX,
    Capabilities,
    Method,
    ParsedModule,
    TaskModel,
    build_head,
    load_head,
    load_strict,
    split_state,
)


class FullFineTune(Method):
    name = "full"
    description = "fine-tune a copy of the whole encoder + head per task"
    capabilities = Capabilities(
        trains_per_task=True, shares_backbone_pass=False, exportable_onnx=False, mergeable=True, adaptable=False
    )
    training_defaults = {"lr": 5e-5, "head_lr": 1e-3, "head_warmup_epochs": 0, "epochs": 5, "patience": 2}
    own_prefixes = ("encoder.", "head.")

    def build(self, encoder, hidden, spec, settings, pooling):
        enc = copy.deepcopy(encoder)
        for p in enc.parameters():
            p.requires_grad_(True)
        return TaskModel(enc, build_head(hidden, spec, settings.__dict__), pooling)

    def module_state(self, model):
        state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
        return state

    def parse(self, task_id, spec, config, tensors, hidden) -> ParsedModule:
        raise SuiteError(
            "a full fine-tune holds its own encoder, so its rows cannot share the engine's backbone pass; score it "
            "with scoreplex.scorer.SuiteScorer (`scoreplex score` picks it)."
        )

    def load(self, encoder, hidden, spec, config, state, pooling):
        enc = copy.deepcopy(encoder)
        load_strict(enc, split_state(state, "encoder."), "encoder weights")
        return TaskModel(enc, load_head(hidden, spec, config, state), pooling).eval()


class LoRA(Method):
    name = "lora"
    description = "a LoRA adapter + head per task on the frozen shared encoder"
    capabilities = Capabilities(
        trains_per_task=True,
        shares_backbone_pass=True,
        exportable_onnx=True,
        mergeable=True,
        adaptable=False,
        has_adapters=True,
    )
    training_defaults = {"lr": 2e-3, "head_lr": None, "head_warmup_epochs": 3, "epochs": 6, "patience": 2}
    settings_defaults = {"lora_r": 16, "lora_alpha": 32}
    """Rank 16 (scaling 2) on query/value: chosen over rank 8 on the validation split of all 10 ASAP-SAS items
    (mean validation QWK 0.761 against 0.750; docs/results/recipe.md)."""
    own_prefixes = ("lora.", "head.")

    @staticmethod
    def wrap(encoder, r: int, alpha: float, dropout: float, targets) -> Any:
        """A PEFT LoRA model around a copy of ``encoder``."""
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        with warnings.catch_warnings():  # peft 0.21 calls a transformers API that transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(copy.deepcopy(encoder), cfg)

    def build(self, encoder, hidden, spec, settings, pooling):
        targets = lora_target_modules(encoder, settings.lora_targets)
        enc = self.wrap(encoder, settings.lora_r, settings.lora_alpha, settings.lora_dropout, targets)
        return TaskModel(enc, build_head(hidden, spec, settings.__dict__), pooling)

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

    def parse(self, task_id, spec, config, tensors, hidden) -> ParsedModule:
        from scoreplex.engine.multilora import lora_weights_from_peft

        parsed = super().parse(task_id, spec, config, tensors, hidden)
        parsed.lora = lora_weights_from_peft(split_state(tensors, "lora."))
        parsed.rank, alpha = int(config["lora_r"]), float(config["lora_alpha"])
        bad = {n: tuple(a.shape) for n, (a, _) in parsed.lora.items() if a.shape[0] != parsed.rank}
        if bad or not parsed.lora:
            raise SuiteError(
                f"task.json says lora_r={parsed.rank} but the LoRA weights hold {bad or 'none'}; {MODULE_FIX}."
            )
        parsed.scaling = alpha / parsed.rank
        return parsed

    def load(self, encoder, hidden, spec, config, state, pooling):
        from peft import set_peft_model_state_dict

        enc = self.wrap(encoder, config["lora_r"], config["lora_alpha"], 0.0, list(config["lora_targets"]))
        try:
            result = set_peft_model_state_dict(enc, split_state(state, "lora."))
        except RuntimeError as exc:  # a shape mismatch (e.g. another rank)
            raise SuiteError(
                f"LoRA weights do not fit the backbone or task.json ({exc}); retrain this task or restore the suite."
            ) from exc
        bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise SuiteError(
                f"LoRA weights do not fit the backbone: unexpected {bad[:5]}; retrain this task or restore the suite."
            )
        return TaskModel(enc, load_head(hidden, spec, config, state), pooling).eval()


class HeadOnly(Method):
    name = "head"
    description = "a head per task on the frozen shared encoder's pooled features"
    capabilities = Capabilities(
        trains_per_task=True,
        shares_backbone_pass=True,
        exportable_onnx=True,
        mergeable=False,
        adaptable=False,
        uses_features=True,
    )
    training_defaults = {"lr": 2e-3, "head_lr": None, "head_warmup_epochs": 0, "epochs": 40, "patience": 5}

    def build(self, encoder, hidden, spec, settings, pooling):
        return TaskModel(None, build_head(hidden, spec, settings.__dict__), pooling)

    def module_state(self, model):
        return {f"head.{k}": v for k, v in model.head.state_dict().items()}

    def load(self, encoder, hidden, spec, config, state, pooling):
        return TaskModel(encoder, load_head(hidden, spec, config, state), pooling).eval()
