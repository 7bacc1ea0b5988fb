"""The ``cross-item`` method: one task-conditioned scorer for a bank of items, as a suite.

The suite's one shared module (``shared/adapter.safetensors``) holds the LoRA adapter trained on every item at once
(``lora.*``); each task module its head (``head.*``: a softmax head, or with ``head_type: "ordinal"`` a copy of the
shared latent score and the item's ordinal thresholds, :class:`~scoreplex.heads.OrdinalHead`), and its ``task.json``
config the text its responses are paired with (``pairing_text``), so scoring never needs the data folder. Trained by
:func:`scoreplex.crossitem.train.train_cross_item` (``scoreplex train --method cross-item``); new items join with
:func:`scoreplex.crossitem.train.add_item` (a head on the frozen cross-item encoder).

Every item reads the same adapted encoder, so the inference engine serves these suites in one backbone pass per
batch: it folds the shared adapter into its encoder's weights once (:meth:`CrossItemMethod.install_shared`), encodes
each row paired with its own item's text (``capabilities.pairs_text``), and keeps per item only its head. The ONNX
export does not carry the shared adapter yet: score these suites with the PyTorch engine or
:class:`scoreplex.scorer.SuiteScorer`.
"""

from __future__ import annotations

from scoreplex.errors import ConfigError, SuiteError
from scoreplex.methods.base import Capabilities, Method, split_state

SHARED_NAME = "adapter"
"""Name of the cross-item adapter's shared module in its suite."""


class CrossItemMethod(Method):
    name = "cross-item"
    description = (
        "one LoRA adapter across all items (question + response pairs) + a head per item (softmax, or an ordinal "
        "link on one shared latent score)"
    )
    capabilities = Capabilities(
        trains_per_task=False,
        shares_backbone_pass=True,
        exportable_onnx=False,
        mergeable=False,
        adaptable=False,
        suite_wide_shared=True,
        trains_jointly=True,
        pairs_text=True,
    )
    training_defaults = {
        "epochs": 6,
        "lr": 1e-3,
        "head_lr": 2e-3,
        "head_warmup_epochs": 3,
        "head_warmup_lr": 2e-3,
        "patience": 2,
    }
    own_prefixes = ("head.",)
    """An item's own module holds its head; the adapter is the suite's shared module."""

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

    def load(self, encoder, hidden, spec, config, state, pooling):
        """The item's TaskModel: a copy of ``encoder`` with the shared adapter, and the item's head (eval mode)."""
        from scoreplex.methods.per_task import LoRA

        return LoRA().load(encoder, hidden, spec, config, state, pooling)

    def install_shared(self, suite, encoder, hidden):
        """Fold the suite's one adapter into the engine's ``encoder`` weights (in place,
        :func:`~scoreplex.engine.multilora.fold_lora`): every item reads the same adapted encoder, so the engine runs
        it plain and holds per item only its head. Returns None (no block after pooling). SuiteError if the suite has
        no adapter or it does not fit the encoder."""
        from scoreplex.engine.multilora import fold_lora, lora_weights_from_peft

        meta = suite.manifest.get("shared", {}).get(SHARED_NAME)
        if meta is None:
            raise SuiteError(f"{suite.root} has no {SHARED_NAME!r} shared module; restore the suite or retrain it.")
        try:
            scaling = float(meta["lora_alpha"]) / int(meta["lora_r"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise SuiteError(
                f"{suite.root}: the {SHARED_NAME!r} shared module's entry has no valid lora_r / lora_alpha ({exc!r}); "
                "restore the suite or retrain it."
            ) from None
        fold_lora(encoder, lora_weights_from_peft(split_state(suite.shared_tensors(SHARED_NAME), "lora.")), scaling)
        return None
