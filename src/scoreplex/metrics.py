"""Agreement and classification metrics for rubric scores.

Every function is pure, follows scikit-learn's naming (``*_score`` is higher-is-better) and signature
(``y_true, y_pred, *, labels=None``), validates its inputs and raises :class:`~scoreplex.errors.ConfigError`
(a ``ValueError``) with a message that names the bad value. The numbers agree with scikit-learn and SciPy wherever
those are defined; ``tests/test_metrics.py`` checks this on random data.

Shapes: a single dimension is ``(N,)``; a task with ``D`` rubric dimensions is ``(N, D)``. In task-level functions
(:func:`evaluate_task`, :func:`human_agreement`) a ``y_true`` cell of ``-1`` means "not scored" and that row is
ignored for that dimension only.

The deployment criteria of Williamson, Xi & Breyer (2012) for an automated score (QWK, degradation from human-human
agreement, standardized mean difference, with exact and adjacent agreement) are :func:`deployment_criteria` (all
responses) and :func:`automated_criteria` (the responses the engine scores alone), with thresholds in
:class:`Criteria` and the human-human yardstick in :class:`HumanReference`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from scoreplex.errors import ConfigError
from scoreplex.tasks import TaskSpec

__all__ = [
    "MISSING",
    "POOLED_SCALE",
    "WILLIAMSON_2012",
    "Criteria",
    "HumanReference",
    "accuracy_score",
    "adjacent_agreement_score",
    "automated_criteria",
    "deployment_criteria",
    "evaluate_task",
    "exact_match_score",
    "f1_scores",
    "human_agreement",
    "mean_over_tasks",
    "multilabel_f1",
    "paired_t_test",
    "per_label_accuracy",
    "pooled_metrics",
    "quadratic_weighted_kappa",
    "reference_from_scores",
    "standardized_mean_difference",
    "training_reference",
    "undefined_tasks",
    "validation_qwk",
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


def quadratic_weighted_kappa(
    y_true: Any, y_pred: Any, *, labels: Sequence[Any] | None = None, replace_undefined_by: float = 1.0
) -> float:
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

        replace_undefined_by: the value returned when QWK is undefined (below); scikit-learn's name
            (``cohen_kappa_score(..., replace_undefined_by=...)``). Pass ``math.nan`` to detect the case, as every
            report in scoreplex does (:func:`evaluate_task` shows it as None).

    Returns:
        QWK in ``[-1, 1]``; 1 is perfect agreement, 0 is chance level.

    Undefined case: the expected disagreement ``sum(W * E)`` is 0 exactly when both raters give one and the same
    class to every item (or ``labels`` has one class); then the observed disagreement is 0 too and QWK is ``0 / 0``.
    scikit-learn returns ``nan`` by default; this function returns ``replace_undefined_by``, by default 1.0 (the
    raters do agree on every item), so that optimisers over QWK (cut points, thresholds, cross-validated model
    choice) always compare finite numbers. Reports must not show that 1.0 as agreement: a single class says nothing
    about how well a scorer ranks responses.

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
    if expected_disagreement == 0.0:  # one class in both ratings: 0 / 0
        return float(replace_undefined_by)
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


def _qwk_or_none(t: np.ndarray, p: np.ndarray, num_classes: int) -> float | None:
    """QWK over the full rubric range, or None when there are no rows or it is undefined (one class in both)."""
    if t.size == 0:
        return None
    q = quadratic_weighted_kappa(t, p, labels=range(num_classes), replace_undefined_by=math.nan)
    return None if math.isnan(q) else q


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
          no row is scored the metric values are ``None``. ``qwk`` is also ``None`` where it is undefined (the
          truth and the prediction hold one and the same class: :func:`quadratic_weighted_kappa`), never 1.0.
        * ``"qwk"``, ``"accuracy"``: means over the dimensions that have a value (``None`` if none has).
        * ``"qwk_undefined"``: names of the dimensions with scored rows whose QWK is undefined (empty if none).
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
            "qwk": _qwk_or_none(tj, pj, dim.num_classes),
            "accuracy": accuracy_score(tj, pj),
            "adjacent": adjacent_agreement_score(tj, pj),
            "macro_f1": f1["macro"],
            "micro_f1": f1["micro"],
            "n": n_j,
        }

    out: dict[str, Any] = {
        "qwk": _mean_or_none([m["qwk"] for m in dims.values()]),
        "accuracy": _mean_or_none([m["accuracy"] for m in dims.values()]),
        "qwk_undefined": [name for name, m in dims.items() if m["n"] and m["qwk"] is None],
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


def _double_scored(spec: TaskSpec, first: Any, second: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(first, second)`` ``(M, D)`` over the rows with a full second score, or None when there are none."""
    a = _task_scores(spec, first, "first", allow_missing=True)
    b = _task_scores(spec, second, "second", allow_missing=True)
    if a.shape != b.shape:
        raise ConfigError(f"task {spec.id!r}: first has shape {a.shape} but second has shape {b.shape}.")
    rows = np.all(b != MISSING, axis=1)  # (N,)
    return (a[rows], b[rows]) if rows.any() else None


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
    pair = _double_scored(spec, first, second)
    return {} if pair is None else evaluate_task(spec, *pair)


