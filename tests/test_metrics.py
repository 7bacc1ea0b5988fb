"""Tests for scoreplex.metrics: cross-checks against scikit-learn / SciPy on seeded random data, plus edge cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from scoreplex.errors import ConfigError, ScoreplexError
from scoreplex.metrics import (
    accuracy_score,
    adjacent_agreement_score,
    evaluate_task,
    exact_match_score,
    f1_scores,
    human_agreement,
    mean_over_tasks,
    multilabel_f1,
    paired_t_test,
    per_label_accuracy,
    pooled_metrics,
    quadratic_weighted_kappa,
    undefined_tasks,
    validation_qwk,
)
from scoreplex.tasks import Dimension, TaskSpec

N_DRAWS = 80


def _draws(seed: int):
    """Yield (rng, K, N, y_true, y_pred) for many class counts and sizes, some predictions correlated with truth."""
    rng = np.random.default_rng(seed)
    for _ in range(N_DRAWS):
        k = int(rng.integers(2, 11))
        n = int(rng.integers(1, 80))
        y_true = rng.integers(0, k, size=n)
        noise = rng.integers(-1, 2, size=n)
        y_pred = np.where(rng.random(n) < 0.5, np.clip(y_true + noise, 0, k - 1), rng.integers(0, k, size=n))
        yield rng, k, n, y_true, y_pred


# ---------------------------------------------------------------------------------------------------------------------
# QWK
# ---------------------------------------------------------------------------------------------------------------------


def test_qwk_matches_sklearn_on_random_draws():
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, k, _, y_true, y_pred in _draws(0):
            for labels in (list(range(k)), None):
                ref = skm.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels)
                ours = quadratic_weighted_kappa(y_true, y_pred, labels=labels)
                if np.isnan(ref):  # sklearn's undefined case: replace_undefined_by applies instead
                    assert ours == 1.0 and np.array_equal(y_true, y_pred)  # undefined only when both agree
                    assert math.isnan(
                        quadratic_weighted_kappa(y_true, y_pred, labels=labels, replace_undefined_by=math.nan)
                    )
                    continue
                assert ours == pytest.approx(ref, abs=1e-12)
                checked += 1
    assert checked > N_DRAWS  # most draws are defined, so the cross-check really ran


def test_qwk_known_value():
    # O = [[1, 1], [0, 1]], marginals (2, 1) and (1, 2), N = 3: sum(W*O) = 1, sum(W*E) = (2*2 + 1*1) / 3 = 5/3.
    assert quadratic_weighted_kappa([0, 0, 1], [0, 1, 1]) == pytest.approx(1 - 1 / (5 / 3))


def test_qwk_perfect_agreement_is_one():
    rng = np.random.default_rng(1)
    for k in range(2, 8):
        y = rng.integers(0, k, size=30)
        assert quadratic_weighted_kappa(y, y, labels=range(k)) == 1.0


def test_qwk_is_symmetric_and_reverse_order_is_negative():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 5, size=40), rng.integers(0, 5, size=40)
    assert quadratic_weighted_kappa(a, b, labels=range(5)) == pytest.approx(
        quadratic_weighted_kappa(b, a, labels=range(5))
    )
    y = np.arange(5)
    assert quadratic_weighted_kappa(y, 4 - y, labels=range(5)) == pytest.approx(-1.0)


def test_qwk_zero_expected_disagreement_policy():
    assert quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], labels=range(4)) == 1.0
    assert quadratic_weighted_kappa([0, 0], [0, 0]) == 1.0  # one observed label only
    assert quadratic_weighted_kappa([1, 1], [3, 3], labels=range(4)) == 0.0  # constant but different: chance level
    assert not math.isnan(quadratic_weighted_kappa([1], [1], labels=range(3)))
    assert math.isnan(quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], labels=range(4), replace_undefined_by=math.nan))
    assert quadratic_weighted_kappa([2, 2], [2, 2], labels=range(4), replace_undefined_by=-9.0) == -9.0
    # defined (constant but different raters) is never replaced
    assert quadratic_weighted_kappa([1, 1], [3, 3], labels=range(4), replace_undefined_by=math.nan) == 0.0


def test_qwk_labels_set_the_weight_scale():
    # Observed values {1, 3}: with the rubric 0..3 a miss spans 2 steps; with observed labels only it spans 1.
    y_true, y_pred = [1, 3, 3, 1, 3], [1, 3, 1, 1, 3]
    full = quadratic_weighted_kappa(y_true, y_pred, labels=range(4))
    assert full == pytest.approx(skm.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(4))))
    observed = quadratic_weighted_kappa(y_true, y_pred)
    assert observed == pytest.approx(skm.cohen_kappa_score(y_true, y_pred, weights="quadratic"))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "match"),
    [
        ([0, 1, 4], [0, 1, 1], range(4), r"y_true\[2\] = .*4"),
        ([0, 1, 1], [0, -1, 1], range(4), r"y_pred\[1\]"),
        ([0, 1], [0, 1, 1], None, "2 samples"),
        ([], [], None, "at least one sample"),
        ([[0, 1]], [[0, 1]], None, "1-D"),
        ([0, 1], [0, 1], [0, 1, 1], "unique"),
        ([0, 1], [0, 1], [], "non-empty"),
    ],
)
def test_qwk_rejects_bad_input(y_true, y_pred, labels, match):
    with pytest.raises(ConfigError, match=match):
        quadratic_weighted_kappa(y_true, y_pred, labels=labels)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        quadratic_weighted_kappa([0, 5], [0, 1], labels=range(2))
    assert issubclass(ConfigError, ScoreplexError)


# ---------------------------------------------------------------------------------------------------------------------
# accuracy, adjacent, F1
# ---------------------------------------------------------------------------------------------------------------------


def test_accuracy_and_f1_match_sklearn_on_random_draws():
    for _, k, _, y_true, y_pred in _draws(3):
        labels = list(range(k))
        assert accuracy_score(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
        ours = f1_scores(y_true, y_pred, labels=labels)
        for avg in ("macro", "micro"):
            ref = skm.f1_score(y_true, y_pred, labels=labels, average=avg, zero_division=0)
            assert ours[avg] == pytest.approx(ref, abs=1e-12), (avg, k)
        assert ours["micro"] == pytest.approx(accuracy_score(y_true, y_pred))
        ours_observed = f1_scores(y_true, y_pred)
        ref_observed = skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
        assert ours_observed["macro"] == pytest.approx(ref_observed, abs=1e-12)


def test_f1_unobserved_label_lowers_macro():
    # Classes 0..2 but only 0 and 1 occur: class 2 scores 0 and the macro mean is 2/3, as in sklearn.
    res = f1_scores([0, 1], [0, 1], labels=range(3))
    assert res == {"macro": pytest.approx(2 / 3), "micro": 1.0}


def test_f1_rejects_value_outside_labels():
    with pytest.raises(ConfigError, match="not one of labels"):
        f1_scores([0, 1, 3], [0, 1, 1], labels=range(3))


def test_adjacent_agreement():
    y_true, y_pred = np.array([0, 1, 2, 3, 3]), np.array([0, 2, 0, 3, 1])
    assert adjacent_agreement_score(y_true, y_pred) == pytest.approx(3 / 5)
    assert adjacent_agreement_score(y_true, y_pred, tolerance=2) == 1.0
    assert adjacent_agreement_score(y_true, y_pred, tolerance=0) == accuracy_score(y_true, y_pred)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="tolerance"):
            adjacent_agreement_score(y_true, y_pred, tolerance=bad)


def test_accuracy_rejects_mismatch():
    with pytest.raises(ConfigError, match="must match"):
        accuracy_score([0, 1, 1], [0, 1])


# ---------------------------------------------------------------------------------------------------------------------
# Multi-label
# ---------------------------------------------------------------------------------------------------------------------


def test_multilabel_metrics_match_sklearn_on_random_draws():
    rng = np.random.default_rng(4)
    for _ in range(N_DRAWS):
        n, d = int(rng.integers(1, 40)), int(rng.integers(2, 7))  # sklearn reads D = 1 as binary, tested below
        density = rng.uniform(0.0, 0.6, size=d)  # some columns nearly always 0: exercises 0/0
        y_true = (rng.random((n, d)) < density).astype(int)
        y_pred = np.where(rng.random((n, d)) < 0.7, y_true, (rng.random((n, d)) < density).astype(int))
        ours = multilabel_f1(y_true, y_pred)
        for avg in ("micro", "macro"):
            ref = skm.f1_score(y_true, y_pred, average=avg, zero_division=0)
            assert ours[avg] == pytest.approx(ref, abs=1e-12), avg
        assert exact_match_score(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
        expected = [skm.accuracy_score(y_true[:, j], y_pred[:, j]) for j in range(d)]
        np.testing.assert_allclose(per_label_accuracy(y_true, y_pred), expected)


def test_multilabel_single_column_is_positive_class_f1():
    rng = np.random.default_rng(11)
    y_true, y_pred = rng.integers(0, 2, size=(30, 1)), rng.integers(0, 2, size=(30, 1))
    ref = skm.f1_score(y_true[:, 0], y_pred[:, 0], zero_division=0)
    assert multilabel_f1(y_true, y_pred) == {"micro": pytest.approx(ref), "macro": pytest.approx(ref)}


def test_multilabel_all_zero_is_zero_like_sklearn():
    z = np.zeros((3, 2), dtype=int)
    assert multilabel_f1(z, z) == {"micro": 0.0, "macro": 0.0}
    assert skm.f1_score(z, z, average="macro", zero_division=0) == 0.0


def test_multilabel_rejects_bad_input():
    with pytest.raises(ConfigError, match="0/1"):
        multilabel_f1([[0, 2]], [[0, 1]])
    with pytest.raises(ConfigError, match="shape"):
        multilabel_f1([[0, 1]], [[0, 1, 1]])
    with pytest.raises(ConfigError, match="2-D"):
        exact_match_score([0, 1], [0, 1])
    with pytest.raises(ConfigError, match="shape"):
        per_label_accuracy(np.zeros((2, 3)), np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------------------------------------
# Paired t-test
# ---------------------------------------------------------------------------------------------------------------------


def test_paired_t_test_matches_scipy():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(2, 30))
        a = rng.random(n)
        b = a + rng.normal(0.02, 0.05, size=n)
        res = stats.ttest_rel(a, b)
        ours = paired_t_test(a, b)
        assert ours["t"] == pytest.approx(res.statistic)
        assert ours["p"] == pytest.approx(res.pvalue)
        assert ours["mean_diff"] == pytest.approx(np.mean(a - b))
        assert ours["n"] == n


def test_paired_t_test_zero_variance_policy():
    assert paired_t_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == {"t": 0.0, "p": 1.0, "mean_diff": 0.0, "n": 3}
    up = paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert up["t"] == math.inf and up["p"] == 0.0 and up["mean_diff"] == 1.0
    down = paired_t_test([1.0, 2.0], [2.0, 3.0])
    assert down["t"] == -math.inf and down["p"] == 0.0


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [([0.1], [0.2], "at least 2"), ([0.1, 0.2], [0.2], "equal length"), ([0.1, np.nan], [0.2, 0.3], "finite")],
)
def test_paired_t_test_rejects_bad_input(a, b, match):
    with pytest.raises(ConfigError, match=match):
        paired_t_test(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# Task-level evaluation
# ---------------------------------------------------------------------------------------------------------------------

ESSAY = TaskSpec.ordinal("essay-1", max_score=3)
RUBRIC = TaskSpec.multilabel("crit-1", ["claim", "evidence", "reasoning"])
MIXED = TaskSpec(id="mixed-1", dimensions=(Dimension("score", "ordinal", 5), Dimension("on_topic", "binary", 2)))


def _random_scores(spec: TaskSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cols_t = [rng.integers(0, d.num_classes, size=n) for d in spec.dimensions]
    cols_p = [
        np.where(rng.random(n) < 0.6, c, rng.integers(0, d.num_classes, size=n))
        for c, d in zip(cols_t, spec.dimensions, strict=True)
    ]
    return np.stack(cols_t, axis=1), np.stack(cols_p, axis=1)


def test_evaluate_single_dimension_matches_sklearn():
    rng = np.random.default_rng(6)
    y_true, y_pred = _random_scores(ESSAY, 50, rng)
    res = evaluate_task(ESSAY, y_true, y_pred)
    assert set(res) == {"qwk", "accuracy", "qwk_undefined", "n", "dimensions"}
    assert res["qwk_undefined"] == []
    dim = res["dimensions"]["score"]
    assert set(dim) == {"qwk", "accuracy", "adjacent", "macro_f1", "micro_f1", "n"}
    t, p, labels = y_true[:, 0], y_pred[:, 0], list(range(4))
    assert dim["qwk"] == pytest.approx(skm.cohen_kappa_score(t, p, weights="quadratic", labels=labels))
    assert dim["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    assert dim["macro_f1"] == pytest.approx(skm.f1_score(t, p, labels=labels, average="macro", zero_division=0))
    assert dim["micro_f1"] == pytest.approx(dim["accuracy"])
    assert res["qwk"] == dim["qwk"] and res["n"] == dim["n"] == 50
    # a 1-D array is accepted for a single-dimension task
    assert evaluate_task(ESSAY, t, p) == res
    json.dumps(res, allow_nan=False)


def test_evaluate_multilabel_task():
    rng = np.random.default_rng(7)
    y_true, y_pred = _random_scores(RUBRIC, 60, rng)
    res = evaluate_task(RUBRIC, y_true, y_pred)
    assert set(res["dimensions"]) == {"claim", "evidence", "reasoning"}
    assert res["exact_match"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert res["multilabel_micro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="micro", zero_division=0))
    assert res["multilabel_macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    np.testing.assert_allclose(res["per_label_accuracy"], per_label_accuracy(y_true, y_pred))
    assert res["qwk"] == pytest.approx(np.mean([m["qwk"] for m in res["dimensions"].values()]))
    assert res["accuracy"] == pytest.approx(np.mean(res["per_label_accuracy"]))
    assert res["n"] == res["n_complete"] == 60
    json.dumps(res, allow_nan=False)


def test_evaluate_mixed_task_has_no_multilabel_f1():
    rng = np.random.default_rng(8)
    res = evaluate_task(MIXED, *_random_scores(MIXED, 30, rng))
    assert "exact_match" in res and "per_label_accuracy" in res
    assert "multilabel_micro_f1" not in res and "multilabel_macro_f1" not in res


def test_evaluate_ignores_missing_rows_per_dimension():
    rng = np.random.default_rng(9)
    y_true, y_pred = _random_scores(RUBRIC, 80, rng)
    missing = rng.random(y_true.shape) < 0.25
    y_masked = np.where(missing, -1, y_true)
    res = evaluate_task(RUBRIC, y_masked, y_pred)
    for j, name in enumerate(RUBRIC.dimension_names):
        keep = ~missing[:, j]
        alone = evaluate_task(TaskSpec.ordinal("one", 1), y_true[keep, j], y_pred[keep, j])["dimensions"]["score"]
        assert res["dimensions"][name] == alone
    complete = ~missing.any(axis=1)
    assert res["n_complete"] == int(complete.sum())
    assert res["exact_match"] == pytest.approx(skm.accuracy_score(y_true[complete], y_pred[complete]))
    # missing cells drop out of their label only: micro = binary F1 of all scored cells, macro = mean per column
    present = ~missing
    micro = skm.f1_score(y_true[present], y_pred[present], zero_division=0)
    macro = np.mean(
        [skm.f1_score(y_true[present[:, j], j], y_pred[present[:, j], j], zero_division=0) for j in range(3)]
    )
    assert res["multilabel_micro_f1"] == pytest.approx(micro)
    assert res["multilabel_macro_f1"] == pytest.approx(macro)
    # changing y_pred where y_true is missing changes nothing
    flipped = np.where(missing, 1 - y_pred, y_pred)
    assert evaluate_task(RUBRIC, y_masked, flipped) == res


def test_evaluate_dimension_with_no_scored_rows():
    y_true = np.array([[2, -1], [1, -1], [4, -1]])
    y_pred = np.array([[2, 0], [1, 1], [3, 0]])
    res = evaluate_task(MIXED, y_true, y_pred)
    assert res["dimensions"]["on_topic"]["qwk"] is None and res["dimensions"]["on_topic"]["n"] == 0
    assert res["qwk"] == res["dimensions"]["score"]["qwk"]
    assert res["exact_match"] is None and res["n_complete"] == 0
    json.dumps(res, allow_nan=False)


def test_evaluate_perfect_agreement():
    y = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0]])
    res = evaluate_task(RUBRIC, y, y)
    assert res["qwk"] == 1.0 and res["accuracy"] == 1.0 and res["exact_match"] == 1.0
    assert res["multilabel_micro_f1"] == 1.0 and res["multilabel_macro_f1"] == 1.0


@pytest.mark.parametrize(
    ("spec", "y_true", "y_pred", "match"),
    [
        (ESSAY, [[0], [4]], [[0], [1]], r"task 'essay-1', dimension 'score': y_true\[1\] = 4 .* expected 0\.\.3"),
        (ESSAY, [[0], [-2]], [[0], [1]], r"y_true\[1\] = -2"),
        (ESSAY, [[0], [1]], [[0], [-1]], r"dimension 'score': y_pred\[1\] = -1"),
        (RUBRIC, [[0, 1, 2]], [[0, 1, 1]], r"task 'crit-1', dimension 'reasoning': y_true\[0\] = 2"),
        (RUBRIC, [[0, 1]], [[0, 1]], r"expected \(N, 3\)"),
        (RUBRIC, [[0, 1, 1]], [[0, 1, 1], [0, 0, 0]], "shape"),
        (ESSAY, [[0.5]], [[0]], "integer class labels"),
        (ESSAY, np.zeros((0, 1), dtype=int), np.zeros((0, 1), dtype=int), "no rows"),
    ],
)
def test_evaluate_rejects_bad_input(spec, y_true, y_pred, match):
    with pytest.raises(ConfigError, match=match):
        evaluate_task(spec, np.asarray(y_true), np.asarray(y_pred))


def test_human_agreement_uses_double_scored_rows():
    rng = np.random.default_rng(10)
    first, second = _random_scores(RUBRIC, 40, rng)
    second[::3, 1] = -1  # every third row lacks a second score on one dimension: dropped
    res = human_agreement(RUBRIC, first, second)
    keep = np.all(second >= 0, axis=1)
    assert res == evaluate_task(RUBRIC, first[keep], second[keep])
    assert res["n"] == int(keep.sum())
    assert human_agreement(RUBRIC, first, np.full_like(second, -1)) == {}
    with pytest.raises(ConfigError, match="second"):
        human_agreement(RUBRIC, first, np.full_like(second, 7))


def test_mean_over_tasks():
    results = {"a": {"qwk": 0.5, "accuracy": 0.9}, "b": {"qwk": 0.7, "accuracy": 0.5}, "c": {"qwk": None}}
    assert mean_over_tasks(results) == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="'c' has no 'accuracy'"):
        mean_over_tasks(results, key="accuracy")
    assert mean_over_tasks({k: v for k, v in results.items() if k != "c"}, key="accuracy") == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="no task results"):
        mean_over_tasks({})
    with pytest.raises(ConfigError, match="None"):
        mean_over_tasks({"c": {"qwk": None}})


# ---------------------------------------------------------------------------------------------------------------------
# Undefined QWK and pooled metrics (small items)
# ---------------------------------------------------------------------------------------------------------------------


def test_undefined_qwk_is_none_never_one_and_left_out_of_means():
    t = np.array([[1, 0], [1, 1], [1, 0]])  # "score" has one class in truth...
    p = np.array([[1, 0], [1, 1], [1, 1]])  # ... and in the prediction: QWK undefined; "on_topic" is defined
    res = evaluate_task(MIXED, t, p)
    assert res["dimensions"]["score"]["qwk"] is None and res["dimensions"]["score"]["accuracy"] == 1.0
    assert res["qwk_undefined"] == ["score"]
    on_topic = quadratic_weighted_kappa(t[:, 1], p[:, 1], labels=range(2))
    assert res["qwk"] == pytest.approx(on_topic)  # the mean over the defined dimension only
    assert json.loads(json.dumps(res))["dimensions"]["score"]["qwk"] is None  # null in JSON, not NaN
    only = evaluate_task(ESSAY, [2, 2, 2], [2, 2, 2])
    assert only["qwk"] is None and only["qwk_undefined"] == ["score"]
    # a single class in truth but not in the prediction is defined (chance level), not undefined
    assert evaluate_task(ESSAY, [2, 2, 2], [2, 2, 1])["qwk"] == pytest.approx(0.0)
    results = {"a": {"qwk": 0.4}, "b": only, "c": {"qwk": 0.8}}
    assert mean_over_tasks(results) == pytest.approx(0.6) and undefined_tasks(results) == ["b"]


def test_validation_qwk_is_always_a_number():
    assert validation_qwk(ESSAY, [2, 2, 2], [2, 2, 2]) == 1.0  # undefined: every response right
    rng = np.random.default_rng(3)
    t, p = _random_scores(MIXED, 40, rng)
    assert validation_qwk(MIXED, t, p) == pytest.approx(evaluate_task(MIXED, t, p)["qwk"])


def _normalised(spec: TaskSpec, y: np.ndarray) -> np.ndarray:
    return y / np.array([d.num_classes - 1 for d in spec.dimensions])


def test_pooled_metrics_equal_a_direct_computation():
    rng = np.random.default_rng(11)
    tasks = {}
    for spec, n in ((ESSAY, 30), (MIXED, 25), (RUBRIC, 20)):
        t, p = _random_scores(spec, n, rng)
        tasks[spec.id] = (spec, t, p)
    t_rub = tasks[RUBRIC.id][1].copy()
    t_rub[:5, 1] = -1  # unscored cells drop out
    tasks[RUBRIC.id] = (RUBRIC, t_rub, tasks[RUBRIC.id][2])
    truth, pred = [], []
    for spec, t, p in tasks.values():
        scored = t != -1
        truth.append(_normalised(spec, t)[scored])
        pred.append(_normalised(spec, p)[scored])
    truth, pred = np.concatenate(truth), np.concatenate(pred)
    out = pooled_metrics(tasks)
    assert out["n"] == truth.size == 30 + 2 * 25 + 3 * 20 - 5 and out["n_tasks"] == 3
    assert out["pearson_r"] == pytest.approx(stats.pearsonr(truth, pred).statistic)
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((truth - pred) ** 2)))
    assert out["qwk"] is None and "different numbers of classes" in out["qwk_note"]
    json.dumps(out)


def test_pooled_qwk_over_tasks_of_one_scale():
    rng = np.random.default_rng(5)
    a, b = TaskSpec.ordinal("a", 3), TaskSpec.ordinal("b", 3)
    (ta, pa), (tb, pb) = _random_scores(a, 15, rng), _random_scores(b, 9, rng)
    out = pooled_metrics({"a": (a, ta, pa), "b": (b, tb, pb)})
    both_t, both_p = np.concatenate([ta[:, 0], tb[:, 0]]), np.concatenate([pa[:, 0], pb[:, 0]])
    assert out["qwk"] == pytest.approx(quadratic_weighted_kappa(both_t, both_p, labels=range(4)))
    assert out["qwk"] == pytest.approx(skm.cohen_kappa_score(both_t, both_p, weights="quadratic", labels=range(4)))
    assert out["qwk_note"] is None
    # one class everywhere: QWK and Pearson r undefined (None), RMSE 0
    flat = pooled_metrics({"a": (a, np.full(4, 2), np.full(4, 2))})
    assert flat["qwk"] is None and flat["pearson_r"] is None and flat["rmse"] == 0.0
    with pytest.raises(ConfigError, match="'b'"):
        pooled_metrics({"b": (b, np.zeros(3, dtype=int), np.zeros(4, dtype=int))})
