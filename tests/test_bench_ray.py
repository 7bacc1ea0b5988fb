"""The Ray report (benchmarks/ray_cluster.py) from its parts' JSON: the issue's top-level keys, null where a part was
not measured, and the ratios computed from the parts' own figures."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_benchmark

KEYS = ("ray_train_identical", "ray_data_identical", "ray_data_vs_local", "ray_serve_vs_uvicorn", "ray_serve_errors")


def _module():
    return load_benchmark("ray_cluster")


def _train_part() -> dict:
    run = {"workers": 1, "threads": 2, "seconds": 30.0, "identical_modules": True, "identical_predictions": True}
    return {
        "command": "python benchmarks/ray_train.py",
        "job": {"items": ["asap-1"], "train_per_item": 10, "method": "lora", "epochs": 1, "backbone": "tiny"},
        "ray_worker_startup_seconds": 2.0,
        "runs": {
            "sequential": {"threads": 2, "seconds": 24.0},
            "ray_1_worker": run,
            "ray_2_workers": {**run, "workers": 2, "threads": 1, "seconds": 20.0, "identical_modules": False},
        },
        "ray_train_identical": True,
        "ray_train_identical_modules": False,
    }


def _data_part() -> dict:
    local = {"rows": 100, "runs": 1, "wall_seconds": 2.0, "end_to_end_rows_per_second": 50.0}
    return {
        "ray_data_identical": True,
        "modes": {
            "local": {**local, "steady_rows_per_second": 60.0},
            "ray_1_actors": {**local, "steady_rows_per_second": 55.0, "end_to_end_vs_local": 0.5},
            "ray_2_actors": {**local, "steady_rows_per_second": 90.0, "end_to_end_vs_local": 0.8},
        },
        "scaling": {"model": "linear", "read_rows_per_second": 1e4},
        "method": "lora",
        "chunk_rows": 64,
        "command": "python benchmarks/ray_data.py",
    }


def test_report_from_parts_with_one_part_missing(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "train.json").write_text(json.dumps(_train_part()))
    (work / "data.json").write_text(json.dumps(_data_part()))
    report = _module().main(["--work", str(work), "--out", str(out), "--report-only"])
    saved = json.loads((out / "ray.json").read_text())
    assert all(key in saved for key in KEYS)
    assert saved["ray_train_identical"] is True and saved["ray_train_identical_modules"] is False
    assert saved["ray_train_2_vs_1"] == 1.5  # 30 s with 1 worker / 20 s with 2
    assert saved["ray_data_vs_local"] == 0.8 and saved["ray_data_actors"] == 2  # the largest pool
    assert saved["ray_serve_vs_uvicorn"] is None and saved["ray_serve_errors"] is None  # not measured: null
    text = (out / "ray.md").read_text()
    assert "not measured" in text and "ray_2_workers" in text
    assert (out / "ray.png").stat().st_size > 0
    assert report["parts"]["serve"] is None