def validation_qwk(spec: TaskSpec, y_true: Any, y_pred: Any) -> float:
    """The score early stopping and model selection maximise: the mean over rubric dimensions of QWK, always a
    number.

    Unlike :func:`evaluate_task`'s ``qwk`` (None where undefined, for reports), a dimension whose QWK is undefined
    counts as 1.0 here (truth and prediction hold one class: every response right) and one without scored rows is
    left out; 0.0 when no dimension has a scored row. Shapes and errors as :func:`evaluate_task`.
    """
    t = _task_scores(spec, y_true, "y_true", allow_missing=True)
    p = _task_scores(spec, y_pred, "y_pred", allow_missing=False)
    if t.shape != p.shape:
        raise ConfigError(f"task {spec.id!r}: y_true has shape {t.shape} but y_pred has shape {p.shape}.")
    qwk = task_agreement(spec, t, p, undefined_qwk=1.0)["qwk"]
    return 0.0 if qwk is None else float(qwk)


POOLED_SCALE = "each dimension's class index / (number of classes - 1), so every task's scores lie in 0..1"
"""How :func:`pooled_metrics` puts tasks of different score ranges on one scale (recorded in its result)."""


def pooled_metrics(tasks: Mapping[str, tuple[TaskSpec, Any, Any]]) -> dict[str, Any]:
    """Agreement over every scored response of every task at once, beside the per-task mean of a report.

    A bank of many small items has per-item QWKs on a handful of responses each; pooling all rows gives one figure
    with a usable sample. Each scored cell (response x rubric dimension, ``y_true != -1``) is one pair. Tasks have
    different score ranges, so scores are normalised per dimension to ``0..1`` (:data:`POOLED_SCALE`: class ``c`` of
    ``K`` becomes ``c / (K - 1)``) and

    * ``pearson_r``: Pearson's r of the normalised pairs (``scipy.stats.pearsonr``); None when either side is
      constant (r undefined) or there are fewer than 2 pairs;
    * ``rmse``: ``sqrt(mean((pred - true)^2))`` of the normalised pairs, in units of each dimension's full range;
    * ``qwk``: :func:`quadratic_weighted_kappa` of the class indices over all pairs, only when every pooled dimension
      has the same number of classes (one scale; QWK over normalised scores of different ranges would mix class
      distances), else None with ``qwk_note`` saying why; None too where it is undefined.

    Args:
        tasks: ``{task id: (spec, y_true (N, D), y_pred (N, D))}``; ``-1`` in ``y_true`` marks an unscored cell.

    Returns:
        ``{"n": pairs pooled, "n_tasks": tasks with at least one pair, "qwk", "pearson_r", "rmse", "scale",
        "qwk_note"}`` (JSON-ready; ``qwk_note`` is None when ``qwk`` is computed).

    Raises:
        ConfigError: naming the task, as :func:`evaluate_task`, on a shape mismatch or a score outside the rubric.
    """
    true_n: list[np.ndarray] = []
    pred_n: list[np.ndarray] = []
    true_c: list[np.ndarray] = []
    pred_c: list[np.ndarray] = []
    ks: set[int] = set()
    n_tasks = 0
    for task_id, (spec, y_true, y_pred) in tasks.items():
        t = _task_scores(spec, y_true, "y_true", allow_missing=True)
        p = _task_scores(spec, y_pred, "y_pred", allow_missing=False)
        if t.shape != p.shape:
            raise ConfigError(f"task {task_id!r}: y_true has shape {t.shape} but y_pred has shape {p.shape}.")
        had_rows = False
        for j, dim in enumerate(spec.dimensions):
            rows = t[:, j] != MISSING  # (N,)
            if not rows.any():
                continue
            had_rows = True
            ks.add(dim.num_classes)
            span = float(max(dim.num_classes - 1, 1))
            true_c.append(t[rows, j])
            pred_c.append(p[rows, j])
            true_n.append(t[rows, j] / span)
            pred_n.append(p[rows, j] / span)
        n_tasks += had_rows
    out: dict[str, Any] = {
        "n": 0,
        "n_tasks": n_tasks,
        "qwk": None,
        "pearson_r": None,
        "rmse": None,
        "scale": POOLED_SCALE,
        "qwk_note": None,
    }
    if not true_n:
        out["qwk_note"] = "no scored responses"
        return out
    tn, pn = np.concatenate(true_n), np.concatenate(pred_n)  # (M,)
    out["n"] = int(tn.size)
    out["rmse"] = float(np.sqrt(np.mean((pn - tn) ** 2)))
    if tn.size >= 2 and np.ptp(tn) > 0 and np.ptp(pn) > 0:
        out["pearson_r"] = float(stats.pearsonr(tn, pn).statistic)
    if len(ks) == 1:
        k = ks.pop()
        q = quadratic_weighted_kappa(
            np.concatenate(true_c), np.concatenate(pred_c), labels=range(k), replace_undefined_by=math.nan
        )
        out["qwk"] = None if math.isnan(q) else q
        if out["qwk"] is None:
            out["qwk_note"] = "undefined: one class in both the scores and the predictions"
    else:
        out["qwk_note"] = f"not pooled: the tasks' dimensions have {len(ks)} different numbers of classes"
    return out


