"""Tests of scoreplex.data.load, scoreplex.streaming.score_file and scoreplex.reports.evaluation: reading a data file
into tasks, scoring a file, the report table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scoreplex.data.load import check_nonempty, read_dataset
from scoreplex.data.readers import read_table
from scoreplex.errors import DataError
from scoreplex.reports.evaluation import evaluation_table
from scoreplex.streaming import score_file
from scoreplex.training.suite import train_suite


def test_tasks_file_and_specs_read_the_same(demo_files, demo_datasets, demo_column_map):
    from_file = read_dataset(demo_files["train"], columns=demo_column_map, tasks_file=demo_files["tasks"])
    assert list(from_file) == list(demo_datasets)
    for tid, data in from_file.items():
        ref = demo_datasets[tid]
        assert data.spec == ref.spec and data.ids == ref.ids and data.texts == ref.texts
        np.testing.assert_array_equal(data.labels, ref.labels)
        np.testing.assert_array_equal(data.second, ref.second)


def test_specs_are_inferred_from_the_scores_without_a_tasks_file(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("id,task,text,score\na,q1,x,0\nb,q1,y,2\nc,q2,z,1\n", encoding="utf-8")
    data = read_dataset(path)
    # the range comes from all rows of the file, never per item: q2's scores (only 1s) still get 0..2
    assert data["q1"].spec.class_counts == [3] and data["q2"].spec.class_counts == [3]


def test_check_nonempty_names_the_file():
    with pytest.raises(DataError, match="empty.csv"):
        check_nonempty({}, "empty.csv")
    check_nonempty({"q": object()}, "full.csv")


def test_evaluation_table_formats_each_task():
    report = {
        "tasks": {
            "a": {"n": 10, "qwk": 0.51234, "accuracy": 0.7, "exact_match": None},
            "b": {"n": 4, "qwk": 0.25, "accuracy": 0.5, "exact_match": 0.25, "human": {"qwk": 0.9}},
        }
    }
    assert evaluation_table(report) == [
        ["a", "10", "0.512", "0.700", "", ""],
        ["b", "4", "0.250", "0.500", "0.250", "0.900"],
    ]


def test_score_file_keeps_ids_in_input_order(
    tmp_path: Path, demo_files, demo_datasets, demo_column_map, tiny_bb, small_options
):
    train_suite(demo_datasets, tmp_path / "suite", small_options("head"), backbone=tiny_bb)
    result = score_file(
        tmp_path / "suite", demo_files["test"], tmp_path / "out.jsonl", columns=demo_column_map, progress=False
    )
    inputs = read_table(demo_files["test"])
    assert result["rows"] == len(inputs) and result["tasks"] == 4 and result["resumed_from"] == 0
    rows = read_table(tmp_path / "out.jsonl")
    assert [(r["id"], r["task"]) for r in rows] == [(r["id"], r["task"]) for r in inputs]  # streamed in input order
