"""The method contract: what every training method of a suite owns, and what the rest of scoreplex may ask of it.

A *method* (``full``, ``lora``, ``head``, ``moe``, ...) is one object that owns its task-module format end to end:

* **build** a trainable :class:`TaskModel` for one task (:meth:`Method.build`);
* **split** a trained model into the tensors its task module stores (:meth:`Method.module_state`,
  :meth:`Method.module_config`), and split a stored state back into its parts (:func:`split_state`);
* **parse** a stored module into its parts once (:meth:`Method.parse`: the head, LoRA weights, a task embedding),
  which the inference engine serves, and **load** it as a PyTorch model around a shared encoder (:meth:`Method.load`),
  which :class:`scoreplex.scorer.SuiteScorer` runs;
* its **default training settings** (:attr:`Method.training_defaults`, plain values for
  :class:`scoreplex.training.loop.TrainConfig`);
* **capability flags** the rest of the code asks instead of comparing names (:class:`Capabilities`).

A merged suite (:mod:`scoreplex.merging`) keeps its source method: each task module is completed by its group's
*shared* module (``shared/<group>.safetensors``), which :meth:`Method.task_tensors` joins in. A method whose shared
module is suite-wide (the MoE student's encoder and expert block) sets ``suite_wide_shared`` and installs it once
(:meth:`Method.install_shared`).

The registry that assembles the methods is :mod:`scoreplex.methods` (``get_method(name)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from scoreplex.backbone import pool
from scoreplex.encoding import WINDOW_POOLS, pool_windows
from scoreplex.errors import ScoreplexError, SuiteError
from scoreplex.heads import ScoringHead, build_rubric_head
from scoreplex.tasks import TaskSpec

if TYPE_CHECKING:
    from scoreplex.suite import Suite


class TaskModel(nn.Module):
    """One task's scoring network: encoder (or none, for precomputed features) -> pooling -> rubric head.

    ``forward(input_ids (B, T), attention_mask (B, T))`` or ``forward(features=(B, H))`` -> logits ``(B, sum K_d)``.
    ``n_tokens (B,)``: each response's token count, for a head with the length feature.
    With ``windows (W,)`` (a long-input batch from :func:`scoreplex.encoding.collate`), ``input_ids`` are ``W``
    windows and ``windows`` the response of each: their pooled vectors are combined per response as the head's
    ``window_pool`` says (:func:`scoreplex.encoding.pool_windows`: averaged, or mean and maximum side by side) before
    the head, so the logits are ``(B, sum K_d)`` per response.
    """

    def __init__(self, encoder: nn.Module | None, head: ScoringHead, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.pooling = pooling

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, windows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled features ``(B, H)`` (``(B, 2H)`` for a head reading ``mean+max``); with ``windows (W,)`` combined
        over each response's windows."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))
        how = getattr(getattr(self, "head", None), "window_pool", "mean")  # models without one head: mean
        if windows is None:
            return pool_windows(pooled, None, len(pooled), how)  # (B, H) or (B, 2H)
        return pool_windows(pooled, windows, int(windows.max()) + 1, how)  # (W, H) -> (B, H) or (B, 2H)

    def forward(
        self, input_ids=None, attention_mask=None, features=None, windows=None, n_tokens=None, **_: Any
    ) -> torch.Tensor:
        pooled = features if features is not None else self.embed(input_ids, attention_mask, windows)  # (B, H) / 2H
        return self.head(pooled, n_tokens)  # (B, sum K)


@dataclass(frozen=True)
class MethodSettings:
    """Method-specific settings carried into the task module's JSON (so loading can rebuild the model)."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: str = "qv"
    head_hidden: int = 0
    head_dropout: float = 0.1
    length_feature: bool = False
    """Give the head the response's log token count as an extra input (:class:`~scoreplex.heads.ScoringHead`)."""
    window_pool: str = "mean"
    """What the head reads of a long response's windows (:data:`scoreplex.encoding.WINDOW_POOLS`); set from the
    suite's long-input mode by :class:`~scoreplex.training.suite.TrainOptions` and ``train_task``, not by hand."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from scoreplex.errors import ConfigError

        checks = (
            ("lora_r", isinstance(self.lora_r, int) and self.lora_r >= 1, "give a rank >= 1, e.g. --lora-r 8"),
            ("lora_alpha", self.lora_alpha > 0, "give a positive alpha (scaling = alpha / r), e.g. --lora-alpha 16"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "give a dropout in [0, 1), e.g. 0.1"),
            ("head_hidden", isinstance(self.head_hidden, int) and self.head_hidden >= 0, "give 0 or a unit count"),
            ("head_dropout", 0 <= self.head_dropout < 1, "give a dropout in [0, 1), e.g. 0.1"),
            ("window_pool", self.window_pool in WINDOW_POOLS, f"give one of {', '.join(WINDOW_POOLS)}"),
        )
        for name, ok, fix in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is out of range; {fix}.")


@dataclass(frozen=True)
class Capabilities:
    """What a method's suites can do; asked by the engine, the ONNX export, merging, distillation and the CLI."""

    trains_per_task: bool
    """Tasks train one at a time (``scoreplex train``); False for methods trained on all tasks at once."""
    shares_backbone_pass: bool
    """Rows of different tasks share one encoder pass (the inference engine serves the suite)."""
    exportable_onnx: bool
    """One ONNX graph of the shared encoder serves the suite (``scoreplex export-onnx``)."""
    mergeable: bool
    """Task models hold their own encoder part, which GW-SMM merging can merge (``scoreplex merge``)."""
    adaptable: bool
    """New tasks join by adaptation against frozen shared parts (``scoreplex adapt``)."""
    has_adapters: bool = False
    """Task modules carry per-row LoRA adapters the engine installs in its slot tables."""
    uses_features: bool = False
    """Training runs on precomputed pooled features (the encoder is frozen and untouched)."""
    suite_wide_shared: bool = False
    """The suite's one shared module is loaded once into the engine's encoder (not joined into each task)."""
    trains_jointly: bool = False
    """All tasks train at once, as one model, through ``train_suite`` (:meth:`Method.train_all`)."""
    pairs_text: bool = False
    """Each response is read with its task's own text (:meth:`Method.encode` depends on the task): the engine encodes
    the rows of a mixed batch task by task, then runs them in one pass."""


