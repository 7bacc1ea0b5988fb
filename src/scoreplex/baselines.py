"""Simple baselines every evaluation can be held against: the per-task lexical model and a length-only model.

A scoring engine earns its keep only by the margin over what a trivial model gets on the same data. Two baselines,
fitted per task on a training file, one model per rubric dimension:

* ``lexical``: :class:`scoreplex.lexical.LexicalModel`, word 1-2-gram + ``char_wb`` 2-5-gram TF-IDF and a logistic
  regression (the same model a suite stacks onto its neural head; one implementation);
* ``length``: :class:`LengthModel`, a logistic regression (L2, lbfgs, multinomial) on two features of a response,
  ``log(1 + words)`` and ``log(1 + characters)``, standardised with the training rows' mean and standard deviation.
  On essays and long answers length alone predicts much of the score (Page 1966; Chodorow & Burstein 2004,
  "Beyond essay length"), so an engine that does not beat it has learnt little beyond length.

:func:`evaluate_baselines` fits the registered baselines (:data:`BASELINES`) on training data and scores test data
with :func:`scoreplex.metrics.evaluate_task` (the columns of ``scoreplex evaluate``); :func:`add_baseline_margins`
adds them to a suite's evaluation report with the suite's margin over the better baseline per task
(``scoreplex evaluate SUITE TEST --baselines TRAIN``; ``scoreplex baseline TRAIN TEST`` without a suite).

**Storage, no pickle.** :meth:`LengthModel.to_tensors` gives float32 tensors and a JSON-ready config, like the
lexical model's; :meth:`LengthModel.from_tensors` validates every name, shape, dtype and value (raises
:class:`~scoreplex.errors.SuiteError`). Tensors (``C_d`` training classes of dimension ``d``)::

    length.mean                  (2,)        float32, finite (feature means of the training rows)
    length.scale                 (2,)        float32, finite, > 0 (their standard deviations, 1 where constant)
    length.dim.<name>.coef       (C_d, 2)    float32, finite (softmax form, see scoreplex.lexical)
    length.dim.<name>.intercept  (C_d,)      float32, finite
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError, DataError, ScoreplexError, SuiteError, unknown_name
from scoreplex.lexical import (
    LexicalModel,
    check_labels,
    check_texts,
    class_log_probs,
    fit_softmax_regression,
    stored_array,
    stored_dimensions,
)
from scoreplex.metrics import evaluate_task
from scoreplex.tasks import TaskSpec

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "FEATURES",
    "FORMAT",
    "TENSOR_PREFIX",
    "Baseline",
    "LengthConfig",
    "LengthModel",
    "add_baseline_margins",
    "evaluate_baselines",
    "get_baseline",
    "length_features",
]

FORMAT = "scoreplex.length/1"
"""Value of ``config["format"]`` of a stored :class:`LengthModel`; a different value is refused at load."""
TENSOR_PREFIX = "length."
"""Prefix of every tensor name :class:`LengthModel` writes or reads."""
FEATURES = ("log_words", "log_chars")
"""The length features, in column order (see :func:`length_features`)."""


def length_features(texts: Sequence[str]) -> np.ndarray:
    """``(N, 2)`` float64 features ``[log(1 + words), log(1 + characters)]`` of ``N`` texts.

    Words are whitespace-separated tokens; characters are counted after stripping leading and trailing whitespace.

    Raises:
        DataError: if ``texts`` is a single string or holds a non-string.
    """
    texts = check_texts(texts, None)
    words = np.array([len(t.split()) for t in texts], dtype=np.float64)  # (N,)
    chars = np.array([len(t.strip()) for t in texts], dtype=np.float64)  # (N,)
    return np.log1p(np.stack([words, chars], axis=1)) if texts else np.zeros((0, len(FEATURES)))


@dataclass(frozen=True)
class LengthConfig:
    """How to fit a :class:`LengthModel`."""

    C: float = 1.0
    """Inverse L2 strength of the logistic regression (on standardised features)."""
    max_iter: int = 1000
    """lbfgs iteration cap."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.C, bool)
            or not isinstance(self.C, (int, float))
            or not (math.isfinite(self.C) and self.C > 0)
        ):
            raise ConfigError(f"C={self.C!r}; expected a positive number, e.g. 1.0.")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ConfigError(f"max_iter={self.max_iter!r}; expected a positive integer, e.g. 1000.")


