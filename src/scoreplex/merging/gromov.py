"""Gromov–Wasserstein distances between task models' feature sets (POT), with the numerics checked.

Each task's features become an intra-set Euclidean cost matrix, divided by its largest entry (so the two sets are on
one scale and entropic solvers see costs in [0, 1]); weights are uniform, or the cluster masses when a set is first
summarised by k-means (``quantize``), which keeps every response's mass while shrinking the O(n^3) solver to
O(m^3). Two solvers: ``exact`` (POT's conditional gradient; what the authors' notebooks ran) and ``entropic``
(projected-gradient Sinkhorn, what the paper states). POT can return NaN or slightly negative values (POT issues #406,
#723) and entropic solvers may stop unconverged; here a NaN, a clearly negative value or a non-converged entropic
solve is retried with a doubled epsilon (up to ``retries`` times) and then raised, never passed on silently.

Entropic GW is biased: GW_eps(X, X) > 0, and the blur grows with the sets' spread, so a raw entropic matrix mixes
"how alike" with "how diffuse" (a probe at eps = 0.05 gave 0.0475 for a set against itself and 0.0507 for two
unrelated sets). ``debias`` (on by default for entropic solves) reports instead

    GW_eps(X, Y) - 1/2 GW_eps(X, X) - 1/2 GW_eps(Y, Y),

the GW analogue of the Sinkhorn divergence of OT (Feydy et al. 2019, "Interpolating between Optimal Transport and
MMD using Sinkhorn Divergences", AISTATS, eq. 4), applied here to entropic GW by analogy: unlike the OT case its
non-negativity is not proven (and the solver is non-convex), so a negative value is clamped to 0 and noted. Each set's
self term is one more solve per set, cached on its :class:`Prepared`; the matrix then has a zero diagonal by
construction. On noise ladders of known similarity it orders the sets where the raw value does not
(``benchmarks/gw_synthetic.py``, docs/results/gw-synthetic.md).
"""

from __future__ import annotations

import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from scoreplex.errors import ConfigError, ScoreplexError, unknown_name

GW_METHODS = ("exact", "entropic")
NEGATIVE_TOLERANCE = 1e-9
"""Negative distances down to this are rounding (clipped to 0); below it the solve is treated as failed."""


class GromovError(ScoreplexError):
    """A GW solve produced a value that cannot be trusted (NaN, negative, unconverged after retries)."""


@dataclass(frozen=True)
class GWSettings:
    method: str = "exact"
    epsilon: float = 0.05
    """Entropic regularisation (on costs scaled to [0, 1]); below 5e-2 Sinkhorn often fails on clustered features."""
    max_iter: int = 200
    tol: float = 1e-5
    """Relative change of the GW objective (exact) / of the plan (entropic) at which the solver stops."""
    quantize: int | None = None
    """Summarise each feature set by this many k-means centroids weighted by cluster mass (None: every point)."""
    subsample: int | None = None
    """Or keep a seeded uniform subsample of this many points (None: every point)."""
    retries: int = 3
    seed: int = 0
    debias: bool | None = None
    """Report GW(X, Y) - 1/2 GW(X, X) - 1/2 GW(Y, Y) (module docstring). None: on for ``entropic`` (whose self terms
    are > 0), off for ``exact`` (GW(X, X) = 0 there, so there is nothing to remove). True with ``exact`` is refused."""

    def __post_init__(self) -> None:
        if self.method not in GW_METHODS:
            raise unknown_name("GW method", self.method, GW_METHODS)
        if self.debias and self.method == "exact":
            raise ConfigError(
                "GW debias=True with method='exact': exact GW(X, X) is 0, there is no entropic bias to remove; "
                "use method='entropic', or leave debias unset."
            )
        if self.epsilon <= 0:
            raise ConfigError(f"GW epsilon={self.epsilon} must be > 0; give e.g. 0.05 (a safe start).")
        if self.quantize is not None and self.quantize < 2:
            raise ConfigError(f"GW quantize={self.quantize}; give at least 2 centroids, or None for every point.")
        if self.subsample is not None and self.subsample < 2:
            raise ConfigError(f"GW subsample={self.subsample}; give at least 2 points, or None for every point.")
        if self.subsample is not None and self.quantize is not None:
            raise ConfigError("GW: choose quantize or subsample, not both.")

    @property
    def debiased(self) -> bool:
        """Whether distances are debiased (``debias``, or by default for the entropic solver)."""
        return self.method == "entropic" if self.debias is None else self.debias