def mean_over_tasks(results: Mapping[str, Mapping[str, Any]], key: str = "qwk") -> float:
    """Unweighted mean of ``results[task][key]`` over tasks (each task counts once, whatever its size).

    Tasks whose value is ``None`` (no scored rows, or QWK undefined: see :func:`evaluate_task`) are skipped; report
    how many beside the mean (:func:`undefined_tasks`).

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
        raise ConfigError(f"mean_over_tasks: every task has {key!r} = None (no scored rows, or undefined).")
    return float(np.mean(values))


def undefined_tasks(results: Mapping[str, Mapping[str, Any]], key: str = "qwk") -> list[str]:
    """The tasks :func:`mean_over_tasks` leaves out: those whose ``results[task][key]`` is missing or None."""
    return [task for task, res in results.items() if res.get(key) is None]


# --------------------------------------------------------------------------------------------------------------------
# Deployment criteria (Williamson, Xi & Breyer 2012)
# --------------------------------------------------------------------------------------------------------------------

WILLIAMSON_2012 = (
    'Williamson, Xi & Breyer (2012), "A framework for evaluation and use of automated scoring", Educational '
    "Measurement: Issues and Practice 31(1), 2-13"
)

_TOLERANCE = 1e-9
"""Slack in threshold comparisons: ``0.80 - 0.70`` is ``0.10000000000000009`` in floating point and must meet
``<= 0.10``. Far below any difference a rubric score can make."""


def _is_real(x: Any) -> bool:
    """True for a finite int or float that is not a bool."""
    return (
        isinstance(x, (int, float, np.integer, np.floating))
        and not isinstance(x, (bool, np.bool_))
        and math.isfinite(float(x))
    )


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the deployment criteria of Williamson, Xi & Breyer (2012) for an automated score.

    Defaults are the paper's: engine-human QWK at least 0.70, degradation from human-human QWK at most 0.10, and
    absolute standardized mean difference at most 0.15. Exact and adjacent agreement are reported without a
    threshold unless one is set. Every field is checked on construction (ConfigError naming the field, its command
    line option and a valid value).
    """

    min_qwk: float = 0.70
    """Engine-human QWK must be ``>= min_qwk`` (``--min-qwk``); in ``[-1, 1]``."""
    max_degradation: float = 0.10
    """Human-human QWK minus engine-human QWK must be ``<= max_degradation`` (``--max-degradation``); in ``[0, 2]``."""
    max_smd: float = 0.15
    """``|SMD|`` (:func:`standardized_mean_difference`) must be ``<= max_smd`` (``--max-smd``); ``>= 0``."""
    min_exact: float | None = None
    """Exact agreement must be ``>= min_exact`` (``--min-exact``); in ``[0, 1]``; None reports it without a test."""
    min_adjacent: float | None = None
    """Adjacent agreement (within one point) must be ``>= min_adjacent`` (``--min-adjacent``); in ``[0, 1]``; None
    reports it without a test."""

    def __post_init__(self) -> None:
        limits = {
            "min_qwk": (-1.0, 1.0, "0.70"),
            "max_degradation": (0.0, 2.0, "0.10"),
            "max_smd": (0.0, math.inf, "0.15"),
            "min_exact": (0.0, 1.0, "0.60"),
            "min_adjacent": (0.0, 1.0, "0.95"),
        }
        for name, (lo, hi, example) in limits.items():
            value = getattr(self, name)
            if value is None and name in ("min_exact", "min_adjacent"):
                continue
            if not _is_real(value) or not lo <= float(value) <= hi:
                span = f">= {lo:g}" if hi == math.inf else f"between {lo:g} and {hi:g}"
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"deployment criteria: {name} ({flag}) must be a finite number {span}; got {value!r}. "
                    f"Fix: pass e.g. {flag} {example}."
                )
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict[str, float | None]:
        """The thresholds as a JSON-ready dict (field name: value)."""
        return asdict(self)


