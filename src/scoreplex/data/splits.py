"""Deterministic, stratified train / validation / test splits of one task's responses.

A split depends only on the response ids, their labels and the seed, never on the order of the rows: responses are
sorted by id before splitting and each part is returned sorted by id, so shuffling the input file changes nothing.

Stratification keeps each part's label distribution close to the whole. It tries, in order:

1. the joint label over all rubric dimensions (:meth:`TaskData.stratum_keys`);
2. the first dimension's label alone;
3. no stratification,

taking the first level at which every stratum has at least 2 members and both parts are at least as large as the
number of strata (what :func:`sklearn.model_selection.train_test_split` needs). Unscored data is split unstratified.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np

from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name}={value!r} must be a fraction strictly between 0 and 1, e.g. 0.1.")
    return float(value)


def _count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)`` as sklearn rounds a float test size, minus float noise (0.1 * 30 = 3.0000000000000004)."""
    return math.ceil(round(fraction * n, 9))


def _strata(data: TaskData, order: np.ndarray, n_test: int) -> list[str] | None:
    """Stratum key per response (in ``order``), or ``None`` for an unstratified split; see the module docstring."""
    if data.labels is None:
        return None
    n_train = len(order) - n_test
    joint = data.stratum_keys()
    first = [str(int(v)) for v in data.labels[:, 0]]
    for level, keys in (("joint label", joint), ("first dimension", first)):
        keys = [keys[i] for i in order]
        counts = Counter(keys)
        if len(counts) < 2:
            return None  # a single stratum: stratifying changes nothing
        if min(counts.values()) >= 2 and min(n_test, n_train) >= len(counts):
            if level != "joint label":
                log.info("task %s: stratifying on the %s (some joint label is too rare)", data.spec.id, level)
            return keys
    log.info("task %s: split unstratified (some label has fewer than 2 responses)", data.spec.id)
    return None


def _check_unique_ids(data: TaskData) -> None:
    """A split is by response id: DataError when the ids are not unique."""
    if len(set(data.ids)) != len(data):
        raise DataError(
            "response ids are not unique, so a split by id is ambiguous.",
            task=data.spec.id,
            fix="give every response a unique id.",
        )


def _split(data: TaskData, n_test: int, seed: int, what: str) -> tuple[TaskData, TaskData]:
    """Split ``n_test`` responses off ``data``; both parts sorted by id. ``what`` names the fraction for errors."""
    from sklearn.model_selection import train_test_split

    n = len(data)
    _check_unique_ids(data)
    if n_test < 1 or n_test >= n:
        raise DataError(
            f"cannot split {n} responses by {what}: each part needs at least one response ({n_test} of {n} asked).",
            task=data.spec.id,
            fix=f"add responses or change {what}.",
        )
    order = np.array(sorted(range(n), key=data.ids.__getitem__), dtype=np.int64)  # row positions in id order
    stratify = _strata(data, order, n_test)
    train_pos, test_pos = train_test_split(
        np.arange(n), test_size=n_test, random_state=seed, shuffle=True, stratify=stratify
    )
    # positions index into `order`; sorting them returns each part in id order
    return data.subset(order[np.sort(train_pos)]), data.subset(order[np.sort(test_pos)])


def train_val_split(data: TaskData, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[TaskData, TaskData]:
    """Split one task's responses into ``(train, val)``, stratified on the labels and deterministic by seed.

    ``ceil(val_fraction * N)`` responses go to validation. Both parts are sorted by response id; the result is the
    same for any order of the input rows. Raises :class:`ConfigError` for a fraction outside (0, 1) and
    :class:`DataError` for duplicate ids or too few responses.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    return _split(data, _count(val_fraction, len(data)), seed, "val_fraction")


def train_val_test_split(
    data: TaskData, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[TaskData, TaskData, TaskData]:
    """Split one task's responses into ``(train, val, test)`` (80/10/10 by default), stratified and deterministic.

    The test part (``ceil(test_fraction * N)`` responses) is split off first, then ``ceil(val_fraction * N)``
    responses for validation from the rest. Parts are sorted by response id and disjoint, and together hold
    every response.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves nothing to train on; "
            "keep their sum below 1 (e.g. 0.1 and 0.1)."
        )
    n = len(data)
    rest, test = _split(data, _count(test_fraction, n), seed, "test_fraction")
    train, val = _split(rest, _count(val_fraction, n), seed, "val_fraction")
    return train, val, test


def validation_shortfall(val: TaskData, *, min_rows: int) -> str | None:
    """Why ``val`` is too small to choose a task's number of epochs on, or None when it is not.

    A validation split is too small when it has fewer than ``min_rows`` responses (QWK on 2-3 responses is 0 or 1
    by chance), or when a rubric dimension has at most one class among its scored responses (QWK is undefined or
    degenerate there). ``min_rows=0`` checks only the classes. Returns a short phrase for warnings, e.g.
    ``"3 validation responses (fewer than 20)"``.
    """
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 0:
        raise ConfigError(f"min_rows={min_rows!r} must be a whole number >= 0, e.g. 20 (0 checks only the classes).")
    reasons = []
    if len(val) < min_rows:
        reasons.append(f"{len(val)} validation responses (fewer than {min_rows})")
    if val.labels is not None:
        for j, dim in enumerate(val.spec.dimensions):
            scored = val.labels[:, j][val.labels[:, j] >= 0]
            if np.unique(scored).size < 2:
                reasons.append(f"one class or none in validation on dimension {dim.name!r}")
    return "; ".join(reasons) or None


def kfold_split(data: TaskData, *, folds: int = 5, seed: int = 0) -> list[tuple[TaskData, TaskData]]:
    """``folds`` disjoint ``(train, val)`` pairs of one task's responses: each response is in exactly one ``val``.

    For choosing the number of epochs of a task whose own validation split would be too small
    (:func:`validation_shortfall`): every response is validated on once, out of fold. Stratified on the first
    dimension's label when every class has at least ``folds`` responses
    (:class:`sklearn.model_selection.StratifiedKFold`), else unstratified (:class:`~sklearn.model_selection.KFold`);
    shuffled by ``seed``. Like :func:`train_val_split` it depends only on the ids, labels and seed, never on the row
    order, and each part is sorted by id.

    Raises:
        ConfigError: ``folds`` below 2.
        DataError: duplicate ids, or fewer responses than ``folds``.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds={folds!r} must be a whole number >= 2, e.g. 5.")
    n = len(data)
    _check_unique_ids(data)
    if n < folds:
        raise DataError(f"cannot split {n} responses into {folds} folds.", task=data.spec.id, fix="use fewer folds.")
    order = np.array(sorted(range(n), key=data.ids.__getitem__), dtype=np.int64)
    y = None
    if data.labels is not None:
        first = data.labels[order, 0]
        counts = Counter(first.tolist())
        if len(counts) > 1 and min(counts.values()) >= folds:
            y = first
    splitter = (StratifiedKFold if y is not None else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    parts = splitter.split(np.zeros(n), y) if y is not None else splitter.split(np.zeros(n))
    return [(data.subset(order[np.sort(tr)]), data.subset(order[np.sort(va)])) for tr, va in parts]
