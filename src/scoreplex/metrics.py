"""Agreement and classification metrics for rubric scores.

Every function is pure, follows scikit-learn's naming (``*_score`` is higher-is-better) and signature
(``y_true, y_pred, *, labels=None``), validates its inputs and raises :class:`~scoreplex.errors.ConfigError`
(a ``ValueError``) with a message that names the bad value. The numbers agree with scikit-learn and SciPy wherever
those are defined; ``tests/test_metrics.py`` checks this on random data.

Shapes: a single dimension is ``(N,)``; a task with ``D`` rubric dimensions is ``(N, D)``. In task-level functions
(:func:`evaluate_task`, :func:`human_agreement`) a ``y_true`` cell of ``-1`` means "not scored" and that row is
ignored for that dimension only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from scoreplex.errors import ConfigError
from scoreplex.tasks import TaskSpec

__all__ = [
    "MISSING",
    "accuracy_score",
    "adjacent_agreement_score",
    "evaluate_task",
    "exact_match_score",
    "f1_scores",
    "human_agreement",
    "mean_over_tasks",
    "multilabel_f1",
    "paired_t_test",
    "per_label_accuracy",
    "quadratic_weighted_kappa",
]

MISSING = -1
"""Label value that marks a dimension as not scored in task-level score arrays."""


# --------------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------------


def _as_1d_pair(y_true: Any, y_pred: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``y_true`` and ``y_pred`` as equal-length, non-empty 1-D arrays, else raise ConfigError."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ConfigError(
            f"{what} expects 1-D y_true and y_pred; got shapes {t.shape} and {p.shape}. "
            "Pass one dimension at a time (use exact_match_score / per_label_accuracy for (N, D) arrays)."
        )
    if t.shape[0] != p.shape[0]:
        raise ConfigError(f"{what}: y_true has {t.shape[0]} samples but y_pred has {p.shape[0]}; they must match.")
    if t.shape[0] == 0:
        raise ConfigError(f"{what} needs at least one sample; got empty arrays.")
    return t, p


def _as_2d_pair(y_true: Any, y_pred: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``y_true`` and ``y_pred`` as equal-shape, non-empty ``(N, D)`` arrays, else raise ConfigError."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 2 or p.ndim != 2:
        raise ConfigError(f"{what} expects 2-D (N, D) arrays; got shapes {t.shape} and {p.shape}.")
    if t.shape != p.shape:
        raise ConfigError(f"{what}: y_true has shape {t.shape} but y_pred has shape {p.shape}; they must match.")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ConfigError(f"{what} needs at least one row and one column; got shape {t.shape}.")
    return t, p


def _as_binary_matrix(y: np.ndarray, name: str, what: str) -> np.ndarray:
    """Return ``y`` as a bool matrix if every value is 0 or 1, else raise ConfigError."""
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ConfigError(f"{what}: {name} must hold only 0/1 indicators; found {y[r, c]!r} at row {r}, column {c}.")
    return y.astype(bool)


def _resolve_labels(labels: Any, t: np.ndarray, p: np.ndarray, what: str) -> np.ndarray:
    """Return the label list: ``labels`` if given (checked unique, non-empty), else the sorted observed values."""
    if labels is None:
        return np.union1d(t, p)
    lab = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)
    if lab.ndim != 1 or lab.size == 0:
        raise ConfigError(f"{what}: labels must be a non-empty 1-D list of classes; got {labels!r}.")
    if np.unique(lab).size != lab.size:
        raise ConfigError(f"{what}: labels must be unique; got {lab.tolist()}.")
    return lab


def _encode(y: np.ndarray, labels: np.ndarray, name: str, what: str) -> np.ndarray:
    """Map each value of ``y`` to its index in ``labels``; a value not in ``labels`` raises ConfigError."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    pos = np.clip(np.searchsorted(sorted_labels, y), 0, sorted_labels.size - 1)
    found = sorted_labels[pos] == y
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise ConfigError(
            f"{what}: {name}[{i}] = {y[i]!r} is not one of labels {labels.tolist()}. "
            "Pass the full list of possible classes as labels (e.g. range(num_classes))."
        )
    return order[pos]


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """Elementwise ``num / den`` with ``0 / 0 := 0`` (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """Macro and micro F1 from per-class counts, with ``F1 = 2 tp / (2 tp + fp + fn)`` and ``0 / 0 := 0``.

    ``2 tp / (2 tp + fp + fn)`` equals ``2 P R / (P + R)`` whenever the latter is defined, and gives 0 exactly where
    scikit-learn (``zero_division=0``) gives 0.
    """
    per_class = _safe_div(2 * tp, 2 * tp + fp + fn)  # (K,)
    micro = _safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())
    return {"macro": float(per_class.mean()), "micro": float(micro)}


# --------------------------------------------------------------------------------------------------------------------
# Single-dimension metrics, (N,) arrays
# --------------------------------------------------------------------------------------------------------------------


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, *, labels: Sequence[Any] | None = None) -> float:
    """Cohen's kappa with quadratic weights (QWK) between two ratings of the same ``N`` items.

    With ``K`` classes indexed ``i, j = 0..K-1`` in the order of ``labels``::

        O[i, j] = #items rated i by y_true and j by y_pred               # (K, K) observed confusion matrix
        E[i, j] = (sum_j' O[i, j']) * (sum_i' O[i', j]) / N             # (K, K) expected under independence
        W[i, j] = (i - j)^2 / (K - 1)^2                                 # (K, K) quadratic disagreement weights
        QWK     = 1 - sum(W * O) / sum(W * E)

    Reference: J. Cohen (1968), "Weighted kappa", Psychological Bulletin 70(4); equals
    ``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels)`` where that is defined.

    Args:
        y_true: ``(N,)`` reference ratings.
        y_pred: ``(N,)`` ratings to compare.
        labels: every possible class in rubric order, e.g. ``range(max_score + 1)``. Weights use the position in
            this list, so passing the full rubric range makes a miss by 2 cost 4 times a miss by 1 even if some
            scores never occur. ``None`` uses the sorted values that occur in either array.

    Returns:
        QWK in ``[-1, 1]``; 1 is perfect agreement, 0 is chance level.

    Undefined case: when the expected disagreement ``sum(W * E)`` is 0 (both raters give the same single class to
    every item, or ``labels`` has one class) scikit-learn returns ``nan``; this function returns 1.0 if
    ``y_true == y_pred`` on every item and 0.0 otherwise, so the result is always a finite number.

    Raises:
        ConfigError: on shape mismatch, empty input, duplicate labels, or a value not in ``labels``.
    """
    what = "quadratic_weighted_kappa"
    t, p = _as_1d_pair(y_true, y_pred, what)
    lab = _resolve_labels(labels, t, p, what)
    ti, pi = _encode(t, lab, "y_true", what), _encode(p, lab, "y_pred", what)
    k, n = lab.size, t.size
    observed = np.zeros((k, k), dtype=np.float64)  # (K, K)
    np.add.at(observed, (ti, pi), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n  # (K, K)
    idx = np.arange(k, dtype=np.float64)
    weights = (idx[:, None] - idx[None, :]) ** 2  # (K, K); the 1 / (K - 1)^2 factor cancels in the ratio
    expected_disagreement = float((weights * expected).sum())
    if expected_disagreement == 0.0:
        return 1.0 if bool(np.all(ti == pi)) else 0.0
    return float(1.0 - (weights * observed).sum() / expected_disagreement)


def accuracy_score(y_true: Any, y_pred: Any) -> float:
    """Share of items where ``y_pred == y_true``: ``(1 / N) * sum_n [y_true_n == y_pred_n]``.

    Same as ``sklearn.metrics.accuracy_score`` on 1-D input. For ``(N, D)`` arrays use :func:`exact_match_score`
    (all dimensions right) or :func:`per_label_accuracy`.
    """
    t, p = _as_1d_pair(y_true, y_pred, "accuracy_score")
    return float(np.mean(t == p))


def adjacent_agreement_score(y_true: Any, y_pred: Any, *, tolerance: int = 1) -> float:
    """Share of items with ``|y_pred - y_true| <= tolerance`` ("adjacent agreement" of essay-scoring reports).

    With ``tolerance=0`` this is :func:`accuracy_score`. Reference: e.g. Williamson, Xi & Breyer (2012), "A framework
    for evaluation and use of automated scoring", Educational Measurement 31(1).

    Raises:
        ConfigError: on shape mismatch, empty or non-numeric input, or a negative / non-integer ``tolerance``.
    """
    what = "adjacent_agreement_score"
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ConfigError(f"{what}: tolerance must be a non-negative integer; got {tolerance!r}.")
    t, p = _as_1d_pair(y_true, y_pred, what)
    if not (np.issubdtype(t.dtype, np.number) and np.issubdtype(p.dtype, np.number)):
        raise ConfigError(f"{what} needs numeric scores; got dtypes {t.dtype} and {p.dtype}.")
    return float(np.mean(np.abs(t.astype(np.float64) - p.astype(np.float64)) <= tolerance))


def f1_scores(y_true: Any, y_pred: Any, *, labels: Sequence[Any] | None = None) -> dict[str, float]:
    """Macro and micro F1 of one single-label categorical dimension.

    Per class ``k``: ``F1_k = 2 tp_k / (2 tp_k + fp_k + fn_k)`` (0 when the denominator is 0). Macro F1 is the mean
    of ``F1_k`` over ``labels``; micro F1 pools the counts, ``2 sum tp / (2 sum tp + sum fp + sum fn)``, which for
    single-label data over all classes equals accuracy. Matches ``sklearn.metrics.f1_score(..., average="macro" /
    "micro", labels=labels, zero_division=0)``; note that a class in ``labels`` that never occurs in either array
    scores 0 and lowers the macro mean, as in scikit-learn.

    Returns:
        ``{"macro": float, "micro": float}``.

    Raises:
        ConfigError: on shape mismatch, empty input, duplicate labels, or a value not in ``labels``.
    """
    what = "f1_scores"
    t, p = _as_1d_pair(y_true, y_pred, what)
    lab = _resolve_labels(labels, t, p, what)
    ti, pi = _encode(t, lab, "y_true", what), _encode(p, lab, "y_pred", what)
    k = lab.size
    tp = np.bincount(ti[ti == pi], minlength=k)  # (K,)
    fp = np.bincount(pi, minlength=k) - tp  # (K,)
    fn = np.bincount(ti, minlength=k) - tp  # (K,)
    return _f1_from_counts(tp, fp, fn)


# --------------------------------------------------------------------------------------------------------------------
# Multi-dimension metrics, (N, D) arrays
# --------------------------------------------------------------------------------------------------------------------


def multilabel_f1(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Micro and macro F1 of ``(N, D)`` 0/1 indicator matrices, each column a positive-class binary label.

    Per label ``d``: ``F1_d = 2 tp_d / (2 tp_d + fp_d + fn_d)`` counting 1 as positive (0 when the denominator is 0,
    i.e. the label is never present nor predicted). Macro is the mean of ``F1_d``; micro pools the counts over all
    labels. Matches ``sklearn.metrics.f1_score(y_true, y_pred, average="micro" / "macro", zero_division=0)`` on
    multilabel-indicator input. With ``D = 1`` both equal the positive-class binary F1 (scikit-learn instead reads an
    ``(N, 1)`` array as a binary target and, for ``average="micro"``, pools classes 0 and 1, which gives accuracy).

    Returns:
        ``{"micro": float, "macro": float}``.

    Raises:
        ConfigError: on a shape mismatch, empty input, or a value other than 0/1.
    """
    what = "multilabel_f1"
    t, p = _as_2d_pair(y_true, y_pred, what)
    t, p = _as_binary_matrix(t, "y_true", what), _as_binary_matrix(p, "y_pred", what)
    tp = (t & p).sum(axis=0)  # (D,)
    fp = (~t & p).sum(axis=0)  # (D,)
    fn = (t & ~p).sum(axis=0)  # (D,)
    return _f1_from_counts(tp, fp, fn)


