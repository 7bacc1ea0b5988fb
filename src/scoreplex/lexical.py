"""Lexical evidence for stacking: a per-task TF-IDF + logistic-regression model whose log-probabilities join the
neural head's.

**Model.** One feature space per task, two scikit-learn ``TfidfVectorizer`` s fitted on the task's training texts
(unsupervised, so every dimension shares them and the engine transforms each text once):

* ``word``: word 1-2-grams; ``char``: ``char_wb`` 2-5-grams (character n-grams inside word boundaries, robust to the
  misspellings of student answers); both ``sublinear_tf`` (``1 + log tf``), ``min_df=2``, at most ``max_features``
  columns each, rows L2-normalised;
* features ``X = [X_word | X_char]``, ``(N, F)`` with ``F = F_word + F_char`` (``scipy.sparse.hstack``).

Per rubric dimension ``d`` a ``LogisticRegression`` (L2, lbfgs; multinomial for 3+ classes, binomial for 2) is fitted
on the rows scored on ``d``. Its parameters are kept in *softmax form*: ``W_d`` ``(C_d, F)`` and ``b_d`` ``(C_d,)``
over the ``C_d`` classes seen in training, with ``log p_d(c | x) = log_softmax(x W_d^T + b_d)_c``. A binomial model
(``coef (1, F)``, ``P(1) = sigmoid(x w + b)``) becomes ``W = [0; w]``, ``b = [0, b]``, which is the same
distribution. A class of ``0..K_d-1`` absent from training gets log-probability :data:`ABSENT_LOG_PROB` for every
text (the model has no evidence for it; ``exp(-30) ~ 1e-13``, so the row still sums to 1 within 1e-12 and sums with
the neural log-probabilities stay finite); a dimension with a single training class predicts it with certainty.

**Stacking.** For one task, per dimension: ``s_d = log_softmax(log p_neural_d + w * log p_lex_d)``, one weight ``w``
per task chosen on validation by :func:`stack_weight` (it returns 0, i.e. "drop the lexical model", unless a
cross-fitted check says it helps). This is a product of experts with the lexical expert tempered by ``w``.

**Storage, no pickle.** :meth:`LexicalModel.to_tensors` gives tensors (prefix ``lexical.``, so they can sit in a task
module next to the neural ones) and a JSON-ready config holding the vocabularies (term -> column) and vectorizer
settings; :meth:`LexicalModel.from_tensors` rebuilds ``TfidfVectorizer(vocabulary=..., same settings)`` with the
stored ``idf_`` after validating every shape, dtype, value and type (a suite can come from a stranger) and raises
:class:`~scoreplex.errors.SuiteError` on anything inconsistent. Parameters are stored as float32 and the fitted model
uses the same float32 values, so a loaded model reproduces the fitted one's log-probabilities.

Tensors (``F_v`` columns of vectorizer ``v``, ``C_d`` training classes of dimension ``d``)::

    lexical.vectorizer.word.idf     (F_word,)     float32, finite, > 0
    lexical.vectorizer.char.idf     (F_char,)     float32, finite, > 0
    lexical.dim.<name>.coef         (C_d, F)      float32, finite (softmax form, see above)
    lexical.dim.<name>.intercept    (C_d,)        float32, finite

References: Salton & Buckley (1988), "Term-weighting approaches in automatic text retrieval" (TF-IDF); Heilman &
Madnani (2013), "ETS: Domain adaptation and stacking for short answer scoring" (SemEval) for n-gram features plus
stacking in short-answer scoring; Wolpert (1992), "Stacked generalization".
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scoreplex.errors import ConfigError, DataError, SuiteError
from scoreplex.tasks import TaskSpec

log = logging.getLogger(__name__)

__all__ = [
    "ABSENT_LOG_PROB",
    "FORMAT",
    "TENSOR_PREFIX",
    "WEIGHT_GRID",
    "LexicalConfig",
    "check_labels",
    "check_texts",
    "class_log_probs",
    "fit_softmax_regression",
    "stored_array",
    "stored_dimensions",
    "LexicalModel",
    "STACK_RULE",
    "combine_log_probs",
    "stack_weight",
]

FORMAT = "scoreplex.lexical/1"
"""Value of ``config["format"]``; a different value is refused at load."""
TENSOR_PREFIX = "lexical."
"""Prefix of every tensor name this module writes or reads."""
ABSENT_LOG_PROB = -30.0
"""Log-probability given to a class the lexical model never saw in training (see the module docstring)."""
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(16))
"""Stacking weights tried by :func:`stack_weight`: 0, 0.1, ..., 1.5."""

_VECTORIZERS = ("word", "char")
_ANALYZERS = {"word": "word", "char": "char_wb"}
_TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default; fixed (a stored regex from a stranger is not run)
_SETTING_KEYS = ("analyzer", "ngram_range", "lowercase", "sublinear_tf", "norm", "token_pattern")
_MAX_NGRAM = 10


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LexicalConfig:
    """How to fit a :class:`LexicalModel`."""

    word_ngram: tuple[int, int] = (1, 2)
    """Word n-gram range (inclusive)."""
    char_ngram: tuple[int, int] = (2, 5)
    """Character n-gram range of the ``char_wb`` analyzer (inclusive)."""
    min_df: int = 2
    """Keep a term only if at least this many training texts contain it."""
    max_features: int = 20000
    """Column cap per vectorizer (the most frequent terms are kept)."""
    sublinear_tf: bool = True
    """Use ``1 + log(tf)`` instead of the raw count."""
    lowercase: bool = True
    """Lowercase texts before extracting terms."""
    C: float | None = 4.0
    """Inverse L2 strength of the logistic regression; ``None`` picks it per dimension from ``C_grid`` by a
    stratified ``cv_folds``-fold CV on the training rows, maximising QWK (``docs/results/lexical.md`` compares)."""
    C_grid: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0)
    """Candidates for ``C`` when ``C is None``."""
    cv_folds: int = 3
    """Folds of the internal CV (only when ``C is None``)."""
    max_iter: int = 1000
    """lbfgs iteration cap."""
    seed: int = 0
    """Seed of the internal CV's fold assignment."""

    def __post_init__(self) -> None:
        for name in ("word_ngram", "char_ngram"):
            r = getattr(self, name)
            if not (isinstance(r, tuple) and len(r) == 2 and all(isinstance(v, int) for v in r)) or not (
                1 <= r[0] <= r[1] <= _MAX_NGRAM
            ):
                raise ConfigError(f"{name}={r!r}; expected a pair (lo, hi) of integers with 1 <= lo <= hi <= 10.")
        for name in ("min_df", "max_features", "max_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}; expected a positive integer.")
        if self.C is not None and not (isinstance(self.C, (int, float)) and math.isfinite(self.C) and self.C > 0):
            raise ConfigError(f"C={self.C!r}; expected a positive number, or None to choose it from C_grid by CV.")
        if not self.C_grid or not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in self.C_grid):
            raise ConfigError(f"C_grid={self.C_grid!r}; expected a non-empty tuple of positive numbers.")
        if isinstance(self.cv_folds, bool) or not isinstance(self.cv_folds, int) or self.cv_folds < 2:
            raise ConfigError(f"cv_folds={self.cv_folds!r}; expected an integer >= 2.")


