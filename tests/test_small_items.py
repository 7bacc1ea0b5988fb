"""Small items (a bank of many questions with a few scored answers each): the validation-split check, k-fold
splits, epochs chosen by cross-validation within the item, the warning naming the items, and resuming."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from scoreplex.data import TaskData, kfold_split, train_val_split, validation_shortfall
from scoreplex.errors import ConfigError, DataError
from scoreplex.metrics import validation_qwk
from scoreplex.predictions import from_probabilities
from scoreplex.suite import Suite
from scoreplex.tasks import TaskSpec
from scoreplex.training.loop import TrainConfig
from scoreplex.training.suite import OOF_FILE, TrainOptions, cross_validate_epochs, train_suite

WORDS = ["none", "some", "full"]


def tiny_item(task_id: str, n: int = 24, seed: int = 0) -> TaskData:
    """``n`` responses of an ordinal 0-2 item whose score is the key word the answer uses."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    rng.shuffle(labels)
    texts = [f"the answer of {task_id} gives {WORDS[y]} reason number {i}" for i, y in enumerate(labels)]
    ids = [f"{task_id}-{i:03d}" for i in range(n)]
    return TaskData(TaskSpec.ordinal(task_id, 2), ids, texts, labels[:, None])


# -- which items are small ---------------------------------------------------------------------------------------


def test_validation_shortfall_names_few_rows_and_single_classes():
    data = tiny_item("q1", 30)
    _, val = train_val_split(data, val_fraction=0.1)
    assert len(val) == 3
    assert validation_shortfall(val, min_rows=20) == "3 validation responses (fewer than 20)"
    assert validation_shortfall(val, min_rows=3) is None
    one_class = data.subset(np.flatnonzero(data.labels[:, 0] == 1))
    assert "one class" in validation_shortfall(one_class, min_rows=0) and "'score'" in validation_shortfall(
        one_class, min_rows=0
    )
    with pytest.raises(ConfigError, match="min_rows"):
        validation_shortfall(val, min_rows=-1)


def test_kfold_split_partitions_the_item_by_id_whatever_the_row_order():
    data = tiny_item("q1", 25, seed=4)
    folds = kfold_split(data, folds=5, seed=1)
    assert len(folds) == 5
    held_out = [i for _, val in folds for i in val.ids]
    assert sorted(held_out) == sorted(data.ids) and len(set(held_out)) == len(data)  # each response once
    for train, val in folds:
        assert set(train.ids).isdisjoint(val.ids) and len(train) + len(val) == len(data)
        assert train.ids == sorted(train.ids) and val.ids == sorted(val.ids)
        # stratified: every class (8 or 9 responses each) is in every held-out fold
        assert set(Counter(val.labels[:, 0].tolist())) == {0, 1, 2}
    moved = data.subset(np.random.default_rng(0).permutation(len(data)))
    assert [v.ids for _, v in kfold_split(moved, folds=5, seed=1)] == [v.ids for _, v in folds]
    assert [v.ids for _, v in kfold_split(data, folds=5, seed=2)] != [v.ids for _, v in folds]
    with pytest.raises(ConfigError, match="folds"):
        kfold_split(data, folds=1)
    with pytest.raises(DataError, match="3 folds"):
        kfold_split(data.subset([0, 1]), folds=3)


def test_train_options_check_the_new_fields():
    with pytest.raises(ConfigError, match="--min-val-rows"):
        TrainOptions(min_val_rows=-1)
    with pytest.raises(ConfigError, match="--cv-folds"):
        TrainOptions(cv_folds=1)
    assert TrainOptions(cv_folds=5).min_val_rows == 20


# -- epochs by cross-validation ----------------------------------------------------------------------------------

CONFIG = TrainConfig(epochs=4, lr=5e-3, batch_size=8, patience=0)


def _cv(tiny_bb, data, folder, **kw):
    return cross_validate_epochs(
        tiny_bb,
        data,
        folds=3,
        method="head",
        pooling="mean",
        max_length=24,
        config=kw.pop("config", CONFIG),
        settings=TrainOptions().settings,
        folder=folder,
        progress=False,
        **kw,
    )