@dataclass(frozen=True)
class HumanReference:
    """Agreement of two human raters on a task: the yardstick of the degradation criterion and of the automated
    subset.

    Task-level figures are defined as in :mod:`scoreplex.decoding`'s routing fit: ``qwk`` is the mean over rubric
    dimensions of each dimension's QWK, ``exact`` the share of rows on which the raters agree on every dimension,
    ``adjacent`` the share within one point on every dimension.
    """

    source: str
    """``"data"`` (the evaluated file's second score) or ``"training"`` (the task module's record of the two raters
    on its training data)."""
    qwk: float
    exact: float | None = None
    adjacent: float | None = None
    n: int | None = None
    """Double-scored responses the figures come from (None when the record does not say)."""
    dimension_qwk: tuple[float | None, ...] | None = None
    """QWK per rubric dimension (source ``"data"``); None when only the task's figure is known, which then stands
    for every dimension."""

    def qwk_of(self, j: int) -> float | None:
        """Human-human QWK of dimension ``j``."""
        return self.qwk if self.dimension_qwk is None else self.dimension_qwk[j]


def standardized_mean_difference(human: Any, engine: Any) -> float:
    """Standardized mean difference (SMD) of engine scores from human scores of the same ``N`` responses.

    ::

        SMD = (mean(engine) - mean(human)) / sqrt((var(engine) + var(human)) / 2)

    with sample variances (``ddof=1``, as RSMTool's ``standardized_mean_difference``); population variances would
    multiply SMD by ``sqrt(N / (N - 1))``, a difference below 1 % from ``N = 51``. Positive: the engine scores higher
    than the humans on average. Reference: Williamson, Xi & Breyer (2012), who require ``|SMD| <= 0.15``.

    Args:
        human: ``(N,)`` human scores (the ``y_true`` of other metrics).
        engine: ``(N,)`` engine scores (the ``y_pred``).

    Returns:
        SMD in score-SD units. When both raters give one constant score each (pooled SD 0) it is 0.0 if the two
        constants are equal and ``±inf`` (sign of the difference) otherwise; never ``nan``.

    Raises:
        ConfigError: on non-1-D, unequal-length, non-numeric or non-finite input, or fewer than 2 responses.
    """
    what = "standardized_mean_difference"
    h, e = np.asarray(human), np.asarray(engine)
    if h.ndim != 1 or e.ndim != 1 or h.shape != e.shape:
        raise ConfigError(
            f"{what} needs two 1-D arrays of equal length (human, engine); got shapes {h.shape} and {e.shape}."
        )
    if not (np.issubdtype(h.dtype, np.number) and np.issubdtype(e.dtype, np.number)) or h.dtype == bool:
        raise ConfigError(f"{what} needs numeric scores; got dtypes {h.dtype} and {e.dtype}.")
    h, e = h.astype(np.float64), e.astype(np.float64)
    if h.size < 2:
        raise ConfigError(f"{what} needs at least 2 responses to estimate a variance; got {h.size}.")
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(e))):
        raise ConfigError(f"{what}: scores must be finite; found nan or inf. Drop or fix those responses first.")
    diff = float(e.mean() - h.mean())
    pooled_sd = math.sqrt((float(e.var(ddof=1)) + float(h.var(ddof=1))) / 2.0)
    if pooled_sd == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / pooled_sd