@dataclass
class ParsedModule:
    """A task module's parts, parsed once from its tensors (what the inference engine serves).

    ``head`` is the rubric head (eval mode); ``lora`` maps encoder layer names to ``(A (r, in), B (out, r))``;
    ``scaling`` is ``lora_alpha / lora_r`` (0 without adapters); ``task_vec`` is a MoE student's task embedding
    ``(E,)``; ``nbytes`` counts the module's own tensors.
    """

    head: ScoringHead
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scaling: float = 0.0
    rank: int = 0
    task_vec: torch.Tensor | None = None
    nbytes: int = 0


MODULE_FIX = "retrain this task or restore the suite folder"
"""The fix of every task module that does not fit its method."""


def task_module_error(task_id: str, exc: Exception) -> SuiteError:
    """The one SuiteError naming ``task_id`` for a module that failed to parse or load: a ScoreplexError keeps its
    message (which says how to fix it); a KeyError / TypeError / ValueError means task.json or the module is
    incomplete."""
    if isinstance(exc, ScoreplexError):
        return SuiteError(f"task {task_id!r}: {exc}")
    return SuiteError(f"task {task_id!r}: task.json or the module is incomplete ({exc!r}); {MODULE_FIX}.")


def check_window_pool(head: nn.Module, long_inputs) -> None:
    """SuiteError if ``head`` reads other window features than its suite pools a response's windows into
    (``long_inputs``, the manifest's :class:`~scoreplex.encoding.LongInputs`): a task module that does not belong to
    the suite. A head without ``window_pool`` reads the mean."""
    reads, pools = getattr(head, "window_pool", "mean"), long_inputs.window_pool
    if reads != pools:
        raise SuiteError(
            f"its head reads {reads!r} window features but the suite pools a response's windows as {pools!r} "
            f"(manifest long_inputs); {MODULE_FIX}."
        )


def split_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix`` (``"encoder."``, ``"lora."``, ``"head."``, ``"moe."``), unprefixed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``, every key matched and every shape equal; SuiteError naming ``what`` if not."""
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
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


def build_head(hidden: int, spec: TaskSpec, config: Mapping[str, Any]) -> ScoringHead:
    """A fresh rubric head ``(B, hidden) -> (B, sum K_d)`` as a task module's config describes it."""
    return build_rubric_head(hidden, spec.class_counts, config)  # ScoringHead unless config["head_type"] says


def load_head(hidden: int, spec: TaskSpec, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]):
    """The task's trained head (eval mode) from the ``head.*`` tensors of its module."""
    head = build_head(hidden, spec, config)
    load_strict(head, split_state(state, "head."), "head weights")
    return head.eval()


