"""Task-to-task similarities a merge plan can be searched by: GW (raw or debiased), linear CKA, task vectors, text.

Each measure gives a :class:`SimilarityMatrix`: ``(T, T)``, symmetric, and either a *distance* (lower = more alike:
GW) or a *similarity* (higher = more alike: CKA, cosines). :func:`planner_similarity` turns either into what
:func:`~scoreplex.merging.plan.optimal_plan` maximises (off-diagonal min-max scaled to [0, 1], diagonal 1), and
:meth:`SimilarityMatrix.distances` into what the clustering plan and the heatmap take. Measures sit in the registry
:data:`SIMILARITIES` (``scoreplex merge --similarity NAME``); each computes from a :class:`SimilarityInputs`.

- ``gw`` / ``gw-debiased`` / ``gw-raw``: GW distances between each task model's features of its own responses
  (:mod:`scoreplex.merging.gromov`; ``gw`` as the GW settings say: debiased for entropic solves).
- ``cka``: linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", ICML, eq. 5)
  between two task models' features of ONE shared probe set (the same responses through both models).
- ``task-vector``: cosine of the flattened task vectors (fine-tuned minus base weights; for LoRA, ``B @ A`` per
  adapted module), as task-arithmetic interference studies compare them (Ilharco et al. 2023).
- ``text``: TF-IDF cosine of the tasks' prompt, rubric and dimension descriptions (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from scoreplex.errors import ConfigError, unknown_name
from scoreplex.merging.features import FeatureSettings, extract_features, sample_indices, suite_features
from scoreplex.merging.gromov import GWSettings, PairMap, gw_matrix, normalised_similarity

KINDS = ("distance", "similarity")


@dataclass(frozen=True)
class SimilarityMatrix:
    """A task-by-task measure under one name."""

    name: str
    """The registry name that computed it (``gw``, ``cka``, ...)."""
    task_ids: tuple[str, ...]
    """Row / column order."""
    values: np.ndarray
    """``(T, T)`` symmetric, finite (the diagonal is not used by plans)."""
    kind: str
    """``"distance"`` (lower = more alike) or ``"similarity"`` (higher = more alike)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Details for the report (for GW: the full :meth:`~scoreplex.merging.gromov.GWMatrix.to_dict`)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown_name("similarity kind", self.kind, KINDS)
        v = np.asarray(self.values, dtype=np.float64)
        t = len(self.task_ids)
        if v.shape != (t, t):
            raise ConfigError(f"similarity {self.name!r}: values of shape {v.shape} for {t} tasks; need ({t}, {t}).")
        if not np.all(np.isfinite(v)) or not np.allclose(v, v.T, atol=1e-9):
            raise ConfigError(f"similarity {self.name!r}: values must be finite and symmetric.")

    def similarity(self) -> np.ndarray:
        """What the plan search maximises: :func:`planner_similarity` of the values."""
        return planner_similarity(self.values, self.kind)

    def distances(self) -> np.ndarray:
        """Lower = more alike, zero diagonal: the values of a distance; ``1 -`` the planner similarity otherwise."""
        d = np.array(self.values, dtype=np.float64) if self.kind == "distance" else 1.0 - self.similarity()
        np.fill_diagonal(d, 0.0)
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "task_ids": list(self.task_ids),
            "values": np.asarray(self.values).tolist(),
            "similarity": self.similarity().tolist(),
            "info": self.info,
        }