def task_agreement(
    spec: TaskSpec, t: np.ndarray, p: np.ndarray, *, undefined_qwk: float | None = 1.0
) -> dict[str, Any]:
    """Task-level agreement of validated ``(N, D)`` scores (``t`` may hold MISSING): QWK per dimension over its
    scored rows and their mean, exact and adjacent agreement on every dimension over the fully scored rows.

    ``undefined_qwk`` stands for a dimension's QWK where it is undefined (one class in both): None in reports (left
    out of the mean); the default 1.0 is for fits that compare agreements (the routing threshold of
    :mod:`scoreplex.decoding`), where a single class scored right on every response is full agreement."""
    dim_qwk: list[float | None] = []
    for j, dim in enumerate(spec.dimensions):
        rows = t[:, j] != MISSING
        q = _qwk_or_none(t[rows, j], p[rows, j], dim.num_classes)
        dim_qwk.append(undefined_qwk if q is None and rows.any() else q)
    complete = np.all(t != MISSING, axis=1)  # (N,)
    tc, pc = t[complete], p[complete]  # (M, D)
    return {
        "qwk": _mean_or_none(dim_qwk),
        "dimension_qwk": dim_qwk,
        "exact": float(np.mean(np.all(tc == pc, axis=1))) if complete.any() else None,
        "adjacent": float(np.mean(np.all(np.abs(tc - pc) <= 1, axis=1))) if complete.any() else None,
        "n": int(t.shape[0]),
    }


def reference_from_scores(spec: TaskSpec, first: Any, second: Any) -> HumanReference | None:
    """The human-human reference (source ``"data"``) from two raters' scores of the same responses.

    Args:
        spec: the task.
        first: ``(N, D)`` first-rater scores (the reference of every metric); ``-1`` marks a missing cell.
        second: ``(N, D)`` second-rater scores; a row with any ``-1`` is not double-scored and is left out.

    Returns:
        The reference over the double-scored rows, or None when there are none (or no dimension has a score).

    Raises:
        ConfigError: on shape mismatch or a score outside the rubric (other than ``-1``).
    """
    pair = _double_scored(spec, first, second)
    if pair is None:
        return None
    agr = task_agreement(spec, *pair, undefined_qwk=None)
    if agr["qwk"] is None:
        return None
    return HumanReference(
        source="data",
        qwk=agr["qwk"],
        exact=agr["exact"],
        adjacent=agr["adjacent"],
        n=agr["n"],
        dimension_qwk=tuple(agr["dimension_qwk"]),
    )


def training_reference(record: Any) -> HumanReference | None:
    """The human-human reference (source ``"training"``) from a task module's ``decoding.human`` record,
    ``{"qwk": float, "exact": float, "adjacent": float, "n": int}`` (see :mod:`scoreplex.decoding`).

    The record comes from a suite's ``task.json``, possibly written by someone else, so it is read defensively:
    anything but a mapping, or a ``qwk`` that is not a finite number in ``[-1, 1]``, gives None (no reference);
    an ``exact`` / ``adjacent`` outside ``[0, 1]`` or not a finite number, or an ``n`` that is not a non-negative
    integer, is left out (None). Never raises.
    """
    if not isinstance(record, Mapping):
        return None
    qwk = record.get("qwk")
    if not _is_real(qwk) or not -1.0 <= float(qwk) <= 1.0:
        return None

    def share(key: str) -> float | None:
        v = record.get(key)
        return float(v) if _is_real(v) and 0.0 <= float(v) <= 1.0 else None

    n = record.get("n")
    n_ok = isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 0
    return HumanReference(
        source="training", qwk=float(qwk), exact=share("exact"), adjacent=share("adjacent"), n=int(n) if n_ok else None
    )