@dataclass
class GWResult:
    distance: float
    method: str
    epsilon: float | None
    n_iter: int
    converged: bool
    seconds: float
    retries: int = 0
    notes: list[str] = field(default_factory=list)
    raw_distance: float | None = None
    """The entropic GW_eps(X, Y) before debiasing (None: not debiased)."""
    self_distances: tuple[float, float] | None = None
    """GW_eps(X, X) and GW_eps(Y, Y), the self terms subtracted by debiasing (None: not debiased)."""


def cost_matrix(points: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances ``(n, n)`` divided by their maximum (all-zero stays zero)."""
    import ot

    x = np.asarray(points, dtype=np.float64)
    c = ot.dist(x, x, metric="euclidean")
    top = c.max() if c.size else 0.0
    return c / top if top > 0 else c


def summarise(
    points: np.ndarray, m: int | None, seed: int, subsample: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(support, weights)``: the points with uniform weights, ``m`` k-means centroids with their masses, or a seeded
    uniform ``subsample`` of the points."""
    n = len(points)
    if subsample is not None and n > subsample:
        keep = np.sort(np.random.default_rng(seed).choice(n, subsample, replace=False))
        return np.asarray(points[keep], dtype=np.float64), np.full(subsample, 1.0 / subsample)
    if m is None or n <= m:
        return np.asarray(points, dtype=np.float64), np.full(n, 1.0 / n)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=m, n_init=1, random_state=seed, max_iter=100).fit(points)
    weights = np.bincount(km.labels_, minlength=m).astype(np.float64)
    keep = weights > 0
    return km.cluster_centers_[keep].astype(np.float64), weights[keep] / weights.sum()


def _solve(c1, c2, p, q, settings: GWSettings, epsilon: float) -> tuple[float, int, bool, list[str]]:
    import ot

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if settings.method == "exact":
            _, log = ot.gromov.gromov_wasserstein(
                c1, c2, p, q, loss_fun="square_loss", log=True, max_iter=settings.max_iter, tol_rel=settings.tol
            )
            n_iter = len(log.get("loss", []))
            converged = n_iter < settings.max_iter
            if log.get("warning"):
                notes.append(str(log["warning"]))
        else:
            _, log = ot.gromov.entropic_gromov_wasserstein(
                c1,
                c2,
                p,
                q,
                loss_fun="square_loss",
                epsilon=epsilon,
                log=True,
                max_iter=settings.max_iter,
                tol=settings.tol,
                solver="PGD",
            )
            errs = log.get("err", [])
            n_iter = 10 * len(errs)
            converged = bool(errs) and float(errs[-1]) <= settings.tol  # POT loops while err > tol
        for w in caught:
            msg = str(w.message)
            notes.append(msg[:200])
            if "converge" in msg.lower() or "overflow" in msg.lower() or "nan" in msg.lower():
                converged = False
    return float(log["gw_dist"]), n_iter, converged, notes


@dataclass
class Prepared:
    """One feature set ready for GW: its support, weights and normalised cost matrix (computed once per task)."""

    support: np.ndarray
    weights: np.ndarray
    cost: np.ndarray
    self_terms: dict[tuple, GWResult] = field(default_factory=dict, repr=False)
    """Cache of GW(X, X) by solver settings (:func:`self_distance`), so debiasing solves each set once."""


