"""The merging report (benchmarks/gw_merging_report.py) from its parts' JSON: targets judged from the parts' own
figures, a part that is absent reported as not measured, and no report at all without a protocol run."""

from __future__ import annotations

import json

import pytest
from tests.conftest import load_benchmark

IDS = ["asap-1", "asap-2", "asap-3"]


def _module():
    return load_benchmark("gw_merging_report")


def _plan(groups, qwk: float) -> dict:
    return {
        "groups": groups,
        "variants": {v: {"mean_qwk": qwk, "tasks": dict.fromkeys(IDS, qwk)} for v in ("kept", "refit", "surgery")},
    }


def _protocol(gw: float, expert: float, ratio: float, stem: str) -> dict:
    test = {"t": 1.0, "p": 0.4, "mean_diff": gw - expert, "n": 3}
    tests = {
        v: {
            "random_median_mean_qwk": 0.70,
            "random_min_max": [0.69, 0.71],
            "gw_beats_random_share": 0.5,
            "vs_random_mean": test,
            "vs_expert": test,
        }
        for v in ("kept", "refit", "surgery")
    }
    return {
        "command": f"python benchmarks/merge_protocol.py --name {stem}",
        "report_stem": stem,
        "best_variant": "surgery",
        "unmerged": {"mean_qwk": 0.75},
        "plans": {
            "gw": _plan([["asap-1", "asap-2"], ["asap-3"]], gw),
            "expert": _plan([["asap-1", "asap-3"], ["asap-2"]], expert),
            "random-00": _plan([["asap-2", "asap-3"], ["asap-1"]], 0.70),
        },
        "tests": tests,
        "storage": {"lora_ratio_surgery": ratio},
    }


def test_targets_are_judged_from_the_parts_and_absent_parts_are_not_measured(tmp_path):
    (tmp_path / "merge-protocol.json").write_text(json.dumps(_protocol(0.71, 0.72, 0.9, "merge-protocol")))
    compressed = _protocol(0.73, 0.70, 3.2, "merge-protocol-s8-lora-r6-expert-gw-random")
    (tmp_path / "merge-protocol-s8-lora-r6-expert-gw-random.json").write_text(json.dumps(compressed))
    full = {**_protocol(0.74, 0.73, 0.0, "merge-protocol-full10-expert-gw"), "storage": {"full_ratio_surgery": 3.3}}
    (tmp_path / "merge-protocol-full10-expert-gw.json").write_text(json.dumps(full))
    (tmp_path / "gw-merging.json").write_text(json.dumps({"unmerged_mean_qwk": 0.75}))
    text = _module().main(["--out", str(tmp_path)])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    full_rank = rows["LoRA suite, full-rank merged adapters"]
    assert (
        "-0.040 (**not met**)" in full_rank
        and "| no (p 0.400, 0.400)" in full_rank
        and "0.90× (**not met**)" in full_rank
    )
    small = rows["LoRA suite, merged adapters at rank 6, surgery rank 8"]
    assert "-0.020 (met)" in small and "above, not significantly" in small and "3.20× (met)" in small
    assert "-0.010 (met)" in rows["10 full fine-tunes"] and "3.30× (met)" in rows["10 full fine-tunes"]
    saved = json.loads((tmp_path / "gw-merging.json").read_text())
    assert saved["unmerged_mean_qwk"] == 0.75  # the rest of the file is kept
    assert saved["full_finetunes_t3"]["gw_mean_qwk"] == 0.74 and saved["full_finetunes_t3"]["storage_ratio"] == 3.3
    assert "full_finetunes_t3_task_arithmetic" not in saved  # that run is absent: nothing invented
    assert (tmp_path / "gw-merging.md").read_text() == text
    assert "## Does a similarity predict" not in text  # gw-predict.json absent: no section, no invented figures


