"""Static INT8 quantisation of the exported encoder graph: fixed activation scales, so a row's score never depends on
the other rows of its batch.

Why not dynamic: ONNX Runtime's ``quantize_dynamic`` (``MatMulInteger`` + ``DynamicQuantizeLinear``) computes ONE
uint8 scale and zero point per activation tensor per call, i.e. per *batch*. A long answer with large activations in
the same batch widens that range, coarsens every other row's quantisation and can flip its label (9 of 300 demo rows).

Static quantisation (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", eq. 1: ``r = S (q - Z)``) fixes ``S`` and ``Z`` of every quantised activation from calibration data,
once, and stores them as constants in the graph. Every quantised activation then maps element by element,
``q = clip(round(r / S) + Z, 0, 255)``, so row ``b``'s result is a function of row ``b`` alone. Padding is the one
other way a batch can reach a row; the graph masks padded keys out of attention (their softmax weight is exactly 0)
and out of mean pooling, which ``tests/test_quantize.py`` checks numerically.

The scheme (ONNX Runtime's ``quantize_static``):

* QDQ format: QuantizeLinear / DequantizeLinear pairs around each quantised MatMul, which ONNX Runtime fuses into
  ``MatMulIntegerToFloat`` (int8 x uint8 products, fp32 output) at session start;
* weights int8, symmetric, per output channel (per-tensor weight scales cost MiniLM 0.955 cosine, dynamically);
  activations uint8 with one fixed range per tensor: the inputs of the quantised MatMuls only. Their outputs stay
  fp32, and so does every other reader of their inputs: ``quantize_static`` would round the residual stream (and the
  LoRA product's input) to uint8 in every layer, which alone dropped MiniLM to cosine 0.93 (see
  :func:`_fp32_outside_matmuls`);
* only the MatMul / Gemm nodes whose weight is a constant (the frozen linear layers, :func:`constant_weight_matmuls`):
  the LoRA tables are graph inputs and stay float32, as do the attention products;
* calibration by a registry of methods (:data:`CALIBRATIONS`): ``percentile`` (default: the symmetric range holding
  99.999 % of the absolute values, so one outlier response cannot widen a range) or ``minmax`` (the observed range,
  asymmetric).

Measured on the demo LoRA suite (MiniLM, 600 test responses, calibrated on 512 training ones): pooled cosine with
fp32 mean 0.9923 / min 0.981 (percentile), 0.9920 / 0.983 (minmax), dynamic INT8 0.9921 / 0.982; labels equal to fp32
on 98.2 % (percentile, also with all 1,600 training responses), 97.0-97.3 % (minmax), 97.7 % (dynamic). 7-bit weights
(``reduce_range``) changed nothing measurable on an AVX2 CPU without VNNI.

Calibrate on representative responses, never on the test set: :func:`calibration_feeds` builds the feeds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoreplex.encoding import encode_texts
from scoreplex.errors import ConfigError, unknown_name

from .onnx_export import SLOT_INPUT

CALIBRATIONS: dict[str, str] = {"minmax": "MinMax", "percentile": "Percentile"}
"""Calibration methods: scoreplex name -> ``onnxruntime.quantization.CalibrationMethod`` member."""
DEFAULT_CALIBRATION = "percentile"
DEFAULT_PERCENTILE = 99.999


def constant_weight_matmuls(model_path: str | os.PathLike[str]) -> list[str]:
    """Names of the MatMul / Gemm nodes whose weight (second input) is a constant: the backbone's linear layers.

    The LoRA products and the attention products have two computed operands and are not listed.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]