def prepare(points: np.ndarray, settings: GWSettings = GWSettings()) -> Prepared:
    if len(points) < 2:
        raise ConfigError(f"GW needs at least 2 responses per task; got {len(points)}.")
    support, weights = summarise(points, settings.quantize, settings.seed, settings.subsample)
    return Prepared(support, weights, cost_matrix(support))


def _solve_key(settings: GWSettings, epsilon: float) -> tuple:
    return (settings.method, epsilon, settings.max_iter, settings.tol)


def _checked(px: Prepared, py: Prepared, settings: GWSettings, epsilon: float, *, strict: bool = True) -> GWResult:
    """One raw GW solve from ``epsilon`` up, checked for NaN, sign and convergence (retried with a doubled epsilon).
    ``strict=False`` returns a finite, non-negative but unconverged last try (``converged=False``, noted) instead of
    raising: for re-solving a debiasing term at a fixed epsilon, where doubling it is not an option."""
    t0 = time.perf_counter()
    notes: list[str] = []
    for attempt in range(settings.retries + 1):
        d, n_iter, converged, msgs = _solve(px.cost, py.cost, px.weights, py.weights, settings, epsilon)
        notes += msgs
        bad = not np.isfinite(d) or d < -NEGATIVE_TOLERANCE
        if not bad and (converged or settings.method == "exact"):
            return GWResult(
                max(d, 0.0),
                settings.method,
                epsilon if settings.method == "entropic" else None,
                n_iter,
                converged,
                time.perf_counter() - t0,
                attempt,
                notes,
            )
        if settings.method == "exact":
            break
        if not strict and not bad and attempt == settings.retries:
            notes.append(f"epsilon {epsilon:g}: not converged after {settings.max_iter} iterations; value kept")
            return GWResult(
                max(d, 0.0), settings.method, epsilon, n_iter, False, time.perf_counter() - t0, attempt, notes
            )
        why = "value " + str(d) if bad else "not converged"
        notes.append(f"epsilon {epsilon:g}: {why}; retrying with {2 * epsilon:g}")
        epsilon *= 2
    if settings.method == "exact":
        raise GromovError(
            f"the exact GW solve gave {d!r}; this should not happen with finite features. Check the features for "
            "NaN/inf, or try method='entropic'. Notes: " + str(notes[-3:])
        )
    raise GromovError(
        f"the entropic GW solve gave {d!r} (converged={converged}) after {settings.retries} retries with a doubled "
        f"epsilon (last tried {epsilon / 2:g}). Try method='exact', or quantize=400. Notes: {notes[-3:]}"
    )


def self_distance(x: Prepared, settings: GWSettings, epsilon: float | None = None, *, strict: bool = True) -> GWResult:
    """The raw GW(X, X) of one prepared set at ``epsilon`` (default ``settings.epsilon``), cached on ``x``."""
    eps = settings.epsilon if epsilon is None else epsilon
    key = _solve_key(settings, eps)
    if key not in x.self_terms:
        x.self_terms[key] = _checked(x, x, settings, eps, strict=strict)
    return x.self_terms[key]