def test_cross_validation_picks_the_epoch_with_the_best_pooled_out_of_fold_qwk(tiny_bb, tmp_path):
    data = tiny_item("q1", 24)
    choice = _cv(tiny_bb, data, tmp_path / "cv")
    assert choice.folds == 3 and len(choice.scores) == CONFIG.epochs
    assert choice.epochs == 1 + int(np.argmax(choice.scores))  # the first of the best
    # the score of the chosen epoch is the QWK of every response's out-of-fold prediction, recomputed here
    pred = from_probabilities(data.spec, data.ids, list(choice.probs))
    assert validation_qwk(data.spec, data.labels, pred.labels) == pytest.approx(choice.scores[choice.epochs - 1])
    assert all(p.shape == (len(data), 3) for p in choice.probs)
    assert np.allclose(choice.probs[0].sum(axis=1), 1.0)  # every response was held out once
    assert sorted(f.name for f in (tmp_path / "cv").iterdir()) == ["fold-1", "fold-2", "fold-3"]
    assert all((tmp_path / "cv" / f"fold-{i}" / OOF_FILE).is_file() for i in (1, 2, 3))


def test_cross_validation_resumes_after_an_interruption_with_the_same_choice(tiny_bb, tmp_path, monkeypatch):
    import scoreplex.training.suite as pipeline

    data = tiny_item("q1", 24, seed=2)
    whole = _cv(tiny_bb, data, tmp_path / "whole")

    real_fit = pipeline.fit

    def fit_interrupted(model, make, steps, objective, validate, config, **kw):
        calls = []

        def validate_then_stop(m):
            calls.append(m)
            if "fold 2/3" in kw["description"] and len(calls) == 3:  # fold 2: epochs 1-2 checkpointed
                raise KeyboardInterrupt
            return validate(m)

        return real_fit(model, make, steps, objective, validate_then_stop, config, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_interrupted)
    with pytest.raises(KeyboardInterrupt):
        _cv(tiny_bb, data, tmp_path / "cut")
    monkeypatch.setattr(pipeline, "fit", real_fit)
    assert pipeline.checkpoint_epochs(tmp_path / "cut" / "fold-2") == 2
    again = _cv(tiny_bb, data, tmp_path / "cut")
    assert again.epochs == whole.epochs
    assert again.scores == pytest.approx(whole.scores)
    assert all(np.allclose(a, b) for a, b in zip(again.probs, whole.probs, strict=True))


def test_finished_folds_are_not_trained_again(tiny_bb, tmp_path, monkeypatch):
    import scoreplex.training.suite as pipeline

    data = tiny_item("q1", 24, seed=3)
    first = _cv(tiny_bb, data, tmp_path / "cv")
    monkeypatch.setattr(pipeline, "train_task", lambda *a, **kw: pytest.fail("a finished fold was retrained"))
    assert _cv(tiny_bb, data, tmp_path / "cv").scores == first.scores
    # ... but a finished fold of a run with other settings is refused, not reused
    with pytest.raises(ConfigError, match="config.lr"):
        _cv(tiny_bb, data, tmp_path / "cv", config=replace(CONFIG, lr=CONFIG.lr / 2))


# -- train_suite ---------------------------------------------------------------------------------------------------


def _bank():
    return {"big": tiny_item("big", 60, seed=1), "q1": tiny_item("q1", 24, seed=2), "q2": tiny_item("q2", 21, seed=3)}


def _options(tiny_backbone_path, **changes):
    base = TrainOptions(
        method="head",
        backbone=str(tiny_backbone_path),
        max_length=24,
        config=CONFIG,
        progress=False,
        min_val_rows=5,
        cv_folds=3,
        lexical=True,
        decoding=True,
    )
    return replace(base, **changes)


