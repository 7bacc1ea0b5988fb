"""Many LoRA adapters in ONE forward pass of one shared frozen encoder: each row of a batch gets its own task's update.

Every LoRA-targeted ``nn.Linear`` of the encoder is wrapped once in a :class:`MultiLoRALinear` that reads a *slot
table* of adapters (:class:`~scoreplex.engine.slots.LoRASlotTable`, shared with the ONNX backend), stacked along a
leading slot axis::

    A_all    (S, r, in)     lora_A of the task in each slot
    B_all    (S, out, r)    lora_B of the task in each slot
    scaling  (S,)           lora_alpha / lora_r of that task

and computes, for row ``b`` whose task sits in slot ``i = slots[b]``,

    y_b = base(x_b) + scaling_i * ((x_b @ A_i^T) @ B_i^T)                  (Hu et al. 2021, eq. 3, with dropout off)

A row with slot ``-1`` gets the plain base output. The per-row slot indices ``(B,)`` live on one shared
:class:`LoRAContext`, set once before the encoder's forward, so the encoder's own code runs unchanged (no
``adapter_names`` threaded through every call, unlike PEFT's mixed-batch path).

Ranks may differ between tasks: the tables are zero-padded to the largest rank present. A padded task's extra rows of
A and columns of B are zero, so ``(x @ A^T) @ B^T`` is unchanged by the padding (the zero rank components add 0).
Likewise a task that does not target some layer keeps zeros in that layer's table: its rows pass through unchanged.

Two implementations of the per-row update, selectable by name (:data:`LORA_IMPLS`) and equal up to float rounding:

* ``gathered`` — gather every row's A and B from the table and run two batched matmuls (``bmm``): a fixed number of
  kernels whatever the number of tasks in the batch (S-LoRA's gather, Sheng et al. 2023). The default: its cost does
  not grow with the number of distinct tasks in a batch.
* ``grouped`` — for each distinct slot in the batch, index its rows and run two plain matmuls: cheapest when a batch
  holds few tasks, but it costs a Python loop over tasks per layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from scoreplex.errors import SuiteError, unknown_name

from .slots import LoRASlotTable

LoRAImpl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``impl(y, x, slots, A_all, B_all, scaling) -> y + per-row LoRA update`` (may update ``y`` in place)."""


def gathered_lora(
    y: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, scaling
) -> torch.Tensor:
    """Add each row's LoRA update to ``y`` by gathering its A and B and running two batched matmuls.

    ``x (B, ..., in)``, ``y (B, ..., out)``, ``slots (B,)`` (-1: no adapter), ``a_all (S, r, in)``,
    ``b_all (S, out, r)``, ``scaling (S,)``. Returns ``(B, ..., out)``.
    """
    n, d_in, d_out = x.shape[0], x.shape[-1], y.shape[-1]
    idx = slots.clamp(min=0)
    scale = torch.where(slots >= 0, scaling[idx], torch.zeros((), dtype=scaling.dtype, device=scaling.device))  # (B,)
    a = a_all[idx]  # (B, r, in)
    b = b_all[idx] * scale.view(n, 1, 1)  # (B, out, r); a -1 row's B is zeroed, so it adds nothing
    h = torch.bmm(x.reshape(n, -1, d_in), a.transpose(1, 2))  # (B, T, r)
    return torch.baddbmm(y.reshape(n, -1, d_out), h, b.transpose(1, 2)).view(y.shape)  # (B, T, out)


def grouped_lora(
    y: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, scaling
) -> torch.Tensor:
    """Add each row's LoRA update to ``y`` task by task: the rows of one slot, two matmuls, scattered back.

    Same shapes as :func:`gathered_lora`.
    """
    for s in torch.unique(slots).tolist():
        if s < 0:
            continue
        rows = (slots == s).nonzero().squeeze(1)  # (n_s,)
        xs = x.index_select(0, rows)  # (n_s, T, in)
        delta = (xs @ a_all[s].T) @ b_all[s].T  # (n_s, T, r) -> (n_s, T, out)
        y.index_add_(0, rows, delta, alpha=float(scaling[s]))  # in place: y is the fresh output of base(x)
    return y


LORA_IMPLS: dict[str, LoRAImpl] = {"gathered": gathered_lora, "grouped": grouped_lora}
"""Registry of per-row LoRA implementations; pick one by name (see :func:`get_lora_impl`)."""
DEFAULT_LORA_IMPL = "gathered"


def get_lora_impl(name: str) -> LoRAImpl:
    if name not in LORA_IMPLS:
        raise unknown_name("multi-LoRA implementation", name, list(LORA_IMPLS))
    return LORA_IMPLS[name]