def exact_match_score(y_true: Any, y_pred: Any) -> float:
    """Share of rows where every one of the ``D`` dimensions is right (scikit-learn's "subset accuracy").

    ``(1 / N) * sum_n prod_d [y_true[n, d] == y_pred[n, d]]``; equals ``sklearn.metrics.accuracy_score`` on
    multilabel-indicator input. Inputs are ``(N, D)`` arrays of any class values.
    """
    t, p = _as_2d_pair(y_true, y_pred, "exact_match_score")
    return float(np.mean(np.all(t == p, axis=1)))


def per_label_accuracy(y_true: Any, y_pred: Any) -> np.ndarray:
    """Accuracy of each dimension of ``(N, D)`` arrays: ``(1 / N) * sum_n [y_true[n, d] == y_pred[n, d]]``.

    Returns:
        ``(D,)`` float array.
    """
    t, p = _as_2d_pair(y_true, y_pred, "per_label_accuracy")
    return np.mean(t == p, axis=0).astype(np.float64)


# --------------------------------------------------------------------------------------------------------------------
# Significance across tasks
# --------------------------------------------------------------------------------------------------------------------


def paired_t_test(a: Any, b: Any) -> dict[str, float | int]:
    """Two-sided paired t-test of ``mean(a - b) = 0``, e.g. per-task QWK of two methods on the same tasks.

    With ``d = a - b`` over ``n`` pairs: ``t = mean(d) / (std(d, ddof=1) / sqrt(n))`` on ``n - 1`` degrees of freedom;
    wraps ``scipy.stats.ttest_rel(a, b)`` (Student, 1908).

    Zero-variance policy (SciPy returns ``nan`` or ``inf`` here): if every difference is exactly 0 the methods are
    indistinguishable and the result is ``t = 0.0, p = 1.0``; if every difference is the same non-zero value the
    result is ``t = ±inf`` (sign of the difference), ``p = 0.0``, as SciPy returns. ``nan`` is never returned.

    Returns:
        ``{"t": float, "p": float, "mean_diff": float, "n": int}``.

    Raises:
        ConfigError: on non-1-D or unequal-length input, fewer than 2 pairs, or non-finite values.
    """
    what = "paired_t_test"
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} needs two 1-D sequences of numbers ({exc}).") from exc
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ConfigError(f"{what} needs two 1-D sequences of equal length; got shapes {x.shape} and {y.shape}.")
    n = int(x.size)
    if n < 2:
        raise ConfigError(f"{what} needs at least 2 pairs (tasks) to estimate a variance; got {n}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ConfigError(f"{what}: inputs must be finite; found nan or inf. Drop or fix those tasks first.")
    d = x - y  # (n,)
    mean_diff = float(d.mean())
    if np.all(d == d[0]):  # zero variance: decide by policy rather than let SciPy return nan
        if d[0] == 0.0:
            t, p = 0.0, 1.0
        else:
            t, p = math.copysign(math.inf, float(d[0])), 0.0
    else:
        res = stats.ttest_rel(x, y)
        t, p = float(res.statistic), float(res.pvalue)
    return {"t": t, "p": p, "mean_diff": mean_diff, "n": n}


# --------------------------------------------------------------------------------------------------------------------
# Task-level evaluation
# --------------------------------------------------------------------------------------------------------------------


def _task_scores(spec: TaskSpec, y: Any, name: str, *, allow_missing: bool) -> np.ndarray:
    """Return ``y`` as an ``(N, D)`` int64 array checked against the task's dimensions, else raise ConfigError.

    A 1-D array is accepted for a single-dimension task. Values must lie in ``0..num_classes-1`` of their dimension,
    or be :data:`MISSING` when ``allow_missing``.
    """
    if not isinstance(spec, TaskSpec):
        raise ConfigError(f"expected a TaskSpec; got {type(spec).__name__}.")
    arr = np.asarray(y)
    d = len(spec.dimensions)
    if arr.ndim == 1 and d == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != d:
        raise ConfigError(
            f"task {spec.id!r}: {name} has shape {arr.shape}; expected (N, {d}) with one column per dimension "
            f"{spec.dimension_names}."
        )
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer) and (
        not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))
    ):
        raise ConfigError(f"task {spec.id!r}: {name} must hold integer class labels; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    for j, dim in enumerate(spec.dimensions):
        col = arr[:, j]
        ok = (col >= 0) & (col < dim.num_classes)
        if allow_missing:
            ok |= col == MISSING
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            allowed = f"0..{dim.num_classes - 1}" + (f" or {MISSING} (missing)" if allow_missing else "")
            raise ConfigError(
                f"task {spec.id!r}, dimension {dim.name!r}: {name}[{i}] = {int(col[i])} is outside the rubric; "
                f"expected {allowed}."
            )
    return arr


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def evaluate_task(spec: TaskSpec, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Score predictions for one task, per rubric dimension and overall; the result is JSON-ready.

    Args:
        spec: the task; its dimensions give the column order and the class range ``0..num_classes-1``.
        y_true: ``(N, D)`` int reference scores; ``-1`` marks a dimension not scored for that row, and the row is
            ignored for that dimension. ``(N,)`` is accepted for a single-dimension task.
        y_pred: ``(N, D)`` int predicted scores; every value must lie in its dimension's range (no ``-1``).

    Returns:
        A dict with

        * ``"dimensions"``: ``{name: {"qwk", "accuracy", "adjacent", "macro_f1", "micro_f1", "n"}}`` computed over
          the rows where that dimension is scored, with ``labels=range(num_classes)``; ``n`` is that row count. If
          no row is scored the metric values are ``None``.
        * ``"qwk"``, ``"accuracy"``: means over the dimensions that have scored rows (``None`` if none has).
        * ``"n"``: number of rows ``N``.
        * for tasks with more than one dimension, also ``"per_label_accuracy"`` (list in dimension order, the same
          numbers as each dimension's accuracy), ``"exact_match"`` (share of rows with every dimension right, over
          the ``"n_complete"`` rows scored on every dimension; ``None`` if there are none), and, when every
          dimension is binary, ``"multilabel_micro_f1"`` and ``"multilabel_macro_f1"`` (as :func:`multilabel_f1`,
          counting each scored cell).

    Raises:
        ConfigError: naming the task, dimension and value, on a shape mismatch, an empty array, a non-integer
            label, or a label outside the rubric.
    """
    t = _task_scores(spec, y_true, "y_true", allow_missing=True)
    p = _task_scores(spec, y_pred, "y_pred", allow_missing=False)
    if t.shape != p.shape:
        raise ConfigError(f"task {spec.id!r}: y_true has shape {t.shape} but y_pred has shape {p.shape}.")
    if t.shape[0] == 0:
        raise ConfigError(f"task {spec.id!r}: there are no rows to evaluate.")

    present = t != MISSING  # (N, D)
    dims: dict[str, dict[str, Any]] = {}
    for j, dim in enumerate(spec.dimensions):
        rows = present[:, j]
        tj, pj = t[rows, j], p[rows, j]
        n_j = int(rows.sum())
        if n_j == 0:
            dims[dim.name] = dict.fromkeys(("qwk", "accuracy", "adjacent", "macro_f1", "micro_f1")) | {"n": 0}
            continue
        labels = range(dim.num_classes)
        f1 = f1_scores(tj, pj, labels=labels)
        dims[dim.name] = {
            "qwk": quadratic_weighted_kappa(tj, pj, labels=labels),
            "accuracy": accuracy_score(tj, pj),
            "adjacent": adjacent_agreement_score(tj, pj),
            "macro_f1": f1["macro"],
            "micro_f1": f1["micro"],
            "n": n_j,
        }

    out: dict[str, Any] = {
        "qwk": _mean_or_none([m["qwk"] for m in dims.values()]),
        "accuracy": _mean_or_none([m["accuracy"] for m in dims.values()]),
        "n": int(t.shape[0]),
        "dimensions": dims,
    }
    if len(spec.dimensions) > 1:
        complete = present.all(axis=1)  # (N,)
        out["per_label_accuracy"] = [m["accuracy"] for m in dims.values()]
        out["n_complete"] = int(complete.sum())
        out["exact_match"] = exact_match_score(t[complete], p[complete]) if complete.any() else None
        if all(dim.kind == "binary" for dim in spec.dimensions):
            # Count tp/fp/fn per scored cell so a missing cell drops out of its label only.
            tb, pb = (t == 1) & present, (p == 1) & present  # (N, D)
            tp = (tb & pb).sum(axis=0)
            fp = (~tb & pb).sum(axis=0)
            fn = (tb & ~pb).sum(axis=0)
            f1 = _f1_from_counts(tp, fp, fn)
            out["multilabel_micro_f1"] = f1["micro"]
            out["multilabel_macro_f1"] = f1["macro"]
    return out


def human_agreement(spec: TaskSpec, first: np.ndarray, second: np.ndarray) -> dict[str, Any]:
    """Agreement between two human raters: :func:`evaluate_task` with ``first`` as reference and ``second`` as
    prediction, on the rows where ``second`` is present (``>= 0``) on every dimension.

    Args:
        spec: the task.
        first: ``(N, D)`` first-rater scores; ``-1`` marks a missing cell (ignored for that dimension).
        second: ``(N, D)`` second-rater scores; ``-1`` marks a missing cell and drops the whole row.

    Returns:
        The :func:`evaluate_task` dict over the double-scored rows, or ``{}`` when no row has a full second score.

    Raises:
        ConfigError: on shape mismatch or a score outside the rubric (other than ``-1``).
    """
    a = _task_scores(spec, first, "first", allow_missing=True)
    b = _task_scores(spec, second, "second", allow_missing=True)
    if a.shape != b.shape:
        raise ConfigError(f"task {spec.id!r}: first has shape {a.shape} but second has shape {b.shape}.")
    rows = np.all(b != MISSING, axis=1)  # (N,)
    if not rows.any():
        return {}
    return evaluate_task(spec, a[rows], b[rows])


def mean_over_tasks(results: Mapping[str, Mapping[str, Any]], key: str = "qwk") -> float:
    """Unweighted mean of ``results[task][key]`` over tasks (each task counts once, whatever its size).

    Tasks whose value is ``None`` (no scored rows, see :func:`evaluate_task`) are skipped.

    Raises:
        ConfigError: if ``results`` is empty, a task lacks ``key``, or no task has a value.
    """
    if not results:
        raise ConfigError(f"mean_over_tasks: no task results to average over (key {key!r}).")
    values: list[float] = []
    for task, res in results.items():
        if key not in res:
            raise ConfigError(
                f"mean_over_tasks: task {task!r} has no {key!r}; available keys: {', '.join(sorted(res))}."
            )
        if res[key] is not None:
            values.append(float(res[key]))
    if not values:
        raise ConfigError(f"mean_over_tasks: every task has {key!r} = None (no scored rows).")
    return float(np.mean(values))