class Method:
    """Base class of the method contract (see the module docstring). Subclasses set :attr:`name`,
    :attr:`capabilities`, :attr:`training_defaults` and :attr:`own_prefixes`, and implement the hooks they use."""

    name: ClassVar[str] = "base"
    capabilities: ClassVar[Capabilities]
    training_defaults: ClassVar[Mapping[str, Any]] = {}
    """Keyword values for :class:`scoreplex.training.loop.TrainConfig` that suit this method on MiniLM."""
    settings_defaults: ClassVar[Mapping[str, Any]] = {}
    """Keyword values for :class:`MethodSettings` that differ from its field defaults for this method."""
    description: ClassVar[str] = ""
    """One line for ``--help`` and error messages."""
    own_prefixes: ClassVar[tuple[str, ...]] = ("head.",)
    """Tensor-name prefixes a task's own module may hold; anything else in it is refused on parse."""

    # -- training ------------------------------------------------------------------------------------------------------
    def build(
        self, encoder: nn.Module, hidden: int, spec: TaskSpec, settings: MethodSettings, pooling: str
    ) -> TaskModel:
        """A trainable TaskModel for one task around (a copy of) the frozen shared ``encoder``."""
        raise SuiteError(
            f"method {self.name!r} does not train one task at a time; see its documentation for how it is trained."
        )

    def module_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """The tensors that make this task's module (saved to its safetensors file), prefixed by part."""
        raise NotImplementedError

    def module_config(self, model: TaskModel, settings: MethodSettings) -> dict[str, Any]:
        """The JSON config a task module needs to be rebuilt (stored in its ``task.json``)."""
        config = {"head_hidden": settings.head_hidden, "head_dropout": settings.head_dropout}
        if settings.length_feature:  # absent when off: task.json as before
            config["length_feature"] = True
        if settings.window_pool != "mean":  # likewise
            config["window_pool"] = settings.window_pool
        return config

    def train_all(self, datasets, out_dir, options, *, val_sets=None, backbone=None, on_task_done=None) -> Suite:
        """Train every task of ``datasets`` at once into a suite (methods with ``trains_jointly``; what
        :func:`scoreplex.training.suite.train_suite` hands them). ConfigError for the others."""
        from scoreplex.errors import ConfigError
        from scoreplex.methods import PER_TASK_METHODS, methods_with

        raise ConfigError(
            f"method {self.name!r} does not train one task at a time ({self.description}); train_suite takes "
            f"{', '.join(PER_TASK_METHODS + tuple(methods_with('trains_jointly')))}."
        )

    # -- reading a suite -----------------------------------------------------------------------------------------------
    def encode(self, tokenizer, texts, max_length: int, info: Mapping[str, Any], *, long_inputs=None):
        """The responses ``texts`` of one task as its model reads them (:class:`scoreplex.encoding.Encoded`), given the
        task's ``task.json`` ``info``: the response alone (:func:`~scoreplex.encoding.encode_texts`, in the suite's
        ``long_inputs`` mode; None = truncate) unless the method pairs it with task text."""
        from scoreplex.encoding import TRUNCATE, encode_texts

        return encode_texts(tokenizer, texts, max_length, long_inputs=long_inputs or TRUNCATE)

    def task_tensors(self, suite: Suite, task_id: str, *, for_engine: bool = False) -> dict[str, torch.Tensor]:
        """A task's tensors as its model needs them: its own, completed by its shared module (a merged group's, or a
        suite-wide one). ``for_engine`` leaves a suite-wide shared module out: the engine installs it once
        (:meth:`install_shared`). Each file is read and verified once per process by the suite."""
        own = suite.module_tensors(task_id)
        shared = suite.shared_of(task_id)
        if shared is None or (for_engine and self.capabilities.suite_wide_shared):
            return own
        return {**suite.shared_tensors(shared), **own}

    def parse(self, task_id: str, spec: TaskSpec, config: Mapping[str, Any], tensors, hidden: int) -> ParsedModule:
        """Check a task module's tensors against its config and parse them into parts; SuiteError if they do not fit.

        Used when the engine loads a task and before :class:`~scoreplex.engine.store.AdapterStore` writes one.
        """
        other = [k for k in tensors if not k.startswith(self.own_prefixes)]
        if other:
            raise SuiteError(
                f"its module holds tensors a {self.name!r} suite does not use: {sorted(other)[:5]}; {MODULE_FIX}."
            )
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return ParsedModule(head=load_head(hidden, spec, config, tensors), nbytes=nbytes)

    def load(
        self, encoder: nn.Module, hidden: int, spec: TaskSpec, config: Mapping[str, Any], state, pooling: str
    ) -> TaskModel:
        """A scoring TaskModel (eval mode) of one task from its tensors, around the shared ``encoder``."""
        raise NotImplementedError

    def install_shared(self, suite: Suite, encoder: nn.Module, hidden: int) -> nn.Module | None:
        """For ``suite_wide_shared`` methods: load the suite's shared module into the engine's ``encoder`` (in place)
        and return the block applied after pooling, ``block(pooled (B, H), task_vecs (B, E)) -> ((B, H), gates)``.
        Other methods return None."""
        return None

    def __repr__(self) -> str:
        return f"<method {self.name!r}>"