def _settings(name: str, config: LexicalConfig) -> dict[str, Any]:
    """The ``TfidfVectorizer`` keyword arguments (besides vocabulary / min_df / max_features) of vectorizer ``name``."""
    return {
        "analyzer": _ANALYZERS[name],
        "ngram_range": list(config.word_ngram if name == "word" else config.char_ngram),
        "lowercase": config.lowercase,
        "sublinear_tf": config.sublinear_tf,
        "norm": "l2",
        "token_pattern": _TOKEN_PATTERN,
    }


def _vectorizer(settings: Mapping[str, Any], **extra: Any):
    from sklearn.feature_extraction.text import TfidfVectorizer

    kw = dict(settings)
    kw["ngram_range"] = tuple(kw["ngram_range"])
    return TfidfVectorizer(dtype=np.float64, **kw, **extra)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class LexicalModel:
    """TF-IDF (word + character n-grams) and one logistic regression per rubric dimension, for one task.

    Build with :meth:`fit` or :meth:`from_tensors`; score with :meth:`log_probs`. Attributes:

    * ``dimension_names``, ``class_counts``: the task's dimensions in order and their ``K_d``;
    * ``classes``: per dimension, the ``(C_d,)`` int64 classes seen in training (sorted, a subset of ``0..K_d-1``);
    * ``coef`` ``[(C_d, F)]``, ``intercept`` ``[(C_d,)]``: float32 softmax-form parameters;
    * ``info``: JSON-ready facts about the fit (settings, chosen ``C`` per dimension, rows, seconds).
    """

    def __init__(
        self,
        *,
        dimension_names: Sequence[str],
        class_counts: Sequence[int],
        vectorizers: Mapping[str, Any],
        settings: Mapping[str, Mapping[str, Any]],
        classes: Sequence[np.ndarray],
        coef: Sequence[np.ndarray],
        intercept: Sequence[np.ndarray],
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.dimension_names = list(dimension_names)
        self.class_counts = [int(k) for k in class_counts]
        self.vectorizers = dict(vectorizers)
        self.settings = {k: dict(v) for k, v in settings.items()}
        self.classes = [np.asarray(c, dtype=np.int64) for c in classes]
        self.coef = [np.ascontiguousarray(w, dtype=np.float32) for w in coef]
        self.intercept = [np.ascontiguousarray(b, dtype=np.float32) for b in intercept]
        self.info = dict(info or {})

    @property
    def num_features(self) -> int:
        """``F``: columns of the combined feature matrix."""
        return sum(len(self.vectorizers[v].vocabulary_) for v in _VECTORIZERS)

    # ----------------------------------------------------------------------------------------------------------- fit

    @classmethod
    def fit(
        cls,
        spec: TaskSpec,
        texts: Sequence[str],
        labels: np.ndarray,
        config: LexicalConfig | None = None,
    ) -> LexicalModel:
        """Fit the vectorizers on ``texts`` and one logistic regression per dimension of ``spec``.

        Args:
            spec: the task; its dimensions give the label columns and class ranges ``0..K_d-1``.
            texts: ``N`` training responses.
            labels: ``(N, D)`` int scores (``(N,)`` for one dimension); ``-1`` = not scored, that row is left out of
                that dimension's regression (it still counts for the vocabulary and idf, which use no labels).
            config: fit settings (default :class:`LexicalConfig`).

        Raises:
            DataError: a text that is not a string, labels of the wrong shape or outside ``-1..K_d-1``, a dimension
                with no scored row, or texts too few / too short for any term to reach ``min_df``.
        """
        from scipy import sparse

        config = config or LexicalConfig()
        texts = check_texts(texts, spec.id)
        y_all = check_labels(labels, spec, len(texts))
        for d, dim in enumerate(spec.dimensions):
            if not (y_all[:, d] >= 0).any():
                raise DataError(
                    f"dimension {dim.name!r} has no scored training row, so no lexical model can be fitted for it.",
                    task=spec.id,
                    fix="score some training responses on it, or do not stack a lexical model for this task.",
                )
        t0 = time.perf_counter()
        settings = {v: _settings(v, config) for v in _VECTORIZERS}
        vectorizers, blocks = {}, []
        for v in _VECTORIZERS:
            vec = _vectorizer(settings[v], min_df=config.min_df, max_features=config.max_features)
            try:
                blocks.append(vec.fit_transform(texts))  # (N, F_v)
            except ValueError as exc:  # "empty vocabulary" / "After pruning, no terms remain"
                raise DataError(
                    f"the {v} vectorizer found no term in at least min_df={config.min_df} of the {len(texts)} "
                    f"training texts ({exc}).",
                    task=spec.id,
                    fix="give more (or longer) training texts, or lower LexicalConfig.min_df.",
                ) from exc
            # A fresh vectorizer with the fitted vocabulary: the same object from_tensors builds, without the
            # stop_words_ set (every pruned term, as large as the corpus vocabulary).
            vectorizers[v] = _rebuild(settings[v], vec.vocabulary_, vec.idf_.astype(np.float32))
        # (N, F); trained with the float64 idf of the fit, scored with its float32 rounding (a ~1e-8 difference)
        x = sparse.hstack(blocks, format="csr")
        classes, coef, intercept, dims_info = [], [], [], []
        for d, dim in enumerate(spec.dimensions):
            rows = y_all[:, d] >= 0
            y = y_all[rows, d]
            c, w, b, chosen = _fit_dimension(x[rows], y, dim.num_classes, config)
            classes.append(c)
            coef.append(w)
            intercept.append(b)
            dims_info.append({"name": dim.name, "rows": int(y.size), "classes": c.tolist(), "C": chosen})
            if c.size < dim.num_classes:
                log.info(
                    "task %s, dimension %s: classes %s absent from training get log-probability %g",
                    spec.id,
                    dim.name,
                    sorted(set(range(dim.num_classes)) - set(c.tolist())),
                    ABSENT_LOG_PROB,
                )
        info = {
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "dimensions": dims_info,
            "train_rows": len(texts),
            "fit_seconds": round(time.perf_counter() - t0, 3),
        }
        return cls(
            dimension_names=spec.dimension_names,
            class_counts=spec.class_counts,
            vectorizers=vectorizers,
            settings=settings,
            classes=classes,
            coef=coef,
            intercept=intercept,
            info=info,
        )

    # ------------------------------------------------------------------------------------------------------- scoring

    def features(self, texts: Sequence[str]):
        """``(N, F)`` CSR float64 TF-IDF features: word columns, then character columns."""
        from scipy import sparse

        texts = check_texts(texts, None)
        if not texts:
            return sparse.csr_matrix((0, self.num_features), dtype=np.float64)
        return sparse.hstack([self.vectorizers[v].transform(texts) for v in _VECTORIZERS], format="csr")

    def log_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per-dimension class log-probabilities ``[(N, K_d)]`` float64, columns in class order ``0..K_d-1``.

        A class absent from training has :data:`ABSENT_LOG_PROB` in every row; a text with no known term gets the
        intercepts' distribution (the class prior as the model learned it).

        Raises:
            DataError: if an element of ``texts`` is not a string.
        """
        x = self.features(texts)  # (N, F)
        out = []
        for classes, w, b, k in zip(self.classes, self.coef, self.intercept, self.class_counts, strict=True):
            z = np.asarray(x @ w.T.astype(np.float64)) + b.astype(np.float64)  # (N, C_d)
            out.append(class_log_probs(z, classes, k))  # (N, K_d)
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` int64 argmax scores."""
        return np.stack([p.argmax(axis=1) for p in self.log_probs(texts)], axis=1)

    # ------------------------------------------------------------------------------------------------------- storage

    def to_tensors(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tensors, config)``: float32 torch tensors named ``lexical.*`` (see the module docstring) and a JSON-ready
        dict with the format tag, vectorizer settings and vocabularies (term -> column), and per-dimension classes."""
        import torch

        tensors = {}
        vectorizers = {}
        for v in _VECTORIZERS:
            vec = self.vectorizers[v]
            tensors[f"{TENSOR_PREFIX}vectorizer.{v}.idf"] = torch.from_numpy(np.asarray(vec.idf_, dtype=np.float32))
            vocab = {str(t): int(i) for t, i in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])}
            vectorizers[v] = {"settings": dict(self.settings[v]), "vocabulary": vocab}
        dims = []
        for name, k, c, w, b in zip(
            self.dimension_names, self.class_counts, self.classes, self.coef, self.intercept, strict=True
        ):
            tensors[f"{TENSOR_PREFIX}dim.{name}.coef"] = torch.from_numpy(w.copy())
            tensors[f"{TENSOR_PREFIX}dim.{name}.intercept"] = torch.from_numpy(b.copy())
            dims.append({"name": name, "num_classes": k, "classes": c.tolist()})
        config = {
            "format": FORMAT,
            "vectorizers": vectorizers,
            "dimensions": dims,
            "absent_log_prob": ABSENT_LOG_PROB,
            "info": self.info,
        }
        return tensors, config

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Any], config: Mapping[str, Any], *, spec: TaskSpec | None = None
    ) -> LexicalModel:
        """Rebuild a model written by :meth:`to_tensors`, validating everything first.

        ``tensors`` may hold other (neural) tensors: only names starting with ``lexical.`` are read, and every such
        name must be expected. With ``spec``, the stored dimensions must equal the task's (names, order, classes).

        Raises:
            SuiteError: naming the tensor or config key, on a missing / unexpected tensor, a non-tensor, a wrong
                dtype or shape, a non-finite value, a non-positive idf, a vocabulary that is not a map of distinct
                terms onto columns ``0..F_v-1``, unknown vectorizer settings, classes outside ``0..K_d-1``, or a
                mismatch with ``spec``.
        """

        if not isinstance(config, Mapping):
            raise _bad(f"the config is a {type(config).__name__}, expected a JSON object.")
        if config.get("format") != FORMAT:
            raise _bad(f"config format is {config.get('format')!r}; this version reads {FORMAT!r}.")
        if not isinstance(tensors, Mapping):
            raise _bad(f"the tensors are a {type(tensors).__name__}, expected a mapping of names to tensors.")
        ours = {k: t for k, t in tensors.items() if isinstance(k, str) and k.startswith(TENSOR_PREFIX)}
        used: set[str] = set()

        def array(name: str, shape: tuple[int | None, ...], positive: bool = False) -> np.ndarray:
            used.add(name)
            a = stored_array(ours, name, shape, _bad)
            if positive and (a <= 0).any():
                raise _bad(f"tensor {name!r} holds values <= 0; an idf is at least 1.")
            return a

        vec_cfg = config.get("vectorizers")
        if not isinstance(vec_cfg, Mapping) or sorted(vec_cfg) != sorted(_VECTORIZERS):
            got = sorted(vec_cfg) if isinstance(vec_cfg, Mapping) else type(vec_cfg).__name__
            raise _bad(f"config 'vectorizers' must be an object with keys {list(_VECTORIZERS)}; got {got}.")
        vectorizers, settings = {}, {}
        for v in _VECTORIZERS:
            entry = vec_cfg[v]
            if not isinstance(entry, Mapping):
                raise _bad(f"config vectorizers.{v} must be an object with 'settings' and 'vocabulary'.")
            settings[v] = _check_settings(v, entry.get("settings"))
            vocab = entry.get("vocabulary")
            idf = array(f"{TENSOR_PREFIX}vectorizer.{v}.idf", (None,), positive=True)
            _check_vocabulary(v, vocab, idf.shape[0])
            vectorizers[v] = _rebuild(settings[v], vocab, idf)
        n_features = sum(len(vec_cfg[v]["vocabulary"]) for v in _VECTORIZERS)

        names, counts, classes, coef, intercept = stored_dimensions(
            config, array, TENSOR_PREFIX, n_features, spec, _bad
        )
        extra = sorted(set(ours) - used)
        if extra:
            raise _bad(f"unexpected lexical tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}.")
        info = config.get("info", {})
        return cls(
            dimension_names=names,
            class_counts=counts,
            vectorizers=vectorizers,
            settings=settings,
            classes=classes,
            coef=coef,
            intercept=intercept,
            info=info if isinstance(info, Mapping) else {},
        )


# --------------------------------------------------------------------------------------------------------------------
# Helpers: fitting and validation
# --------------------------------------------------------------------------------------------------------------------


def _fit_dimension(
    x, y: np.ndarray, num_classes: int, config: LexicalConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Fit one dimension: ``(classes (C,), W (C, F) float32, b (C,) float32, chosen C or None)``."""
    if np.unique(y).size == 1:
        return (*fit_softmax_regression(x, y, C=1.0, max_iter=config.max_iter), None)
    c_value = config.C if config.C is not None else _choose_c(x, y, num_classes, config)
    return (*fit_softmax_regression(x, y, C=float(c_value), max_iter=config.max_iter), float(c_value))


def fit_softmax_regression(x, y: np.ndarray, *, C: float, max_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An L2 logistic regression (lbfgs; multinomial for 3+ classes) in softmax form: ``(classes, W, b)``.

    ``x`` is ``(N, F)`` (dense or sparse), ``y`` ``(N,)`` int. Returns the ``(C_y,)`` int64 classes seen in ``y``
    (sorted), ``W`` ``(C_y, F)`` and ``b`` ``(C_y,)`` float32 with ``log p(c | x) = log_softmax(x W^T + b)_c``; a
    binomial fit (``P(1) = sigmoid(x w + b)``) becomes ``W = [0; w]``, ``b = [0, b]``, the same distribution; a
    single class gets zero parameters (it is predicted with certainty). Shared by the lexical and the length model
    (:mod:`scoreplex.baselines`).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(y).astype(np.int64)
    n_features = x.shape[1]
    if classes.size == 1:  # nothing to discriminate: the seen class with certainty
        return classes, np.zeros((1, n_features), np.float32), np.zeros(1, np.float32)
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # logged below instead
        model.fit(x, y)
    if int(np.max(model.n_iter_)) >= max_iter:
        log.warning("logistic regression hit max_iter=%d before converging", max_iter)
    w, b = model.coef_, model.intercept_  # (C, F) and (C,), or (1, F) and (1,) for two classes
    if classes.size == 2:  # sigmoid(x w + b) == softmax([0, x w + b])[1]
        w = np.vstack([np.zeros_like(w), w])
        b = np.concatenate([np.zeros_like(b), b])
    return classes, w.astype(np.float32), b.astype(np.float32)


def class_log_probs(z: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, K)`` float64 log-probabilities over classes ``0..K-1`` from softmax-form scores ``z`` ``(N, C)`` over the
    training ``classes`` ``(C,)``; a class absent from training gets :data:`ABSENT_LOG_PROB` in every row."""
    from scipy.special import log_softmax

    full = np.full((z.shape[0], num_classes), ABSENT_LOG_PROB, dtype=np.float64)  # (N, K)
    full[:, classes] = log_softmax(z, axis=1)
    return full


def _choose_c(x, y: np.ndarray, num_classes: int, config: LexicalConfig) -> float:
    """``C`` from ``config.C_grid`` maximising mean out-of-fold QWK (stratified folds; ties -> the smaller C)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    from scoreplex.metrics import quadratic_weighted_kappa

    smallest = int(np.unique(y, return_counts=True)[1].min())
    folds = min(config.cv_folds, y.size)
    if folds < 2:
        return float(sorted(config.C_grid)[len(config.C_grid) // 2])
    cv = (
        StratifiedKFold(folds, shuffle=True, random_state=config.seed)
        if smallest >= folds
        else KFold(folds, shuffle=True, random_state=config.seed)
    )
    scorer = make_scorer(quadratic_weighted_kappa, labels=list(range(num_classes)))
    grid = GridSearchCV(
        LogisticRegression(solver="lbfgs", max_iter=config.max_iter),
        {"C": sorted(float(c) for c in config.C_grid)},
        scoring=scorer,
        cv=cv,
        n_jobs=1,
        refit=False,
        error_score=float("nan"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # folds missing a class (fine: QWK uses the full label range)
        grid.fit(x, y)
    scores = np.nan_to_num(grid.cv_results_["mean_test_score"], nan=-np.inf)
    return float(grid.cv_results_["param_C"][int(np.argmax(scores))])


def _rebuild(settings: Mapping[str, Any], vocabulary: Mapping[str, int], idf: np.ndarray):
    """A ready ``TfidfVectorizer`` from settings, vocabulary and ``(F_v,)`` idf (scikit-learn allows setting idf_)."""
    vec = _vectorizer(settings, vocabulary=dict(vocabulary))
    vec.idf_ = np.asarray(idf, dtype=np.float64)
    return vec


def _bad(message: str) -> SuiteError:
    return SuiteError(f"lexical model: {message} Fix: retrain the task's lexical model or restore the suite.")


def stored_array(
    tensors: Mapping[str, Any], name: str, shape: tuple[int | None, ...], bad: Callable[[str], Exception]
) -> np.ndarray:
    """Stored tensor ``name`` as a numpy copy, checked: present, a float32 ``torch.Tensor`` of ``shape`` (``None``:
    any size) with finite values; else ``bad(message)`` is raised (the caller's error, naming its model)."""
    import torch

    if name not in tensors:
        raise bad(f"tensor {name!r} is missing.")
    t = tensors[name]
    if not isinstance(t, torch.Tensor):
        raise bad(f"{name!r} is a {type(t).__name__}, expected a torch.Tensor.")
    if t.dtype != torch.float32:
        raise bad(f"tensor {name!r} has dtype {t.dtype}, expected torch.float32.")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=True)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise bad(f"tensor {name!r} has shape {tuple(t.shape)}, expected {want}.")
    a = t.detach().cpu().numpy().copy()
    if not np.isfinite(a).all():
        raise bad(f"tensor {name!r} holds non-finite values (NaN or inf).")
    return a


def stored_dimensions(
    config: Mapping[str, Any],
    array: Callable[[str, tuple[int, ...]], np.ndarray],
    prefix: str,
    n_features: int,
    spec: TaskSpec | None,
    bad: Callable[[str], Exception],
) -> tuple[list[str], list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``(names, class counts, classes [(C_d,)], coef [(C_d, F)], intercept [(C_d,)])`` of a stored softmax-form
    model (lexical or length), checked: ``config["dimensions"]`` a non-empty list of ``{name, num_classes, classes}``
    with unique non-empty names, ``num_classes`` in 2..100 and classes a non-empty strictly increasing list in
    ``0..num_classes-1``; tensors ``<prefix>dim.<name>.coef`` / ``.intercept`` read by ``array(name, shape)``; with
    ``spec``, the same dimension names and class counts as the task. Else ``bad(message)`` is raised."""
    dims = config.get("dimensions")
    if not isinstance(dims, list) or not dims:
        raise bad("config 'dimensions' must be a non-empty list of {name, num_classes, classes}.")
    names, counts, classes, coef, intercept = [], [], [], [], []
    for i, dim in enumerate(dims):
        if not isinstance(dim, Mapping):
            raise bad(f"config dimensions[{i}] is a {type(dim).__name__}, expected an object.")
        name, k, c = dim.get("name"), dim.get("num_classes"), dim.get("classes")
        if not isinstance(name, str) or not name or name in names:
            raise bad(f"config dimensions[{i}].name is {name!r}; expected a unique non-empty string.")
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 100:
            raise bad(f"config dimension {name!r} has num_classes={k!r}; expected an integer in 2..100.")
        if (
            not isinstance(c, list)
            or not c
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < k for x in c)
            or any(a >= b for a, b in zip(c, c[1:], strict=False))
        ):
            raise bad(
                f"config dimension {name!r} has classes={c!r}; expected a non-empty, strictly increasing list of "
                f"integers in 0..{k - 1}."
            )
        names.append(name)
        counts.append(k)
        classes.append(np.asarray(c, dtype=np.int64))
        coef.append(array(f"{prefix}dim.{name}.coef", (len(c), n_features)))
        intercept.append(array(f"{prefix}dim.{name}.intercept", (len(c),)))
    if spec is not None and (names != spec.dimension_names or counts != spec.class_counts):
        raise bad(
            f"the stored dimensions {list(zip(names, counts, strict=True))} (name, classes) differ from task "
            f"{spec.id!r}'s {list(zip(spec.dimension_names, spec.class_counts, strict=True))}."
        )
    return names, counts, classes, coef, intercept


def _check_settings(name: str, settings: Any) -> dict[str, Any]:
    """Validate one vectorizer's stored settings against what :meth:`LexicalModel.fit` writes."""
    if not isinstance(settings, Mapping) or sorted(settings) != sorted(_SETTING_KEYS):
        got = sorted(settings) if isinstance(settings, Mapping) else type(settings).__name__
        raise _bad(f"config vectorizers.{name}.settings must have keys {sorted(_SETTING_KEYS)}; got {got}.")
    s = dict(settings)
    r = s["ngram_range"]
    checks = {
        "analyzer": s["analyzer"] == _ANALYZERS[name],
        "ngram_range": isinstance(r, list)
        and len(r) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        and 1 <= r[0] <= r[1] <= _MAX_NGRAM,
        "lowercase": isinstance(s["lowercase"], bool),
        "sublinear_tf": isinstance(s["sublinear_tf"], bool),
        "norm": s["norm"] in ("l2", "l1", None),
        "token_pattern": s["token_pattern"] == _TOKEN_PATTERN,
    }
    expected = {
        "analyzer": repr(_ANALYZERS[name]),
        "ngram_range": "[lo, hi] with 1 <= lo <= hi <= 10",
        "lowercase": "true or false",
        "sublinear_tf": "true or false",
        "norm": "'l2', 'l1' or null",
        "token_pattern": repr(_TOKEN_PATTERN),
    }
    for key, ok in checks.items():
        if not ok:
            raise _bad(f"config vectorizers.{name}.settings.{key} is {s[key]!r}; expected {expected[key]}.")
    return s


def _check_vocabulary(name: str, vocab: Any, size: int) -> None:
    """The vocabulary must map ``size`` distinct string terms one-to-one onto columns ``0..size-1``."""
    if not isinstance(vocab, Mapping) or not vocab:
        raise _bad(f"config vectorizers.{name}.vocabulary must be a non-empty object mapping terms to columns.")
    if len(vocab) != size:
        raise _bad(
            f"vectorizer {name!r} has {len(vocab)} vocabulary terms but an idf of length {size}; they must match."
        )
    seen = np.zeros(size, dtype=bool)
    for term, col in vocab.items():
        if not isinstance(term, str) or not term:
            raise _bad(f"vectorizer {name!r} vocabulary has a term {term!r}; terms are non-empty strings.")
        if isinstance(col, bool) or not isinstance(col, int) or not 0 <= col < size:
            raise _bad(f"vectorizer {name!r} maps {term!r} to column {col!r}; columns are integers in 0..{size - 1}.")
        if seen[col]:
            raise _bad(f"vectorizer {name!r} maps more than one term to column {col}; each column has one term.")
        seen[col] = True


def check_texts(texts: Sequence[str], task: str | None) -> list[str]:
    """``texts`` as a list of strings; DataError (naming ``task``) on a single string or a non-string element."""
    if isinstance(texts, str):
        raise DataError("expected a list of texts, got a single string.", task=task, fix="wrap it in a list.")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"text {i} is a {type(t).__name__}, expected a string.", task=task)
    return out


def check_labels(labels: Any, spec: TaskSpec, n: int) -> np.ndarray:
    """``labels`` as ``(N, D)`` int64 with every value in ``-1..K_d-1``, else DataError."""
    y = np.asarray(labels)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (n, len(spec.dimensions)):
        raise DataError(
            f"labels have shape {np.asarray(labels).shape}, expected ({n}, {len(spec.dimensions)}) (texts x rubric "
            "dimensions).",
            task=spec.id,
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels have dtype {y.dtype}, expected integers (-1 = not scored).", task=spec.id)
    y = y.astype(np.int64)
    for d, dim in enumerate(spec.dimensions):
        bad = (y[:, d] < -1) | (y[:, d] >= dim.num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"label {int(y[i, d])} at row {i} of dimension {dim.name!r} is outside -1..{dim.num_classes - 1}.",
                task=spec.id,
            )
    return y


# --------------------------------------------------------------------------------------------------------------------
# Stacking
# --------------------------------------------------------------------------------------------------------------------


def combine_log_probs(
    neural_logprobs: Sequence[np.ndarray], lexical_logprobs: Sequence[np.ndarray], weight: float
) -> list[np.ndarray]:
    """Stacked per-dimension log-probabilities ``[(N, K_d)]``: ``log_softmax(log_softmax(a_d) + weight * l_d)``.

    ``a_d`` may be logits or log-probabilities (``log_softmax`` makes them the latter); ``l_d`` is
    :meth:`LexicalModel.log_probs`. ``weight = 0`` returns the neural log-probabilities unchanged.

    Raises:
        ConfigError: a negative or non-finite weight, or lists / shapes that do not match.
    """
    from scipy.special import log_softmax

    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"weight={weight!r}; expected a finite number >= 0.")
    neural, lexical = _check_pairs(neural_logprobs, lexical_logprobs)
    return [log_softmax(log_softmax(a, axis=1) + weight * b, axis=1) for a, b in zip(neural, lexical, strict=True)]


def _check_pairs(
    neural: Sequence[np.ndarray], lexical: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    a = [np.asarray(x, dtype=np.float64) for x in neural]
    b = [np.asarray(x, dtype=np.float64) for x in lexical]
    if len(a) != len(b) or not a:
        raise ConfigError(
            f"got {len(a)} neural and {len(b)} lexical blocks; pass one (N, K_d) array per rubric dimension to each."
        )
    for d, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.ndim != 2 or x.shape != y.shape:
            raise ConfigError(
                f"dimension {d}: neural block has shape {x.shape}, lexical {y.shape}; both must be the same (N, K_d)."
            )
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ConfigError(f"dimension {d}: log-probabilities must be finite (use ABSENT_LOG_PROB, not -inf).")
    if len({x.shape[0] for x in a}) != 1:
        raise ConfigError(f"the blocks have different row counts {[x.shape[0] for x in a]}; they must share N.")
    return a, b


STACK_RULE = (
    "w* = argmax over the grid of the mean-over-dimensions validation QWK of argmax(log p_neural + w log p_lex) "
    "(ties -> the smaller w). Kept (w = w*) only if repeated 2-fold cross-fitting on the validation rows agrees: in "
    "each of `repeats` random 2-fold splits, w is picked on one fold and applied to the other, and the pooled "
    "out-of-fold QWK must beat w = 0 strictly in every repetition. Otherwise w = 0 (drop the lexical model)."
)
"""The keep/drop rule of :func:`stack_weight`, as recorded in its report."""


def stack_weight(
    neural_logprobs: Sequence[np.ndarray],
    lexical_logprobs: Sequence[np.ndarray],
    labels: np.ndarray,
    spec: TaskSpec,
    *,
    grid: Sequence[float] = WEIGHT_GRID,
    repeats: int = 5,
    seed: int = 0,
) -> tuple[float, dict[str, Any]]:
    """Choose the stacking weight ``w`` of one task on validation rows (see :data:`STACK_RULE`).

    The score is the mean over dimensions (those with scored rows) of QWK with ``labels=range(K_d)``
    (:func:`scoreplex.metrics.quadratic_weighted_kappa`) of the argmax of ``log p_neural_d + w log p_lex_d``. The
    keep/drop decision is cross-fitted so that ``w`` is never chosen and judged on the same rows: the validation
    rows are split in 2 folds (seeded; stratified on the joint label when each label has at least 2 rows) and the
    weight picked on one fold is scored on the other. One 2-fold split is a noisy judge on a validation set of
    150-400 rows: in simulation it kept pure-noise lexical log-probabilities in 20-28% of trials. So the split is
    repeated ``repeats`` times (seeds ``seed, seed + 1, ...``) and every repetition must agree; with 5 repetitions
    noise was kept in 3-4% of trials and a weak real signal in 42-63% (``benchmarks/lexical.py``,
    ``docs/results/lexical.md``). Only then is the weight picked on all validation rows returned.

    Args:
        neural_logprobs: ``[(N, K_d)]`` neural log-probabilities (or logits) per dimension.
        lexical_logprobs: ``[(N, K_d)]`` :meth:`LexicalModel.log_probs` of the same rows.
        labels: ``(N, D)`` int, ``-1`` = not scored (``(N,)`` for one dimension).
        spec: the task (dimension order and class counts).
        grid: candidate weights, each ``>= 0``; must include 0.
        repeats: random 2-fold splits that must all agree (>= 1).
        seed: seed of the first split.

    Returns:
        ``(weight, report)``: ``weight`` is ``w*`` or 0.0; ``report`` (JSON-ready) holds the rule, ``qwk_by_weight``
        on all rows, ``neural_qwk`` (w = 0), ``lexical_qwk`` (lexical argmax alone), ``best_weight`` and
        ``best_qwk`` (in-sample, optimistic), ``repetitions`` (per split: ``seed``, per-fold ``{weight, rows,
        neural_qwk, stacked_qwk}``, pooled ``oof_stacked_qwk``, ``passed``), ``oof_stacked_qwk`` (mean over the
        repetitions), ``kept`` and ``weight``.

    Raises:
        ConfigError: mismatched shapes, a grid without 0 or with a negative value, ``repeats < 1``, labels out of
            range, or fewer than 4 scored rows.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    from scoreplex.metrics import quadratic_weighted_kappa

    neural, lexical = _check_pairs(neural_logprobs, lexical_logprobs)
    grid = sorted({float(w) for w in grid})  # sorted, so the first maximum is the smallest weight
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r}; expected an integer >= 1.")
    if 0.0 not in grid or any(not math.isfinite(w) or w < 0 for w in grid):
        raise ConfigError(f"grid={grid}; expected finite weights >= 0 including 0.")
    if [x.shape[1] for x in neural] != spec.class_counts:
        raise ConfigError(
            f"task {spec.id!r}: blocks have {[x.shape[1] for x in neural]} classes, expected {spec.class_counts}."
        )
    n = neural[0].shape[0]
    try:
        y = check_labels(labels, spec, n)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    scored = y >= 0  # (N, D)
    n_scored = int(scored.any(axis=1).sum())
    if n_scored < 4:
        raise ConfigError(f"task {spec.id!r}: stack_weight needs at least 4 scored rows; got {n_scored}.")

    # preds[i][d]: (N,) argmax for grid[i]; a row constant (the neural log_softmax) cannot change an argmax
    preds = [[(a + w * b).argmax(axis=1) for a, b in zip(neural, lexical, strict=True)] for w in grid]
    lex_pred = [b.argmax(axis=1) for b in lexical]

    def score(pred: Sequence[np.ndarray], rows: np.ndarray) -> float:
        values = []
        for d, dim in enumerate(spec.dimensions):
            m = rows & scored[:, d]
            if m.any():
                values.append(quadratic_weighted_kappa(y[m, d], pred[d][m], labels=range(dim.num_classes)))
        return float(np.mean(values)) if values else float("nan")

    def pick(rows: np.ndarray) -> int:
        s = np.array([score(p, rows) for p in preds])
        return int(np.argmax(np.nan_to_num(s, nan=-np.inf)))  # first maximum = smallest weight

    zero = grid.index(0.0)
    everyone = np.ones(n, dtype=bool)
    qwk_by_weight = [score(p, everyone) for p in preds]
    best = pick(everyone)

    keys = np.array(["|".join(str(v) for v in row) for row in y])
    stratified = int(np.unique(keys, return_counts=True)[1].min()) >= 2
    repetitions = []
    for r in range(repeats):
        rng_seed = seed + r
        splitter = (
            StratifiedKFold(2, shuffle=True, random_state=rng_seed)
            if stratified
            else KFold(2, shuffle=True, random_state=rng_seed)
        )
        oof = [np.zeros(n, dtype=np.int64) for _ in spec.dimensions]
        folds = []
        for tune_idx, held_idx in splitter.split(np.zeros(n), keys):
            tune, held = np.zeros(n, bool), np.zeros(n, bool)
            tune[tune_idx], held[held_idx] = True, True
            i = pick(tune)
            for d in range(len(spec.dimensions)):
                oof[d][held] = preds[i][d][held]
            folds.append(
                {
                    "weight": grid[i],
                    "rows": int(held.sum()),
                    "neural_qwk": score(preds[zero], held),
                    "stacked_qwk": score(preds[i], held),
                }
            )
        oof_qwk = score(oof, everyone)
        repetitions.append(
            {
                "seed": rng_seed,
                "folds": folds,
                "oof_stacked_qwk": oof_qwk,
                "passed": oof_qwk > qwk_by_weight[zero],
            }
        )
    kept = grid[best] > 0 and all(rep["passed"] for rep in repetitions)
    weight = grid[best] if kept else 0.0
    report = {
        "rule": STACK_RULE,
        "rows": n,
        "grid": grid,
        "qwk_by_weight": qwk_by_weight,
        "neural_qwk": qwk_by_weight[zero],
        "lexical_qwk": score(lex_pred, everyone),
        "best_weight": grid[best],
        "best_qwk": qwk_by_weight[best],
        "repetitions": repetitions,
        "oof_stacked_qwk": float(np.mean([rep["oof_stacked_qwk"] for rep in repetitions])),
        "kept": bool(kept),
        "weight": weight,
    }
    return weight, report
