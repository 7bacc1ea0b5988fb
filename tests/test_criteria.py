"""Deployment criteria (Williamson, Xi & Breyer 2012) in ``evaluate``: SMD, thresholds, the automated subset, the
human-human reference (data or training record), the Markdown report and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from scoreplex.cli import app
from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError
from scoreplex.metrics import (
    Criteria,
    HumanReference,
    automated_criteria,
    deployment_criteria,
    evaluate_task,
    quadratic_weighted_kappa,
    reference_from_scores,
    standardized_mean_difference,
    training_reference,
)
from scoreplex.predictions import Predictions
from scoreplex.reports.evaluation import criteria_markdown, evaluation_criteria_table
from scoreplex.scorer import evaluate_suite
from scoreplex.tasks import Dimension, TaskSpec

ORD = TaskSpec.ordinal("q1", 3)
TWO = TaskSpec(id="two", dimensions=(Dimension("content", "ordinal", 4), Dimension("style", "ordinal", 3)))


# -- standardized mean difference -------------------------------------------------------------------------------


def test_smd_matches_a_hand_computation():
    human, engine = [1, 2, 3, 4], [2, 3, 4, 4]
    # means 2.5 and 3.25; sample variances 5/3 and 11/12; pooled SD sqrt((5/3 + 11/12) / 2) = sqrt(31/24)
    assert standardized_mean_difference(human, engine) == pytest.approx(0.75 / math.sqrt(31 / 24), rel=1e-12)
    assert standardized_mean_difference(engine, human) == pytest.approx(-0.75 / math.sqrt(31 / 24), rel=1e-12)


def test_smd_matches_the_formula_on_random_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 200))
        h, e = rng.integers(0, 5, n), rng.integers(0, 5, n)
        if h.var() + e.var() == 0:
            continue
        expected = (e.mean() - h.mean()) / np.sqrt((np.var(e, ddof=1) + np.var(h, ddof=1)) / 2)
        assert standardized_mean_difference(h, e) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_smd_zero_spread_policy_never_returns_nan():
    assert standardized_mean_difference([2, 2, 2], [2, 2, 2]) == 0.0
    assert standardized_mean_difference([1, 1, 1], [2, 2, 2]) == math.inf
    assert standardized_mean_difference([2, 2], [1, 1]) == -math.inf


@pytest.mark.parametrize(
    "human, engine, match",
    [
        ([1], [1], "at least 2"),
        ([1, 2, 3], [1, 2], "equal length"),
        ([[1, 2]], [[1, 2]], "1-D"),
        ([1.0, float("nan")], [1.0, 2.0], "finite"),
        (["a", "b"], ["a", "b"], "numeric"),
    ],
)
def test_smd_rejects_bad_input(human, engine, match):
    with pytest.raises(ConfigError, match=match):
        standardized_mean_difference(human, engine)


# -- thresholds -------------------------------------------------------------------------------------------------


def test_criteria_defaults_are_williamson_2012():
    c = Criteria()
    assert (c.min_qwk, c.max_degradation, c.max_smd, c.min_exact, c.min_adjacent) == (0.70, 0.10, 0.15, None, None)
    assert c.to_dict() == {
        "min_qwk": 0.70,
        "max_degradation": 0.10,
        "max_smd": 0.15,
        "min_exact": None,
        "min_adjacent": None,
    }


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("min_qwk", 1.5, "--min-qwk"),
        ("min_qwk", float("nan"), "--min-qwk"),
        ("max_degradation", -0.1, "--max-degradation"),
        ("max_smd", -1, "--max-smd"),
        ("max_smd", float("inf"), "--max-smd"),
        ("max_smd", True, "--max-smd"),
        ("max_smd", "0.15", "--max-smd"),
        ("min_exact", 2.0, "--min-exact"),
        ("min_adjacent", -0.5, "--min-adjacent"),
    ],
)
def test_bad_thresholds_are_a_config_error_naming_the_option(field, value, flag):
    with pytest.raises(ConfigError) as exc:
        Criteria(**{field: value})
    text = str(exc.value)
    assert field in text and flag in text and repr(value) in text and "Fix:" in text
    assert isinstance(exc.value, ValueError)


# -- one task ---------------------------------------------------------------------------------------------------

Y_TRUE = np.array([0, 1, 2, 3, 0, 1, 2, 3, 1, 2])
Y_PRED = np.array([0, 1, 2, 3, 1, 1, 2, 2, 1, 3])


def test_single_dimension_values_agree_with_the_metrics():
    ref = HumanReference(source="training", qwk=0.9, exact=0.7, adjacent=1.0, n=50)
    out = deployment_criteria(ORD, Y_TRUE, Y_PRED, reference=ref)
    qwk = quadratic_weighted_kappa(Y_TRUE, Y_PRED, labels=range(4))
    assert out["qwk"] == pytest.approx(qwk) == pytest.approx(evaluate_task(ORD, Y_TRUE, Y_PRED)["qwk"])
    assert out["exact"] == pytest.approx(0.7) and out["adjacent"] == 1.0 and out["n"] == 10
    assert out["smd"] == pytest.approx(standardized_mean_difference(Y_TRUE, Y_PRED))
    assert out["degradation"] == pytest.approx(0.9 - qwk)
    assert (out["human_qwk"], out["human_exact"], out["human_n"], out["human_source"]) == (0.9, 0.7, 50, "training")
    assert out["criteria"]["qwk"] == {"value": out["qwk"], "threshold": 0.70, "pass": qwk >= 0.70}
    assert out["criteria"]["exact"] == {"value": out["exact"], "threshold": None, "pass": None}  # reported only
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # JSON-ready, no nan / inf


def test_each_criterion_passes_at_its_threshold_and_fails_just_beyond():
    qwk = quadratic_weighted_kappa(Y_TRUE, Y_PRED, labels=range(4))
    smd = standardized_mean_difference(Y_TRUE, Y_PRED)
    loose = {"min_qwk": -1.0, "max_degradation": 2.0, "max_smd": 10.0}

    def verdict(name, reference=None, **th):
        return deployment_criteria(ORD, Y_TRUE, Y_PRED, reference=reference, criteria=Criteria(**(loose | th)))[
            "criteria"
        ][name]["pass"]

    assert verdict("qwk", min_qwk=qwk) is True
    assert verdict("qwk", min_qwk=qwk + 1e-6) is False
    assert verdict("smd", max_smd=abs(smd)) is True
    assert verdict("smd", max_smd=abs(smd) - 1e-6) is False
    # human QWK exactly 0.10 above the engine's: 0.10 of degradation (0.1000...09 in floating point) passes <= 0.10
    at = HumanReference(source="data", qwk=qwk + 0.10)
    assert verdict("degradation", reference=at, max_degradation=0.10) is True
    beyond = HumanReference(source="data", qwk=qwk + 0.1001)
    assert verdict("degradation", reference=beyond, max_degradation=0.10) is False
    assert verdict("exact", min_exact=0.7) is True and verdict("exact", min_exact=0.71) is False
    assert verdict("adjacent", min_adjacent=1.0) is True


def test_overall_pass_needs_every_available_criterion():
    perfect = deployment_criteria(ORD, Y_TRUE, Y_TRUE)  # no reference: degradation n/a, the others pass
    assert perfect["criteria"]["degradation"]["pass"] is None and perfect["degradation"] is None
    assert perfect["criteria"]["qwk"]["pass"] is True and perfect["criteria"]["smd"]["pass"] is True
    assert perfect["pass"] is True
    worse_than_humans = HumanReference(source="data", qwk=1.0)
    out = deployment_criteria(ORD, Y_TRUE, Y_PRED, reference=worse_than_humans, criteria=Criteria(min_qwk=0.0))
    assert out["criteria"]["qwk"]["pass"] is True and out["criteria"]["degradation"]["pass"] is False
    assert out["pass"] is False


def test_unavailable_values_are_none_not_zero():
    one = deployment_criteria(ORD, [2], [2])  # one response: no variance for SMD
    assert one["smd"] is None and one["criteria"]["smd"] == {"value": None, "threshold": 0.15, "pass": None}
    unscored = deployment_criteria(ORD, [-1, -1, -1], [0, 1, 2])
    assert unscored["qwk"] is None and unscored["exact"] is None and unscored["pass"] is None
    assert all(c["pass"] is None for c in unscored["criteria"].values())
    empty = deployment_criteria(ORD, np.zeros((0, 1), int), np.zeros((0, 1), int))
    assert empty["n"] == 0 and empty["qwk"] is None and empty["pass"] is None


def test_constant_raters_that_differ_fail_smd_without_an_infinite_value():
    out = deployment_criteria(ORD, [1, 1, 1], [2, 2, 2])
    assert out["criteria"]["smd"]["value"] is None and out["criteria"]["smd"]["pass"] is False
    assert "pooled SD is 0" in out["criteria"]["smd"]["note"]
    assert out["pass"] is False
    json.dumps(out, allow_nan=False)


def test_multi_dimension_task_passes_only_if_every_dimension_does():
    t = np.array([[0, 0], [1, 1], [2, 2], [3, 0], [0, 1], [1, 2], [2, 0], [3, 1]])
    p = t.copy()
    p[:, 1] = [2, 0, 1, 2, 0, 1, 2, 0]  # style: far off; content: perfect
    out = deployment_criteria(TWO, t, p)
    dims = out["dimensions"]
    assert dims["content"]["criteria"]["qwk"]["pass"] is True and dims["content"]["pass"] is True
    assert dims["style"]["criteria"]["qwk"]["pass"] is False
    qwk = out["criteria"]["qwk"]
    assert qwk["pass"] is False and qwk["dimension"] == "style" and qwk["value"] == dims["style"]["qwk"]
    assert out["qwk"] == pytest.approx((dims["content"]["qwk"] + dims["style"]["qwk"]) / 2)  # task QWK: the mean
    assert out["exact"] == 0.0  # no row right on both dimensions
    assert out["pass"] is False


# -- human-human references -------------------------------------------------------------------------------------


def test_reference_from_scores_uses_double_scored_rows_only():
    first = np.array([0, 1, 2, 3, 0, 1])
    second = np.array([0, 1, 2, 2, -1, -1])
    ref = reference_from_scores(ORD, first, second)
    assert ref.source == "data" and ref.n == 4 and ref.exact == 0.75 and ref.adjacent == 1.0
    assert ref.qwk == pytest.approx(quadratic_weighted_kappa(first[:4], second[:4], labels=range(4)))
    assert reference_from_scores(ORD, first, np.full(6, -1)) is None


@pytest.mark.parametrize(
    "record",
    [None, "0.8", [0.8], {}, {"qwk": "0.8"}, {"qwk": float("nan")}, {"qwk": True}, {"qwk": 1.5}, {"qwk": None}],
)
def test_a_bad_training_record_counts_as_absent(record):
    assert training_reference(record) is None


def test_a_training_record_keeps_what_is_valid():
    ref = training_reference({"qwk": 0.81, "exact": 1.7, "adjacent": 0.97, "n": "many"})
    assert (ref.source, ref.qwk, ref.exact, ref.adjacent, ref.n) == ("training", 0.81, None, 0.97, None)
    full = training_reference({"qwk": 0.8, "exact": 0.6, "adjacent": 0.95, "n": 120})
    assert (full.exact, full.n) == (0.6, 120)


# -- the automated subset ---------------------------------------------------------------------------------------


def test_automated_subset_numbers_by_hand():
    y_true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    y_pred = np.array([0, 1, 2, 3, 3, 3, 0, 0])  # right where automated, far off where not
    automated = np.array([True, True, True, True, False, False, False, False])
    ref = HumanReference(source="training", qwk=0.8, exact=0.6, adjacent=0.95, n=100)
    out = automated_criteria(ORD, y_true, y_pred, automated, reference=ref)
    assert out["automation_rate"] == 0.5 and out["n_automated"] == 4 and out["n"] == 4
    assert out["qwk"] == 1.0 and out["exact"] == 1.0 and out["smd"] == 0.0
    assert out["degradation"] == pytest.approx(-0.2) and out["pass"] is True and out["meets_human"] is True
    everything = deployment_criteria(ORD, y_true, y_pred, reference=ref)
    assert everything["qwk"] < 0.7 and everything["pass"] is False  # the routed-away responses sink it


def test_nothing_automated_gives_none_values():
    out = automated_criteria(ORD, Y_TRUE, Y_PRED, np.zeros(10, bool), reference=HumanReference("data", 0.8, 0.6))
    assert out["automation_rate"] == 0.0 and out["n_automated"] == 0
    assert out["qwk"] is None and out["exact"] is None and out["smd"] is None and out["degradation"] is None
    assert out["pass"] is None and out["meets_human"] is None


def test_automated_mask_is_checked():
    with pytest.raises(ConfigError, match=r"expected \(10,\)"):
        automated_criteria(ORD, Y_TRUE, Y_PRED, np.ones(9, bool))
    with pytest.raises(ConfigError, match="booleans"):
        automated_criteria(ORD, Y_TRUE, Y_PRED, np.full(10, 0.5))


# -- evaluate_suite with a hand-made scorer ---------------------------------------------------------------------


class _Scorer:
    """A scorer without a model: fixed Predictions per task and task.json records per task."""

    def __init__(self, preds: dict[str, tuple[np.ndarray, np.ndarray]], infos: dict[str, dict]):
        self.preds, self.infos = preds, infos
        self.suite = SimpleNamespace(
            task_ids=list(preds), has_task=lambda t: t in preds, root="fake", task_info=lambda t: self.infos[t]
        )

    def predict(self, task_id, texts, ids):
        labels, automated = self.preds[task_id]
        labels = labels.reshape(len(ids), -1)
        probs = [np.eye(4)[labels[:, 0]]]
        return Predictions(spec=ORD, ids=list(ids), labels=labels, probs=probs, automated=automated)


def _data(task_id: str, labels, second=None) -> TaskData:
    spec = TaskSpec.ordinal(task_id, 3)
    n = len(labels)
    return TaskData(spec, [f"r{i}" for i in range(n)], [f"text {i}" for i in range(n)], labels, second)


def test_evaluate_suite_reports_criteria_for_all_and_automated_responses():
    y_true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    y_pred = np.array([0, 1, 2, 3, 3, 3, 0, 0])
    half = np.array([True] * 4 + [False] * 4)
    human = {"qwk": 0.8, "exact": 0.6, "adjacent": 0.95, "n": 100}
    scorer = _Scorer(
        {"a": (y_pred, half), "b": (y_true, np.zeros(8, bool)), "c": (y_true, np.ones(8, bool))},
        {
            "a": {"decoding": {"human": human}},  # no second score in the data: the training record is used
            "b": {"decoding": ["not", "an", "object"]},  # a stranger's broken record: no reference, no crash
            "c": {"decoding": {"human": human}},  # the data's own second score wins over the record
        },
    )
    second = np.array([0, 1, 2, 2, 0, 1, 1, 3])
    datasets = {"a": _data("a", y_true), "b": _data("b", y_true), "c": _data("c", y_true, second)}
    result = evaluate_suite(scorer, datasets, progress=False, criteria=Criteria(max_smd=0.2))

    a, b, c = (result["tasks"][t] for t in "abc")
    assert a["criteria"]["human_source"] == "training" and a["criteria"]["human_qwk"] == 0.8
    assert a["criteria"]["pass"] is False
    assert a["criteria_automated"]["automation_rate"] == 0.5 and a["criteria_automated"]["meets_human"] is True
    assert b["criteria"]["human_source"] is None and b["criteria"]["criteria"]["degradation"]["pass"] is None
    assert b["criteria"]["pass"] is True  # perfect scores; degradation n/a
    assert b["criteria_automated"]["qwk"] is None and b["criteria_automated"]["automation_rate"] == 0.0
    ref = reference_from_scores(datasets["c"].spec, y_true, second)
    assert c["criteria"]["human_source"] == "data" and c["criteria"]["human_qwk"] == pytest.approx(ref.qwk)
    assert c["criteria_automated"]["meets_human"] is True

    assert result["criteria_thresholds"]["max_smd"] == 0.2
    assert result["items_passing_criteria"] == 2  # b and c
    assert result["items_auto_meeting_human"] == 2  # a and c (b: nothing automated)
    assert result["mean_automation_rate"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert a["qwk"] == pytest.approx(evaluate_task(datasets["a"].spec, y_true, y_pred)["qwk"])  # old keys kept
    json.dumps(result, allow_nan=False)


def test_automated_part_is_also_held_to_the_raters_agreement_over_all_responses():
    # the second rater is perfect on the four automated responses (the engine misses one there) but poor overall
    y_true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    y_pred = np.array([0, 1, 2, 2, 0, 0, 0, 0])
    second = np.array([0, 1, 2, 3, 3, 3, 0, 0])
    half = np.array([True] * 4 + [False] * 4)
    scorer = _Scorer({"d": (y_pred, half)}, {"d": {}})
    result = evaluate_suite(scorer, {"d": _data("d", y_true, second)}, progress=False)
    auto = result["tasks"]["d"]["criteria_automated"]
    assert auto["meets_human"] is False  # 3 of 4 exact against the second rater's 4 of 4
    assert auto["meets_human_all_responses"] is True  # the raters agree on half of all responses
    assert result["items_auto_meeting_human"] == 0 and result["items_auto_meeting_human_all_responses"] == 1


# -- reports ----------------------------------------------------------------------------------------------------


def _report() -> dict:
    y_true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    y_pred = np.array([0, 1, 2, 3, 3, 3, 0, 0])
    scorer = _Scorer({"item-1": (y_pred, np.array([True] * 4 + [False] * 4))}, {"item-1": {}})
    return evaluate_suite(scorer, {"item-1": _data("item-1", y_true)}, progress=False)


def test_markdown_report_has_both_tables_with_pass_fail():
    md = criteria_markdown(_report(), title="T")
    assert md.startswith("# T\n")
    assert "## All responses" in md and '## Automated responses (route "auto")' in md
    assert "| QWK >= 0.70 | degradation <= 0.10 | \\|SMD\\| <= 0.15 | pass |" in md  # pipes escaped in cells
    rows = [line for line in md.splitlines() if line.startswith("| item-1 |")]
    assert len(rows) == 3  # one per table
    assert "FAIL" in rows[0] and rows[0].endswith("| FAIL |")  # QWK of all responses below 0.70
    assert "4 of 8" in rows[1] and "50.0%" in rows[1] and rows[1].endswith("| pass | n/a |")  # no reference
    # one-hot probabilities right on 4 of 8: ECE 0.5 where a calibrated model's would be 0
    assert rows[2] == "| item-1 | 8 | 0.500 | 0.000 (0.000) | 0.00 | **miscalibrated** |"
    assert "Tasks meeting the criteria: **0 of 1**" in md


def test_terminal_table_gains_pass_fail_columns():
    header, rows = evaluation_criteria_table(_report())
    assert header[:6] == ["task", "n", "QWK", "accuracy", "exact match", "human QWK"]
    assert header[6:] == [
        "degradation",
        "SMD",
        "QWK >= 0.70",
        "degradation <= 0.10",
        "|SMD| <= 0.15",
        "criteria",
        "automated",
        "auto >= human",
    ]
    (row,) = rows
    assert row[0] == "item-1" and row[6] == "n/a" and row[8:] == ["FAIL", "n/a", "pass", "FAIL", "50.0%", "n/a"]


# -- the command line -------------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def double_scored(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("criteria-data") / "scored.csv"
    rows = [f"r{i},q1,answer {i} says {'yes ' * (i % 4)},{i % 4},{(i + (i % 5 == 0)) % 4}" for i in range(40)]
    path.write_text("\n".join(["id,task,text,score,score2", *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_suite(double_scored, tmp_path_factory, tiny_backbone_path) -> Path:
    out = tmp_path_factory.mktemp("criteria-suite") / "s"
    args = ["--out", out, "--backbone", tiny_backbone_path, "--method", "lora", "--epochs", 1, "--no-progress"]
    result = invoke("train", double_scored, *args, "--label", "score")
    assert result.exit_code == 0, result.output
    return out


def test_cli_evaluate_writes_markdown_and_json_with_the_criteria(tiny_suite, double_scored, tmp_path):
    report, md = tmp_path / "m.json", tmp_path / "out" / "criteria.md"
    result = invoke(
        "evaluate",
        tiny_suite,
        double_scored,
        "--label",
        "score",
        "--second",
        "score2",
        "--report",
        report,
        "--markdown",
        md,
        "--min-qwk",
        0.5,
        "--max-smd",
        0.3,
    )
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "mean QWK" in out and "QWK >= 0.50" in out and "|SMD| <= 0.30" in out and "tasks pass" in out
    data = json.loads(report.read_text(encoding="utf-8"))
    m = data["tasks"]["q1"]
    crit = m["criteria"]
    assert crit["human_source"] == "data" and crit["human_n"] == 40
    assert crit["qwk"] == pytest.approx(m["qwk"]) and crit["human_qwk"] == pytest.approx(m["human"]["qwk"])
    assert crit["criteria"]["qwk"] == {"value": crit["qwk"], "threshold": 0.5, "pass": crit["qwk"] >= 0.5}
    assert crit["criteria"]["smd"]["threshold"] == 0.3
    # trained without a second score, so the task has no routing threshold: every response is automated
    assert m["criteria_automated"]["automation_rate"] == 1.0 and m["criteria_automated"]["n_automated"] == 40
    assert data["criteria_thresholds"]["min_qwk"] == 0.5
    assert data["items_passing_criteria"] == int(crit["pass"] is True)
    text = md.read_text(encoding="utf-8")
    assert "## All responses" in text and "| q1 |" in text and "QWK >= 0.50" in text
    assert f"| {crit['qwk']:.3f} |" in text
    # calibration: the ECE of the returned probabilities beside a calibrated model's on as many responses
    cal = m["calibration"]
    (dim,) = cal["dimensions"].values()
    assert dim["n"] == 40 and cal["ece"] == pytest.approx(dim["ece"]) and 0 <= cal["p_value"] <= 1
    assert data["mean_ece"] == pytest.approx(cal["ece"]) and data["mean_ece_floor"] == pytest.approx(dim["floor"])
    assert data["items_calibration_rejected"] == int(cal["p_value"] < 0.05)
    assert f"calibration: mean top-label ECE {cal['ece']:.3f}" in out
    assert "## Calibration" in text and f"| q1 | 40 | {cal['ece']:.3f} | {dim['floor']:.3f} (" in text


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-smd", -1], ["--max-smd", "-1"]),
        (["--min-qwk", "nan"], ["--min-qwk"]),
        (["--max-degradation", 3], ["--max-degradation"]),
    ],
)
def test_cli_bad_threshold_is_one_error_line(tiny_suite, double_scored, args, words):
    result = invoke("evaluate", tiny_suite, double_scored, "--label", "score", *args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert all(w in flat(result.output) for w in words)


def test_cli_markdown_path_is_checked_before_evaluating(tiny_suite, double_scored, tmp_path):
    folder = tmp_path / "c.md"
    folder.mkdir()
    result = invoke("evaluate", tiny_suite, double_scored, "--label", "score", "--markdown", folder)
    assert result.exit_code == 2 and "--markdown" in flat(result.output) and "is a folder" in flat(result.output)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x", encoding="utf-8")
    result = invoke("evaluate", tiny_suite, double_scored, "--label", "score", "--markdown", blocker / "c.md")
    assert result.exit_code == 2 and "exists and is not a folder" in flat(result.output)
    same = tmp_path / "same.out"
    result = invoke("evaluate", tiny_suite, double_scored, "--report", same, "--markdown", same, "--label", "score")
    assert result.exit_code == 2 and "same file" in flat(result.output)


# -- undefined QWK, n per task and pooled figures ------------------------------------------------------------------


def test_single_class_item_shows_qwk_undefined_not_one():
    one = np.array([2, 2, 2, 2, 2])  # every response scored 2 and predicted 2
    out = deployment_criteria(ORD, one, one)
    assert out["qwk"] is None and out["criteria"]["qwk"]["value"] is None and out["criteria"]["qwk"]["pass"] is None
    assert out["exact"] == 1.0 and out["n"] == 5
    assert reference_from_scores(ORD, one, one) is None  # two raters on one class: no usable QWK reference


def test_evaluate_suite_leaves_undefined_tasks_out_of_the_mean_and_pools_every_response():
    good_t, good_p = np.array([0, 1, 2, 3, 0, 1, 2, 3]), np.array([0, 1, 2, 3, 1, 1, 2, 2])
    flat = np.array([1, 1, 1])
    automated = {"good": np.ones(8, bool), "flat": np.ones(3, bool)}
    scorer = _Scorer({"good": (good_p, automated["good"]), "flat": (flat, automated["flat"])}, {"good": {}, "flat": {}})
    datasets = {"good": _data("good", good_t), "flat": _data("flat", flat)}
    result = evaluate_suite(scorer, datasets, progress=False)

    assert result["tasks"]["flat"]["qwk"] is None and result["qwk_undefined_tasks"] == ["flat"]
    # one-hot probabilities: every response 100% sure, right on 6 of 8 -> ECE 0.25, beyond what chance gives
    good_cal = result["tasks"]["good"]["calibration"]
    assert good_cal["ece"] == pytest.approx(0.25) and good_cal["floor"] == 0.0 and good_cal["p_value"] == 0.0
    assert result["items_calibration_rejected"] == 1  # "flat" is right every time: ECE 0, consistent
    assert result["mean_qwk"] == pytest.approx(quadratic_weighted_kappa(good_t, good_p, labels=range(4)))
    pooled = result["pooled"]
    both_t, both_p = np.concatenate([good_t, flat]), np.concatenate([good_p, flat])
    assert pooled["n"] == 11 and pooled["n_tasks"] == 2
    assert pooled["qwk"] == pytest.approx(quadratic_weighted_kappa(both_t, both_p, labels=range(4)))
    assert pooled["rmse"] == pytest.approx(np.sqrt(np.mean(((both_t - both_p) / 3) ** 2)))
    json.dumps(result, allow_nan=False)

    header, rows = evaluation_criteria_table(result)
    flat_row = next(r for r in rows if r[0] == "flat")
    assert flat_row[header.index("n")] == "3" and flat_row[header.index("QWK")] == "n/a"
    md = criteria_markdown(result)
    assert "over 1 of 2 tasks (1 with QWK undefined" in md and ": flat)" in md
    assert f"Pooled over 11 responses of 2 tasks: QWK {pooled['qwk']:.3f}" in md
    assert "| flat | 3 | n/a |" in md
