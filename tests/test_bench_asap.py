"""benchmarks/asap_sas.py --keep: methods of an earlier report are carried into a new one only when that run is
comparable (same items, seed, max length), each marked with the run it comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import load_benchmark

ITEMS = ["asap-1", "asap-2"]


def _module():
    return load_benchmark("asap_sas")


def _earlier(tmp_path: Path, **changes) -> Path:
    method = {"mean_test_qwk": 0.7, "tasks": {t: {"test_qwk": 0.7} for t in ITEMS}}
    report = {
        "command": "python benchmarks/asap_sas.py --methods lora,head",
        "date": "2026-12-01",
        "max_length": 160,
        "items": {t: {} for t in ITEMS},
        "methods": {"lora": method, "head": {**method, "mean_test_qwk": 0.6}},
        **changes,
    }
    path = tmp_path / "asap-sas.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def test_methods_not_run_are_carried_with_their_source(tmp_path):
    path = _earlier(tmp_path)
    carried = _module().carry_methods(str(path), ["full", "head"], ITEMS, 0, 160)
    assert list(carried) == ["lora"]  # head is re-run here, so the earlier head is not carried
    assert carried["lora"]["mean_test_qwk"] == 0.7
    assert carried["lora"]["carried_from"]["command"] == "python benchmarks/asap_sas.py --methods lora,head"
    # carried twice: the figures still name the run that measured them
    again = _earlier(tmp_path, methods=carried, command="python benchmarks/asap_sas.py --methods full --keep x")
    assert _module().carry_methods(str(again), ["full"], ITEMS, 0, 160)["lora"]["carried_from"]["date"] == "2026-12-01"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((["asap-1"], 0, 160), "items"),
        ((ITEMS, 1, 160), "seed"),
        ((ITEMS, 0, 128), "max_length"),
    ],
)
def test_an_incomparable_report_exits_2_naming_the_difference(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        _module().carry_methods(str(_earlier(tmp_path)), ["full"], *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{named}:" in err and "not comparable" in err


def test_an_unreadable_report_exits_2(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        _module().carry_methods(str(tmp_path / "broken.json"), ["full"], ITEMS, 0, 160)
    assert exc.value.code == 2 and "cannot read" in capsys.readouterr().err