def _check(value: float | None, threshold: float | None, kind: str) -> dict[str, Any]:
    """One criterion: ``{"value", "threshold", "pass"}``; ``pass`` is None when either is None. ``kind`` is
    ``"min"`` (value >= threshold), ``"max"`` (value <= threshold) or ``"max_abs"`` (|value| <= threshold)."""
    if value is None or threshold is None:
        passed = None
    elif kind == "min":
        passed = value >= threshold - _TOLERANCE
    elif kind == "max":
        passed = value <= threshold + _TOLERANCE
    else:
        passed = abs(value) <= threshold + _TOLERANCE
    return {"value": value, "threshold": threshold, "pass": passed}


def _all_pass(flags: Sequence[bool | None]) -> bool | None:
    """False if any flag is False, True if every available flag is True, None if none is available."""
    present = [f for f in flags if f is not None]
    if not present:
        return None
    return all(present)


_KINDS = {"qwk": "min", "degradation": "max", "smd": "max_abs", "exact": "min", "adjacent": "min"}
"""Each criterion and how its value is held against its threshold (also the order of the ``criteria`` dicts)."""


def _badness(entry: Mapping[str, Any], kind: str) -> float:
    """How far an entry is from passing: larger is worse (a failing entry without a value is the worst)."""
    v = entry["value"]
    if v is None:
        return math.inf
    return -v if kind == "min" else (abs(v) if kind == "max_abs" else v)


def _worst(per_dim: Mapping[str, Mapping[str, Any]], kind: str, threshold: float | None, many: bool) -> dict[str, Any]:
    """A task's criterion from its dimensions': the worst dimension's value, passing only if every dimension with a
    value passes (a dimension with no scored rows is left out)."""
    candidates = {n: e for n, e in per_dim.items() if e["value"] is not None or e["pass"] is False}
    out: dict[str, Any] = {"value": None, "threshold": threshold, "pass": None}
    if candidates:
        name = max(candidates, key=lambda n: _badness(candidates[n], kind))
        out = dict(candidates[name])
        out["pass"] = _all_pass([e["pass"] for e in per_dim.values()])
        if many:
            out["dimension"] = name
    return out


def _dimension_criteria(
    t: np.ndarray, p: np.ndarray, num_classes: int, human_qwk: float | None, criteria: Criteria
) -> dict[str, Any]:
    """Criteria of one rubric dimension on its scored rows ``t, p`` (``(n,)`` ints, no MISSING)."""
    n = int(t.size)
    qwk = _qwk_or_none(t, p, num_classes)
    exact = accuracy_score(t, p) if n else None
    adjacent = adjacent_agreement_score(t, p) if n else None
    smd = standardized_mean_difference(t, p) if n >= 2 else None
    degradation = human_qwk - qwk if human_qwk is not None and qwk is not None else None
    smd_check = _check(smd, criteria.max_smd, "max_abs")
    if smd is not None and not math.isfinite(smd):  # JSON has no inf: keep the verdict, say why there is no value
        smd_check = {
            "value": None,
            "threshold": criteria.max_smd,
            "pass": False,
            "note": "pooled SD is 0 (each rater gave one score to every response) and the two means differ",
        }
        smd = None
    checks = {
        "qwk": _check(qwk, criteria.min_qwk, "min"),
        "degradation": _check(degradation, criteria.max_degradation, "max"),
        "smd": smd_check,
        "exact": _check(exact, criteria.min_exact, "min"),
        "adjacent": _check(adjacent, criteria.min_adjacent, "min"),
    }
    return {
        "n": n,
        "qwk": qwk,
        "human_qwk": human_qwk,
        "degradation": degradation,
        "smd": smd,
        "exact": exact,
        "adjacent": adjacent,
        "criteria": checks,
        "pass": _all_pass([c["pass"] for c in checks.values()]),
    }


