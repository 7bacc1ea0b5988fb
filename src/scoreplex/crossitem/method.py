"""The ``cross-item`` method: one task-conditioned scorer for a bank of items, as a suite.

The suite's one shared module (``shared/adapter.safetensors``) holds the LoRA adapter trained on every item at once
(``lora.*``); each task module its head (``head.*``), and its ``task.json`` config the text its responses are paired
with (``pairing_text``), so scoring never needs the data folder. Trained by
:func:`scoreplex.crossitem.train.train_cross_item` (``scoreplex train --method cross-item``); new items join with
:func:`scoreplex.crossitem.train.add_item` (a head on the frozen cross-item encoder).

Every item's rows pair with that item's text, so rows of different items cannot share the inference engine's one
backbone pass as it tokenises today: :class:`scoreplex.scorer.SuiteScorer` scores these suites.
"""

from __future__ import annotations

from scoreplex.errors import ConfigError
from scoreplex.methods.base import Capabilities, Method, ParsedModule

SHARED_NAME = "adapter"
"""Name of the cross-item adapter's shared module in its suite."""


class CrossItemMethod(Method):
    name = "cross-item"
    description = "one LoRA adapter across all items (question + response pairs) + a head per item"
    capabilities = Capabilities(
        trains_per_task=False,
        shares_backbone_pass=False,
        exportable_onnx=False,
        mergeable=False,
        adaptable=False,
        trains_jointly=True,
    )
    training_defaults = {"epochs": 6, "lr": 1e-3, "head_lr": 2e-3, "head_warmup_epochs": 0, "patience": 2}
    own_prefixes = ("head.", "lora.")

    def train_all(self, datasets, out_dir, options, *, val_sets=None, backbone=None, on_task_done=None):
        from scoreplex.crossitem.train import train_cross_item

        return train_cross_item(
            datasets, out_dir, options, val_sets=val_sets, backbone=backbone, on_task_done=on_task_done
        )

    def encode(self, tokenizer, texts, max_length, info, *, long_inputs=None):
        """Each response paired with its item's stored text (``config.pairing_text``), question cut first. A pair is
        always cut at ``max_length`` (a cross-item suite is trained in truncate mode)."""
        from scoreplex.encoding import encode_pairs

        if long_inputs is not None and long_inputs.windowed:
            raise ConfigError("a cross-item suite reads each pair cut at max_length; it has no windows mode.")

        config = info.get("config", {})
        return encode_pairs(
            tokenizer,
            str(config.get("pairing_text", "")),
            texts,
            max_length,
            first_share=float(config.get("question_share", 0.25)),
        )

    def parse(self, task_id, spec, config, tensors, hidden) -> ParsedModule:
        from scoreplex.methods.per_task import LoRA

        return LoRA().parse(task_id, spec, config, tensors, hidden)

    def load(self, encoder, hidden, spec, config, state, pooling):
        """The item's TaskModel: a copy of ``encoder`` with the shared adapter, and the item's head (eval mode)."""
        from scoreplex.methods.per_task import LoRA

        return LoRA().load(encoder, hidden, spec, config, state, pooling)
