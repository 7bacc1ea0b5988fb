"""``scoreplex train`` talks where no bar can be drawn (nohup, CI), and every command's help reads at 80 columns."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from scoreplex.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)


def invoke(*args: str, columns: int = 250):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_shows_every_option_name_whole(command):
    result = invoke(command, "--help", columns=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    words = set(re.findall(r"--?[\w-]+", result.output))
    params = typer.main.get_command(app).commands[command].params
    for name in (n for p in params for n in (*p.opts, *p.secondary_opts) if n.startswith("-")):
        assert name in words, (command, name)


def test_train_help_documents_progress_and_the_patience_default():
    out = flat(invoke("train", "--help", columns=80).output)
    assert "--progress / --no-progress" in out
    patience = out[out.index("--patience") : out.index("--max-length")]
    assert "[default: (the method's)]" in patience and "scoreplex methods" in patience


@pytest.fixture(scope="module")
def one_task(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("progress") / "one.csv"
    lines = ["id,task,text,score"] + [f"r{i},q1,answer number {i} says {'yes' * (i % 3)},{i % 3}" for i in range(30)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


def train_args(data: Path, out: Path, backbone: Path) -> list:
    return ["train", data, "--out", out, "--backbone", backbone, "--method", "head", "--epochs", 2, "--patience", 0]


def test_train_without_a_terminal_logs_each_task_and_epoch_with_time_and_qwk(one_task, tmp_path, tiny_backbone_path):
    result = invoke(*train_args(one_task, tmp_path / "s", tiny_backbone_path))  # CliRunner's stderr: not a TTY
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"^task q1 \(1/1\): \d+ training, \d+ validation responses$", out, re.M), out
    for epoch in (1, 2):
        assert re.search(
            rf"^head q1: epoch {epoch}/2, loss [\d.]+, validation QWK -?[\d.]+ .*\(elapsed \d+ s\)$", out, re.M
        )
    assert re.search(r"^q1: validation QWK -?[\d.]+ \(2 epochs, \d+ s, [\d,]+ bytes\)$", out, re.M), out


def test_train_no_progress_prints_only_the_task_summaries(one_task, tmp_path, tiny_backbone_path):
    result = invoke(*train_args(one_task, tmp_path / "s", tiny_backbone_path), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "epoch 1/2" not in result.output and "task q1 (1/1)" not in result.output
    assert "q1: validation QWK" in result.output and "suite written to" in result.output


def test_train_reports_the_task_time_with_tokenising(one_task, tmp_path, tiny_backbone_path, monkeypatch):
    import scoreplex.training.suite as pipeline

    real = pipeline.encode_texts

    def slow_encode(*args, **kwargs):
        time.sleep(1.1)  # tokenising a large task: outside the epochs, inside the task's time
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_texts", slow_encode)
    result = invoke(*train_args(one_task, tmp_path / "s", tiny_backbone_path), "--no-progress")
    assert result.exit_code == 0, result.output
    seconds = int(re.search(r"q1: validation QWK \S+ \(2 epochs, (\d+) s,", result.output).group(1))
    assert seconds >= 2  # train and validation texts each took 1.1 s; the two head epochs take a fraction of that
