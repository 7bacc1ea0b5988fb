"""benchmarks/recipe.py --keep: runs of earlier reports are carried into a new one, never duplicated (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import load_benchmark

from scoreplex.errors import ConfigError


def _load():
    return load_benchmark("recipe")


def _run(config: str, item: str, qwk: float) -> dict:
    return {"config": config, "item": item, "val_qwk": qwk, "best_epoch": 2, "epochs_run": 3,
            "val_qwk_per_epoch": [qwk - 0.1, qwk, qwk - 0.05]}  # fmt: skip


def test_keep_carries_what_was_not_rerun_and_marks_where_it_came_from(tmp_path):
    bench = _load()
    first = tmp_path / "recipe.json"
    runs = [_run("qv-r8-6ep", "asap-2", 0.75), _run("qv-r16-6ep", "asap-2", 0.7)]
    first.write_text(json.dumps({"date": "2026-12-01", "runs": runs}), encoding="utf-8")
    second = tmp_path / "recipe-windows.json"
    second.write_text(json.dumps({"date": "2026-11-30", "runs": [_run("qv-r8-6ep", "asap-2", 0.1)]}), encoding="utf-8")

    have = {("qv-r16-6ep", "asap-2")}  # re-run in this run: its new result wins
    carried = bench.carried_runs([str(first), str(second)], have)
    assert [(r["config"], r["item"], r["val_qwk"]) for r in carried] == [("qv-r8-6ep", "asap-2", 0.75)]
    assert carried[0]["carried_from"] == f"{first} (2026-12-01)"  # the first report that has a run wins

    md = bench.markdown({"command": "python benchmarks/recipe.py", "date": "d", "machine": "m",
                         "runs": [_run("qv-r16-6ep", "asap-2", 0.7), *carried]}, decision=False)  # fmt: skip
    assert f"qv-r8-6ep from `{first} (2026-12-01)`" in md
    assert "`qv-r8-6ep` against `qv-r16-6ep` on asap-2: mean best-epoch validation QWK 0.750 vs 0.700 (+0.050)" in md
    assert "| `qv-r8-6ep` | asap-2 | 0.650 | 0.750 | 0.700 |" in md


def test_keep_rejects_a_file_that_is_not_a_recipe_report(tmp_path):
    bench = _load()
    bad = tmp_path / "engine.json"
    bad.write_text(json.dumps({"rows": []}), encoding="utf-8")
    with pytest.raises(ConfigError, match="not a recipe report"):
        bench.carried_runs([str(bad)], set())
    unknown = tmp_path / "old.json"
    unknown.write_text(json.dumps({"runs": [_run("qv-r99", "asap-1", 0.5)]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="'qv-r99' is not one of"):
        bench.carried_runs([str(unknown)], set())


def test_keep_refuses_a_run_trained_otherwise_than_its_configuration_asks_today(tmp_path):
    bench = _load()
    old = tmp_path / "old.json"
    run = {**_run("qv-r16-6ep", "asap-2", 0.7), "settings": {"lora_r": 8, "lora_alpha": 16, "lora_targets": "qv"}}
    old.write_text(json.dumps({"runs": [run]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="trained with \\{'lora_r': 8, 'lora_alpha': 16\\}"):
        bench.carried_runs([str(old)], set())
    again = {**_run("qv-r8-6ep", "asap-2", 0.7), "carried_from": "docs/results/first.json (2026-11-30)"}
    old.write_text(json.dumps({"runs": [again]}), encoding="utf-8")
    assert bench.carried_runs([str(old)], set())[0]["carried_from"] == "docs/results/first.json (2026-11-30)"


def _benchmark_report(path: Path, label: str, val: dict[str, float]) -> str:
    tasks = {tid: {"val_qwk": q, "test_qwk": 0.5} for tid, q in val.items()}
    report = {"command": f"python benchmarks/asap_sas.py ({label})", "date": "2026-12-03",
              "methods": {"lora": {"label": label, "settings": {"lora_r": 8}, "tasks": tasks}}}  # fmt: skip
    path.write_text(json.dumps(report), encoding="utf-8")
    return str(path)


def test_all_items_table_reads_each_benchmark_run_against_the_first(tmp_path):
    bench = _load()
    r8 = bench.benchmark_lora_run(_benchmark_report(tmp_path / "a.json", "LoRA r8", {"asap-10": 0.7, "asap-2": 0.6}))
    r16 = bench.benchmark_lora_run(_benchmark_report(tmp_path / "b.json", "LoRA r16", {"asap-10": 0.8, "asap-2": 0.5}))
    lines = bench.all_items_table([r8, r16])
    assert "| run | asap-2 | asap-10 | mean | against the first |" in lines  # items in numeric order
    assert any(line.startswith("| LoRA r16 (") and "| 0.500 | 0.800 | 0.650 | +0.000, higher on 1 of 2 |" in line
               for line in lines)  # fmt: skip
    with pytest.raises(ConfigError, match="not an asap_sas.py report with a LoRA run"):
        bench.benchmark_lora_run(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--configs", "qv-r99"], "unknown qv-r99"),
        (["--items", "11"], "item numbers in 1..10"),
        (["--configs", "mpnet-qv-r16-6ep", "--mpnet", "{tmp}/nowhere"], "run `make mpnet`"),
    ],
)
def test_bad_options_stop_before_any_training(tmp_path, args, match):
    bench = _load()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--work", str(tmp_path / "w"), "--out", str(tmp_path)]
    with pytest.raises(ConfigError, match=match):
        bench.main(argv)
    assert not (tmp_path / "w").exists()  # nothing was trained or written


def test_suite_ensemble_averages_probabilities_and_reports_where_it_beats_both(tmp_path):
    import numpy as np

    bench = load_benchmark("recipe_ensemble")

    y = np.tile(np.arange(4), 10)
    onehot = np.eye(4)[y]
    wrong = np.eye(4)[(y + 1) % 4]
    # A is right on the first half, B on the second; each is half sure where it is wrong, so the mean is always right
    first = (np.arange(len(y)) < len(y) // 2)[:, None]
    pa = np.where(first, onehot, 0.45 * onehot + 0.55 * wrong)
    pb = np.where(first, 0.45 * onehot + 0.55 * wrong, onehot)
    row = dict(zip(bench.KEYS, bench.item_row(y, pa, pb), strict=True))
    assert row["ensemble_argmax"] == pytest.approx(1.0) and max(row["a_argmax"], row["b_argmax"]) < 1.0
    same = dict(zip(bench.KEYS, bench.item_row(y, pa, pa), strict=True))
    assert same["ensemble_argmax"] == same["a_argmax"] and same["ensemble_expected"] == same["a_expected"]
    items = [{"item": "asap-1", "n": len(y), **row}, {"item": "asap-2", "n": len(y), **same}]
    assert bench.items_beating_both(items) == 1  # a tie with A (the same suite twice) is not beating it
    report = {"a": "A", "b": "B", "items": items, "items_ensemble_beats_both": 1, "command": "c", "date": "d",
              "machine": "m", "mean": {k: float(np.mean([it[k] for it in items])) for k in bench.KEYS}}  # fmt: skip
    bench.write_report(report, tmp_path, "ens")
    assert json.loads((tmp_path / "ens.json").read_text())["items_ensemble_beats_both"] == 1
    md = (tmp_path / "ens.md").read_text()
    assert "| asap-1 | 40 |" in md and "beats the better of A and B on 1 of 2 items" in md