def graph_input_names(model_path: str | os.PathLike[str]) -> list[str]:
    """The inputs a caller feeds to the graph (initializers listed as inputs by old exporters excluded)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in constants]


def calibration_feeds(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    lora_inputs: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 16,
    *,
    slots: Sequence[int] | np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Graph feeds over ``texts``, tokenised as the engines do, in batches of similar length.

    Rows are sorted by token length before batching, so calibration sees real tokens and few padded ones (padded
    positions are masked out of the result but still flow through the linear layers, and would widen the ranges).

    Args:
        tokenizer: the backbone's (Hugging Face) tokenizer.
        texts: ``N`` representative responses (training responses: never the set you evaluate on).
        max_length: truncation length in tokens, the suite's ``max_length``.
        lora_inputs: for a LoRA graph, the table feeds ``{"lora_A.i": (S, R, in), "lora_B.i": (S, out, R),
            "lora_scaling.i": (S,)}`` (e.g. ``LoRATables.feeds`` with the suite's tasks installed); None for a
            head-only graph.
        batch_size: rows per feed.
        slots: ``(N,)`` the slot of each text's task in ``lora_inputs`` (-1: no adapter); None spreads the texts over
            the ``S`` slots in turn.

    Returns:
        One dict per batch: ``input_ids (b, t)`` and ``attention_mask (b, t)`` int64, plus ``slot (b,)`` int64 and
        the tables (shared, not copied) for a LoRA graph.
    """
    if not texts:
        raise ConfigError("calibration_feeds got no texts; give a few hundred representative responses.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; give a row count >= 1.")
    if slots is not None and lora_inputs is None:
        raise ConfigError("slots given without lora_inputs; a head-only graph takes no slot input.")
    slot_of = None
    if lora_inputs is not None:
        scalings = [k for k in lora_inputs if k.startswith("lora_scaling.")]
        if not scalings:
            raise ConfigError(
                f"lora_inputs has {sorted(lora_inputs)} but no 'lora_scaling.i' table; pass the LoRA table feeds "
                "(LoRATables.feeds) or None for a head-only graph."
            )
        n_slots = int(lora_inputs[scalings[0]].shape[0])
        if slots is None:
            slot_of = np.arange(len(texts), dtype=np.int64) % n_slots
        else:
            slot_of = np.asarray(slots, dtype=np.int64)
            if slot_of.shape != (len(texts),) or (slot_of < -1).any() or (slot_of >= n_slots).any():
                raise ConfigError(
                    f"slots has shape {slot_of.shape} and values in [{slot_of.min()}, {slot_of.max()}]; expected "
                    f"({len(texts)},) values in [-1, {n_slots - 1}] (one slot of the tables per text)."
                )
    enc = encode_texts(tokenizer, texts, max_length)
    order = np.argsort(enc.lengths, kind="stable")
    feeds: list[dict[str, np.ndarray]] = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(enc.lengths[rows].max())
        ids = np.full((len(rows), width), enc.pad_id, dtype=np.int64)  # (b, t)
        mask = np.zeros((len(rows), width), dtype=np.int64)  # (b, t)
        for j, i in enumerate(rows):
            ids[j, : enc.lengths[i]] = enc.input_ids[i]
            mask[j, : enc.lengths[i]] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if lora_inputs is not None and slot_of is not None:
            feed[SLOT_INPUT] = slot_of[rows]  # (b,)
            feed.update(lora_inputs)
        feeds.append(feed)
    return feeds


class _FeedReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds (duck-typed: ``get_next``).

    ``set_range`` lets ``quantize_static`` collect one batch at a time (``CalibStridedMinMax=1``), which keeps the
    percentile histograms' memory at one batch of activations instead of the whole calibration set.
    """

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])


def _checked_feeds(calibration: Iterable[Mapping[str, np.ndarray]], names: Sequence[str], src: Path) -> list:
    """The calibration feeds as a list, each checked to hold exactly the graph's inputs."""
    feeds = []
    for k, feed in enumerate(calibration):
        if set(feed) != set(names):
            missing, extra = sorted(set(names) - set(feed)), sorted(set(feed) - set(names))
            raise ConfigError(
                f"calibration feed {k} does not match the graph at {src}: missing {missing}, unexpected {extra}. "
                "Build the feeds with calibration_feeds(..., lora_inputs=...) for this graph."
            )
        feeds.append({n: np.asarray(feed[n]) for n in names})
    if not feeds:
        raise ConfigError("no calibration feeds; give batches of representative responses (calibration_feeds).")
    return feeds


