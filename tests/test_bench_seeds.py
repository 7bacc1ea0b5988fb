"""benchmarks/seeds.py: the seed-to-seed spread of asap_sas.py reports (no model is run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import load_benchmark

from scoreplex.errors import ConfigError


def _load():
    return load_benchmark("seeds")


def _report(path: Path, train_seed: int | None, val: list, test: list, split_seed: int = 0, **changes) -> str:
    tasks = {f"asap-{i + 1}": {"val_qwk": v, "test_qwk": t} for i, (v, t) in enumerate(zip(val, test, strict=True))}
    config = {"epochs": 6, "lr": 0.002, **({} if train_seed is None else {"seed": train_seed})}
    lora = {"label": "LoRA r16 + head", "tasks": tasks, "config": config, "settings": {"lora_r": 16},
            "items_passing_criteria": 1, "items_auto_meeting_human": 2, "mean_automation_rate": 0.4,
            "mean_ece_after": 0.05, **changes}  # fmt: skip
    report = {"seed": split_seed, "max_length": 160, "items": {t: {} for t in tasks}, "methods": {"lora": lora},
              "backbone": {"sha256": "abc"}, "command": f"asap_sas.py --train-seed {train_seed}"}  # fmt: skip
    path.write_text(json.dumps(report))
    return str(path)


def test_spread_per_item_and_of_the_mean(tmp_path):
    bench = _load()
    a = _report(tmp_path / "a.json", None, [0.80, 0.70], [0.78, 0.70])
    b = _report(tmp_path / "b.json", 1, [0.70, 0.70], [0.74, 0.72])
    report = bench.main(["--report", a, "--report", b, "--out", str(tmp_path / "out")])
    s = report["summary"]
    assert s["seeds"] == [0, 1]
    assert s["mean_val_qwk_per_seed"] == pytest.approx([0.75, 0.70])
    assert s["mean_val_qwk"]["sd"] == pytest.approx(0.05 / 2**0.5)  # two values 0.05 apart
    assert s["sd_of_a_difference_in_mean_val_qwk"] == pytest.approx(0.05)
    assert s["items"]["asap-2"]["val"]["sd"] == pytest.approx(0.0)
    assert s["figures"]["items_auto_meeting_human"]["sd"] == pytest.approx(0.0)
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "| asap-1 | 0.800 | 0.700 | 0.071 | 0.780 | 0.740 | 0.028 |" in md
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"train_seed": 0}, "share a training seed"),
        ({"train_seed": None}, "share a training seed"),  # no seed recorded: the default, 0
        ({"train_seed": 1, "split_seed": 3}, "split seed: 0 in"),
        ({"train_seed": 1, "val": [0.7, 0.7], "test": [0.7, 0.7]}, "items: "),
        ({"train_seed": 1, "settings": {"lora_r": 8}}, "settings: "),
    ],
)
def test_runs_that_differ_in_more_than_the_seed_are_refused(tmp_path, second, message):
    bench = _load()
    a = _report(tmp_path / "a.json", 0, [0.8], [0.8])
    changes = {k: v for k, v in second.items() if k not in ("train_seed", "split_seed", "val", "test")}
    b = _report(
        tmp_path / "b.json",
        second["train_seed"],
        second.get("val", [0.7]),
        second.get("test", [0.7]),
        second.get("split_seed", 0),
        **changes,
    )
    with pytest.raises(ConfigError, match=message):
        bench.load_runs([a, b], "lora")
    with pytest.raises(ConfigError, match="at least two"):
        bench.load_runs([a], "lora")
    with pytest.raises(ConfigError, match="with a 'full' run"):
        bench.load_runs([a, b], "full")


def test_a_figure_missing_from_a_run_is_reported_as_not_measured(tmp_path):
    bench = _load()
    a = _report(tmp_path / "a.json", 0, [0.8], [0.8])
    b = _report(tmp_path / "b.json", 1, [0.7], [0.7], mean_ece_after=None)
    report = bench.main(["--report", a, "--report", b, "--out", str(tmp_path / "out"), "--name", "seeds-full"])
    assert report["summary"]["figures"]["mean_ece_after"] is None
    assert (
        "| mean ECE after temperature | – | – | not measured in every run | – |"
        in (tmp_path / "out" / "seeds-full.md").read_text()
    )