def debiased(
    cross: GWResult,
    self_x: GWResult,
    self_y: GWResult,
    resolve: Callable[[str, float], GWResult],
) -> GWResult:
    """Combine raw solves into GW(X, Y) - 1/2 GW(X, X) - 1/2 GW(Y, Y) (Feydy et al. 2019, eq. 4, for GW).

    The three terms must share one epsilon: a term a retry left at a smaller epsilon than another is solved again,
    once, at the largest (``resolve(which, epsilon)`` with ``which`` in ``"xy", "xx", "yy"``; an unconverged re-solve
    is kept, noted and marks the result ``converged=False``). The non-convex solver
    can leave the cross term a little below the self terms' mean; such a negative value is clamped to 0 and noted
    (a clearly negative one means a self solve stopped in a worse local optimum than the cross solve)."""
    terms = {"xy": cross, "xx": self_x, "yy": self_y}
    notes = list(cross.notes)
    if cross.method == "entropic":
        eps = max(float(r.epsilon or 0.0) for r in terms.values())
        for which, r in terms.items():
            if r.epsilon != eps:
                notes.append(f"term {which} re-solved at epsilon {eps:g} (was {r.epsilon:g}) to match the others")
                terms[which] = resolve(which, eps)
    value = terms["xy"].distance - 0.5 * terms["xx"].distance - 0.5 * terms["yy"].distance
    if value < 0:
        notes.append(f"debiased value {value:.3g} < 0 clamped to 0 (solver tolerance / local optimum)")
    return GWResult(
        max(value, 0.0),
        cross.method,
        terms["xy"].epsilon,
        terms["xy"].n_iter,
        all(r.converged for r in terms.values()),
        sum(r.seconds for r in terms.values()),
        terms["xy"].retries,
        notes,
        raw_distance=terms["xy"].distance,
        self_distances=(terms["xx"].distance, terms["yy"].distance),
    )


def gw_distance(x: np.ndarray | Prepared, y: np.ndarray | Prepared, settings: GWSettings = GWSettings()) -> GWResult:
    """GW distance between two feature sets ``(n, d)`` and ``(m, e)`` (rows = responses; d and e may differ),
    checked for NaN, sign and convergence; debiased when ``settings.debiased`` (module docstring; three solves, the
    self terms cached on a :class:`Prepared`). Unitless: costs are scaled to [0, 1], so values lie in [0, 1].

    Raises:
        ConfigError: a set has fewer than 2 rows.
        GromovError: a solve gave NaN, a clearly negative value, or did not converge after ``retries``.
    """
    px = x if isinstance(x, Prepared) else prepare(x, settings)
    py = y if isinstance(y, Prepared) else prepare(y, settings)
    cross = _checked(px, py, settings, settings.epsilon)
    if not settings.debiased:
        return cross
    return debiased(cross, self_distance(px, settings), self_distance(py, settings), _resolver(px, py, settings))


def _resolver(px: Prepared, py: Prepared, settings: GWSettings) -> Callable[[str, float], GWResult]:
    """The ``resolve`` of :func:`debiased` for the sets ``px``, ``py``: one raw solve at a given epsilon, no retry
    (a self term through the set's cache)."""
    once = replace(settings, retries=0)

    def resolve(which: str, eps: float) -> GWResult:
        if which == "xy":
            return _checked(px, py, once, eps, strict=False)
        return self_distance(px if which == "xx" else py, once, eps, strict=False)

    return resolve


@dataclass
class GWMatrix:
    task_ids: list[str]
    distances: np.ndarray
    """``(T, T)`` symmetric, zero diagonal."""
    settings: GWSettings
    seconds: float
    peak_bytes: int
    pairs: list[dict]

    def similarity(self) -> np.ndarray:
        """``S_ij = 1 - (d_ij - d_min) / (d_max - d_min)`` over the off-diagonal pairs (diagonal 1)."""
        return normalised_similarity(self.distances)

    def to_dict(self) -> dict:
        return {
            "task_ids": self.task_ids,
            "distances": self.distances.tolist(),
            "similarity": self.similarity().tolist(),
            "settings": asdict(self.settings),
            "seconds": self.seconds,
            "peak_bytes": self.peak_bytes,
            "pairs": self.pairs,
        }


def normalised_similarity(distances: np.ndarray) -> np.ndarray:
    d = np.asarray(distances, dtype=np.float64)
    t = len(d)
    off = ~np.eye(t, dtype=bool)
    if t < 2:
        return np.ones_like(d)
    lo, hi = d[off].min(), d[off].max()
    s = np.ones_like(d) if hi - lo <= 0 else 1.0 - (d - lo) / (hi - lo)
    np.fill_diagonal(s, 1.0)
    return s


