"""Tests of scoreplex.training: the one loop learns, stops early, restores its best state and resumes exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from scoreplex.errors import ConfigError
from scoreplex.heads import ScoringHead, rubric_loss
from scoreplex.methods import TaskModel
from scoreplex.training.loop import TrainConfig, _param_groups, fit

CLASSES = [3]


@pytest.fixture(scope="module")
def toy():
    """A learnable problem: the class is which of the first 3 of 8 features is largest (the head's LayerNorm keeps
    that order)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 8, generator=g)
    y = x[:, :3].argmax(1)
    return x[:200], y[:200, None], x[200:], y[200:, None]


def make_model(seed: int = 0, dropout: float = 0.1) -> TaskModel:
    torch.manual_seed(seed)
    return TaskModel(None, ScoringHead(8, CLASSES, hidden=16, dropout=dropout), "mean")


def batches_of(x, y, batch_size=32):
    def make(rng: np.random.Generator):
        order = torch.as_tensor(rng.permutation(len(x)))
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            yield {"features": x[idx], "labels": y[idx]}

    return make, (len(x) + batch_size - 1) // batch_size


def objective(model, batch):
    return rubric_loss(model(features=batch["features"]), batch["labels"], CLASSES)


def accuracy(x, y):
    def validate(model) -> float:
        return float((model(features=x).argmax(-1) == y[:, 0]).float().mean())

    return validate


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


CONFIG = TrainConfig(epochs=6, lr=1e-2, batch_size=32, patience=0, seed=3)


def test_loss_decreases_and_the_model_learns(toy):
    x, y, xv, yv = toy
    model = make_model()
    make, steps = batches_of(x, y)
    start = float(accuracy(xv, yv)(model.eval()))
    result = fit(model, make, steps, objective, accuracy(xv, yv), replace(CONFIG, epochs=10), progress=False)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == result.epochs_run == 10
    assert losses[-1] < 0.6 * losses[0]
    assert start < 0.6 and result.best_score >= 0.75  # chance is 1/3
    assert not model.training


def test_progress_bar_does_not_change_the_result(toy):
    x, y, xv, yv = toy
    make, steps = batches_of(x, y)
    quiet, loud = make_model(), make_model()
    config = replace(CONFIG, epochs=2)
    fit(quiet, make, steps, objective, accuracy(xv, yv), config, progress=False)
    fit(loud, make, steps, objective, accuracy(xv, yv), config, progress=True)
    assert_same_params(params(quiet), params(loud))


class Scripted:
    """A validate callback returning fixed scores and snapshotting the parameters it was shown."""

    def __init__(self, scores: list[float], fail_at: int | None = None) -> None:
        self.scores, self.fail_at, self.snapshots = scores, fail_at, []

    def __call__(self, model) -> float:
        if self.fail_at is not None and len(self.snapshots) == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.snapshots.append(params(model))
        return self.scores[len(self.snapshots) - 1]


def test_early_stopping_after_patience_and_best_state_restored(toy):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    model = make_model()
    validate = Scripted([0.1, 0.5, 0.4, 0.3, 0.9, 0.9, 0.9, 0.9])
    result = fit(model, make, steps, objective, validate, replace(CONFIG, epochs=8, patience=2), progress=False)
    assert len(validate.snapshots) == result.epochs_run == 4  # best at 2, then 2 epochs without improvement
    assert (result.best_epoch, result.best_score) == (2, 0.5)
    assert [h["val"] for h in result.history] == [0.1, 0.5, 0.4, 0.3]
    assert_same_params(params(model), validate.snapshots[1])
    with pytest.raises(AssertionError):  # the state did move after the best epoch
        assert_same_params(params(model), validate.snapshots[3])


def test_patience_zero_runs_every_epoch_and_still_restores_the_best(toy):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    model = make_model()
    validate = Scripted([0.2, 0.1, 0.7, 0.1, 0.1, 0.1])
    result = fit(model, make, steps, objective, validate, CONFIG, progress=False)
    assert result.epochs_run == 6 and result.best_epoch == 3
    assert_same_params(params(model), validate.snapshots[2])