def test_without_a_protocol_run_it_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _module().main(["--out", str(tmp_path)])
    assert exc.value.code == 2 and "merge_protocol.py" in capsys.readouterr().err
    assert not (tmp_path / "gw-merging.md").exists()


def test_a_task_arithmetic_run_gets_its_section_beside_ties_on_the_same_plans(tmp_path):
    (tmp_path / "merge-protocol.json").write_text(json.dumps(_protocol(0.71, 0.72, 0.9, "merge-protocol")))
    ta = _protocol(0.69, 0.68, 3.1, "merge-protocol-task-arithmetic-expert-gw")
    del ta["plans"]["random-00"]
    ta["protocol"] = {"grid": [[1.0, 0.3], [1.0, 0.5], [1.0, 1.0]]}
    chosen = {v: {"density": 1.0, "scale": s} for v, s in (("kept", 0.3), ("refit", 0.5), ("surgery", 0.5))}
    ta["groups"] = [{"tasks": ["asap-1", "asap-2"], "chosen": chosen}]
    (tmp_path / "merge-protocol-task-arithmetic-expert-gw.json").write_text(json.dumps(ta))
    (tmp_path / "gw-merging.json").write_text(json.dumps({"unmerged_mean_qwk": 0.75}))
    text = _module().main(["--out", str(tmp_path)])
    section = text.split("## Task arithmetic, λ tuned on validation (LoRA suite)")[1]
    assert "chosen per group and variant: [0.3, 0.5]" in section
    assert "| gw | 0.690 | 0.690 | 0.690 | 0.710 / 0.710 / 0.710 |" in section
    assert "| expert | 0.680 | 0.680 | 0.680 | 0.720 / 0.720 / 0.720 |" in section
    assert "(10 full fine-tunes)" not in text  # that run is absent: no section
    ta["plans"]["expert"]["groups"] = [["asap-1"], ["asap-2", "asap-3"]]  # not the plan TIES ran as "expert"
    (tmp_path / "merge-protocol-task-arithmetic-expert-gw.json").write_text(json.dumps(ta))
    assert "| expert | 0.680 | 0.680 | 0.680 | other groups |" in _module().main(["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gw-merging.json").read_text())["lora_t3_task_arithmetic"]
    assert saved["gw_mean_qwk"] == 0.69 and saved["expert_mean_qwk"] == 0.68 and saved["storage_ratio"] == 3.1


def test_the_correlation_keys_follow_the_current_gw_predict_report(tmp_path):
    (tmp_path / "merge-protocol.json").write_text(json.dumps(_protocol(0.71, 0.72, 0.9, "merge-protocol")))
    old = {"unmerged_mean_qwk": 0.75, "best_similarity": "gw/entropic-all", "best_similarity_spearman": 0.38}
    (tmp_path / "gw-merging.json").write_text(json.dumps({**old, "gw_merge_loss_spearman": 0.27}))
    corr = {"gw/entropic-q400-s0": 0.27, "gw/exact-all": 0.41, "cka": -0.08}
    predict = {
        "command": "python benchmarks/gw_predict.py",
        "n_pairs": 3,
        "gw_merge_loss_spearman": 0.27,
        "best_similarity": "gw/exact-all",
        "best_similarity_spearman": 0.41,
        "correlations": {n: {"rho": r, "p_pairs": 0.1, "p_mantel": 0.3} for n, r in corr.items()},
        "reference_plan": {"groups": [["asap-1", "asap-2"], ["asap-3"]], "total_loss": -0.1},
        "random_plans": {"n": 5, "median_total_loss": -0.05, "mean_total_loss": -0.05},
        "similarities": {},
    }
    (tmp_path / "gw-predict.json").write_text(json.dumps(predict))
    text = _module().main(["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gw-merging.json").read_text())
    assert saved["best_similarity"] == "gw/exact-all" and saved["best_similarity_spearman"] == 0.41
    assert saved["unmerged_mean_qwk"] == 0.75 and "| gw/exact-all | +0.41 |" in text