class LengthModel:
    """A length-only scorer for one task: per rubric dimension, a logistic regression on :func:`length_features`.

    Build with :meth:`fit` or :meth:`from_tensors`; score with :meth:`log_probs` / :meth:`predict`. Attributes:
    ``dimension_names`` and ``class_counts`` (``K_d``); ``mean``, ``scale`` ``(2,)`` float32 (standardisation);
    per dimension ``classes`` ``(C_d,)`` int64 (seen in training), ``coef`` ``(C_d, 2)`` and ``intercept``
    ``(C_d,)`` float32 in softmax form; ``info`` (JSON-ready facts about the fit).
    """

    def __init__(
        self,
        *,
        dimension_names: Sequence[str],
        class_counts: Sequence[int],
        mean: np.ndarray,
        scale: np.ndarray,
        classes: Sequence[np.ndarray],
        coef: Sequence[np.ndarray],
        intercept: Sequence[np.ndarray],
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.dimension_names = list(dimension_names)
        self.class_counts = [int(k) for k in class_counts]
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.classes = [np.asarray(c, dtype=np.int64) for c in classes]
        self.coef = [np.ascontiguousarray(w, dtype=np.float32) for w in coef]
        self.intercept = [np.ascontiguousarray(b, dtype=np.float32) for b in intercept]
        self.info = dict(info or {})

    @classmethod
    def fit(
        cls, spec: TaskSpec, texts: Sequence[str], labels: np.ndarray, config: LengthConfig | None = None
    ) -> LengthModel:
        """Fit one logistic regression per dimension of ``spec`` on the length features of ``texts``.

        Args:
            spec: the task; its dimensions give the label columns and class ranges ``0..K_d-1``.
            texts: ``N`` training responses.
            labels: ``(N, D)`` int scores (``(N,)`` for one dimension); ``-1`` = not scored, that row is left out of
                that dimension's regression.
            config: fit settings (default :class:`LengthConfig`).

        Raises:
            DataError: a text that is not a string, labels of the wrong shape or outside ``-1..K_d-1``, or a
                dimension with no scored row.
        """
        config = config or LengthConfig()
        texts = check_texts(texts, spec.id)
        y_all = check_labels(labels, spec, len(texts))
        t0 = time.perf_counter()
        x = length_features(texts)  # (N, 2)
        mean = x.mean(axis=0) if len(texts) else np.zeros(len(FEATURES))
        std = x.std(axis=0) if len(texts) else np.ones(len(FEATURES))
        scale = np.where(std > 1e-6, std, 1.0)  # a constant feature carries no information; keep it finite
        mean, scale = mean.astype(np.float32), scale.astype(np.float32)
        z = (x - mean) / scale  # (N, 2), with the float32 values that are stored
        classes, coef, intercept, dims = [], [], [], []
        for d, dim in enumerate(spec.dimensions):
            rows = y_all[:, d] >= 0
            if not rows.any():
                raise DataError(
                    f"dimension {dim.name!r} has no scored training row, so no length model can be fitted for it.",
                    task=spec.id,
                    fix="score some training responses on it.",
                )
            c, w, b = fit_softmax_regression(z[rows], y_all[rows, d], C=float(config.C), max_iter=config.max_iter)
            classes.append(c)
            coef.append(w)
            intercept.append(b)
            dims.append({"name": dim.name, "rows": int(rows.sum()), "classes": c.tolist()})
        info = {
            "config": asdict(config),
            "dimensions": dims,
            "train_rows": len(texts),
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        return cls(
            dimension_names=spec.dimension_names,
            class_counts=spec.class_counts,
            mean=mean,
            scale=scale,
            classes=classes,
            coef=coef,
            intercept=intercept,
            info=info,
        )

    def log_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per-dimension class log-probabilities ``[(N, K_d)]`` float64, columns in class order ``0..K_d-1`` (a class
        absent from training gets :data:`scoreplex.lexical.ABSENT_LOG_PROB`). Raises DataError on a non-string."""
        z = (length_features(texts) - self.mean.astype(np.float64)) / self.scale.astype(np.float64)  # (N, 2)
        out = []
        for classes, w, b, k in zip(self.classes, self.coef, self.intercept, self.class_counts, strict=True):
            out.append(class_log_probs(z @ w.T.astype(np.float64) + b.astype(np.float64), classes, k))  # (N, K_d)
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` int64 argmax scores."""
        lp = self.log_probs(texts)
        return np.stack([p.argmax(axis=1) for p in lp], axis=1) if lp else np.zeros((0, 0), np.int64)

    # ------------------------------------------------------------------------------------------------------- storage

    def to_tensors(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, config)``: float32 torch tensors named ``length.*`` (see the module docstring) and a JSON-ready
        dict with the format tag, the feature names and, per dimension, its name, class count and training classes."""
        import torch

        tensors = {
            f"{TENSOR_PREFIX}mean": torch.from_numpy(self.mean.copy()),
            f"{TENSOR_PREFIX}scale": torch.from_numpy(self.scale.copy()),
        }
        dims = []
        for name, k, c, w, b in zip(
            self.dimension_names, self.class_counts, self.classes, self.coef, self.intercept, strict=True
        ):
            tensors[f"{TENSOR_PREFIX}dim.{name}.coef"] = torch.from_numpy(w.copy())
            tensors[f"{TENSOR_PREFIX}dim.{name}.intercept"] = torch.from_numpy(b.copy())
            dims.append({"name": name, "num_classes": k, "classes": c.tolist()})
        config = {"format": FORMAT, "features": list(FEATURES), "dimensions": dims, "info": self.info}
        return tensors, config

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Any], config: Mapping[str, Any], *, spec: TaskSpec | None = None
    ) -> LengthModel:
        """Rebuild a model written by :meth:`to_tensors`, validating everything first (it may come from a stranger).

        Only tensor names starting with ``length.`` are read, and every such name must be expected. With ``spec``,
        the stored dimensions must equal the task's (names, order, class counts).

        Raises:
            SuiteError: naming the tensor or config key, on a wrong format tag or feature list, a missing /
                unexpected tensor, a non-tensor, a wrong dtype or shape, a non-finite value, a scale <= 0, classes
                outside ``0..K_d-1``, or a mismatch with ``spec``.
        """
        if not isinstance(config, Mapping):
            raise _bad(f"the config is a {type(config).__name__}, expected a JSON object.")
        if config.get("format") != FORMAT:
            raise _bad(f"config format is {config.get('format')!r}; this version reads {FORMAT!r}.")
        if config.get("features") != list(FEATURES):
            raise _bad(f"config features are {config.get('features')!r}; this version computes {list(FEATURES)}.")
        if not isinstance(tensors, Mapping):
            raise _bad(f"the tensors are a {type(tensors).__name__}, expected a mapping of names to tensors.")
        ours = {k: t for k, t in tensors.items() if isinstance(k, str) and k.startswith(TENSOR_PREFIX)}
        used: set[str] = set()

        def array(name: str, shape: tuple[int, ...]) -> np.ndarray:
            used.add(name)
            return stored_array(ours, name, shape, _bad)

        mean = array(f"{TENSOR_PREFIX}mean", (len(FEATURES),))
        scale = array(f"{TENSOR_PREFIX}scale", (len(FEATURES),))
        if (scale <= 0).any():
            raise _bad(f"tensor {TENSOR_PREFIX}scale holds values <= 0; a standard deviation scale is positive.")
        names, counts, classes, coef, intercept = stored_dimensions(
            config, array, TENSOR_PREFIX, len(FEATURES), spec, _bad
        )
        extra = sorted(set(ours) - used)
        if extra:
            raise _bad(f"unexpected length tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}.")
        info = config.get("info", {})
        return cls(
            dimension_names=names,
            class_counts=counts,
            mean=mean,
            scale=scale,
            classes=classes,
            coef=coef,
            intercept=intercept,
            info=info if isinstance(info, Mapping) else {},
        )


def _bad(message: str) -> SuiteError:
    return SuiteError(f"length model: {message} Fix: refit the length model or restore its files.")


# --------------------------------------------------------------------------------------------------------------------
# The registry and the evaluation
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: a name, a line saying what it is, and how to fit it on one task's training rows."""

    name: str
    """Registry key, used in reports (``"lexical"``, ``"length"``)."""
    description: str
    """One line for reports."""
    fit: Callable[[TaskSpec, list[str], np.ndarray], Any]
    """``fit(spec, texts (N,), labels (N, D)) -> model`` with ``predict(texts) -> (N, D)`` int scores."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"baseline name {self.name!r}; expected an identifier such as 'lexical'.")
        if not callable(self.fit):
            raise ConfigError(f"baseline {self.name!r}: fit must be callable (spec, texts, labels) -> model.")


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "lexical",
            "per-task TF-IDF (word 1-2-grams + character 2-5-grams) + logistic regression (scoreplex.lexical)",
            lambda spec, texts, labels: LexicalModel.fit(spec, texts, labels),
        ),
        Baseline(
            "length",
            "logistic regression on log word count and log character count (scoreplex.baselines.LengthModel)",
            lambda spec, texts, labels: LengthModel.fit(spec, texts, labels),
        ),
    )
}
"""The baselines :func:`evaluate_baselines` fits by default, in report order."""


def get_baseline(name: str) -> Baseline:
    """The registered baseline ``name``; UnknownNameError listing the valid names otherwise."""
    if name not in BASELINES:
        raise unknown_name("baseline", name, list(BASELINES))
    return BASELINES[name]


def evaluate_baselines(
    train: Mapping[str, TaskData], test: Mapping[str, TaskData], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Fit each baseline per task on ``train`` and evaluate it on ``test`` (every task of ``test``).

    A baseline that cannot be fitted on a task (e.g. the lexical model on texts where no term occurs twice) is
    reported with ``"qwk": None`` and the reason under ``"skipped"``, and a warning is logged; the others go on.

    Args:
        train: ``{task id: TaskData}`` scored training responses.
        test: ``{task id: TaskData}`` scored test responses; each task must be in ``train`` with the same spec.
        names: baselines to fit (default: every one in :data:`BASELINES`, in order).

    Returns:
        JSON-ready ``{"baselines": {name: description}, "tasks": {task id: {"n", "n_train", <name>: metrics, ...,
        "best", "best_qwk"}}, "mean_qwk": {name: mean over the tasks it was measured on, or None}}``, where each
        baseline's metrics are :func:`~scoreplex.metrics.evaluate_task`'s plus ``"fit_seconds"``, and ``"best"`` is
        the baseline with the highest test QWK on that task (None if none was measured).

    Raises:
        UnknownNameError: an unknown baseline name.
        DataError: unscored training or test data, or a test task missing from ``train`` or with another spec.
    """
    chosen = [get_baseline(n) for n in (list(BASELINES) if names is None else names)]
    tasks: dict[str, Any] = {}
    for task_id, data in test.items():
        fit_on = _training_rows(train, task_id, data)
        entry: dict[str, Any] = {"n": len(data), "n_train": len(fit_on)}
        for baseline in chosen:
            entry[baseline.name] = _evaluate_one(baseline, fit_on, data)
        measured = {b.name: entry[b.name]["qwk"] for b in chosen if entry[b.name].get("qwk") is not None}
        entry["best"] = max(measured, key=measured.__getitem__) if measured else None
        entry["best_qwk"] = measured[entry["best"]] if measured else None
        tasks[task_id] = entry
    means = {}
    for b in chosen:
        values = [t[b.name]["qwk"] for t in tasks.values() if t[b.name].get("qwk") is not None]
        means[b.name] = float(np.mean(values)) if values else None
    return {"baselines": {b.name: b.description for b in chosen}, "tasks": tasks, "mean_qwk": means}


def _training_rows(train: Mapping[str, TaskData], task_id: str, test: TaskData) -> TaskData:
    """The scored training data of ``task_id``, checked against the test data's spec."""
    where = {"task": task_id, "file": test.source or None}
    if not test.has_labels:
        raise DataError("the baselines are evaluated on scored responses; this test data has no scores.", **where)
    fit_on = train.get(task_id)
    if fit_on is None:
        raise DataError(
            f"the test data has task {task_id!r} but the training data for the baselines does not "
            f"(it has {', '.join(train) or 'no task'}).",
            **where,
            fix="give a training file with scored responses of every task in the test file.",
        )
    if not fit_on.has_labels:
        raise DataError(
            "the baselines are fitted on scored responses; this training data has no scores.",
            task=task_id,
            file=fit_on.source or None,
            fix="give the score column(s) with --label.",
        )
    if fit_on.spec.dimensions != test.spec.dimensions:
        raise DataError(
            f"the training data's rubric {fit_on.spec.to_dict()['dimensions']} differs from the test data's "
            f"{test.spec.to_dict()['dimensions']}.",
            **where,
            fix="read both files with the same task specs (--tasks).",
        )
    return fit_on


def _evaluate_one(baseline: Baseline, train: TaskData, test: TaskData) -> dict[str, Any]:
    """One baseline on one task: fit on ``train``, :func:`evaluate_task` on ``test``; skipped (qwk None) if it
    cannot be fitted."""
    t0 = time.perf_counter()
    try:
        model = baseline.fit(train.spec, list(train.texts), train.labels)
    except ScoreplexError as exc:
        log.warning("baseline %s skipped on task %s: %s", baseline.name, train.spec.id, exc)
        return {"qwk": None, "skipped": str(exc)}
    seconds = round(time.perf_counter() - t0, 3)
    metrics = evaluate_task(test.spec, test.labels, model.predict(list(test.texts)))
    return {**metrics, "fit_seconds": seconds}


def add_baseline_margins(report: dict[str, Any], baselines: Mapping[str, Any], *, train_source: str = "") -> None:
    """Add :func:`evaluate_baselines`'s ``baselines`` result to a suite's evaluation ``report``, in place.

    Each task of ``report["tasks"]`` gets ``"baselines": {<name>: {"qwk"}, ..., "best", "best_qwk", "margin"}``,
    where ``margin`` is the suite's QWK minus the better baseline's (None when either is undefined), and the report
    gets ``"baselines": {"train", "description", "mean_qwk", "mean_margin", "tasks_ahead", "tasks_compared"}``
    (``tasks_ahead``: tasks with a margin > 0). Raises DataError if a task of the report has no baseline result.
    """
    margins = []
    for task_id, metrics in report["tasks"].items():
        entry = baselines["tasks"].get(task_id)
        if entry is None:
            raise DataError("the baselines were not evaluated on this task.", task=task_id)
        names = list(baselines["baselines"])
        suite_qwk, best_qwk = metrics.get("qwk"), entry["best_qwk"]
        margin = None if suite_qwk is None or best_qwk is None else float(suite_qwk - best_qwk)
        metrics["baselines"] = {
            **{
                n: {"qwk": entry[n].get("qwk"), **({"skipped": entry[n]["skipped"]} if "skipped" in entry[n] else {})}
                for n in names
            },
            "best": entry["best"],
            "best_qwk": best_qwk,
            "margin": margin,
        }
        if margin is not None:
            margins.append(margin)
    report["baselines"] = {
        "train": train_source,
        "description": dict(baselines["baselines"]),
        "mean_qwk": dict(baselines["mean_qwk"]),
        "mean_margin": float(np.mean(margins)) if margins else None,
        "tasks_ahead": sum(m > 0 for m in margins),
        "tasks_compared": len(margins),
    }