def test_ties_do_not_count_as_improvement(toy):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    model = make_model()
    validate = Scripted([0.5, 0.5, 0.5, 0.5])
    result = fit(model, make, steps, objective, validate, replace(CONFIG, epochs=4, patience=2), progress=False)
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert_same_params(params(model), validate.snapshots[0])


def test_a_run_is_reproducible_from_its_seed(toy):
    x, y, xv, yv = toy
    make, steps = batches_of(x, y)
    a, b = make_model(), make_model()
    fit(a, make, steps, objective, accuracy(xv, yv), CONFIG, progress=False)
    fit(b, make, steps, objective, accuracy(xv, yv), CONFIG, progress=False)
    assert_same_params(params(a), params(b))


@pytest.mark.parametrize("interrupt_at", [1, 3])
def test_resumed_run_equals_an_uninterrupted_run(toy, tmp_path: Path, interrupt_at: int):
    x, y, xv, yv = toy
    make, steps = batches_of(x, y)
    val = accuracy(xv, yv)

    reference = make_model()
    ref_result = fit(reference, make, steps, objective, val, CONFIG, progress=False)

    ckpt = tmp_path / "ckpt"
    interrupted = make_model()

    def failing(model):
        failing.calls += 1
        if failing.calls == interrupt_at + 1:  # epochs 0..interrupt_at-1 finished and checkpointed
            raise KeyboardInterrupt("simulated interruption")
        return val(model)

    failing.calls = 0
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, make, steps, objective, failing, CONFIG, checkpoint_dir=ckpt, progress=False)
    assert {p.name for p in ckpt.iterdir()} == {
        "trainable.safetensors",
        "best.safetensors",
        "optimizer.safetensors",
        "state.json",
    }

    # a fresh process; another initialisation, so that only the checkpoint can make it match the reference
    resumed = make_model(seed=9)

    def counting(model):
        counting.calls += 1
        return val(model)

    counting.calls = 0
    result = fit(resumed, make, steps, objective, counting, CONFIG, checkpoint_dir=ckpt, progress=False)
    assert counting.calls == CONFIG.epochs - interrupt_at
    assert_same_params(params(resumed), params(reference))
    assert result.epochs_run == ref_result.epochs_run
    assert (result.best_epoch, result.best_score) == (ref_result.best_epoch, ref_result.best_score)
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in ref_result.history])


