"""ONNX export: ONE exported graph of the shared encoder + pooling, every task's LoRA adapter fed as inputs.

The graph is exported once per backbone and serves any set of tasks, mixed freely within a batch. Its inputs::

    input_ids        (B, T)          int64
    attention_mask   (B, T)          int64
    slot             (B,)            int64    per row, its task's slot in the tables (-1: no adapter)
    lora_A.{i}       (S, R, in_i)    float32  for each adapted layer i, in the sidecar's ``lora_layers`` order
    lora_B.{i}       (S, out_i, R)   float32
    lora_scaling.{i} (S,)            float32

and its one output is ``pooled (B, H)``. B, T, S (slots) and R (rank) are dynamic axes. Each adapted linear layer
of the encoder computes, for row ``b`` in slot ``s = slot[b]``,

    y_b = W x_b + bias + scaling_s * ((x_b @ A_s^T) @ B_s^T)              (Hu et al. 2021, eq. 3, dropout off)

by tracing the very function the PyTorch engine runs (:func:`scoreplex.engine.multilora.gathered_lora`: gather each
row's A and B, two batched matmuls; S-LoRA's gather, Sheng et al. 2023). So the adapters are *data*, not weights:
adding, replacing or removing a task never needs a re-export, and there is no merged model per task. A row without an
adapter (slot -1) is handled inside the graph by a mask: its gathered scaling is set to 0 (no reserved zero slot, but
the tables must hold at least one slot, which the runtime's slot table guarantees). Serving the graph is
:mod:`scoreplex.engine.onnx_runtime`'s job; this module only writes it. A head-only suite exports a graph
with neither ``slot`` nor LoRA inputs.

Only layers chosen at export time can be adapted: by default those the suite's tasks adapt (read from their
``task.json``); pass ``lora_targets`` to :func:`export_onnx` to also cover tasks trained later on other layers. A task
that adapts a layer the graph lacks fails to load with an error naming the layer (other tasks keep serving).

The heads stay outside the graph, in PyTorch (the AdapterStore builds them; a LayerNorm and one or two small linear
layers per task, microseconds per batch): heads of any size side by side would otherwise need one graph per head
shape, or padded logits and per-row gathers of head weights, for no measurable gain.

``quantize="int8"`` applies static quantisation (:mod:`scoreplex.engine.quantize`: activation scales fixed from
calibration responses, so a row never depends on its batch; dynamic quantisation's per-batch scales changed 17 of
600 demo labels) with per-channel int8 weights to the backbone's MatMul / Gemm nodes whose weight is a constant (the
frozen linear layers). The LoRA tables are inputs, so they stay
float32; the attention products and the LoRA matmuls (both operands computed) stay float32 too. Per-channel matters:
per-tensor scales dropped MiniLM's pooled features to cosine 0.955 on real text, per-channel kept >= 0.99.

A folder written by :func:`export_onnx`::

    encoder.onnx     the graph (fp32, or int8 weights)
    onnx.json        sidecar: format, opset, inputs / output, LoRA layer order, backbone sha256 (from the suite
                     manifest), pooling, hidden size, max rank at export, quantisation, the graph's sha256, versions
    tokenizer/       the backbone's tokenizer, so serving needs no PyTorch model
"""

from __future__ import annotations

import copy
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from scoreplex.backbone import Backbone, lora_target_modules, pool
from scoreplex.errors import ConfigError, ScoreplexError, SuiteError, unknown_name
from scoreplex.paths import prepare_output_folder
from scoreplex.suite import Suite, package_versions, sha256_file, write_json_atomic

from .engine import Engine
from .multilora import MultiLoRALinear, gathered_lora, target_module_names

FORMAT = "scoreplex-onnx"
FORMAT_VERSION = 1
MODEL_FILE = "encoder.onnx"
SIDECAR_FILE = "onnx.json"
TOKENIZER_DIR = "tokenizer"
DEFAULT_OPSET = 17
"""LayerNormalization is a single ONNX op from opset 17 on."""
BASE_INPUTS = ("input_ids", "attention_mask")
SLOT_INPUT = "slot"
OUTPUT = "pooled"


