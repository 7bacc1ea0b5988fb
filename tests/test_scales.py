"""Tests of score scales: a dimension's declared scale (scoreplex.tasks), scores read through it and inferred from a
whole file (scoreplex.data.readers), predictions written in it, evaluation skipping off-scale rows, and ``train``
refusing a changed spec for a task a suite already holds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scoreplex.cli import app
from scoreplex.data import ColumnMap, read_responses
from scoreplex.data.readers import reading_notes
from scoreplex.errors import ConfigError, DataError, OffScaleError
from scoreplex.predictions import Predictions, ordered_rows
from scoreplex.streaming import pred_types
from scoreplex.tasks import Dimension, TaskSpec, load_task_specs

HALVES = tuple(str(k / 2).removesuffix(".0") for k in range(11))  # "0", "0.5", ..., "5"
GRADES = ("A", "B", "C", "D", "F")


def half_spec(task_id: str = "q1", between: str = "nearest") -> TaskSpec:
    return TaskSpec(id=task_id, dimensions=(Dimension("score", scale=HALVES, between=between),))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- declaring a scale ---------------------------------------------------------------------------------------------


def test_scale_sets_the_classes_and_survives_json(tmp_path):
    spec = TaskSpec(
        id="q",
        dimensions=(Dimension("score", scale=HALVES, between="error"), Dimension("grade", scale=GRADES)),
    )
    assert spec.class_counts == [11, 5]
    again = TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.dimensions[0].between == "error"
    path = write(tmp_path / "tasks.json", json.dumps([spec.to_dict()]))
    assert load_task_specs(str(path)) == [spec]
    numbers = Dimension.from_dict({"name": "s", "scale": [0, 0.5, 1]})  # JSON numbers are read as written
    assert numbers.scale == ("0", "0.5", "1") and numbers.values == (0, 0.5, 1)


def test_a_spec_without_a_scale_reads_and_writes_as_before():
    old = {"name": "score", "kind": "ordinal", "num_classes": 4, "description": ""}
    dim = Dimension.from_dict(old)
    assert dim.scale is None and dim.values == (0, 1, 2, 3) and dim.to_dict() == old
    assert Dimension("claim", "binary").num_classes == 2


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"scale": ("1", "1.0", "2")}, "repeats scale values"),  # numeric scales compare as numbers
        ({"scale": ("a", "A")}, "repeats scale values"),
        ({"scale": ("0", "2", "1")}, "out of order"),
        ({"scale": ("0",)}, "1 points"),
        ({"scale": tuple(str(k) for k in range(101))}, "101 points"),
        ({"scale": ("0", "")}, "empty scale value"),
        ({"scale": ("0", "1"), "num_classes": 3}, "num_classes=3"),
        ({"scale": ("0", "1"), "between": "round"}, "'round'"),
        ({"scale": ("0", "1", "2"), "kind": "binary"}, "binary means 2"),
        ({"scale": "012"}, "'012'"),
    ],
)
def test_bad_scales_are_refused_naming_the_problem(kwargs, bad):
    with pytest.raises(ConfigError) as exc:
        Dimension("score", **kwargs)
    assert bad in str(exc.value) and "'score'" in str(exc.value)


def test_locate_maps_numbers_between_points_to_the_nearest_halfway_up():
    dim = Dimension("score", scale=HALVES)
    assert dim.locate("2.5").cls == 5 and dim.locate("2.5").exact
    assert dim.locate(" 2.50 ").cls == 5 and dim.locate("5.0").cls == 10  # compared as numbers
    assert (dim.locate("2.2").cls, dim.locate("2.2").exact) == (4, False)
    assert dim.locate("2.4").cls == 5
    assert dim.locate("2.25").cls == 5  # halfway between 2 and 2.5: up
    assert dim.locate("0.25").cls == 1
    for value in ("5.5", "-0.5", "x"):
        with pytest.raises(OffScaleError):
            dim.locate(value)
    strict = Dimension("score", scale=HALVES, between="error")
    with pytest.raises(OffScaleError, match="between the scale points 2 and 2.5"):
        strict.locate("2.25")


def test_text_scales_match_ignoring_case_and_give_back_the_written_value():
    dim = Dimension("grade", scale=GRADES)
    assert not dim.numeric and dim.locate(" b ").cls == 1 and dim.value(1) == "B"
    with pytest.raises(OffScaleError, match="not on the scale"):
        dim.locate("E")


def test_spec_difference_names_what_changed():
    old = TaskSpec.ordinal("q", 3)
    assert old.difference(TaskSpec(id="q", dimensions=(Dimension("score", scale=("0", "1", "2", "3")),))) == []
    diff = old.difference(half_spec("q"))
    assert any("4 classes -> 11" in line for line in diff) and any("0..3 ->" in line for line in diff)
    assert old.difference(TaskSpec.multilabel("q", ["a"])) == ["dimensions score -> a"]


# -- reading scores through a scale -----------------------------------------------------------------------------------


def test_averaged_scores_between_points_are_mapped_and_counted(tmp_path):
    path = write(
        tmp_path / "a.csv", "id,task,text,score,s2\nr1,q1,a,2.5,2\nr2,q1,b,2.25,\nr3,q1,c,0,0.2\nr4,q1,d,5,5\n"
    )
    data = read_responses(path, ColumnMap(second={"score": "s2"}), {"q1": half_spec()})["q1"]
    assert data.labels[:, 0].tolist() == [5, 5, 0, 10]
    assert data.second[:, 0].tolist() == [4, -1, 0, 10]
    assert data.between_mapped == {"score": 2}  # 2.25 and 0.2, over both raters
    (note,) = reading_notes({"q1": data})
    assert "2 'score' score(s) between" in note and "q1" in note


def test_between_error_names_the_row(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,a,2.5\nr2,q1,b,2.25\n")
    with pytest.raises(DataError) as exc:
        read_responses(path, tasks={"q1": half_spec(between="error")})
    assert exc.value.row == 3 and exc.value.column == "score" and exc.value.task == "q1"


def test_letter_grades_read_through_a_declared_scale(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,grade\nr1,q1,a,A\nr2,q1,b,f\n")
    spec = TaskSpec(id="q1", dimensions=(Dimension("grade", scale=GRADES),))
    assert read_responses(path, tasks={"q1": spec})["q1"].labels.tolist() == [[0], [4]]


def test_off_scale_rows_are_skipped_and_reported_when_asked(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,a,2\nr2,q1,b,7\nr3,q2,c,1\nr4,q1,d,1.5\n")
    tasks = {"q1": TaskSpec.ordinal("q1", 3), "q2": TaskSpec.ordinal("q2", 3)}
    with pytest.raises(DataError) as exc:
        read_responses(path, tasks=tasks)
    assert exc.value.row == 3
    data = read_responses(path, tasks=tasks, off_scale="skip")
    assert data["q1"].ids == ["r1"] and data["q1"].labels.tolist() == [[2]]
    assert sorted(data["q1"].skipped) == [3, 5] and "outside the declared range 0..3" in data["q1"].skipped[3]
    assert data["q2"].ids == ["r3"] and not data["q2"].skipped
    (note,) = reading_notes(data)
    assert "skipped 2 row(s)" in note and "rows 3, 5" in note
    typo = write(tmp_path / "b.csv", "id,task,text,score\nr1,q1,a,two\n")
    with pytest.raises(DataError):  # not a number at all: a typo, never skipped
        read_responses(typo, tasks=tasks, off_scale="skip")


def test_inferred_scale_comes_from_every_row_of_the_file(tmp_path):
    # q1 has half points, q2 only whole numbers up to 4: both get the file's scale, 0..4 in halves
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,a,0.5\nr2,q1,b,1.5\nr3,q2,c,4\nr4,q2,d,1\n")
    data = read_responses(path)
    expected = ("0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4")
    for task in ("q1", "q2"):
        assert data[task].spec.dimensions[0].scale == expected
    assert data["q1"].labels.tolist() == [[1], [3]] and data["q2"].labels.tolist() == [[8], [2]]
    quarters = write(tmp_path / "b.csv", "id,task,text,score\nr1,q1,a,0.75\nr2,q2,b,1\n")
    assert read_responses(quarters)["q2"].spec.dimensions[0].scale == ("0", "0.25", "0.5", "0.75", "1")


def test_an_inferred_scale_too_fine_asks_for_a_declared_one(tmp_path):
    path = write(tmp_path / "a.csv", "id,task,text,score\nr1,q1,a,2.333\nr2,q2,b,3\n")
    with pytest.raises(DataError) as exc:
        read_responses(path)
    assert exc.value.row == 2 and "scale" in str(exc.value) and "nearest" in str(exc.value)


# -- outputs in the scale's values ----------------------------------------------------------------------------------


def test_prediction_rows_give_scores_in_the_scale_and_probabilities_per_class():
    spec = TaskSpec(id="q", dimensions=(Dimension("score", scale=HALVES), Dimension("grade", scale=GRADES)))
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(k), size=3) for k in spec.class_counts]
    labels = np.stack([p.argmax(axis=1) for p in probs], axis=1)
    rows = ordered_rows(3, [([2, 0, 1], Predictions(spec, ["a", "b", "c"], labels, probs))])
    for row, i in zip(rows, [1, 2, 0], strict=True):
        assert row["pred_score"] == spec.dimensions[0].values[labels[i, 0]]
        assert row["pred_grade"] == GRADES[labels[i, 1]]
        assert [row[f"prob_grade_{k}"] for k in range(5)] == [round(float(p), 6) for p in probs[1][i]]
    plain = TaskSpec.ordinal("p", 3)
    assert pred_types([spec, plain]) == {"pred_score": "float", "pred_grade": "string"}
    assert pred_types([plain]) == {"pred_score": "int"}


# -- end to end: train, score, evaluate, retrain --------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory, tiny_backbone_path):
    """A one-epoch suite of two half-point tasks trained from a CSV of averaged scores, with a declared scale."""
    folder = tmp_path_factory.mktemp("scales")
    rng = np.random.default_rng(0)
    words = ["light", "water", "energy", "plant", "sugar", "oxygen", "root", "leaf"]
    rows = []
    for task in ("q1", "q2"):
        for i in range(24):
            score = rng.choice(["0", "0.5", "1", "1.5", "2", "1.75"])  # 1.75: an average between points
            text = " ".join(rng.choice(words, size=6))
            rows.append({"id": f"{task}-{i}", "task": task, "text": text, "score": score})
    train = folder / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["id", "task", "text", "score"])
        writer.writeheader()
        writer.writerows(rows)
    scale = ["0", "0.5", "1", "1.5", "2"]
    tasks = write(
        folder / "tasks.json",
        json.dumps([{"id": t, "dimensions": [{"name": "score", "scale": scale}]} for t in ("q1", "q2")]),
    )
    out = folder / "suite"
    result = invoke(
        "train", train, "--out", out, "--backbone", tiny_backbone_path, "--tasks", tasks, "--epochs", 1,
        "--batch-size", 16, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"folder": folder, "train": train, "tasks": tasks, "suite": out, "output": result.output}


def test_train_reports_mapped_averages(scaled_run):
    assert "between the points of the scale" in flat(scaled_run["output"])


def test_score_writes_predictions_in_the_scale(scaled_run):
    out = scaled_run["folder"] / "scores.csv"
    result = invoke("score", scaled_run["suite"], scaled_run["train"], out, "--no-progress")
    assert result.exit_code == 0, result.output
    with open(out, encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert got and {r["pred_score"] for r in got} <= {"0", "0.5", "1", "1.5", "2"}
    for r in got:  # the written score is the scale point of the most probable class
        probs = [float(r[f"prob_score_{k}"]) for k in range(5)]
        assert float(r["pred_score"]) == max(range(5), key=probs.__getitem__) / 2


def test_parquet_scores_and_info_show_the_scale(scaled_run):
    import pyarrow.parquet as pq

    out = scaled_run["folder"] / "scores.parquet"
    result = invoke("score", scaled_run["suite"], scaled_run["train"], out, "--no-progress")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert str(table.schema.field("pred_score").type) == "double"
    assert set(table.column("pred_score").to_pylist()) <= {0.0, 0.5, 1.0, 1.5, 2.0}
    info = invoke("info", scaled_run["suite"])
    assert info.exit_code == 0, info.output
    assert "scale 0, 0.5, 1, 1.5, 2 (5 points)" in flat(info.output)


def test_evaluate_skips_rows_off_the_scale_and_reports_them(scaled_run):
    folder = scaled_run["folder"]
    lines = scaled_run["train"].read_text(encoding="utf-8").splitlines()
    held = write(folder / "held.csv", "\n".join([*lines[:13], "x1,q1,light water root,3.5", *lines[13:]]) + "\n")
    report = folder / "metrics.json"
    result = invoke("evaluate", scaled_run["suite"], held, "--report", report)
    assert result.exit_code == 0, result.output
    assert "skipped 1 row(s)" in flat(result.output) and "rows 14" in flat(result.output)
    metrics = json.loads(report.read_text(encoding="utf-8"))
    assert metrics["tasks"]["q1"]["skipped_rows"] == {"count": 1, "rows": [14]}
    assert "skipped_rows" not in metrics["tasks"]["q2"]


def test_train_refuses_another_spec_for_a_trained_task(scaled_run, tiny_backbone_path):
    folder = scaled_run["folder"]
    other = write(
        folder / "other.json",
        json.dumps([{"id": t, "dimensions": [{"name": "score", "scale": ["0", "1", "2"]}]} for t in ("q1", "q2")]),
    )
    result = invoke(
        "train", scaled_run["train"], "--out", scaled_run["suite"], "--backbone", tiny_backbone_path, "--tasks", other,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "another spec" in text and "5 classes -> 3" in text and "task q1" in text