class LoRAContext:
    """Per-row slot indices ``(B,)`` shared by every :class:`MultiLoRALinear` of one encoder (None: no adapters)."""

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None

    @contextmanager
    def use(self, slots: torch.Tensor | None) -> Iterator[None]:
        """Set the slots for one forward pass and clear them afterwards (so a later plain call sees no adapters)."""
        previous, self.slots = self.slots, slots
        try:
            yield
        finally:
            self.slots = previous


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus per-row LoRA adapters read from a :class:`~scoreplex.engine.slots.LoRASlotTable`
    (see the module docstring). The table's tensors are looked up at each call, so the table may grow meanwhile."""

    def __init__(self, base: nn.Linear, context: LoRAContext, table: LoRASlotTable, name: str, impl: str) -> None:
        super().__init__()
        self.base = base
        self.context = context
        self.table = table
        self.name = name
        self.impl = impl
        table.add_layer(name, base.in_features, base.out_features)

    @property
    def impl(self) -> str:
        return self._impl_name

    @impl.setter
    def impl(self, name: str) -> None:
        self._impl = get_lora_impl(name)
        self._impl_name = name

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def a_all(self) -> torch.Tensor:
        """``(S, R, in)``: every slot's A."""
        return self.table.tensors[self.name][0]

    @property
    def b_all(self) -> torch.Tensor:
        """``(S, out, R)``: every slot's B."""
        return self.table.tensors[self.name][1]

    @property
    def scaling(self) -> torch.Tensor:
        """``(S,)``: every slot's scaling."""
        return self.table.tensors[self.name][2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (B, T, out)
        slots = self.context.slots
        a_all, b_all, scaling = self.table.tensors[self.name]
        if slots is None or a_all.shape[1] == 0:
            return y
        if slots.shape[0] != x.shape[0]:
            raise RuntimeError(f"LoRA context has {slots.shape[0]} slot indices for a batch of {x.shape[0]} rows.")
        return self._impl(y, x, slots, a_all, b_all, scaling)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, slots={self.table.capacity}, rank={self.table.rank}"


# -- PEFT names ----------------------------------------------------------------------------------------------------
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def peft_key_to_module(key: str) -> tuple[str, str]:
    """Map a key of ``peft.get_peft_model_state_dict`` to ``(module name in the base encoder, "A" or "B")``.

    ``base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`` ->
    ``("encoder.layer.0.attention.self.query", "A")``. Also accepts keys that keep the adapter name
    (``...lora_A.default.weight``). Raises SuiteError for anything else (DoRA magnitudes, embedding LoRA, biases).
    """
    m = _PEFT_KEY.match(key)
    if m is None:
        raise SuiteError(
            f"{key!r} is not a LoRA A/B weight of a linear layer; the engine serves plain LoRA on nn.Linear "
            "(no DoRA, no embedding LoRA, no LoRA biases). Retrain the task with scoreplex's 'lora' method."
        )
    return m.group("module"), m.group("which")


def lora_weights_from_peft(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module name: (A (r, in), B (out, r))}`` from a PEFT LoRA state dict (keys without the ``lora.`` prefix)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, which = peft_key_to_module(key)
        parts.setdefault(module, {})[which] = tensor
    out = {}
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise SuiteError(
                f"LoRA weights of {module!r} hold only lora_{''.join(ab)}; both A and B are needed: retrain this task "
                "or restore the suite folder."
            )
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise SuiteError(
                f"LoRA weights of {module!r} have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; expected "
                "A (r, in) and B (out, r) with the same r: retrain this task or restore the suite folder."
            )
        out[module] = (a, b)
    return out


@torch.no_grad()
def fold_lora(encoder: nn.Module, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], scaling: float) -> None:
    """Merge one adapter into ``encoder``'s linear layers in place: ``W <- W + scaling * (B @ A)`` for each adapted
    layer (Hu et al. 2021, sec. 4.1: a merged adapter adds no inference cost), ``A (r, in)``, ``B (out, r)``.

    For an adapter every row reads (a suite-wide one): the encoder then runs as a plain encoder. Raises SuiteError,
    before any layer is changed, if a layer is missing, not an ``nn.Linear``, or of another shape.
    """
    layers = {}
    for name, (a, b) in weights.items():
        try:
            layer = encoder.get_submodule(name)
        except AttributeError:
            raise SuiteError(f"the shared adapter adapts {name!r}, which this backbone does not have.") from None
        if not isinstance(layer, nn.Linear):
            raise SuiteError(f"the shared adapter adapts {name!r}, a {type(layer).__name__}; only nn.Linear is served.")
        if (
            a.ndim != 2
            or b.ndim != 2
            or b.shape[1] != a.shape[0]
            or tuple(layer.weight.shape) != (b.shape[0], a.shape[1])
        ):
            raise SuiteError(
                f"the shared adapter's weights for {name!r} have A {tuple(a.shape)}, B {tuple(b.shape)} but the layer "
                f"is {layer.in_features} -> {layer.out_features}; it was trained on another backbone."
            )
        layers[name] = layer
    for name, (a, b) in weights.items():
        w = layers[name].weight  # (out, in)
        w.add_((b.to(w) @ a.to(w)) * scaling)  # (out, r) @ (r, in)