def lora_input_names(i: int) -> tuple[str, str, str]:
    """Names of the A, B and scaling inputs of the ``i``-th adapted layer."""
    return f"lora_A.{i}", f"lora_B.{i}", f"lora_scaling.{i}"


# -- the exported graph ------------------------------------------------------------------------------------------------
class _Tables:
    """Slot indices and per-layer LoRA tables of one traced call (the graph inputs), shared by every layer."""

    slots: torch.Tensor
    tables: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = ()


class _InputLoRALinear(nn.Module):
    """A frozen linear layer plus a per-row LoRA update whose tables are inputs of the call, not module state."""

    def __init__(self, base: nn.Linear, tables: _Tables, index: int) -> None:
        super().__init__()
        self.base = base
        self.tables = tables
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_all, b_all, scaling = self.tables.tables[self.index]  # (S, r, in), (S, out, r), (S,)
        return gathered_lora(self.base(x), x, self.tables.slots, a_all, b_all, scaling)  # (B, T, out)


class _EncoderGraph(nn.Module):
    """What is exported: encoder (LoRA layers reading their tables from the inputs) -> pooling -> (B, H).

    Calls the encoder with keywords: the legacy exporter passes positional inputs, and BertModel's third positional
    argument is ``token_type_ids``, not ``attention_mask``.
    """

    def __init__(self, encoder: nn.Module, layer_names: Sequence[str], pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.n_layers = len(layer_names)
        self._tables = _Tables()
        for i, name in enumerate(layer_names):
            base = encoder.get_submodule(name)
            parent, _, child = name.rpartition(".")
            setattr(
                encoder.get_submodule(parent) if parent else encoder, child, _InputLoRALinear(base, self._tables, i)
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *lora: torch.Tensor) -> torch.Tensor:
        if self.n_layers:
            self._tables.slots = lora[0]  # (B,)
            self._tables.tables = [tuple(lora[1 + 3 * i : 4 + 3 * i]) for i in range(self.n_layers)]
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling, getattr(out, "pooler_output", None))