def test_a_finished_checkpoint_is_not_trained_again(toy, tmp_path: Path):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    first = make_model()
    fit(
        first,
        make,
        steps,
        objective,
        Scripted([0.1, 0.6, 0.2, 0.2, 0.2]),
        replace(CONFIG, epochs=5, patience=2),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    again = make_model(seed=9)  # different init: everything must come from the checkpoint
    validate = Scripted([1.0] * 5)
    result = fit(
        again,
        make,
        steps,
        objective,
        validate,
        replace(CONFIG, epochs=5, patience=2),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert validate.snapshots == []  # stopped early before: nothing left to run
    assert result.best_epoch == 2 and result.epochs_run == 4
    assert_same_params(params(again), params(first))


def test_stop_after_replays_the_first_epochs_of_the_longer_schedule(toy):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    config = replace(CONFIG, epochs=4, patience=0)
    full = fit(make_model(), make, steps, objective, None, config, progress=False)
    stopped_model = make_model()
    stopped = fit(stopped_model, make, steps, objective, None, config, progress=False, stop_after=2)
    short = fit(make_model(), make, steps, objective, None, replace(config, epochs=2), progress=False)
    assert stopped.epochs_run == 2
    # the same steps at the same learning rates as the 4-epoch run's first two epochs ...
    assert [h["loss"] for h in stopped.history] == pytest.approx([h["loss"] for h in full.history[:2]])
    # ... not those of a 2-epoch schedule, which decays faster
    assert short.history[1]["loss"] != pytest.approx(stopped.history[1]["loss"])
    with pytest.raises(ConfigError, match="stop_after=5"):
        fit(make_model(), make, steps, objective, None, config, progress=False, stop_after=5)


def test_a_checkpoint_past_stop_after_is_refused(toy, tmp_path: Path):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    config = replace(CONFIG, epochs=4, patience=0)
    fit(make_model(), make, steps, objective, None, config, checkpoint_dir=tmp_path, progress=False, stop_after=3)
    with pytest.raises(ConfigError, match="after epoch 3, past stop_after=2"):
        fit(make_model(), make, steps, objective, None, config, checkpoint_dir=tmp_path, progress=False, stop_after=2)
    resumed = fit(make_model(), make, steps, objective, None, config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.epochs_run == 4  # the same run resumed without stop_after trains its last epoch


def test_a_checkpoint_of_another_run_is_refused_with_the_differences(toy, tmp_path: Path):
    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    config = replace(CONFIG, epochs=2, patience=0)
    fit(make_model(), make, steps, objective, None, config, checkpoint_dir=tmp_path, progress=False, run_key={"r": 8})
    with pytest.raises(ConfigError) as err:
        fit(
            make_model(),
            make,
            steps,
            objective,
            None,
            replace(config, lr=config.lr / 2),
            checkpoint_dir=tmp_path,
            progress=False,
            run_key={"r": 16},
        )
    message = str(err.value)
    assert str(tmp_path) in message and f"config.lr: {config.lr!r} -> {config.lr / 2!r}" in message
    assert "run_key.r: 8 -> 16" in message and "delete that folder" in message
    # the same settings resume (here: nothing left to run)
    again = fit(
        make_model(), make, steps, objective, None, config, checkpoint_dir=tmp_path, progress=False, run_key={"r": 8}
    )
    assert again.epochs_run == 2


def test_head_lr_gives_the_head_its_own_rate():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(6, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, features):
            return self.head(torch.tanh(self.body(features)))

    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16, 1))
    before = params(model)
    config = TrainConfig(
        epochs=1, lr=1e-3, head_lr=2e-2, warmup_ratio=0.0, weight_decay=0.0, grad_clip=0.0, batch_size=16, patience=0
    )
    fit(
        model,
        lambda rng: [{"features": x, "labels": y}],
        1,
        lambda m, b: rubric_loss(m(b["features"]), b["labels"], [2]),
        lambda m: 1.0,
        config,
        progress=False,
    )
    after = params(model)
    # Adam's first step moves every parameter (with a non-negligible gradient) by exactly its learning rate
    for name, lr in (("body.weight", 1e-3), ("body.bias", 1e-3), ("head.weight", 2e-2), ("head.bias", 2e-2)):
        step = (after[name] - before[name]).abs()
        torch.testing.assert_close(step, torch.full_like(step, lr), rtol=1e-3, atol=0, msg=name)


def test_param_groups_exempt_biases_and_norms_from_decay():
    model = TaskModel(None, ScoringHead(8, CLASSES, hidden=4), "mean")
    groups = _param_groups(model, TrainConfig(lr=1e-3, head_lr=5e-3, weight_decay=0.1))
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["weight_decay"] == (0.0 if p.ndim < 2 else 0.1), name
        assert g["lr_scale"] == pytest.approx(5.0), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("batch_size", 0),
        ("weight_decay", -0.1),
        ("warmup_ratio", 1.0),
        ("warmup_ratio", -0.1),
        ("grad_clip", -1.0),
        ("patience", -1),
        ("head_lr", 0.0),
        ("head_warmup_epochs", -1),
        ("head_warmup_lr", 0.0),
    ],
)
def test_train_config_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ConfigError) as exc:
        TrainConfig(**{field: value})
    assert isinstance(exc.value, ValueError)
    assert f"TrainConfig.{field}={value!r}" in str(exc.value)


def test_train_config_round_trips_through_a_dict():
    config = TrainConfig(epochs=3, head_lr=1e-3, class_weighting=True)
    assert TrainConfig(**config.to_dict()) == config


# -- progress where no bar can be drawn (nohup, CI): one line per epoch on stderr ------------------------------------
def test_fit_logs_one_line_per_epoch_when_stderr_is_not_a_terminal(toy, capsys):
    x, y, xv, yv = toy
    make, steps = batches_of(x, y)
    fit(make_model(), make, steps, objective, Scripted([0.2, 0.5, 0.4]), replace(CONFIG, epochs=3), description="t1")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["t1: epoch 1/3", "t1: epoch 2/3", "t1: epoch 3/3"]
    assert "validation QWK 0.5000 (best)" in lines[1]
    assert "validation QWK 0.4000 (best 0.5000 at epoch 2)" in lines[2]
    assert all(" s (elapsed " in line and "loss " in line for line in lines)


