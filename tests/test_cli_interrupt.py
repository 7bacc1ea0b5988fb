"""Ctrl-C during ``scoreplex train``: exit 130 with what was kept, where it stopped and how to resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from scoreplex.cli import app
from scoreplex.suite import Suite


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("interrupt") / "two.csv"
    rows = [f"r{t}{i},{t},answer {i} of {t} says {'yes ' * (i % 3)},{i % 3}" for t in ("q1", "q2") for i in range(30)]
    data.write_text("\n".join(["id,task,text,score", *rows]) + "\n", encoding="utf-8")
    return data


def train_args(data: Path, out: Path, backbone: Path) -> list:
    return ["train", data, "--out", out, "--backbone", backbone, "--method", "head", "--epochs", 2, "--patience", 0]


def test_ctrl_c_in_the_second_task_says_what_is_kept_and_how_to_resume(
    two_tasks, tmp_path, tiny_backbone_path, monkeypatch
):
    import scoreplex.training.suite as pipeline

    real_fit = pipeline.fit

    def fit_interrupted_in_q2(model, make, steps, objective, validate, config, **kw):
        calls = []

        def validate_then_stop(m):
            calls.append(m)
            if "q2" in kw["description"] and len(calls) == 2:  # q2's epoch 1 is checkpointed, Ctrl-C in epoch 2
                raise KeyboardInterrupt
            return validate(m)

        return real_fit(model, make, steps, objective, validate_then_stop, config, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_interrupted_in_q2)
    out = tmp_path / "s"
    result = invoke(*train_args(two_tasks, out, tiny_backbone_path), "--no-progress")
    assert result.exit_code == 130, result.output
    text = flat(result.output)
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert f"interrupted: 1 of 2 tasks finished and saved in {out} (q1);" in text
    assert f"task q2 was interrupted; its checkpoint {out / '.checkpoints' / 'q2'} holds 1 finished epoch." in text
    assert "to resume, run the same command again: finished tasks are kept; q2 continues after epoch 1." in text
    assert Suite.open(out).task_ids == ["q1"]

    monkeypatch.setattr(pipeline, "fit", real_fit)
    again = invoke(*train_args(two_tasks, out, tiny_backbone_path))
    assert again.exit_code == 0, again.output
    assert "1 of 2 tasks already in" in again.output and "resuming after epoch 1" in again.output
    assert "q1: validation QWK" not in again.output and "q2: validation QWK" in again.output
    assert Suite.open(out).task_ids == ["q1", "q2"]


def test_ctrl_c_before_any_task_started(two_tasks, tmp_path, tiny_backbone_path, monkeypatch):
    import scoreplex.training.suite as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. while the backbone loads

    monkeypatch.setattr(pipeline, "train_suite", interrupted)
    result = invoke(*train_args(two_tasks, tmp_path / "s", tiny_backbone_path))
    assert result.exit_code == 130, result.output
    text = flat(result.output)
    assert f"interrupted: 0 of 2 tasks finished and saved in {tmp_path / 's'}; no task was in training." in text
    assert "to resume, run the same command again: finished tasks are kept." in text


def test_ctrl_c_in_the_first_epoch_says_the_task_starts_over(two_tasks, tmp_path, tiny_backbone_path, monkeypatch):
    import scoreplex.training.suite as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit", interrupted)
    result = invoke(*train_args(two_tasks, tmp_path / "s", tiny_backbone_path), "--no-progress")
    assert result.exit_code == 130, result.output
    text = flat(result.output)
    assert "task q1 was interrupted before its first epoch finished (no checkpoint yet)" in text
    assert "finished tasks are kept; q1 starts over." in text