def _plain_encoder(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` with every MultiLoRALinear of a PyTorch engine replaced by its frozen base layer."""
    wrapped = [m for m in encoder.modules() if isinstance(m, MultiLoRALinear)]
    memo = {id(t): t.new_zeros(0) for m in wrapped for t in (m.a_all, m.b_all, m.scaling)}  # slot tables: not copied
    encoder = copy.deepcopy(encoder, memo).eval()
    for name, module in list(encoder.named_modules()):
        if isinstance(module, MultiLoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent) if parent else encoder, child, module.base)
    return encoder


def _lora_layers(encoder: nn.Module, suite: Suite, extra: Sequence[str], targets) -> list[str]:
    """Layers the graph adapts, in the encoder's module order: those the suite's tasks adapt (from their task.json),
    ``extra`` names, and those matching the PEFT ``targets``; a LoRA suite with none yet gets the ``qv`` preset."""
    if not suite.method_object.capabilities.has_adapters:
        if targets is not None:
            raise ConfigError(f"lora_targets={targets!r} given for a {suite.method!r} suite, which has no adapters.")
        return []
    wanted = set(extra)
    for task_id in suite.task_ids:
        config = suite.task_info(task_id).get("config", {})
        targets_of_task = config.get("lora_targets")
        if targets_of_task:
            as_peft = targets_of_task if isinstance(targets_of_task, str) else list(targets_of_task)
            wanted.update(target_module_names(encoder, as_peft))
    if targets is not None:
        extra_layers = target_module_names(encoder, targets)
        if not extra_layers:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(
                f"lora_targets={targets!r} match no linear layer of this backbone; choose from the layer names ending "
                f"in {', '.join(suffixes)} (e.g. query,key,value)."
            )
        wanted.update(extra_layers)
    if not wanted:
        wanted.update(target_module_names(encoder, lora_target_modules(encoder, "qv")))
    return [name for name, _ in encoder.named_modules() if name in wanted]


def _example_inputs(
    vocab_size: int, layers: Sequence[nn.Linear], *, batch: int, length: int, slots: int, rank: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """Random graph inputs; row 0 is padded (so the traced attention path keeps the padding mask), row 1 has slot -1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, length), generator=g)  # (B, T)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0
    ids[0, length // 2 :] = 0
    if not layers:
        return ids, mask
    slot = torch.arange(batch) % slots
    slot[1] = -1
    tables: list[torch.Tensor] = []
    for layer in layers:
        tables += [
            torch.randn(slots, rank, layer.in_features, generator=g) * 0.1,  # (S, R, in)
            torch.randn(slots, layer.out_features, rank, generator=g) * 0.1,  # (S, out, R)
            torch.rand(slots, generator=g) + 0.5,  # (S,)
        ]
    return ids, mask, slot, *tables


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the legacy exporter's known, harmless warnings (deprecation notice; shape checks that are constant for
    BERT masks; gather indices are clamped to >= 0 before indexing, so the advanced-indexing caveat does not apply)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        yield


# -- quantisation ------------------------------------------------------------------------------------------------------
def quantize_int8(src: Path, dst: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Static INT8 (:func:`scoreplex.engine.quantize.quantize_int8_static`): per-channel int8 weights, activation
    scales fixed by calibration, so a row's score never depends on the rows beside it in a batch."""
    from .quantize import quantize_int8_static

    return quantize_int8_static(src, dst, feeds)


QUANTIZATIONS: dict[str, Callable[[Path, Path, Sequence[Mapping[str, np.ndarray]]], dict[str, Any]]] = {
    "int8": quantize_int8
}
"""Registry of post-export quantisations: ``name -> fn(fp32 model path, output path, calibration feeds) -> sidecar
details``. Each calibrates on representative responses (``export_onnx(..., calibration=...)``)."""
CALIBRATION_ROWS = 512
"""Calibration responses used at most (a seeded sample; 512 and 1,600 gave the same labels on the demo suite)."""


def _calibration_feeds(
    suite: Suite, bb: Backbone, layer_info: Sequence[Mapping[str, Any]], calibration, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Graph feeds over a seeded sample of ``calibration`` responses, each with its task's adapter in the tables."""
    from scoreplex.content import has_content

    from .onnx_runtime import onnx_slot_table
    from .quantize import calibration_feeds

    pairs = (
        [(str(t), x) for t, xs in calibration.items() for x in xs]
        if isinstance(calibration, Mapping)
        else list(calibration)
    )
    pairs = [(t, x) for t, x in pairs if isinstance(x, str) and has_content(x)]
    if not pairs:
        raise ConfigError(
            "int8 quantisation calibrates fixed activation scales on representative responses, and none were given: "
            "pass calibration={task id: [texts]} (CLI: --calibration FILE, e.g. the training file)."
        )
    unknown = sorted({t for t, _ in pairs} - set(suite.task_ids))
    if unknown:
        raise ConfigError(f"calibration responses of tasks {unknown[:5]} the suite does not hold; give its own tasks'.")
    rng = np.random.default_rng(seed)
    if len(pairs) > CALIBRATION_ROWS:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), CALIBRATION_ROWS, replace=False))]
    tasks, texts = [t for t, _ in pairs], [x for _, x in pairs]
    if not layer_info:
        return calibration_feeds(bb.tokenizer, texts, suite.max_length)
    table, method = onnx_slot_table(layer_info), suite.method_object
    for task_id in dict.fromkeys(tasks):
        info = suite.task_info(task_id)
        parsed = method.parse(
            task_id,
            suite.spec(task_id),
            info.get("config", {}),
            method.task_tensors(suite, task_id, for_engine=True),
            bb.hidden,
        )
        table.install(task_id, parsed.lora, parsed.scaling, task_id=task_id)
    slots = [table.slot_of(t) for t in tasks]
    return calibration_feeds(bb.tokenizer, texts, suite.max_length, table.feeds, slots=slots)


def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _suite_and_backbone(suite_or_engine, backbone) -> tuple[Suite, Backbone, list[str], Any]:
    """The suite, its backbone (checked against the manifest), the layers an engine already wraps, its lock."""
    if isinstance(suite_or_engine, Engine):
        _check_exportable(suite_or_engine.suite)
        engine = suite_or_engine
        if engine.bb is None:
            raise ConfigError("export_onnx needs a suite or a PyTorch Engine; this engine has no PyTorch encoder.")
        if backbone is not None:
            raise ConfigError("give a backbone only with a suite: an Engine brings its own.")
        layers = list(engine.lora.layers) if engine.lora is not None else []
        return engine.suite, engine.bb, layers, engine.lock
    suite = suite_or_engine if isinstance(suite_or_engine, Suite) else Suite.open(suite_or_engine, verify=False)
    _check_exportable(suite)
    return suite, Backbone.for_suite(suite, backbone), [], None


def _check_exportable(suite: Suite) -> None:
    """ConfigError unless the suite's method exports to one encoder graph, naming the scorers that serve it."""
    method = suite.method_object
    if not method.capabilities.exportable_onnx:
        from scoreplex.methods import methods_with

        serve = (
            "score it with the PyTorch engine (scoreplex.engine.Engine; `scoreplex score` and the service pick it)"
            if method.capabilities.shares_backbone_pass
            else "score it with scoreplex.scorer.SuiteScorer (`scoreplex score` picks it)"
        )
        raise ConfigError(
            f"only suites of method {' or '.join(methods_with('exportable_onnx'))} share one encoder graph; the suite "
            f"at {suite.root} is {suite.method!r} ({method.description}; one encoder per task or not exportable "
            f"yet): {serve}."
        )


def export_onnx(
    suite_or_engine: Engine | Suite | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quantize: str | None = None,
    calibration: Mapping[str, Sequence[str]] | Sequence[tuple[str, str]] | None = None,
    backbone: Backbone | str | os.PathLike[str] | None = None,
    lora_targets: str | Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> dict[str, Any]:
    """Export a suite's shared encoder + pooling as ONE ONNX graph with the LoRA tables as inputs; returns the sidecar.

    Args:
        suite_or_engine: a suite (folder or :class:`Suite`) of method ``lora`` or ``head``, or a PyTorch
            :class:`Engine` (its encoder is copied without its slot tables).
        out_dir: the folder to write (see the module docstring); an earlier export there is replaced file by file,
            each atomically, the sidecar last (it holds the graph's sha256, so a torn export is detected on load).
        quantize: None (fp32) or a name in :data:`QUANTIZATIONS` (``"int8"``: static int8, per-channel weights and
            activation scales fixed by calibration: batch-independent).
        calibration: for ``quantize``: representative responses, ``{task id: [texts]}`` or ``[(task id, text)]``
            (e.g. the training responses; never the set you evaluate on); at most :data:`CALIBRATION_ROWS` are used.
        backbone: for a suite, a loaded Backbone or a name / folder; None takes the manifest's. Checked against the
            suite's backbone hash (BackboneMismatchError).
        lora_targets: PEFT target names (or a regex) of layers to adapt beyond those the suite's tasks adapt, e.g.
            ``["query", "key", "value"]`` to serve tasks trained later on other layers without re-exporting.
        opset: the ONNX opset (>= 17).
        check: run the fp32 graph once on inputs of other shapes than the traced ones (batch, length, slots, rank)
            and compare with PyTorch; a mismatch raises ScoreplexError.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise unknown_name("quantization", quantize, list(QUANTIZATIONS))
    if quantize is not None and not calibration:
        raise ConfigError(
            f"{quantize} quantisation calibrates fixed activation scales on representative responses: pass "
            "calibration={task id: [texts]} (CLI: --calibration FILE, e.g. the training file)."
        )
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ConfigError(f"opset={opset!r}; give {DEFAULT_OPSET} or later (LayerNormalization is one op from 17).")
    out = prepare_output_folder(out_dir)  # a bad out_dir fails now, not after loading and tracing the model
    suite, bb, engine_layers, lock = _suite_and_backbone(suite_or_engine, backbone)
    with lock if lock is not None else nullcontext():
        encoder = _plain_encoder(bb.encoder)
    for p in encoder.parameters():
        p.requires_grad_(False)
    names = _lora_layers(encoder, suite, engine_layers, lora_targets)
    linears = [encoder.get_submodule(n) for n in names]
    bad = [n for n, m in zip(names, linears, strict=True) if not isinstance(m, nn.Linear)]
    if bad:
        raise SuiteError(f"LoRA layers {bad} are not nn.Linear in this backbone; only linear layers can be adapted.")
    pooling = str(suite.manifest["pooling"])
    graph = _EncoderGraph(encoder, names, pooling).eval()
    vocab = int(encoder.config.vocab_size)
    inputs = [*BASE_INPUTS] + ([SLOT_INPUT] if names else [])
    dynamic_axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "B", 1: "T"},
        "attention_mask": {0: "B", 1: "T"},
        OUTPUT: {0: "B"},
    }
    layer_info = []
    if names:
        dynamic_axes[SLOT_INPUT] = {0: "B"}
    for i, (name, layer) in enumerate(zip(names, linears, strict=True)):
        a, b, c = lora_input_names(i)
        inputs += [a, b, c]
        dynamic_axes.update({a: {0: "S", 1: "R"}, b: {0: "S", 2: "R"}, c: {0: "S"}})
        layer_info.append(
            {"name": name, "in_features": layer.in_features, "out_features": layer.out_features, "inputs": [a, b, c]}
        )

    tmp_fp32 = out / f".{MODEL_FILE}.fp32.tmp"
    tmp_model = out / f".{MODEL_FILE}.tmp"
    t0 = time.perf_counter()
    try:
        example = _example_inputs(vocab, linears, batch=2, length=8, slots=3, rank=4, seed=0)
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(
                graph,
                example,
                str(tmp_fp32),
                input_names=inputs,
                output_names=[OUTPUT],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        if check:
            _check_graph(graph, tmp_fp32, inputs, vocab, linears)
        details = None
        if quantize is not None:
            feeds = _calibration_feeds(suite, bb, layer_info, calibration or {})
            details = QUANTIZATIONS[quantize](tmp_fp32, tmp_model, feeds)
            tmp_fp32.unlink()
        else:
            os.replace(tmp_fp32, tmp_model)
        tok_tmp = out / f".{TOKENIZER_DIR}.tmp"
        shutil.rmtree(tok_tmp, ignore_errors=True)
        bb.tokenizer.save_pretrained(str(tok_tmp))
        _replace_dir(tok_tmp, out / TOKENIZER_DIR)
        os.replace(tmp_model, out / MODEL_FILE)
    finally:
        for leftover in (tmp_fp32, tmp_model):
            leftover.unlink(missing_ok=True)
    ranks = [int(suite.task_info(t).get("config", {}).get("lora_r", 0)) for t in suite.task_ids] if names else []
    stored = suite.manifest["backbone"]
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_file": MODEL_FILE,
        "sha256": sha256_file(out / MODEL_FILE),
        "opset": opset,
        "inputs": inputs,
        "outputs": [OUTPUT],
        "dynamic_axes": {k: {str(d): v for d, v in axes.items()} for k, axes in dynamic_axes.items()},
        "lora_layers": layer_info,
        "max_rank": max(ranks, default=0),
        "slot_convention": "slot -1: no adapter (its gathered scaling is masked to 0); tables hold >= 1 slot",
        "hidden": int(bb.hidden),
        "pooling": pooling,
        "suite_method": suite.method,
        "backbone": {"name": stored["name"], "sha256": stored["sha256"]},
        "quantize": quantize,
        "quantization": details,
        "export_seconds": round(time.perf_counter() - t0, 3),
        "versions": package_versions(("scoreplex", "torch", "transformers", "onnx", "onnxruntime")),
    }
    write_json_atomic(out / SIDECAR_FILE, sidecar)
    return sidecar


def _check_graph(graph: _EncoderGraph, path: Path, inputs: Sequence[str], vocab: int, linears) -> None:
    """Run the fp32 graph on shapes other than the traced ones and compare it with the PyTorch module."""
    import onnxruntime as ort

    example = _example_inputs(vocab, linears, batch=5, length=11, slots=4, rank=3, seed=1)
    with torch.no_grad():
        want = graph(*example).numpy()  # (B, H)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {n: t.numpy() for n, t in zip(inputs, example, strict=True)})[0]
    err = float(np.abs(got - want).max())
    if not err <= 1e-4 * max(1.0, float(np.abs(want).max())):
        raise ScoreplexError(
            f"the exported graph differs from PyTorch by {err:.3g} on a batch of another shape: the trace baked in a "
            "shape. Report it with your torch / transformers versions, or pin the versions in the sidecar."
        )