def test_fit_logs_nothing_with_progress_off(toy, capsys):
    x, y, xv, yv = toy
    make, steps = batches_of(x, y)
    fit(make_model(), make, steps, objective, accuracy(xv, yv), replace(CONFIG, epochs=2), progress=False)
    assert capsys.readouterr().err == ""


def test_fit_logs_where_a_resumed_run_continues_and_why_it_stops(toy, tmp_path: Path, capsys):
    from scoreplex.training.loop import checkpoint_epochs

    x, y, _, _ = toy
    make, steps = batches_of(x, y)
    config = replace(CONFIG, epochs=5, patience=2)
    assert checkpoint_epochs(tmp_path) == 0
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), make, steps, objective, Scripted([0.5, 0.4], fail_at=2), config, checkpoint_dir=tmp_path)
    assert checkpoint_epochs(tmp_path) == 2
    capsys.readouterr()
    fit(make_model(), make, steps, objective, Scripted([0.3]), config, checkpoint_dir=tmp_path, description="t")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "t: resumed from the checkpoint after epoch 2; continuing with epoch 3"
    assert lines[1].startswith("t: epoch 3/5,") and lines[1].endswith("; stopping: no better score for 2 epochs")
    assert len(lines) == 2


def test_train_suite_reports_wall_time_progress_and_where_an_interrupted_run_stands(
    tmp_path: Path, demo_datasets, tiny_bb, small_options, monkeypatch, capsys
):
    import scoreplex.training.suite as pipeline
    from scoreplex.data.demo import demo_specs
    from scoreplex.suite import Suite
    from scoreplex.training.suite import checkpoint_dir, train_progress, train_suite

    first, second = (s.id for s in demo_specs()[:2])
    data = {t: demo_datasets[t] for t in (first, second)}
    root = tmp_path / "s"
    real_fit = pipeline.fit

    def fit_interrupted_in_second(model, make, steps, objective, validate, config, **kw):
        calls = []

        def validate_then_stop(m):
            calls.append(m)
            if second in kw["description"] and len(calls) == 2:  # epoch 1 of the second task is checkpointed
                raise KeyboardInterrupt
            return validate(m)

        return real_fit(model, make, steps, objective, validate_then_stop, config, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_interrupted_in_second)
    started, done = [], []
    options = replace(small_options("head"), progress=True)
    with pytest.raises(KeyboardInterrupt):
        train_suite(data, root, options, backbone=tiny_bb, on_task_start=started.append, on_task_done=done.append)
    assert started == [first, second] and [r.task_id for r in done] == [first]

    # the time reported per task is the task's wall time (tokenising and the feature pass included)
    result = done[0]
    recorded = Suite.open(root).task_info(first)["summary"]["train"]
    assert result.seconds >= result.fit.seconds
    assert result.seconds == pytest.approx(recorded["seconds"], abs=0.01)

    err = capsys.readouterr().err
    assert f"task {first} (1/2): " in err and f"task {second} (2/2): " in err
    assert f"head {first}: epoch 2/2, " in err and f"head {second}: epoch 1/2, " in err

    state = train_progress(root, [first, second], current=second)
    assert (state.finished, state.remaining, state.current) == ([first], [second], second)
    assert state.checkpoint_epochs == 1 and state.checkpoint == checkpoint_dir(root, second)
    assert train_progress(tmp_path / "none", [first], current=first).finished == []

    monkeypatch.setattr(pipeline, "fit", real_fit)
    train_suite(data, root, options, backbone=tiny_bb)
    err = capsys.readouterr().err
    assert f"1 of 2 tasks already in {root}: kept" in err
    assert f"task {second} (1/1): " in err and "; resuming after epoch 1" in err
    assert f"head {second}: resumed from the checkpoint after epoch 1; continuing with epoch 2" in err