def _fp32_outside_matmuls(model_path: Path, quantized: Sequence[str]) -> int:
    """Give every consumer of a quantised activation other than the quantised MatMuls back its fp32 tensor.

    ``quantize_static`` rewires ALL readers of a tensor it quantises to the DequantizeLinear output when one MatMul
    reads it. In a BERT layer the input of the Q / K / V and FFN projections is also the residual stream (and the
    input of the LoRA product), so the residual stream itself would be rounded to uint8 in every layer: MiniLM's
    pooled features fell to cosine 0.93 with fp32. Only the quantised MatMuls should read the quantised copy (as in
    dynamic quantisation). Unused Q / DQ nodes are dropped. Returns how many node inputs were restored.
    """
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    source = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}  # q output -> fp32 tensor
    fp32_of = {
        n.output[0]: source[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in source
    }
    keep = set(quantized)
    restored = 0
    for node in graph.node:
        if node.name in keep:
            continue
        for k, name in enumerate(node.input):
            if name in fp32_of:
                node.input[k] = fp32_of[name]
                restored += 1
    while True:  # drop Q / DQ nodes nobody reads any more
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [
            n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    onnx.save(model, str(model_path))
    return restored


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    method: str = DEFAULT_CALIBRATION,
    percentile: float = DEFAULT_PERCENTILE,
    reduce_range: bool = False,
) -> dict[str, Any]:
    """Static, batch-independent INT8 quantisation of the fp32 graph ``src`` into ``dst``; returns sidecar details.

    QDQ format, int8 per-channel symmetric weights and uint8 asymmetric activations with scales fixed by calibration,
    on the constant-weight MatMul / Gemm nodes only (see the module docstring).

    Args:
        src: the fp32 graph (an ``encoder.onnx`` from ``export_onnx``).
        dst: where to write the quantised graph.
        calibration: feeds of the graph's inputs, one dict per batch (``input_ids (b, t)``, ``attention_mask (b,
            t)``, and for a LoRA graph ``slot (b,)`` and every ``lora_*`` table); see :func:`calibration_feeds`.
        method: a name in :data:`CALIBRATIONS`.
        percentile: for ``method="percentile"``, the percentile of absolute activation values kept (the range is
            made symmetric: ONNX Runtime's percentile histogram is over absolute values).
        reduce_range: 7-bit weights, against int16 saturation of ``vpmaddubsw`` on x86 CPUs without VNNI.

    Returns:
        ``{"scheme": "static", "format": "QDQ", "weight_type", "activation_type", "per_channel", "reduce_range",
        "calibration_method", "calibration_percentile", "calibration_rows", "calibration_batches",
        "quantized_nodes"}``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATIONS:
        raise unknown_name("calibration method", method, list(CALIBRATIONS))
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile={percentile!r}; give a value in (0, 100], e.g. {DEFAULT_PERCENTILE}.")
    src, dst = Path(src), Path(dst)
    feeds = _checked_feeds(calibration, graph_input_names(src), src)
    nodes = constant_weight_matmuls(src)
    extra: dict[str, Any] = {
        "MatMulConstBOnly": True,
        "CalibStridedMinMax": 1,  # one batch at a time
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],  # fp32 outputs (MatMulIntegerToFloat)
        "DedicatedQDQPair": True,  # Q / K / V each get their own pair, so each fuses
    }
    if method == "percentile":
        extra.update(CalibPercentile=float(percentile), CalibTensorRangeSymmetric=True)
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints its settings
            quantize_static(
                str(src),
                str(dst),
                _FeedReader(feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                calibrate_method=getattr(CalibrationMethod, CALIBRATIONS[method]),
                extra_options=extra,
            )
    finally:
        logging.getLogger().removeFilter(hint)
    _fp32_outside_matmuls(dst, nodes)
    return {
        "scheme": "static",
        "format": "QDQ",
        "weight_type": "QInt8",
        "activation_type": "QUInt8",
        "per_channel": True,
        "reduce_range": bool(reduce_range),
        "calibration_method": method,
        "calibration_percentile": float(percentile) if method == "percentile" else None,
        "calibration_rows": int(sum(f["input_ids"].shape[0] for f in feeds)),
        "calibration_batches": len(feeds),
        "quantized_nodes": len(nodes),
    }
