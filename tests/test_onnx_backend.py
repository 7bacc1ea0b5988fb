"""The ONNX Runtime backend: one exported encoder graph with the LoRA tables as inputs, equal to the PyTorch engine.

Suites are trained on the tiny BERT as in test_engine.py: two demo tasks with LoRA r=4 on query/value, two (the
multi-label ones among them) with r=2 on query/key and a hidden-layer head, so ranks, layers and head sizes differ.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from lora_suites import QK_TASKS, QV_TASKS
from lora_suites import train_tiny_suite as _train
from scoreplex.backbone import Backbone, tiny_bert
from scoreplex.engine import Engine
from scoreplex.engine.onnx_export import MODEL_FILE, SIDECAR_FILE, TOKENIZER_DIR, export_onnx, lora_input_names
from scoreplex.engine.onnx_runtime import OnnxEngine, onnx_slot_table
from scoreplex.errors import BackboneMismatchError, ConfigError, SuiteError, UnknownNameError
from scoreplex.methods import MethodSettings
from scoreplex.suite import Suite, sha256_file

QK_SETTINGS = MethodSettings(lora_r=2, lora_alpha=8, lora_targets="query,key", head_hidden=8)
THREADS = 1
"""ONNX Runtime threads per op in tests (the tiny graph gains nothing from more)."""


@pytest.fixture(scope="module")
def qv_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("onnx") / "qv"
    qv = {t: demo_datasets[t] for t in QV_TASKS}
    _train(qv, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(lora_r=4, lora_alpha=8), max_length=64)
    return root


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, qv_suite, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    """All four tasks: the query/value suite plus two query/key tasks."""
    root = Path(shutil.copytree(qv_suite, tmp_path_factory.mktemp("onnx") / "lora"))
    _train({t: demo_datasets[t] for t in QK_TASKS}, root, tiny_bb, tiny_backbone_path, "lora", QK_SETTINGS)
    return root


@pytest.fixture(scope="module")
def head_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("onnx") / "head"
    _train(demo_datasets, root, tiny_bb, tiny_backbone_path, "head", MethodSettings(), max_length=64)
    return root


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory, lora_suite, tiny_bb) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    export_onnx(lora_suite, out, backbone=tiny_bb)
    return out


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, lora_suite, tiny_bb, demo_datasets) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "int8"
    tasks = Suite.open(lora_suite, verify=False).task_ids
    calibration = {t: demo_datasets[t].texts[:40] for t in tasks}  # training responses: the tests score others too
    export_onnx(lora_suite, out, backbone=tiny_bb, quantize="int8", calibration=calibration)
    return out


@pytest.fixture(scope="module")
def torch_engine(lora_suite, tiny_bb) -> Engine:
    return Engine(lora_suite, tiny_bb, batch_size=8)


@pytest.fixture(scope="module")
def mixed_pairs(demo_datasets) -> list[tuple[str, str]]:
    """12 responses of each demo task, shuffled together."""
    pairs = [(t, x) for t in (*QV_TASKS, *QK_TASKS) for x in demo_datasets[t].texts[:12]]
    order = np.random.default_rng(0).permutation(len(pairs))
    return [pairs[i] for i in order]


def _assert_rows_match(rows, expected, atol=1e-4):
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row["task"] == want["task"]
        assert list(row["probs"]) == list(want["probs"])
        for dim, probs in row["probs"].items():
            np.testing.assert_allclose(probs, want["probs"][dim], atol=atol, rtol=0)
        assert row["labels"] == want["labels"]
        assert row["confidence"] == pytest.approx(want["confidence"], abs=atol)


# -- the export ------------------------------------------------------------------------------------------------------
def test_trained_lora_b_is_nonzero(lora_suite):
    suite = Suite.open(lora_suite)
    assert sorted(suite.task_ids) == sorted((*QV_TASKS, *QK_TASKS))
    for task_id in suite.task_ids:
        _, tensors = suite.load_module(task_id)
        b = [v for k, v in tensors.items() if "lora_B" in k]
        assert b and all(float(t.abs().max()) > 1e-3 for t in b), task_id


def test_sidecar_describes_the_graph(fp32_dir, lora_suite):
    import onnxruntime as ort

    assert sorted(p.name for p in fp32_dir.iterdir()) == sorted([MODEL_FILE, SIDECAR_FILE, TOKENIZER_DIR])  # no tmp
    sidecar = json.loads((fp32_dir / SIDECAR_FILE).read_text())
    manifest = Suite.open(lora_suite).manifest
    assert sidecar["backbone"]["sha256"] == manifest["backbone"]["sha256"]
    assert sidecar["sha256"] == sha256_file(fp32_dir / MODEL_FILE)
    assert sidecar["opset"] == 17 and sidecar["quantize"] is None and sidecar["max_rank"] == 4
    assert sidecar["pooling"] == manifest["pooling"] and sidecar["hidden"] == 32
    # query, key and value of both layers (the union of the tasks' targets), in the encoder's module order
    names = [layer["name"] for layer in sidecar["lora_layers"]]
    assert names == [f"encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "key", "value")]
    expected_inputs = ["input_ids", "attention_mask", "slot"] + [n for i in range(6) for n in lora_input_names(i)]
    assert sidecar["inputs"] == expected_inputs
    session = ort.InferenceSession(str(fp32_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert list(shapes) == expected_inputs
    assert shapes["input_ids"] == ["B", "T"] and shapes["slot"] == ["B"]
    assert (
        shapes["lora_A.0"] == ["S", "R", 32]
        and shapes["lora_B.0"] == ["S", 32, "R"]
        and shapes["lora_scaling.0"] == ["S"]
    )
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("pooled", ["B", 32])]


def test_export_refuses_bad_options(lora_suite, head_suite, tiny_bb, tmp_path):
    with pytest.raises(UnknownNameError, match="int8"):
        export_onnx(lora_suite, tmp_path / "x", backbone=tiny_bb, quantize="int4")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(lora_suite, tmp_path / "x", backbone=tiny_bb, opset=13)
    with pytest.raises(ConfigError, match="no adapters"):
        export_onnx(head_suite, tmp_path / "x", backbone=tiny_bb, lora_targets=["query"])
    Suite.create(tmp_path / "full", method="full", backbone=tiny_bb.info.to_dict(), pooling="mean", max_length=32)
    with pytest.raises(ConfigError, match="one encoder per task"):
        export_onnx(tmp_path / "full", tmp_path / "x", backbone=tiny_bb)
    assert not (tmp_path / "x" / MODEL_FILE).exists()


# -- fp32 equals the PyTorch engine ----------------------------------------------------------------------------------
def test_fp32_mixed_batch_equals_the_pytorch_engine(fp32_dir, lora_suite, torch_engine, mixed_pairs):
    engine = OnnxEngine(lora_suite, fp32_dir, batch_size=8, intra_op_threads=THREADS)
    rows = engine.score(mixed_pairs)
    _assert_rows_match(rows, torch_engine.score(mixed_pairs))
    assert len({len(r["probs"]) for r in rows}) > 1  # single-score and multi-label heads side by side
    assert engine.tables.rank == 4 and len(engine.tables.installed) == 4


def test_rows_without_adapter_get_the_plain_encoder(fp32_dir, lora_suite, torch_engine, tiny_bb):
    engine = OnnxEngine(lora_suite, fp32_dir, intra_op_threads=THREADS)
    tasks = [QV_TASKS[0], None, QK_TASKS[1], None, QV_TASKS[1]]  # None: slot -1
    ids = torch.randint(5, 60, (len(tasks), 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0

    def modules(eng):
        return [eng.store.get(t) if t else SimpleNamespace(slot=-1) for t in tasks]

    with torch.no_grad():
        got = engine._pooled(ids, mask, modules(engine)).numpy()  # (B, H)
        want = torch_engine._pooled(ids, mask, modules(torch_engine)).numpy()
        out = tiny_bb.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        plain = ((out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()  # mean pooling
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[[1, 3]], plain[[1, 3]], atol=1e-5, rtol=0)
    assert np.abs(got[[0, 2, 4]] - plain[[0, 2, 4]]).max() > 1e-3  # the adapters do change the other rows


def test_predict_matches_the_pytorch_engine(fp32_dir, lora_suite, torch_engine, demo_datasets):
    engine = OnnxEngine(lora_suite, fp32_dir, intra_op_threads=THREADS)
    texts = demo_datasets["demo-circuit"].texts[:10]
    got, want = engine.predict("demo-circuit", texts), torch_engine.predict("demo-circuit", texts)
    np.testing.assert_array_equal(got.labels, want.labels)
    for g, w in zip(got.probs, want.probs, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)


def test_eviction_reuses_slots_and_keeps_tables_cached(fp32_dir, lora_suite, torch_engine, mixed_pairs):
    engine = OnnxEngine(lora_suite, fp32_dir, max_tasks=2, batch_size=8, intra_op_threads=THREADS)
    _assert_rows_match(engine.score(mixed_pairs), torch_engine.score(mixed_pairs))  # up to 4 tasks per batch
    assert len(engine.store.resident) <= 2
    assert sorted(k.split("#")[0] for k in engine.tables.installed) == sorted(engine.store.resident)
    feeds, rebuilds = engine.tables.feeds, engine.tables.rebuilds
    pairs = [p for p in mixed_pairs if p[0] in engine.store.resident]
    engine.score(pairs)  # the resident set does not change: the same tables are fed again
    assert engine.tables.feeds is feeds and engine.tables.rebuilds == rebuilds


def test_lora_tables_zero_released_slots_and_pad_ranks():
    tables = onnx_slot_table([{"name": "q", "in_features": 3, "out_features": 2, "inputs": list(lora_input_names(0))}])
    assert tables.capacity >= 1  # never empty: rows with slot -1 gather slot 0 (masked)
    s = tables.install("a", {"q": (torch.ones(2, 3), torch.ones(2, 2))}, 2.0)
    t = tables.install("b", {"q": (torch.ones(4, 3), torch.ones(2, 4))}, 0.5)  # a larger rank: zero-padded
    a, b, c = tables.feeds["lora_A.0"], tables.feeds["lora_B.0"], tables.feeds["lora_scaling.0"]
    assert tables.rank == 4 and a[s, 2:].sum() == 0 and b[s, :, 2:].sum() == 0 and c[s] == 2.0 and c[t] == 0.5
    tables.release("a")
    assert a[s].sum() == 0 and b[s].sum() == 0 and c[s] == 0
    assert tables.install("c", {"q": (torch.ones(1, 3), torch.ones(2, 1))}, 1.0) == s
    with pytest.raises(SuiteError, match="lora_targets"):
        tables.install("d", {"k": (torch.ones(1, 3), torch.ones(2, 1))}, 1.0)
    with pytest.raises(SuiteError, match="another backbone"):
        tables.install("e", {"q": (torch.ones(1, 5), torch.ones(2, 1))}, 1.0)


# -- tasks change, the graph does not --------------------------------------------------------------------------------
def test_task_added_after_export_scores_without_reexport(qv_suite, lora_suite, tiny_bb, tmp_path, mixed_pairs):
    suite = Path(shutil.copytree(qv_suite, tmp_path / "suite"))
    out = tmp_path / "onnx"
    export_onnx(suite, out, backbone=tiny_bb, lora_targets=["query", "key", "value"])
    digest = sha256_file(out / MODEL_FILE)
    engine = OnnxEngine(suite, out, batch_size=8, intra_op_threads=THREADS)
    engine.score([(QV_TASKS[0], "the plant uses light")])
    for task_id in QK_TASKS:  # trained on query/key, which the suite's tasks do not adapt
        engine.store.import_task(lora_suite, task_id)
    reference = Engine(lora_suite, tiny_bb, batch_size=8)
    _assert_rows_match(engine.score(mixed_pairs), reference.score(mixed_pairs))
    engine.store.remove(QK_TASKS[0])
    pairs = [p for p in mixed_pairs if p[0] != QK_TASKS[0]]
    _assert_rows_match(engine.score(pairs), reference.score(pairs))
    assert sha256_file(out / MODEL_FILE) == digest  # the graph was never touched


def test_task_on_a_layer_outside_the_graph_fails_alone(qv_suite, lora_suite, tiny_bb, tmp_path, torch_engine):
    suite = Path(shutil.copytree(qv_suite, tmp_path / "suite"))
    out = tmp_path / "onnx"
    sidecar = export_onnx(suite, out, backbone=tiny_bb)  # query and value only
    assert [layer["name"].rsplit(".", 1)[1] for layer in sidecar["lora_layers"]] == ["query", "value"] * 2
    engine = OnnxEngine(suite, out, intra_op_threads=THREADS)
    engine.store.import_task(lora_suite, QK_TASKS[0])
    with pytest.raises(SuiteError, match=rf"task '{QK_TASKS[0]}' adapts .*key.*lora_targets"):
        engine.score([(QK_TASKS[0], "energy flows")])
    pairs = [(QK_TASKS[0], "energy flows"), (QV_TASKS[1], "a claim with evidence")]
    rows = engine.score(pairs, on_error="row")
    assert "lora_targets" in rows[0]["error"]
    _assert_rows_match(rows[1:], torch_engine.score(pairs[1:]))


def test_export_from_a_serving_pytorch_engine(lora_suite, tiny_bb, tmp_path, mixed_pairs):
    engine = Engine(lora_suite, tiny_bb, batch_size=8)
    want = engine.score(mixed_pairs)  # its encoder now holds MultiLoRALinear layers with filled slot tables
    export_onnx(engine, tmp_path / "onnx")
    onnx_engine = OnnxEngine(lora_suite, tmp_path / "onnx", batch_size=8, intra_op_threads=THREADS)
    _assert_rows_match(onnx_engine.score(mixed_pairs), want)
    with pytest.raises(ConfigError, match="suite or a PyTorch Engine"):
        export_onnx(onnx_engine, tmp_path / "again")


# -- head-only suites ------------------------------------------------------------------------------------------------
def test_head_only_suite_has_no_lora_inputs_and_matches(head_suite, tiny_bb, tmp_path, mixed_pairs):
    sidecar = export_onnx(head_suite, tmp_path / "onnx", backbone=tiny_bb)
    assert sidecar["lora_layers"] == [] and sidecar["inputs"] == ["input_ids", "attention_mask"]
    engine = OnnxEngine(head_suite, tmp_path / "onnx", batch_size=8, intra_op_threads=THREADS)
    assert engine.tables is None and engine.input_names == {"input_ids", "attention_mask"}
    _assert_rows_match(engine.score(mixed_pairs), Engine(head_suite, tiny_bb, batch_size=8).score(mixed_pairs))


# -- int8 ------------------------------------------------------------------------------------------------------------
def test_int8_quantizes_only_backbone_weights(int8_dir, fp32_dir):
    sidecar = json.loads((int8_dir / SIDECAR_FILE).read_text())
    assert sidecar["quantize"] == "int8" and sidecar["quantization"]["per_channel"] is True
    assert sidecar["quantization"]["scheme"] == "static"  # fixed activation scales: batch-independent
    graph = onnx.load(str(int8_dir / MODEL_FILE)).graph
    ops = [n.op_type for n in graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops
    # every linear layer of the 2-layer encoder (q, k, v, attention out, intermediate, output: 6 per layer)
    weights = {t.name: t.data_type for t in graph.initializer}
    int8 = onnx.TensorProto.INT8
    int8_weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and weights.get(n.input[0]) == int8]
    assert len(int8_weights) == sidecar["quantization"]["quantized_nodes"] == 12
    assert ops.count("MatMul") > 12  # the quantised layers (on dequantised inputs), attention and LoRA products
    lora_inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("lora_")}
    assert lora_inputs and set(lora_inputs.values()) == {onnx.TensorProto.FLOAT}
    n_float = sum(len(t.raw_data) for t in onnx.load(str(fp32_dir / MODEL_FILE)).graph.initializer)
    n_int8 = sum(len(t.raw_data) for t in graph.initializer)
    assert n_int8 < n_float  # tiny here: the 2 x 6 weight matrices (32 x 32 or 64) next to the float embeddings


def test_int8_scores_close_to_fp32(int8_dir, fp32_dir, lora_suite, mixed_pairs):
    engines = [OnnxEngine(lora_suite, d, batch_size=8, intra_op_threads=THREADS) for d in (fp32_dir, int8_dir)]
    fp32, int8 = (e.score(mixed_pairs) for e in engines)
    ids = torch.randint(5, 60, (6, 12))
    tasks = [*QV_TASKS, *QK_TASKS, QV_TASKS[0], QK_TASKS[1]]
    f, q = (e._pooled(ids, torch.ones_like(ids), [e.store.get(t) for t in tasks]).numpy() for e in engines)  # (B, H)
    cosine = (f * q).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(q, axis=1)
    assert cosine.min() >= 0.99, cosine  # per-channel int8 features (on random weights; MiniLM: >= 0.99 measured)
    agree, total = 0, 0
    for q, f in zip(int8, fp32, strict=True):
        assert q["task"] == f["task"] and list(q["probs"]) == list(f["probs"])
        for dim, probs in q["probs"].items():
            assert np.all(np.isfinite(probs)) and sum(probs) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(probs, f["probs"][dim], atol=0.1, rtol=0)
            agree += q["labels"][dim] == f["labels"][dim]
            total += 1
    assert agree / total >= 0.9, f"int8 and fp32 classes agree on {agree}/{total} dimension scores"


@pytest.mark.parametrize("backend", ["pytorch", "onnx-fp32", "onnx-int8"])
def test_a_rows_score_never_depends_on_its_batch(backend, lora_suite, tiny_bb, fp32_dir, int8_dir, mixed_pairs):
    if backend == "pytorch":
        engine = Engine(lora_suite, tiny_bb, batch_size=8)
    else:
        engine = OnnxEngine(lora_suite, fp32_dir if backend == "onnx-fp32" else int8_dir, batch_size=8)
    long = (mixed_pairs[0][0], " ".join(["energy flows from the sun to the plants and the animals"] * 30))
    mixed = engine.score([long, *mixed_pairs])[1:]  # next to a long answer with large activations
    for pair, row in zip(mixed_pairs, mixed, strict=True):
        alone = engine.score([pair])[0]
        assert alone["labels"] == row["labels"], (backend, pair)
        for dim, probs in alone["probs"].items():
            np.testing.assert_allclose(probs, row["probs"][dim], atol=1e-5, rtol=0)


def test_int8_without_calibration_is_refused_before_any_work(lora_suite, tiny_bb, tmp_path):
    with pytest.raises(ConfigError, match="calibrat"):
        export_onnx(lora_suite, tmp_path / "q", backbone=tiny_bb, quantize="int8")
    assert not (tmp_path / "q").exists()
    with pytest.raises(ConfigError, match="does not hold"):
        export_onnx(lora_suite, tmp_path / "q", backbone=tiny_bb, quantize="int8", calibration={"nope": ["text"]})


# -- what is refused -------------------------------------------------------------------------------------------------
def test_another_backbone_is_refused(fp32_dir, lora_suite, tmp_path):
    other = Backbone.load(tiny_bert(tmp_path / "other-bb", seed=1))  # same shapes, other weights
    suite = Suite.create(
        tmp_path / "other", method="lora", backbone=other.info.to_dict(), pooling="mean", max_length=32
    )
    with pytest.raises(BackboneMismatchError, match="ONNX export"):
        OnnxEngine(suite, fp32_dir)
    with pytest.raises(BackboneMismatchError):
        export_onnx(lora_suite, tmp_path / "x", backbone=other)


def test_corrupt_or_mismatched_export_is_refused(fp32_dir, lora_suite, head_suite, tmp_path):
    out = Path(shutil.copytree(fp32_dir, tmp_path / "onnx"))
    with pytest.raises(SuiteError, match="another kind of suite"):
        OnnxEngine(head_suite, out)  # a LoRA graph for a head suite
    sidecar = json.loads((out / SIDECAR_FILE).read_text())
    data = bytearray((out / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(SuiteError, match="sha256"):
        OnnxEngine(lora_suite, out)
    (out / SIDECAR_FILE).write_text(json.dumps({**sidecar, "format": "other"}))
    with pytest.raises(SuiteError, match="format"):
        OnnxEngine(lora_suite, out)
    (out / SIDECAR_FILE).unlink()
    with pytest.raises(SuiteError, match="export_onnx"):
        OnnxEngine(lora_suite, out)
    with pytest.raises(ConfigError, match="intra_op_threads"):
        OnnxEngine(lora_suite, fp32_dir, intra_op_threads=-1)
    with pytest.raises(ConfigError, match="no implementation"):
        OnnxEngine(lora_suite, fp32_dir).lora_impl = "grouped"


def test_cli_export_onnx_writes_a_loadable_graph(lora_suite, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    out = tmp_path / "onnx-cli"
    result = CliRunner().invoke(app, ["export-onnx", str(lora_suite), str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "encoder.onnx").is_file() and (out / "onnx.json").is_file()
    bad = CliRunner().invoke(app, ["export-onnx", str(lora_suite), str(tmp_path / "x"), "--quantize", "int4"])
    assert bad.exit_code == 2 and "int8" in bad.output