def test_train_warns_naming_small_items_and_cross_validates_them(tiny_bb, tiny_backbone_path, tmp_path):
    warnings, done = [], {}
    suite = train_suite(
        _bank(),
        tmp_path / "s",
        _options(tiny_backbone_path),
        backbone=tiny_bb,
        on_warning=warnings.append,
        on_task_done=lambda r: done.setdefault(r.task_id, r),
    )
    (message,) = warnings
    # big: 6 validation responses (>= 5); q1 and q2: 3 each
    assert message.startswith("2 of 3 tasks have too small a validation split") and "min_val_rows=5" in message
    assert "q1: 3 validation responses (fewer than 5)" in message and "q2: 3 validation" in message
    assert "big" not in message and "3-fold cross-validation" in message

    for task_id, n in (("q1", 24), ("q2", 21)):
        summary = suite.task_info(task_id)["summary"]
        record = summary["small_item"]
        assert record["folds"] == 3 and record["validation"] == "out-of-fold"
        assert record["epochs"] == 1 + int(np.argmax(record["out_of_fold_qwk"]))
        assert summary["train"]["epochs_run"] == record["epochs"] == summary["train"]["best_epoch"]
        assert summary["train"]["n_train"] == n  # the refit uses every response
        assert summary["metrics"]["validation"]["n"] == n  # validated out of fold on every response
        assert all(h["val"] is None for h in summary["train"]["history"])
        assert summary["lexical"]["kept"] is False and "small item" in summary["lexical"]["skipped"]
        assert done[task_id].n_val == n
    assert suite.task_info("q1")["summary"]["small_item"]["decoding"].startswith("fitted on the out-of-fold")
    assert suite.task_info("q2")["summary"]["small_item"]["decoding"].startswith("fitted on the out-of-fold")
    assert "small_item" not in suite.task_info("big")["summary"]
    assert not (tmp_path / "s" / ".checkpoints").exists()  # fold and refit checkpoints removed once saved


def test_without_cv_folds_small_items_are_only_named(tiny_bb, tiny_backbone_path, tmp_path):
    warnings = []
    suite = train_suite(
        {"q1": tiny_item("q1", 24)},
        tmp_path / "s",
        _options(tiny_backbone_path, cv_folds=0, lexical=False, decoding=False),
        backbone=tiny_bb,
        on_warning=warnings.append,
    )
    assert len(warnings) == 1 and "q1: 3 validation responses" in warnings[0] and "--cv-folds 5" in warnings[0]
    assert "small_item" not in suite.task_info("q1")["summary"]
    assert suite.task_info("q1")["summary"]["train"]["n_val"] == 3


def test_train_suite_resumes_a_small_item_interrupted_in_its_refit(tiny_bb, tiny_backbone_path, tmp_path, monkeypatch):
    import scoreplex.training.suite as pipeline

    options = _options(tiny_backbone_path, lexical=False, decoding=False)
    data = {"q1": tiny_item("q1", 24, seed=5)}
    whole = train_suite(data, tmp_path / "whole", options, backbone=tiny_bb, on_warning=lambda m: None)

    real_fit = pipeline.fit

    def fit_interrupted(model, make, steps, objective, validate, config, **kw):
        if "refit" in kw["description"]:
            raise KeyboardInterrupt
        return real_fit(model, make, steps, objective, validate, config, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_suite(data, tmp_path / "cut", options, backbone=tiny_bb, on_warning=lambda m: None)
    assert Suite.open(tmp_path / "cut").task_ids == []
    monkeypatch.setattr(pipeline, "fit", real_fit)
    monkeypatch.setattr(pipeline, "_load_oof", _counting(pipeline._load_oof, calls := []))
    again = train_suite(data, tmp_path / "cut", options, backbone=tiny_bb, on_warning=lambda m: None)
    assert len(calls) == 3  # the three finished folds were read back
    a, b = whole.task_info("q1")["summary"], again.task_info("q1")["summary"]
    assert a["small_item"]["epochs"] == b["small_item"]["epochs"]
    assert a["small_item"]["out_of_fold_qwk"] == pytest.approx(b["small_item"]["out_of_fold_qwk"])
    assert a["metrics"] == b["metrics"]


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)

    return wrapped


def test_lora_small_item_with_head_warm_up_refits_without_validation(tiny_bb, tiny_backbone_path, tmp_path):
    config = TrainConfig(epochs=2, lr=1e-3, batch_size=8, patience=0, head_warmup_epochs=1)
    suite = train_suite(
        {"q1": tiny_item("q1", 12)},
        tmp_path / "s",
        _options(tiny_backbone_path, method="lora", config=config, cv_folds=2, lexical=False),
        backbone=tiny_bb,
        on_warning=lambda m: None,
    )
    summary = suite.task_info("q1")["summary"]
    assert summary["small_item"]["folds"] == 2 and len(summary["small_item"]["out_of_fold_qwk"]) == 2
    assert summary["train"]["epochs_run"] == summary["small_item"]["epochs"]
    assert summary["small_item"]["decoding"].startswith("skipped: 12 responses, fewer than 20")
    assert suite.task_info("q1").get("decoding") is None


