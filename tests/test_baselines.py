"""Tests of the simple baselines (scoreplex.baselines): the length-only model, its storage, the evaluation against
the baselines, and the CLI (`evaluate --baselines`, `baseline`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from scoreplex.baselines import (
    BASELINES,
    LengthConfig,
    LengthModel,
    add_baseline_margins,
    evaluate_baselines,
    length_features,
)
from scoreplex.cli import app
from scoreplex.data.dataset import TaskData
from scoreplex.data.demo import demo_specs
from scoreplex.errors import ConfigError, DataError, SuiteError, UnknownNameError
from scoreplex.lexical import ABSENT_LOG_PROB
from scoreplex.metrics import quadratic_weighted_kappa
from scoreplex.tasks import Dimension, TaskSpec

WORDS = ["cell", "light", "energy", "plant", "sugar", "water", "carbon", "leaf", "root", "oxygen"]
DIMS = list(dict.fromkeys(d.name for s in demo_specs() for d in s.dimensions))
TASK_IDS = [s.id for s in demo_specs()]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def flat(text: str) -> str:
    return " ".join(text.split())


def length_task(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts of 1..40 random words whose score 0..3 is set by the word count alone (cut points 6, 12, 24)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 41, n)
    texts = [" ".join(rng.choice(WORDS, c)) for c in counts]
    return texts, np.digitize(counts, [6, 12, 24]).astype(np.int64)


def test_length_features_are_log_word_and_character_counts():
    x = length_features(["two words", "  one  ", ""])
    assert x.shape == (3, 2)
    np.testing.assert_allclose(x, np.log1p([[2, 9], [1, 3], [0, 0]]))


def test_length_model_learns_a_length_determined_score():
    spec = TaskSpec.ordinal("len", 3)
    texts, y = length_task(300, seed=0)
    test_texts, test_y = length_task(200, seed=1)
    model = LengthModel.fit(spec, texts, y)
    pred = model.predict(test_texts)[:, 0]
    assert quadratic_weighted_kappa(test_y, pred, labels=range(4)) > 0.9
    assert (pred == test_y).mean() > 0.8
    # the same texts with the score set by chance: nothing to learn, so the check above could fail
    shuffled = LengthModel.fit(spec, texts, np.random.default_rng(2).permutation(y))
    assert quadratic_weighted_kappa(test_y, shuffled.predict(test_texts)[:, 0], labels=range(4)) < 0.5


def two_dimension_model() -> tuple[TaskSpec, LengthModel, list[str]]:
    """A two-dimension task, one row unscored on the second, class 3 of the first never seen in training."""
    spec = TaskSpec("two", [Dimension("content", num_classes=4), Dimension("style", kind="binary", num_classes=2)])
    texts, y = length_task(120, seed=3)
    labels = np.stack([np.minimum(y, 2), (y >= 2).astype(np.int64)], axis=1)
    labels[0, 1] = -1
    return spec, LengthModel.fit(spec, texts, labels), texts


def test_length_model_tensors_round_trip_through_safetensors():
    from safetensors.torch import load, save

    spec, model, texts = two_dimension_model()
    tensors, config = model.to_tensors()
    assert all(k.startswith("length.") and v.dtype == torch.float32 for k, v in tensors.items())
    loaded = LengthModel.from_tensors(load(save(tensors)), json.loads(json.dumps(config)), spec=spec)
    for a, b in zip(model.log_probs(texts), loaded.log_probs(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.classes[0].tolist() == [0, 1, 2]
    lp = loaded.log_probs(texts)[0]
    assert lp.shape == (len(texts), 4) and (lp[:, 3] == ABSENT_LOG_PROB).all()
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-9)


def _missing_mean(t, c):
    del t["length.mean"]


def _float64(t, c):
    t["length.scale"] = t["length.scale"].double()


def _nan(t, c):
    t["length.dim.content.coef"][0, 0] = float("nan")


def _extra(t, c):
    t["length.dim.other.coef"] = torch.zeros(2, 2)


def _zero_scale(t, c):
    t["length.scale"][0] = 0.0


def _format(t, c):
    c["format"] = "scoreplex.length/99"


def _classes(t, c):
    c["dimensions"][0]["classes"] = [0, 1, 7]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_missing_mean, "'length.mean' is missing"),
        (_float64, "dtype torch.float64"),
        (_nan, "non-finite"),
        (_extra, "unexpected length tensors"),
        (_zero_scale, "values <= 0"),
        (_format, "this version reads"),
        (_classes, "classes=[0, 1, 7]"),
    ],
)
def test_from_tensors_refuses_a_corrupt_model(corrupt, message):
    _, model, _ = two_dimension_model()
    tensors, config = model.to_tensors()
    config = json.loads(json.dumps(config))
    corrupt(tensors, config)
    with pytest.raises(SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LengthModel.from_tensors(tensors, config)


def test_from_tensors_refuses_another_tasks_rubric():
    _, model, _ = two_dimension_model()
    with pytest.raises(SuiteError, match="differ from task 'x'"):
        LengthModel.from_tensors(*model.to_tensors(), spec=TaskSpec.ordinal("x", 3))


@pytest.mark.parametrize("changes", [{"C": 0.0}, {"C": float("inf")}, {"max_iter": 0}, {"C": True}])
def test_length_config_rejects_bad_values(changes):
    with pytest.raises(ConfigError):
        LengthConfig(**changes)


def test_fit_rejects_labels_outside_the_rubric():
    with pytest.raises(DataError, match="outside -1..3"):
        LengthModel.fit(TaskSpec.ordinal("t", 3), ["a b", "c"], np.array([0, 4]))


@pytest.fixture(scope="module")
def demo_test(demo_files, demo_column_map) -> dict[str, TaskData]:
    from scoreplex.data.load import read_dataset

    return read_dataset(demo_files["test"], columns=demo_column_map, specs={s.id: s for s in demo_specs()})


def test_evaluate_baselines_reports_every_baseline_per_task(demo_datasets, demo_test):
    report = evaluate_baselines(demo_datasets, demo_test)
    assert list(report["baselines"]) == list(BASELINES) == ["lexical", "length"]
    assert list(report["tasks"]) == TASK_IDS
    for tid, t in report["tasks"].items():
        assert t["n"] == len(demo_test[tid]) and t["n_train"] == len(demo_datasets[tid])
        qwks = {n: t[n]["qwk"] for n in BASELINES}
        assert all(q is not None and -1 <= q <= 1 for q in qwks.values())
        assert t["best_qwk"] == max(qwks.values()) and qwks[t["best"]] == t["best_qwk"]
        assert "accuracy" in t["lexical"] and "dimensions" in t["length"]
    for name in BASELINES:
        assert report["mean_qwk"][name] == pytest.approx(np.mean([t[name]["qwk"] for t in report["tasks"].values()]))


def test_a_baseline_that_cannot_be_fitted_is_skipped_not_fatal():
    spec = TaskSpec.ordinal("t", 1)
    train = {"t": TaskData(spec, ["1", "2", "3"], ["a", "b", "c"], np.array([0, 1, 1]))}
    report = evaluate_baselines(train, train)
    task = report["tasks"]["t"]
    assert task["lexical"]["qwk"] is None and "min_df" in task["lexical"]["skipped"]
    assert task["length"]["qwk"] is not None and task["best"] == "length"
    assert report["mean_qwk"]["lexical"] is None


def test_evaluate_baselines_names_a_task_missing_from_training(demo_datasets, demo_test):
    train = {k: v for k, v in demo_datasets.items() if k != TASK_IDS[0]}
    with pytest.raises(DataError, match=f"task '{TASK_IDS[0]}'.*training data for the baselines does not"):
        evaluate_baselines(train, demo_test)


def test_unknown_baseline_lists_the_valid_ones(demo_datasets):
    with pytest.raises(UnknownNameError, match="lexical, length|length, lexical"):
        evaluate_baselines(demo_datasets, demo_datasets, names=["bert"])


def test_margins_use_the_better_baseline_and_undefined_stays_undefined():
    baselines = {
        "baselines": {"lexical": "", "length": ""},
        "mean_qwk": {"lexical": 0.5, "length": 0.3},
        "tasks": {
            "a": {"lexical": {"qwk": 0.6}, "length": {"qwk": 0.4}, "best": "lexical", "best_qwk": 0.6},
            "b": {"lexical": {"qwk": 0.4}, "length": {"qwk": 0.2}, "best": "lexical", "best_qwk": 0.4},
        },
    }
    report = {"tasks": {"a": {"qwk": 0.7}, "b": {"qwk": None}}}
    add_baseline_margins(report, baselines, train_source="train.csv")
    assert report["tasks"]["a"]["baselines"]["margin"] == pytest.approx(0.1)
    assert report["tasks"]["b"]["baselines"]["margin"] is None
    assert report["baselines"]["tasks_ahead"] == 1 and report["baselines"]["tasks_compared"] == 1
    assert report["baselines"]["mean_margin"] == pytest.approx(0.1) and report["baselines"]["train"] == "train.csv"


# --------------------------------------------------------------------------------------------------------- the CLI


def label_args(second: bool = True) -> list[str]:
    args = []
    for d in DIMS:
        args += ["--label", f"{d}={d}"] + (["--second", f"{d}={d}_rater2"] if second else [])
    return args


@pytest.fixture(scope="module")
def head_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    from tests.lora_suites import train_tiny_suite

    from scoreplex.methods import MethodSettings

    root = tmp_path_factory.mktemp("baselines") / "suite"
    train_tiny_suite(demo_datasets, root, tiny_bb, tiny_backbone_path, "head", MethodSettings(), max_length=32)
    return root


def test_evaluate_with_baselines_adds_their_qwk_and_the_margin(head_suite, demo_files, tmp_path: Path):
    report = tmp_path / "r.json"
    result = invoke(
        "evaluate", head_suite, demo_files["test"], "--baselines", demo_files["train"], "--report", report,
        *label_args(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "best baseline" in out and "margin" in out and "suite margin over the better baseline" in out
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["baselines"]["train"] == str(demo_files["train"])
    for tid in TASK_IDS:
        b = data["tasks"][tid]["baselines"]
        assert set(b) == {"lexical", "length", "best", "best_qwk", "margin"}
        assert b["margin"] == pytest.approx(data["tasks"][tid]["qwk"] - b["best_qwk"])
        assert f"{b['best']} {b['best_qwk']:.3f}" in out


def test_evaluate_without_baselines_has_no_baseline_columns(head_suite, demo_files):
    result = invoke("evaluate", head_suite, demo_files["test"], *label_args())
    assert result.exit_code == 0, result.output
    assert "best baseline" not in result.output


def test_baseline_command_fits_and_evaluates_without_a_suite(demo_files, tmp_path: Path):
    out = tmp_path / "b.json"
    args = ("baseline", demo_files["train"], demo_files["test"], "--tasks", demo_files["tasks"], "--out", out)
    result = invoke(*args, *label_args(second=False))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data["tasks"]) == TASK_IDS
    text = flat(result.output)
    assert "lexical QWK" in text and "length QWK" in text
    assert f"{data['tasks'][TASK_IDS[0]]['lexical']['qwk']:.3f}" in text


def test_cli_bad_baseline_inputs_exit_2(head_suite, demo_files, tmp_path: Path):
    import csv

    rows = list(csv.DictReader(open(demo_files["train"], encoding="utf-8", newline="")))
    one_task = tmp_path / "one.csv"
    with open(one_task, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["task"] == TASK_IDS[0])
    missing = invoke("evaluate", head_suite, demo_files["test"], "--baselines", one_task, *label_args())
    assert missing.exit_code == 2, missing.output
    assert "training data for the baselines does not" in flat(missing.output)
    assert "Traceback" not in missing.output

    absent = invoke("evaluate", head_suite, demo_files["test"], "--baselines", tmp_path / "nope.csv", *label_args())
    assert absent.exit_code == 2 and "nope.csv" in flat(absent.output)

    folder = invoke("baseline", demo_files["train"], demo_files["test"], "--tasks", demo_files["tasks"], "--out",
                    tmp_path, *label_args(second=False))  # fmt: skip
    assert folder.exit_code == 2 and "is a folder" in flat(folder.output)
