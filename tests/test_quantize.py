"""Static INT8 quantisation: a row's pooled features (and so its labels) never depend on the other rows of its batch.

The graph is a tiny LoRA suite's export (query/value adapters, tiny random BERT); the LoRA tables fed to it are
random (3 slots, rank 4), so the adapter path is exercised with every row in a different slot. Sessions are run
directly (not through OnnxEngine): the property is the graph's.
"""

from __future__ import annotations

import collections
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lora_suites import QV_TASKS
from lora_suites import train_tiny_suite as _train
from scoreplex.engine.onnx_export import MODEL_FILE, SIDECAR_FILE, export_onnx
from scoreplex.engine.quantize import (
    CALIBRATIONS,
    calibration_feeds,
    constant_weight_matmuls,
    graph_input_names,
    quantize_int8_static,
)
from scoreplex.errors import ConfigError, UnknownNameError
from scoreplex.methods import MethodSettings

SLOTS, RANK, MAX_LENGTH = 3, 4, 64
N_CLASSES = 4


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _random_tables(sidecar: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """LoRA table feeds for every adapted layer of the graph: A (S, R, in), B (S, out, R), scaling (S,)."""
    rng = np.random.default_rng(seed)
    tables = {}
    for layer in sidecar["lora_layers"]:
        a, b, c = layer["inputs"]
        tables[a] = (0.1 * rng.standard_normal((SLOTS, RANK, layer["in_features"]))).astype(np.float32)
        tables[b] = (0.1 * rng.standard_normal((SLOTS, layer["out_features"], RANK))).astype(np.float32)
        tables[c] = rng.uniform(0.5, 1.5, SLOTS).astype(np.float32)
    return tables


def _quantize_dynamic(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic INT8 (activation scales per call, i.e. per batch): the negative control."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from scoreplex.engine.quantize import constant_weight_matmuls

    nodes = constant_weight_matmuls(src)
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=nodes,
        extra_options={"MatMulConstBOnly": True},
    )


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> SimpleNamespace:
    """The fp32 export, its random LoRA tables, and static INT8 graphs (one per calibration method) calibrated on
    the demo training responses."""
    import json

    root = tmp_path_factory.mktemp("quantize")
    suite = root / "suite"
    settings = MethodSettings(lora_r=RANK, lora_alpha=8)
    _train({t: demo_datasets[t] for t in QV_TASKS}, suite, tiny_bb, tiny_backbone_path, "lora", settings, MAX_LENGTH)
    export_onnx(suite, root / "fp32", backbone=tiny_bb)
    fp32 = root / "fp32" / MODEL_FILE
    tables = _random_tables(json.loads((root / "fp32" / SIDECAR_FILE).read_text()))
    texts = [x for t in QV_TASKS for x in demo_datasets[t].texts]
    feeds = calibration_feeds(tiny_bb.tokenizer, texts, MAX_LENGTH, tables)
    static, details = {}, {}
    for method in CALIBRATIONS:
        static[method] = root / f"static-{method}.onnx"
        details[method] = quantize_int8_static(fp32, static[method], feeds, method=method)
    _quantize_dynamic(fp32, root / "dynamic.onnx")
    return SimpleNamespace(
        fp32=fp32,
        static=static,
        details=details,
        dynamic=root / "dynamic.onnx",
        tables=tables,
        tokenizer=tiny_bb.tokenizer,
        n_calibration=len(texts),
    )


@pytest.fixture(scope="module")
def mixed_rows(graphs, demo_datasets) -> SimpleNamespace:
    """The six shortest demo responses of the two tasks, in different slots, plus one much longer row (several
    responses joined, truncated to MAX_LENGTH), so the mixed batch pads every other row."""
    texts = sorted(
        (x for t in QV_TASKS for x in demo_datasets[t].texts), key=lambda x: len(graphs.tokenizer(x)["input_ids"])
    )[:6]
    texts.append(" ".join(demo_datasets[QV_TASKS[0]].texts[:10]))
    ids = [graphs.tokenizer(x, truncation=True, max_length=MAX_LENGTH)["input_ids"] for x in texts]
    slots = np.array([0, 1, 2, -1, 0, 1, 2], dtype=np.int64)  # (B,)
    assert len(ids[-1]) >= 2 * max(len(x) for x in ids[:-1])  # the long row really is much longer
    return SimpleNamespace(ids=ids, slots=slots)


def _feed(rows: SimpleNamespace, index: list[int], tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    width = max(len(rows.ids[i]) for i in index)
    ids = np.zeros((len(index), width), dtype=np.int64)  # (b, t), pad id 0
    mask = np.zeros((len(index), width), dtype=np.int64)  # (b, t)
    for j, i in enumerate(index):
        ids[j, : len(rows.ids[i])] = rows.ids[i]
        mask[j, : len(rows.ids[i])] = 1
    return {"input_ids": ids, "attention_mask": mask, "slot": rows.slots[index], **tables}


def _alone_and_mixed(path: Path, rows: SimpleNamespace, tables) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features ``(B, H)`` of each row scored on its own, and of all rows in one padded batch."""
    session = _session(path)
    every = list(range(len(rows.ids)))
    alone = np.concatenate([session.run(["pooled"], _feed(rows, [i], tables))[0] for i in every])
    mixed = session.run(["pooled"], _feed(rows, every, tables))[0]
    return alone, mixed


def _labels(pooled: np.ndarray) -> np.ndarray:
    """Argmax of a fixed random linear head over the pooled features: (B,) labels."""
    head = np.random.default_rng(1).standard_normal((pooled.shape[1], N_CLASSES)).astype(np.float32)  # (H, K)
    return (pooled @ head).argmax(axis=1)


# -- batch independence ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(CALIBRATIONS))
def test_static_row_alone_equals_row_in_mixed_batch(graphs, mixed_rows, method):
    alone, mixed = _alone_and_mixed(graphs.static[method], mixed_rows, graphs.tables)
    scale = float(np.abs(mixed).max())
    assert np.abs(alone - mixed).max() <= 2e-6 * max(1.0, scale)  # float summation order only (fp32: the same)
    np.testing.assert_array_equal(_labels(alone), _labels(mixed))


def test_fp32_graph_masks_padding(graphs, mixed_rows):
    """The premise of the static scheme: padding reaches no real row (masked keys, mask-aware mean pooling)."""
    alone, mixed = _alone_and_mixed(graphs.fp32, mixed_rows, graphs.tables)
    assert np.abs(alone - mixed).max() <= 2e-6 * max(1.0, float(np.abs(mixed).max()))


def test_dynamic_quantization_depends_on_the_batch(graphs, mixed_rows):
    """The problem static quantisation fixes, seen by the same check: per-batch activation scales move every row
    that shares a batch with the long one (here ~1e-3, a thousand times the static graph's difference)."""
    alone, mixed = _alone_and_mixed(graphs.dynamic, mixed_rows, graphs.tables)
    assert np.abs(alone - mixed).max() > 1e-4


# -- quality -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(CALIBRATIONS))
def test_static_close_to_fp32(graphs, mixed_rows, method):
    every = list(range(len(mixed_rows.ids)))
    feed = _feed(mixed_rows, every, graphs.tables)
    want = _session(graphs.fp32).run(["pooled"], feed)[0]  # (B, H)
    got = _session(graphs.static[method]).run(["pooled"], feed)[0]  # (B, H)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)  # (B,)
    assert cosine.min() >= 0.99, cosine  # tiny random BERT: ~0.9998; MiniLM on demo text: mean 0.992, min 0.98


# -- the graph ---------------------------------------------------------------------------------------------------------
def test_only_constant_weight_matmuls_read_quantized_activations(graphs):
    """Weights int8 per channel; each quantised activation is read by its MatMul(s) only, so the residual stream and
    the LoRA product stay fp32; the LoRA tables stay float inputs."""
    matmuls = set(constant_weight_matmuls(graphs.fp32))
    model = onnx.load(str(graphs.static["percentile"]))
    graph = model.graph
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    quantized = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    activation_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized]
    assert activation_dq
    for dq in activation_dq:
        assert {r.name for r in readers[dq.output[0]]} <= matmuls, dq.name
    weights = {t.name: t for t in graph.initializer}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert len(weight_dq) == len(matmuls) == graphs.details["percentile"]["quantized_nodes"] == 12
    for dq in weight_dq:
        assert weights[dq.input[0]].data_type == onnx.TensorProto.INT8
        assert len(onnx.numpy_helper.to_array(weights[dq.input[1]])) > 1  # one scale per output channel
    floats = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert all(floats[name] == onnx.TensorProto.FLOAT for name in graphs.tables)


def test_sidecar_details(graphs):
    details = graphs.details["minmax"]
    assert details["scheme"] == "static" and details["per_channel"] is True and details["weight_type"] == "QInt8"
    assert details["calibration_method"] == "minmax" and details["calibration_percentile"] is None
    assert details["calibration_rows"] == graphs.n_calibration
    assert graphs.details["percentile"]["calibration_percentile"] == 99.999


# -- calibration feeds -------------------------------------------------------------------------------------------------
def test_calibration_feeds_shapes(graphs):
    texts = ["a short one", "a somewhat longer response about leaves and light", "mid length text"]
    feeds = calibration_feeds(graphs.tokenizer, texts, MAX_LENGTH, graphs.tables, batch_size=2, slots=[2, -1, 0])
    assert [f["input_ids"].shape[0] for f in feeds] == [2, 1]
    assert set(feeds[0]) == set(graph_input_names(graphs.fp32))
    widths = [f["input_ids"].shape[1] for f in feeds]
    assert widths == sorted(widths)  # batches in length order: little padding
    assert feeds[1]["slot"].tolist() == [-1]  # the longest text, with its own slot
    assert feeds[0]["lora_A.0"] is graphs.tables["lora_A.0"]  # tables shared, not copied
    plain = calibration_feeds(graphs.tokenizer, texts, MAX_LENGTH, None)
    assert set(plain[0]) == {"input_ids", "attention_mask"}


def test_calibration_feeds_errors(graphs):
    with pytest.raises(ConfigError, match="slots"):
        calibration_feeds(graphs.tokenizer, ["a", "b"], MAX_LENGTH, graphs.tables, slots=[0, SLOTS])
    with pytest.raises(ConfigError, match="no texts"):
        calibration_feeds(graphs.tokenizer, [], MAX_LENGTH, graphs.tables)
    with pytest.raises(ConfigError, match="lora_inputs"):
        calibration_feeds(graphs.tokenizer, ["a"], MAX_LENGTH, None, slots=[0])


def test_quantize_errors(graphs, tmp_path):
    feeds = calibration_feeds(graphs.tokenizer, ["a response"], MAX_LENGTH, graphs.tables)
    with pytest.raises(UnknownNameError, match="minmax"):
        quantize_int8_static(graphs.fp32, tmp_path / "x.onnx", feeds, method="entropy")
    with pytest.raises(ConfigError, match="missing \\['slot'"):
        quantize_int8_static(graphs.fp32, tmp_path / "x.onnx", [{k: v for k, v in feeds[0].items() if k != "slot"}])
    with pytest.raises(ConfigError, match="no calibration feeds"):
        quantize_int8_static(graphs.fp32, tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()