# -- the command line --------------------------------------------------------------------------------------------


def test_cli_train_warns_and_evaluate_shows_n_undefined_and_pooled(tiny_backbone_path, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    rows = ["id,task,text,score"]
    for task_id, n in (("q1", 24), ("q2", 21)):
        item = tiny_item(task_id, n)
        rows += [f"{i},{task_id},{t},{y}" for i, t, y in zip(item.ids, item.texts, item.labels[:, 0], strict=True)]
    flat = [f"f-{i},q3,the answer gives some reason {i},1" for i in range(6)]  # one class: QWK undefined
    data = tmp_path / "bank.csv"
    data.write_text("\n".join(rows + flat) + "\n", encoding="utf-8")
    out = tmp_path / "s"
    run = CliRunner().invoke(
        app,
        [
            "train",
            str(data),
            "--out",
            str(out),
            "--backbone",
            str(tiny_backbone_path),
            "--method",
            "head",
            "--epochs",
            "2",
            "--max-length",
            "24",
            "--min-val-rows",
            "5",
            "--cv-folds",
            "2",
            "--no-progress",
        ],  # fmt: skip
        env={"COLUMNS": "250"},
    )
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "warning: 3 of 3 tasks have too small a validation split" in text and "q3: 1 validation" in text
    assert "2-fold cross-validation" in text

    report = tmp_path / "r.json"
    ev = CliRunner().invoke(app, ["evaluate", str(out), str(data), "--report", str(report)], env={"COLUMNS": "250"})
    assert ev.exit_code == 0, ev.output
    result = json.loads(report.read_text(encoding="utf-8"))
    assert set(result["pooled"]) >= {"n", "qwk", "pearson_r", "rmse"} and result["pooled"]["n"] == 51
    text = " ".join(ev.output.split())
    # every task's range is read from the whole file (0..2, q3 included): one scale, so QWK pools across tasks
    pooled_qwk = result["pooled"]["qwk"]
    assert isinstance(pooled_qwk, float) and -1 <= pooled_qwk <= 1
    assert f"pooled over 51 responses of 3 tasks: QWK {pooled_qwk:.3f}" in text
    assert f"RMSE {result['pooled']['rmse']:.3f} (scores on 0..1)" in text
    undefined = [t for t, m in result["tasks"].items() if m["qwk"] is None]
    assert result["qwk_undefined_tasks"] == undefined
    assert f"over {3 - len(undefined)} of 3 tasks" in text
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in ev.output.splitlines() if line.startswith("│")]
    assert {c[0]: c[1] for c in cells} == {"q1": "24", "q2": "21", "q3": "6"}  # n per task


def test_evaluate_leaves_an_undefined_human_qwk_out_of_the_human_mean(tiny_full_suite, demo_datasets):
    """A task whose two raters give one and the same class has no human-human QWK: the mean skips it."""
    from scoreplex.data.dataset import TaskData
    from scoreplex.scorer import SuiteScorer, evaluate_suite

    tasks = {}
    for i, (tid, d) in enumerate(list(demo_datasets.items())[:2]):
        labels = d.labels[:12].copy()
        second = labels.copy() if i == 0 else np.zeros_like(labels)
        if i == 1:
            labels = np.zeros_like(labels)  # one class in both scores: human QWK undefined
        tasks[tid] = TaskData(spec=d.spec, ids=d.ids[:12], texts=d.texts[:12], labels=labels, second=second)
    report = evaluate_suite(SuiteScorer(tiny_full_suite), tasks)
    second_task = list(tasks)[1]
    assert report["tasks"][second_task]["human"]["qwk"] is None
    assert report["human_mean_qwk"] == pytest.approx(report["tasks"][list(tasks)[0]]["human"]["qwk"])
