"""Smoke test of benchmarks/engine.py end to end on a tiny BERT suite with tiny counts, one worker per measurement.

The data is a miniature ASAP-SAS folder (same files and columns, two items of demo-vocabulary texts) so the benchmark
reads it through ``load_asap_sas`` as it reads the real one. Timings are not checked, only that the report is whole
and its values are sane. Each worker is a fresh interpreter (~3 s of imports), so to stay under 30 s on a busy
2-core machine the run measures one task count (4: the 2 real tasks and 2 synthetic ones) and leaves out
``engine-grouped`` and ``onnx-fp32``: they are ``engine`` and ``onnx-int8`` with another implementation name / no
quantisation, paths that tests/test_engine.py and tests/test_onnx_backend.py cover.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import load_benchmark

from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.demo import vocabulary_words
from scoreplex.errors import ConfigError
from scoreplex.methods import MethodSettings
from scoreplex.training import TrainConfig
from scoreplex.training.suite import TrainOptions, train_suite

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
    return load_benchmark("engine")


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
    # one engine count and no plain-packed row: those two figures are not measured (null, with why), the rest are
    assert saved["not_run"] == {
        "engine_vs_plain_10": "not run: --systems excluded plain-packed",
        "tasks_1000_vs_10": "not run: --tasks excluded 1000",
    }
    for key in SUMMARY_KEYS:
        if key in saved["not_run"]:
            assert saved[key] is None, key
        else:
            assert isinstance(saved[key], float) and math.isfinite(saved[key]), (key, saved[key])
    assert saved["summary_counts"] == {"small": 4, "large": 4, "rss": 4}
    assert saved["torch_threads"] == saved["ort_intra_op_threads"] == 1
    assert {t["key"] for t in saved["targets"]} == set(SUMMARY_KEYS)
    assert all((t["met"] is None) == (t["key"] in saved["not_run"]) for t in saved["targets"])
    assert all(isinstance(t["met"], bool) for t in saved["targets"] if t["key"] not in saved["not_run"])

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
    assert "| not run: --tasks excluded 1000 |" in md


def test_the_benchmark_copy_scores_as_deployed_and_follows_a_decoding_change(bench_inputs, tmp_path):
    import dataclasses
    import shutil

    from scoreplex.decoding import Decoding
    from scoreplex.suite import Suite

    root, _ = bench_inputs
    bench = _load_bench()
    real = Suite.open(shutil.copytree(root / "lora", tmp_path / "lora"))
    first = real.task_ids[0]
    routed = dataclasses.replace(Decoding.identity(real.spec(first)), route_threshold=0.9)
    real.set_decoding(first, routed)
    real = Suite.open(real.root)

    copy, ids = bench.synthesise_suite(real, tmp_path / "copy", 4, seed=0, perturb=0.1)
    infos = {t: copy.task_info(t) for t in ids}
    assert infos[first]["decoding"] == routed.to_dict()
    source_of = {t: infos[t]["spec"]["metadata"].get("copied_from", t) for t in ids}
    for t in ids:  # every copy (synthetic ones too) carries its source's decoding and lexical model
        source = real.task_info(source_of[t])
        assert infos[t].get("decoding") == source.get("decoding"), (t, source_of[t])
        assert infos[t].get("lexical") == source.get("lexical")

    real.set_decoding(first, dataclasses.replace(routed, route_threshold=0.5))  # only task.json changes
    copy, _ = bench.synthesise_suite(Suite.open(real.root), tmp_path / "copy", 4, seed=0, perturb=0.1)
    assert copy.task_info(first)["decoding"]["route_threshold"] == 0.5  # rebuilt, not the stale copy


def test_qwk_only_refreshes_the_qwk_table_and_keeps_the_timings(bench_inputs, tmp_path):
    root, data = bench_inputs
    bench = _load_bench()
    out = tmp_path / "out"
    common = [
        *("--suite", str(root / "lora"), "--data", str(data), "--out", str(out), "--work", str(tmp_path / "work")),
        *("--qwk-only", "--systems", "engine,onnx-int8,peft-mixed", "--threads", "1"),
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        bench.main(common)  # nothing to refresh yet

    stale = {"mean": 0.1, "tasks": {"asap-1": 0.1, "asap-2": 0.1}, "n": 24}
    rows = [
        _row("plain", 0, 200.0),
        _row("engine", 4, 150.0, qwk=stale),
        _row("onnx-int8", 4, 300.0, qwk={**stale, "mean": 0.9}),
    ]
    earlier = _report(bench, rows, [4])
    earlier["real_tasks"] = ["asap-1", "asap-2"]
    out.mkdir()
    (out / "engine.json").write_text(json.dumps(earlier), encoding="utf-8")
    assert earlier["onnx_int8_qwk_delta"] == pytest.approx(0.8)

    report = bench.main(common)

    saved = json.loads((out / "engine.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert saved["rows"] == json.loads(json.dumps(earlier["rows"]))  # timings kept, untouched
    assert saved["command"] == earlier["command"] and saved["date"] == earlier["date"]
    assert set(saved["qwk"]) == {"engine", "onnx-int8"}  # peft has no QWK pass: left out, not an error
    for result in saved["qwk"].values():
        assert set(result["tasks"]) == {"asap-1", "asap-2"} and result["n"] == 24
        assert result["tasks"] != stale["tasks"]
    delta = saved["qwk"]["onnx-int8"]["mean"] - saved["qwk"]["engine"]["mean"]
    assert saved["onnx_int8_qwk_delta"] == pytest.approx(delta)
    target = {t["key"]: t for t in saved["targets"]}["onnx_int8_qwk_delta"]
    assert target["value"] == pytest.approx(delta) and target["met"] is (abs(delta) <= 0.005)
    assert saved["qwk_run"]["command"].endswith("--threads 1") and "--qwk-only" in saved["qwk_run"]["command"]
    md = (out / "engine.md").read_text(encoding="utf-8")
    assert "From a later run than the timings above" in md and f"**{saved['qwk']['engine']['mean']:.4f}**" in md

    (out / "engine.json").write_text(json.dumps({**earlier, "real_tasks": ["asap-9"]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"timed the tasks \['asap-9'\]"):
        bench.main(common)  # timings of other tasks: refused before any scoring
    with pytest.raises(ConfigError, match="contradict"):
        bench.main([*common, "--no-qwk"])


# -- the summary of a partial run: what did not run is null, with why (no benchmark is run here) -----------------------
def _row(system: str, n: int, throughput: float = 100.0, **extra) -> dict:
    row = {
        "system": system,
        "n_tasks": n,
        "throughput": throughput,
        "p50_ms": 300.0,
        "p99_ms": 400.0,
        "peak_rss_mb": 500.0,
        "disk_bytes": 1_000_000,
        "setup_s": 1.0,
        "cold_load_ms": None if system.startswith("plain") else 1.5,
        "warm_switch_ms": None if system.startswith("plain") else 0.5,
    }
    return {**row, **extra}


def _report(bench, rows: list[dict], counts: list[int]) -> dict:
    """What main() assembles around the summary, enough for markdown()."""
    summary = bench.summarise(rows, counts)
    for row in rows:
        row["label"] = bench.SYSTEM_LABELS[row["system"]]
        row["vs_plain"] = None
    return {
        **{k: v for k, v in summary.items() if k not in ("summary_counts", "not_run")},
        "targets": bench.check_targets(summary),
        "summary_counts": summary["summary_counts"],
        "not_run": summary["not_run"],
        "command": "python benchmarks/engine.py",
        "date": "2025-01-01",
        "machine": "test",
        "versions": {"torch": "x", "onnxruntime": "x", "peft": "x"},
        "torch_threads": 2,
        "ort_intra_op_threads": 2,
        "batches": 2,
        "batch_size": 4,
        "warmup": 1,
        "real_tasks": ["asap-1"],
        "lora": {"lora_r": 8, "lora_alpha": 16, "lora_targets": ["query", "value"]},
        "perturb": 0.1,
        "max_length": 32,
        "rows": rows,
        "qwk": {r["system"]: r["qwk"] for r in rows if "qwk" in r},
        "setup": {"synthesise_s": 1.0},
        "wall_seconds": 10.0,
    }


def test_summary_of_a_partial_run_leaves_unmeasured_figures_null_and_says_why():
    bench = _load_bench()
    rows = [_row("plain", 0, 200.0, peak_rss_mb=400.0), _row("engine", 10, 150.0), _row("onnx-int8", 10, 300.0)]
    report = _report(bench, rows, [10])  # --systems plain,engine,onnx-int8 --tasks 10 --no-qwk

    saved = json.loads(json.dumps(report))  # as written to engine.json: null, never a stand-in
    assert saved["tasks_1000_vs_10"] is None  # was 1.0: the engine row against itself
    assert saved["engine_vs_plain_10"] is None  # was measured against the whole-batch plain row
    assert saved["engine_vs_peft_mixed_10"] is None and saved["onnx_int8_qwk_delta"] is None
    assert saved["not_run"] == {
        "engine_vs_plain_10": "not run: --systems excluded plain-packed",
        "engine_vs_peft_mixed_10": "not run: --systems excluded peft-mixed",
        "tasks_1000_vs_10": "not run: --tasks excluded 1000",
        "onnx_int8_qwk_delta": "not run: --no-qwk (no test-set QWK for engine)",
    }
    # what did run is still measured
    assert saved["engine_vs_plain_whole_batch_10"] == pytest.approx(0.75)
    assert saved["onnx_int8_speedup"] == pytest.approx(2.0) and saved["cold_load_ms"] == 1.5
    assert saved["rss_100_tasks_vs_backbone"] == pytest.approx(1.25)

    targets = {t["key"]: t for t in saved["targets"]}
    assert targets["tasks_1000_vs_10"]["met"] is None
    assert targets["tasks_1000_vs_10"]["why"] == "not run: --tasks excluded 1000"
    assert targets["onnx_int8_speedup"]["met"] is True and "why" not in targets["onnx_int8_speedup"]

    md = bench.markdown(report)
    assert "| engine throughput with 1,000 tasks / with 10 tasks | not run: --tasks excluded 1000 | ≥ 0.9 | – |" in md
    assert (
        "| engine throughput on a 10-task mix / plain backbone, same micro-batches | not run: --systems excluded "
        "plain-packed |" in md
    )
    assert "engine – (not run: --systems excluded plain-packed)" in md
    assert "| ONNX int8 throughput / PyTorch engine, 10 tasks | 2.00 | ≥ 1.7 | **met** |" in md


def test_summary_names_a_failed_row_and_a_count_left_out():
    bench = _load_bench()
    rows = [
        _row("plain", 0),
        _row("plain-packed", 0, 160.0),
        _row("engine", 10, 150.0, qwk={"mean": 0.70, "tasks": {}, "n": 1}),
        _row("engine", 100, 148.0),
        {"system": "engine", "n_tasks": 1000, "error": "timed out after 1800 s"},
        _row("peft-mixed", 100, 90.0),  # --peft-tasks 100
        _row("onnx-int8", 10, 240.0, qwk={"mean": 0.71, "tasks": {}, "n": 1}),
    ]
    summary = bench.summarise(rows, [10, 100, 1000])
    assert summary["tasks_1000_vs_10"] is None
    assert summary["not_run"]["tasks_1000_vs_10"] == "failed: engine with 1000 tasks (timed out after 1800 s)"
    assert summary["engine_vs_peft_mixed_10"] is None
    assert summary["not_run"]["engine_vs_peft_mixed_10"] == "not run: --peft-tasks excluded 10"
    assert summary["engine_vs_plain_10"] == pytest.approx(150 / 160)  # the micro-batched plain row, not the whole-batch
    assert summary["onnx_int8_qwk_delta"] == pytest.approx(0.01)
    assert set(summary["not_run"]) == {"tasks_1000_vs_10", "engine_vs_peft_mixed_10"}


def test_summary_of_a_whole_run_measures_every_figure():
    bench = _load_bench()
    rows = [_row("plain", 0), _row("plain-packed", 0, 160.0)]
    rows += [_row("engine", n, 150.0, **({"qwk": {"mean": 0.7}} if n == 10 else {})) for n in (10, 100, 1000)]
    rows += [_row("peft-mixed", 10, 80.0), _row("onnx-int8", 10, 240.0, qwk={"mean": 0.7})]
    summary = bench.summarise(rows, [10, 100, 1000])
    assert summary["not_run"] == {}
    assert all(isinstance(summary[key], float) for key in SUMMARY_KEYS)
    assert summary["tasks_1000_vs_10"] == 1.0 and summary["summary_counts"] == {"small": 10, "large": 1000, "rss": 100}
