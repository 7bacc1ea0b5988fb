"""Smoke test of benchmarks/engine.py end to end on a tiny BERT suite with tiny counts, one worker per measurement.

The data is a miniature ASAP-SAS folder (same files and columns, two items of demo-vocabulary texts) so the benchmark
reads it through ``load_asap_sas`` as it reads the real one. Timings are not checked, only that the report is whole
and its values are sane. Each worker is a fresh interpreter (~3 s of imports), so to stay under 30 s on a busy
2-core machine the run measures one task count (4: the 2 real tasks and 2 synthetic ones) and leaves out
``engine-grouped`` and ``onnx-fp32``: they are ``engine`` and ``onnx-int8`` with another implementation name / no
quantisation, paths that tests/test_engine.py and tests/test_onnx_backend.py cover.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.demo import vocabulary_words
from scoreplex.methods import MethodSettings
from scoreplex.training import TrainConfig
from scoreplex.training.suite import TrainOptions, train_suite

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "engine.py"
ITEMS = ("1", "2")
SUMMARY_KEYS = (
    "engine_vs_plain_10",
    "engine_vs_peft_mixed_10",
    "tasks_1000_vs_10",
    "cold_load_ms",
    "rss_100_tasks_vs_backbone",
    "onnx_int8_speedup",
    "onnx_int8_qwk_delta",
)


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mini_asap(folder: Path, seed: int = 0) -> Path:
    """ASAP-SAS's layout in miniature: stats.json for all 10 items, train/test rows for items 1 and 2."""
    rng = np.random.default_rng(seed)
    words = vocabulary_words()
    folder.mkdir(parents=True)
    stats = {str(i): {"train": 24, "test": 12, "scores": [0, 1, 2], "human_human_qwk_train": 0.8} for i in range(1, 11)}
    (folder / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    train = ["Id\tEssaySet\tScore1\tScore2\tSet10Choice\tEssayText"]
    test = ["Id\tEssaySet\tScore1\tEssayText"]
    next_id = 1
    for item in ITEMS:
        for split, n in (("train", 24), ("test", 12)):
            for _ in range(n):
                text = " ".join(rng.choice(words, size=int(rng.integers(3, 14))))
                score = int(rng.integers(3))
                if split == "train":
                    train.append(f"{next_id}\t{item}\t{score}\t{score}\t\t{text}")
                else:
                    test.append(f"{next_id}\t{item}\t{score}\t{text}")
                next_id += 1
    (folder / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
    (folder / "test.tsv").write_text("\n".join(test) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory, tiny_bb, tiny_backbone_path):
    root = tmp_path_factory.mktemp("bench-engine")
    data = _mini_asap(root / "asap")
    train = load_asap_sas(data, split="train")
    config = TrainConfig(epochs=1, lr=1e-2, batch_size=16, patience=0, head_warmup_epochs=0)
    for method in ("lora", "full"):
        options = TrainOptions(
            method=method,
            backbone=str(tiny_backbone_path),
            config=config,
            settings=MethodSettings(lora_r=4, lora_alpha=8),
            max_length=32,
            progress=False,
        )
        train_suite(train, root / method, options, val_sets=train, backbone=tiny_bb)
    return root, data


def test_engine_benchmark_end_to_end(bench_inputs):
    root, data = bench_inputs
    bench = _load_bench()
    out = root / "out"
    argv = [
        *("--suite", str(root / "lora"), "--full-suite", str(root / "full"), "--data", str(data)),
        *("--out", str(out), "--work", str(root / "work")),
        *("--systems", "plain,engine,onnx-int8,peft-mixed,peft-switch,full"),
        *("--tasks", "4", "--onnx-tasks", "4", "--peft-tasks", "4"),
        *("--batches", "2", "--warmup", "1", "--batch-size", "4", "--cold-samples", "2", "--switch-reps", "1"),
        *("--threads", "1"),
    ]
    report = bench.main(argv)

    saved = json.loads((out / "engine.json").read_text(encoding="utf-8"))
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    for key in (*SUMMARY_KEYS, "targets", "rows", "qwk", "command", "date", "machine", "torch_threads"):
        assert key in saved, key
    for key in SUMMARY_KEYS:
        assert isinstance(saved[key], float) and math.isfinite(saved[key]), (key, saved[key])
    assert saved["summary_counts"] == {"small": 4, "large": 4, "rss": 4}
    assert saved["tasks_1000_vs_10"] == 1.0  # one count: the engine row against itself
    assert saved["torch_threads"] == saved["ort_intra_op_threads"] == 1
    assert {t["key"] for t in saved["targets"]} == set(SUMMARY_KEYS)
    assert all(isinstance(t["met"], bool) for t in saved["targets"])

    rows = {(r["system"], r["n_tasks"]): r for r in saved["rows"]}
    expected = {
        ("plain", 0),
        ("engine", 4),
        ("onnx-int8", 4),
        ("peft-mixed", 4),
        ("peft-switch", 4),
        ("full", 2),
    }
    assert set(rows) == expected
    for key, row in rows.items():
        assert "error" not in row, (key, row)
        assert row["throughput"] > 0 and row["timed_batches"] == 2
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert 50 < row["peak_rss_mb"] < 4000 and row["disk_bytes"] > 0
        if key[0] == "plain":
            assert row["cold_load_ms"] is None and row["warm_switch_ms"] is None
        else:
            assert row["cold_load_ms"] > 0 and row["cold_samples"] == 2
            assert math.isfinite(row["warm_switch_ms"])
    # the full models hold a whole encoder per task; the engine a few adapter tensors
    assert rows[("full", 2)]["disk_bytes"] > rows[("engine", 4)]["disk_bytes"] - rows[("plain", 0)]["disk_bytes"]

    assert set(saved["qwk"]) == {"engine", "onnx-int8"}
    for result in saved["qwk"].values():
        assert set(result["tasks"]) == {"asap-1", "asap-2"} and result["n"] == 24
        assert -1.0 <= result["mean"] <= 1.0

    # the synthetic tasks are real suite entries with their own files and hashes, reused on a second run
    manifest = json.loads((root / "work" / "suite" / "manifest.json").read_text(encoding="utf-8"))
    assert list(manifest["tasks"]) == ["asap-1", "asap-2", "synth-0002", "synth-0003"]
    hashes = {t: e["files"]["module.safetensors"] for t, e in manifest["tasks"].items()}
    assert len(set(hashes.values())) == 4

    md = (out / "engine.md").read_text(encoding="utf-8")
    assert "Reproduce: `python benchmarks/engine.py" in md
    assert "| target |" in md and "| all-" not in md