def matches_peft_target(name: str, targets: str | Sequence[str]) -> bool:
    """PEFT's rule (``check_target_module_exists``): a string is a regex that must match the whole name; a list
    matches a name equal to an entry or ending with ``"." + entry``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith(f".{t}") for t in targets)


def target_module_names(encoder: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Names of the linear layers of ``encoder`` that PEFT would adapt for ``targets`` (wrapped ones included)."""
    wrapped = {n for n, m in encoder.named_modules() if isinstance(m, MultiLoRALinear)}
    names = []
    for name, module in encoder.named_modules():
        if not name or name.rsplit(".", 1)[0] in wrapped or not matches_peft_target(name, targets):
            continue
        if not isinstance(module, nn.Linear | MultiLoRALinear):
            raise SuiteError(
                f"LoRA target {name!r} is a {type(module).__name__}, not an nn.Linear; the engine adapts linear "
                "layers only (as scoreplex's 'lora' method trains them)."
            )
        names.append(name)
    return names


class MultiLoRA:
    """The PyTorch side of per-row LoRA: wraps an encoder's linear layers so they read one
    :class:`~scoreplex.engine.slots.LoRASlotTable`, and runs the encoder with one slot index per row.

    Wrap layers with :meth:`inject` / :meth:`install` (a task's layers are wrapped on first need), run the encoder
    inside :meth:`use`. Not thread-safe on its own: the engine serialises calls with its lock.
    """

    def __init__(self, encoder: nn.Module, impl: str = DEFAULT_LORA_IMPL) -> None:
        get_lora_impl(impl)
        self.encoder = encoder
        self.context = LoRAContext()
        p = next(encoder.parameters())
        self.table = LoRASlotTable(dtype=p.dtype, device=p.device)
        self.layers: dict[str, MultiLoRALinear] = {}
        self._impl = impl

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, name: str) -> None:
        get_lora_impl(name)
        self._impl = name
        for layer in self.layers.values():
            layer.impl = name

    @property
    def capacity(self) -> int:
        return self.table.capacity

    @property
    def rank(self) -> int:
        return self.table.rank

    def wrap(self, name: str) -> MultiLoRALinear:
        """Replace the linear layer ``name`` of the encoder by a MultiLoRALinear around it (idempotent)."""
        if name in self.layers:
            return self.layers[name]
        try:
            module = self.encoder.get_submodule(name)
        except AttributeError as exc:
            raise SuiteError(f"the LoRA weights adapt {name!r}, which this backbone does not have.") from exc
        if not isinstance(module, nn.Linear):
            raise SuiteError(f"the LoRA weights adapt {name!r}, a {type(module).__name__}; only nn.Linear is served.")
        layer = MultiLoRALinear(module, self.context, self.table, name, self._impl)
        parent, _, child = name.rpartition(".")
        setattr(self.encoder.get_submodule(parent) if parent else self.encoder, child, layer)
        self.layers[name] = layer
        return layer

    def inject(self, targets: str | Sequence[str]) -> list[str]:
        """Wrap every linear layer that matches the PEFT ``targets``; returns their names."""
        names = target_module_names(self.encoder, targets)
        for name in names:
            self.wrap(name)
        return names

    def check(self, task_id: str, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """SuiteError naming the task if its adapters do not fit this encoder (checked before anything is written)."""
        for name, (a, b) in weights.items():
            module = self.layers.get(name)
            if module is None:
                try:
                    module = self.encoder.get_submodule(name)
                except AttributeError:
                    raise SuiteError(f"task {task_id!r} adapts {name!r}, which this backbone does not have.") from None
            if not isinstance(module, nn.Linear | MultiLoRALinear):
                raise SuiteError(
                    f"task {task_id!r} adapts {name!r}, a {type(module).__name__}; only nn.Linear is served."
                )
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != module.in_features or b.shape[0] != module.out_features:
                raise SuiteError(
                    f"task {task_id!r}: LoRA weights for {name!r} have A {tuple(a.shape)}, B {tuple(b.shape)} but the "
                    f"layer is {module.in_features} -> {module.out_features}; it was trained on another backbone."
                )

    def install(self, key: str, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], scaling: float) -> int:
        """Put one task's adapters (``{layer name: (A, B)}``) in a free slot; returns the slot. Layers the task
        adapts are wrapped on first need. Re-installing a key replaces its weights in place."""
        self.check(key, weights)
        for name in weights:
            self.wrap(name)
        return self.table.install(key, weights, scaling)

    def release(self, key: str) -> None:
        """Free ``key``'s slot (its rows are zeroed, so a stale index can never apply another task's weights)."""
        self.table.release(key)

    def slot_of(self, key: str) -> int:
        return self.table.slot_of(key)

    @property
    def installed(self) -> list[str]:
        return self.table.installed

    def use(self, slots: torch.Tensor | None):
        """Context manager: run the encoder with per-row slot indices ``(B,)`` (-1: base output for that row)."""
        return self.context.use(slots)

    @property
    def table_bytes(self) -> int:
        """Bytes held by the slot tables of every wrapped layer."""
        return self.table.nbytes
