"""``--delimiter`` on every command that reads a data file (train, evaluate, score, merge, distill, adapt)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from scoreplex.cli import app
from scoreplex.suite import Suite

READERS = ["train", "evaluate", "score", "merge", "distill", "adapt"]
SCORE_COL = "score (0,1,2, rater 1)"  # a header whose commas outnumber its tabs: sniffing reads it as a comma file


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def tab_file(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("delimiter") / "export.csv"
    rows = [f"r{i}\tq1\tanswer {i}, which says {'yes ' * (i % 3)}\t{i % 3}" for i in range(30)]
    data.write_text("\n".join([f"id\ttask\ttext\t{SCORE_COL}", *rows]) + "\n", encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def tab_suite(tab_file, tmp_path_factory, tiny_backbone_path) -> Path:
    out = tmp_path_factory.mktemp("delimiter-suite") / "s"
    args = ["--out", out, "--backbone", tiny_backbone_path, "--method", "head", "--epochs", 1, "--no-progress"]
    result = invoke("train", tab_file, *args, "--label", SCORE_COL, "--delimiter", "\\t")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("command", READERS)
def test_every_command_reading_scored_data_takes_delimiter(command):
    assert "--delimiter" in invoke(command, "--help").output


def test_train_reads_a_tab_file_the_sniffer_would_misread(tab_file, tab_suite, tmp_path, tiny_backbone_path):
    assert Suite.open(tab_suite).task_ids == ["q1"]
    sniffed = invoke("train", tab_file, "--out", tmp_path / "s", "--backbone", tiny_backbone_path, "--label", SCORE_COL)
    assert sniffed.exit_code == 2 and "but the header has 4" in flat(sniffed.output)  # sniffed: split at commas


def test_evaluate_reads_with_the_delimiter(tab_file, tab_suite):
    result = invoke("evaluate", tab_suite, tab_file, "--label", SCORE_COL, "--delimiter", "tab")
    assert result.exit_code == 0, result.output
    assert "mean QWK" in result.output


def test_score_reads_with_the_delimiter(tab_file, tab_suite, tmp_path):
    out = tmp_path / "scores.csv"
    result = invoke("score", tab_suite, tab_file, out, "--delimiter", "\\t", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "scored 30 responses of 1 tasks" in flat(result.output)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 31


@pytest.mark.parametrize("command", READERS)
def test_a_bad_delimiter_reaches_the_reader_and_is_one_error_line(command, tab_file, tab_suite, tmp_path):
    args = {
        "train": [tab_file, "--out", tmp_path / "s"],
        "evaluate": [tab_suite, tab_file],
        "score": [tab_suite, tab_file, tmp_path / "out.csv"],
        "merge": [tab_suite, tab_file, tmp_path / "m"],
        "distill": [tab_suite, tab_file, tmp_path / "d"],
        "adapt": [tab_suite, tab_file],
    }[command]
    result = invoke(command, *args, "--delimiter", ";;")
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "delimiter=';;'" in flat(result.output)
    assert "Traceback" not in result.output