PairMap = Callable[[Mapping[str, Prepared], Sequence[tuple[str, str]], GWSettings], Iterable[tuple[int, GWResult]]]
"""How :func:`gw_matrix` computes its pairs: given the prepared feature sets by task, the pairs ``(a, b)`` and the
settings, yield ``(index into pairs, gw_distance result)`` for every pair, in any order (as each finishes).
:func:`local_pairs` runs them one after another here; :func:`scoreplex.cluster.gw.ray_gw_pairs` as Ray tasks."""


def local_pairs(
    ready: Mapping[str, Prepared], pairs: Sequence[tuple[str, str]], settings: GWSettings
) -> Iterator[tuple[int, GWResult]]:
    """The :data:`PairMap` of this process: each pair's :func:`gw_distance`, in order."""
    for n, (a, b) in enumerate(pairs):
        yield n, gw_distance(ready[a], ready[b], settings)


def gw_matrix(
    features: Mapping[str, np.ndarray],
    settings: GWSettings = GWSettings(),
    *,
    progress: bool = True,
    pair_map: PairMap | None = None,
) -> GWMatrix:
    """All pairwise GW distances between the tasks' feature sets, with wall time and peak traced memory.

    Each set is prepared once (:func:`prepare`); the ``T(T-1)/2`` pairs are then computed by ``pair_map``
    (default :func:`local_pairs`; a Ray map spreads them over a cluster and gives the same matrix). When
    ``settings.debiased``, the map also gets the ``T`` self pairs ``(a, a)`` and every solve runs raw
    (``debias=False``); the debiased values are combined here (:func:`debiased`), so a map needs no change.
    ``peak_bytes`` traces this process only. ``pairs`` lists the pairs in ``(i, j)`` order whatever order they
    finish in.

    Raises:
        ConfigError: fewer than 2 tasks, or a set with fewer than 2 rows.
        GromovError: a solve failed (:func:`gw_distance`), or the map left a pair out.
    """
    from scoreplex.progress import progress_bar

    ids = list(features)
    if len(ids) < 2:
        raise ConfigError(f"GW distances need at least 2 tasks; got {len(ids)}.")
    t = len(ids)
    dist = np.zeros((t, t))
    index = [(i, j) for i in range(t) for j in range(i + 1, t)]
    if settings.debiased:
        index += [(i, i) for i in range(t)]  # the self terms: T more solves, each set against itself
    raw = replace(settings, debias=False) if settings.debiased else settings
    results: list[GWResult | None] = [None] * len(index)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with progress_bar(progress) as bar:
            job = bar.add_task(f"GW distances ({settings.method})", total=len(index))
            ready = {k: prepare(features[k], settings) for k in ids}  # summaries and cost matrices once per task
            for n, r in (pair_map or local_pairs)(ready, [(ids[i], ids[j]) for i, j in index], raw):
                results[n] = r
                bar.update(job, advance=1)
            missing = [f"{ids[i]}-{ids[j]}" for (i, j), r in zip(index, results, strict=True) if r is None]
            if missing:
                raise GromovError(
                    f"the GW pair map returned no result for pairs {missing[:5]}; this is a bug in the map."
                )
            n_cross = t * (t - 1) // 2
            selves = {i: results[n] for n, (i, j) in enumerate(index) if i == j}
            for i, r in selves.items():  # the map's self solves (maybe on other machines), cached for re-solves
                ready[ids[i]].self_terms.setdefault(_solve_key(raw, raw.epsilon), r)
            out: list[GWResult] = []
            for (i, j), r in zip(index[:n_cross], results[:n_cross], strict=True):
                if settings.debiased:
                    r = debiased(r, selves[i], selves[j], _resolver(ready[ids[i]], ready[ids[j]], raw))
                dist[i, j] = dist[j, i] = r.distance
                out.append(r)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pairs = [{"a": ids[i], "b": ids[j], **asdict(r)} for (i, j), r in zip(index[:n_cross], out, strict=True)]
    return GWMatrix(ids, dist, settings, seconds, int(peak), pairs)