def planner_similarity(values: np.ndarray, kind: str) -> np.ndarray:
    """``(T, T)`` in [0, 1] off the diagonal (1 = the most alike pair, 0 = the least), diagonal 1: a distance through
    :func:`~scoreplex.merging.gromov.normalised_similarity`, a similarity through the same min-max on its negation
    (monotone, so the plan only depends on the order and spacing of the values)."""
    if kind not in KINDS:
        raise unknown_name("similarity kind", kind, KINDS)
    v = np.asarray(values, dtype=np.float64)
    return normalised_similarity(v if kind == "distance" else -v)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` inputs, ``x`` ``(n, d1)`` and ``y`` ``(n, d2)``:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc`` (Kornblith et al. 2019,
    eq. 5). In [0, 1]; 1 for ``y = x``; invariant to orthogonal transforms and isotropic scaling of either.

    Raises:
        ConfigError: the row counts differ, fewer than 2 rows, or a representation is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ConfigError(f"linear CKA needs two (n, d) arrays of the same n >= 2 inputs; got {x.shape} and {y.shape}.")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    # the n x n Gram form is cheaper when n < d (features of a few hundred responses, d = 384)
    kx, ky = (x @ x.T, y @ y.T) if len(x) < max(x.shape[1], y.shape[1]) else (None, None)
    if kx is not None:
        num, nx, ny = float(np.sum(kx * ky)), np.linalg.norm(kx), np.linalg.norm(ky)
    else:
        num, nx, ny = np.linalg.norm(y.T @ x) ** 2, np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if nx == 0 or ny == 0:
        raise ConfigError("linear CKA of a constant representation is undefined; check the features.")
    return float(num / (nx * ny))


def cka_matrix(features: Mapping[str, np.ndarray]) -> SimilarityMatrix:
    """Pairwise linear CKA of every task model's features ``(n, d)`` of one shared probe set (same rows, same order).

    Raises:
        ConfigError: fewer than 2 tasks, or the feature sets have different row counts.
    """
    ids = list(features)
    if len(ids) < 2:
        raise ConfigError(f"CKA needs at least 2 tasks; got {len(ids)}.")
    rows = {len(f) for f in features.values()}
    if len(rows) > 1:
        raise ConfigError(f"CKA compares features of ONE shared probe set; the tasks have {sorted(rows)} rows.")
    t = len(ids)
    s = np.eye(t)
    for i in range(t):
        for j in range(i + 1, t):
            s[i, j] = s[j, i] = linear_cka(features[ids[i]], features[ids[j]])
    return SimilarityMatrix("cka", tuple(ids), s, "similarity", {"probe_rows": rows.pop()})


def cosine_matrix(vectors: Mapping[str, Mapping[str, Any]], name: str = "task-vector") -> SimilarityMatrix:
    """Cosine similarity of flattened vectors given as named parts (``{task: {tensor name: array or tensor}}``; a
    part one task lacks counts as zeros): ``<u, v> / (|u| |v|)``, accumulated part by part so nothing is
    concatenated. Diagonal 1.

    Raises:
        ConfigError: fewer than 2 tasks, a zero vector, or a part whose shape differs between tasks.
    """
    ids = list(vectors)
    if len(ids) < 2:
        raise ConfigError(f"cosine similarity needs at least 2 tasks; got {len(ids)}.")
    t = len(ids)
    gram = np.zeros((t, t))
    for key in sorted({k for v in vectors.values() for k in v}):
        have = [i for i, tid in enumerate(ids) if key in vectors[tid]]
        flat = [np.asarray(vectors[ids[i]][key], dtype=np.float64).ravel() for i in have]
        if len({f.size for f in flat}) > 1:
            raise ConfigError(f"part {key!r} has different sizes across tasks; the models are not one architecture.")
        g = np.stack(flat) @ np.stack(flat).T  # (len(have), len(have))
        gram[np.ix_(have, have)] += g
    norms = np.sqrt(np.diag(gram))
    if np.any(norms == 0):
        zero = [ids[i] for i in np.flatnonzero(norms == 0)]
        raise ConfigError(f"tasks {zero} have a zero {name} (no change from the base); their cosine is undefined.")
    s = gram / np.outer(norms, norms)
    np.fill_diagonal(s, 1.0)
    return SimilarityMatrix(name, tuple(ids), (s + s.T) / 2, "similarity", {"norms": norms.tolist()})


def task_text(spec) -> str:
    """The text a task is described by: prompt, rubric, and each dimension's name and description."""
    parts = [spec.prompt, spec.rubric] + [f"{d.name} {d.description}" for d in spec.dimensions]
    return "\n".join(p for p in parts if p)


def text_matrix(texts: Mapping[str, str]) -> SimilarityMatrix:
    """TF-IDF cosine similarity (scikit-learn, English stop words removed, sublinear tf) of the tasks' texts.

    Raises:
        ConfigError: fewer than 2 tasks, or no task has any text.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    ids = list(texts)
    if len(ids) < 2:
        raise ConfigError(f"text similarity needs at least 2 tasks; got {len(ids)}.")
    try:
        tfidf = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit_transform([texts[t] for t in ids])
    except ValueError:  # empty vocabulary
        raise ConfigError(
            "the tasks have no prompt or rubric text to compare; give `prompt` and `rubric` in the task file, "
            "or choose another similarity."
        ) from None
    s = cosine_similarity(tfidf)
    np.fill_diagonal(s, 1.0)
    empty = [t for t in ids if not texts[t].strip()]
    return SimilarityMatrix("text", tuple(ids), (s + s.T) / 2, "similarity", {"tasks_without_text": empty})


@dataclass
class SimilarityInputs:
    """What the measures compute from: a :class:`~scoreplex.scorer.SuiteScorer` over the suite, each task's
    scored responses, and the settings. Features of the tasks' own responses are computed once, on first use."""

    scorer: Any
    data: Mapping[str, Any]
    features: FeatureSettings = field(default_factory=FeatureSettings)
    gw: GWSettings = field(default_factory=GWSettings)
    probe_size: int = 500
    """Responses in CKA's shared probe set, drawn evenly from the tasks (seeded by id)."""
    pair_map: PairMap | None = None
    cache_dir: Path | None = None
    progress: bool = True
    _own: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.probe_size < 2:
            raise ConfigError(f"probe_size={self.probe_size}; the CKA probe set needs at least 2 responses.")

    def own_features(self) -> dict[str, np.ndarray]:
        if self._own is None:
            self._own = suite_features(
                self.scorer, self.data, self.features, cache_dir=self.cache_dir, progress=self.progress
            )
        return self._own

    def probe_texts(self) -> list[str]:
        """The shared probe set: ``probe_size // T`` (at least 1) responses of each task, seeded by id."""
        per_task = max(1, self.probe_size // len(self.data))
        texts = []
        for d in self.data.values():
            texts += [d.texts[i] for i in sample_indices(d.ids, per_task, self.features.seed)]
        return texts


@dataclass(frozen=True)
class Similarity:
    """A registered measure: its name, kind, one line for help texts, and how it computes."""

    name: str
    """Registry name (``--similarity``)."""
    kind: str
    """``"distance"`` or ``"similarity"``."""
    description: str
    """One line for the CLI help and reports."""
    compute: Callable[[SimilarityInputs], SimilarityMatrix]
    """Builds the matrix from the inputs."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown_name("similarity kind", self.kind, KINDS)


def _gw(name: str, debias: bool | None) -> Callable[[SimilarityInputs], SimilarityMatrix]:
    def compute(inputs: SimilarityInputs) -> SimilarityMatrix:
        settings = inputs.gw if debias is None else replace(inputs.gw, debias=debias)
        m = gw_matrix(inputs.own_features(), settings, progress=inputs.progress, pair_map=inputs.pair_map)
        return SimilarityMatrix(name, tuple(m.task_ids), m.distances, "distance", {"gw": m.to_dict()})

    return compute


def _cka(inputs: SimilarityInputs) -> SimilarityMatrix:
    scorer, texts = inputs.scorer, inputs.probe_texts()
    feats = {
        t: extract_features(scorer.model(t), scorer.bb.tokenizer, texts, scorer.max_length, inputs.features)
        for t in inputs.data
    }
    return cka_matrix(feats)


def _task_vector(inputs: SimilarityInputs) -> SimilarityMatrix:
    from scoreplex.merging.merged_suite import GroupMerger

    merger = GroupMerger(inputs.scorer)
    return cosine_matrix({t: merger.task_vector(t) for t in inputs.data})


def _text(inputs: SimilarityInputs) -> SimilarityMatrix:
    return text_matrix({t: task_text(inputs.scorer.suite.spec(t)) for t in inputs.data})


SIMILARITIES: dict[str, Similarity] = {
    s.name: s
    for s in (
        Similarity("gw", "distance", "GW distance of own-response features (debiased when entropic)", _gw("gw", None)),
        Similarity("gw-debiased", "distance", "entropic GW minus half of each self term", _gw("gw-debiased", True)),
        Similarity("gw-raw", "distance", "GW without debiasing (the earlier default)", _gw("gw-raw", False)),
        Similarity("cka", "similarity", "linear CKA of the task models' features of a shared probe set", _cka),
        Similarity("task-vector", "similarity", "cosine of fine-tuned minus base weights (LoRA: B @ A)", _task_vector),
        Similarity("text", "similarity", "TF-IDF cosine of prompt + rubric text", _text),
    )
}


def get_similarity(name: str) -> Similarity:
    """The registered measure called ``name``.

    Raises:
        UnknownNameError: not registered (the message lists the valid names).
    """
    if name not in SIMILARITIES:
        raise unknown_name("similarity", name, list(SIMILARITIES))
    return SIMILARITIES[name]


def similarity_matrix(name: str, inputs: SimilarityInputs) -> SimilarityMatrix:
    """Compute the measure ``name`` over the tasks of ``inputs.data`` (in their order)."""
    return get_similarity(name).compute(inputs)


def similarity_names() -> Sequence[str]:
    return tuple(SIMILARITIES)