def deployment_criteria(
    spec: TaskSpec,
    y_true: Any,
    y_pred: Any,
    *,
    reference: HumanReference | None = None,
    criteria: Criteria | None = None,
) -> dict[str, Any]:
    """The deployment criteria of Williamson, Xi & Breyer (2012) for one task; the result is JSON-ready.

    Each criterion is computed per rubric dimension, on the rows where that dimension has a human score:
    engine-human QWK ``>= min_qwk``; degradation ``= human-human QWK - engine-human QWK <= max_degradation`` (needs
    a ``reference``); ``|SMD| <= max_smd`` (:func:`standardized_mean_difference`, needs 2 rows); exact and adjacent
    agreement ``>=`` their thresholds when set. A task meets a criterion only if every dimension does; its entry
    shows the worst dimension's value (and, for a multi-dimension task, that dimension's name).

    Args:
        spec: the task; its dimensions give the columns and class ranges.
        y_true: ``(N, D)`` human scores; ``-1`` marks a cell not scored (left out of that dimension).
        y_pred: ``(N, D)`` engine scores. ``N`` may be 0 (e.g. an automated subset that is empty): every value is
            then None.
        reference: the human-human agreement (:func:`reference_from_scores`, :func:`training_reference`); None
            leaves degradation unavailable. A reference with one task-level QWK (source ``"training"``) stands for
            every dimension.
        criteria: the thresholds (default :class:`Criteria`).

    Returns:
        ``{"n", "qwk", "human_qwk", "degradation", "smd", "exact", "adjacent", "human_exact", "human_adjacent",
        "human_n", "human_source", "criteria", "pass", "dimensions"}`` where

        * ``qwk`` is the mean QWK over dimensions, ``exact`` / ``adjacent`` the share of fully scored rows that
          agree exactly / within one point on every dimension (the definitions of :class:`HumanReference`, so they
          compare with ``human_*``), ``degradation = human_qwk - qwk`` and ``smd`` the worst dimension's SMD;
        * ``criteria`` maps ``qwk``, ``degradation``, ``smd``, ``exact``, ``adjacent`` to ``{"value", "threshold",
          "pass"}``; ``pass`` is None where the value or the threshold is unavailable;
        * ``pass`` is True when every available criterion passes, False when one fails, None when none is
          available;
        * ``dimensions`` maps each dimension name to its own ``n``, values, ``criteria`` and ``pass``.

        Every unavailable value (no scored row, QWK undefined because truth and prediction hold one and the same
        class, no reference, fewer than 2 rows for SMD) is None, never 0, 1 or nan.

    Raises:
        ConfigError: naming the task, on a shape mismatch or a score outside the rubric, or when ``reference`` /
            ``criteria`` are not a HumanReference / Criteria.
    """
    criteria = Criteria() if criteria is None else criteria
    if not isinstance(criteria, Criteria):
        raise ConfigError(f"deployment_criteria: criteria must be a Criteria; got {type(criteria).__name__}.")
    if reference is not None and not isinstance(reference, HumanReference):
        raise ConfigError(
            f"deployment_criteria: reference must be a HumanReference or None; got {type(reference).__name__}."
        )
    t = _task_scores(spec, y_true, "y_true", allow_missing=True)
    p = _task_scores(spec, y_pred, "y_pred", allow_missing=False)
    if t.shape != p.shape:
        raise ConfigError(f"task {spec.id!r}: y_true has shape {t.shape} but y_pred has shape {p.shape}.")

    dims: dict[str, dict[str, Any]] = {}
    for j, dim in enumerate(spec.dimensions):
        rows = t[:, j] != MISSING  # (N,)
        human_qwk = reference.qwk_of(j) if reference is not None else None
        dims[dim.name] = _dimension_criteria(t[rows, j], p[rows, j], dim.num_classes, human_qwk, criteria)

    many = len(dims) > 1
    thresholds = {
        "qwk": criteria.min_qwk,
        "degradation": criteria.max_degradation,
        "smd": criteria.max_smd,
        "exact": criteria.min_exact,
        "adjacent": criteria.min_adjacent,
    }
    checks = {
        name: _worst({d: m["criteria"][name] for d, m in dims.items()}, kind, thresholds[name], many)
        for name, kind in _KINDS.items()
    }
    agr = task_agreement(spec, t, p, undefined_qwk=None)
    human_qwk = reference.qwk if reference is not None else None
    return {
        "n": int(t.shape[0]),
        "qwk": agr["qwk"],
        "human_qwk": human_qwk,
        "degradation": human_qwk - agr["qwk"] if human_qwk is not None and agr["qwk"] is not None else None,
        "smd": checks["smd"]["value"],
        "exact": agr["exact"],
        "adjacent": agr["adjacent"],
        "human_exact": reference.exact if reference is not None else None,
        "human_adjacent": reference.adjacent if reference is not None else None,
        "human_n": reference.n if reference is not None else None,
        "human_source": reference.source if reference is not None else None,
        "criteria": checks,
        "pass": _all_pass([c["pass"] for c in checks.values()]),
        "dimensions": dims,
    }


def meets_human(engine: Mapping[str, Any], human: Mapping[str, Any]) -> bool:
    """Whether the engine's agreement with the human score (``{"qwk", "exact"}``) is at least a second human
    rater's on the same responses, in QWK and in exact agreement (Williamson, Xi & Breyer 2012), to
    :data:`_TOLERANCE`.

    QWK is undefined (None or ``nan``) when both raters of a pair give one and the same score to every response;
    the pair then agrees on every response, so its QWK counts as 1.0 here (the convention of
    :func:`quadratic_weighted_kappa`) and exact agreement decides. A side without an exact agreement does not
    meet."""

    def number(x: Any) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None

    e_exact, h_exact = number(engine.get("exact")), number(human.get("exact"))
    if e_exact is None or h_exact is None:
        return False
    e_qwk, h_qwk = number(engine.get("qwk")), number(human.get("qwk"))
    e_qwk = 1.0 if e_qwk is None else e_qwk
    h_qwk = 1.0 if h_qwk is None else h_qwk
    return e_qwk >= h_qwk - _TOLERANCE and e_exact >= h_exact - _TOLERANCE


def automated_criteria(
    spec: TaskSpec,
    y_true: Any,
    y_pred: Any,
    automated: Any,
    *,
    reference: HumanReference | None = None,
    criteria: Criteria | None = None,
) -> dict[str, Any]:
    """:func:`deployment_criteria` on the responses the engine scores alone (``automated``), held against
    ``reference``.

    Args:
        spec, y_true, y_pred, reference, criteria: as :func:`deployment_criteria`.
        automated: ``(N,)`` bool, True where the engine's score stands alone (route ``auto``,
            :attr:`scoreplex.predictions.Predictions.automated`).

    Returns:
        :func:`deployment_criteria`'s dict over the automated rows (``n`` = ``n_automated``; every value None when
        no response is automated), plus ``automation_rate`` (share of the ``N`` responses automated; None when
        ``N = 0``), ``n_automated``, and ``meets_human``: True when the automated responses agree with the human
        score at least as well as two humans do (:func:`meets_human`, the test :mod:`scoreplex.decoding` fits its
        routing threshold to), None when either side's exact agreement is unavailable.

        Give as ``reference`` the two raters' agreement on the automated responses themselves where it is known
        (:func:`scoreplex.scorer.automated_reference`): the engine automates the responses it is surest of, which
        span a narrower score range (lowering any rater pair's QWK) and tend to be easier for humans too.

    Raises:
        ConfigError: as :func:`deployment_criteria`, or when ``automated`` is not ``(N,)`` of booleans.
    """
    t = _task_scores(spec, y_true, "y_true", allow_missing=True)
    p = _task_scores(spec, y_pred, "y_pred", allow_missing=False)
    if t.shape != p.shape:
        raise ConfigError(f"task {spec.id!r}: y_true has shape {t.shape} but y_pred has shape {p.shape}.")
    mask = np.asarray(automated)
    if mask.shape != (t.shape[0],):
        raise ConfigError(
            f"task {spec.id!r}: automated has shape {mask.shape}; expected ({t.shape[0]},), one flag per response."
        )
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.number) and np.all(np.isin(mask, (0, 1)))):
            raise ConfigError(f"task {spec.id!r}: automated must hold booleans (or 0/1); got dtype {mask.dtype}.")
        mask = mask.astype(bool)
    sub = deployment_criteria(spec, t[mask], p[mask], reference=reference, criteria=criteria)
    n_auto = int(mask.sum())
    meets = None
    if None not in (sub["exact"], sub["human_exact"]):
        engine = {"qwk": sub["qwk"], "exact": sub["exact"]}
        meets = meets_human(engine, {"qwk": sub["human_qwk"], "exact": sub["human_exact"]})
    return {
        "automation_rate": n_auto / t.shape[0] if t.shape[0] else None,
        "n_automated": n_auto,
        **sub,
        "meets_human": meets,
    }
