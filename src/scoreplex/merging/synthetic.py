"""Point clouds of known similarity, to check that a GW distance orders them (issue 15, item 2).

A *noise ladder* starts from a base set ``X`` ``(n, d)`` and builds rungs of known, increasing dissimilarity: rung 0
is ``X`` rotated, shifted and its rows permuted (an isometry: GW distance 0 in theory), rung k adds Gaussian noise of
``scales[k]`` times the base's per-coordinate spread before the same isometry. A distance that orders the rungs has a
Spearman correlation of 1 with the rung index. Alongside: the distance of ``X`` to itself (0 for a proper distance,
> 0 for raw entropic GW) and to an unrelated set of another shape, and a family of clustered sets whose number of
clusters moves away from the base's (a softer notion of similarity, reported, not asserted).
``benchmarks/gw_synthetic.py`` runs this for exact, raw entropic and debiased entropic GW.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scoreplex.errors import ConfigError
from scoreplex.merging.gromov import GWSettings, gw_distance, prepare

NOISE_SCALES = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
"""Noise scales of the ladder's rungs, in units of the base set's per-coordinate standard deviation."""


def base_set(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, dim)`` points: ``"gaussian"`` (one isotropic cloud), ``"uniform"`` (a cube) or ``"clusters-<k>"``
    (``k`` Gaussian blobs of spread 0.15 around standard-normal centres)."""
    if kind == "gaussian":
        return rng.normal(size=(n, dim))
    if kind == "uniform":
        return rng.uniform(-1.0, 1.0, size=(n, dim))
    if kind.startswith("clusters-") and kind[9:].isdigit() and int(kind[9:]) >= 1:
        centres = rng.normal(size=(int(kind[9:]), dim))
        return centres[rng.integers(0, len(centres), n)] + 0.15 * rng.normal(size=(n, dim))
    raise ConfigError(f"synthetic set kind {kind!r}; give 'gaussian', 'uniform' or 'clusters-<k>' (k >= 1).")


def isometry(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` with its rows permuted, rotated by a random orthogonal matrix and shifted: every GW distance to ``x``
    is 0 (intra-set distances are unchanged)."""
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    return x[rng.permutation(len(x))] @ q + rng.normal(size=x.shape[1])


def noise_ladder(x: np.ndarray, scales: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """One set per scale: ``isometry(x + scale * std(x) * noise)``, the rungs of known increasing dissimilarity."""
    if list(scales) != sorted(scales) or min(scales) < 0:
        raise ConfigError(f"noise scales {list(scales)} must be >= 0 and increasing.")
    std = x.std(axis=0, keepdims=True)
    return [isometry(x + s * std * rng.normal(size=x.shape), rng) for s in scales]


def spearman(distances: Sequence[float], dissimilarity: Sequence[float]) -> float:
    """Spearman rank correlation of distances with the known dissimilarity (1: ordered exactly; NaN if constant)."""
    from scipy.stats import spearmanr

    d = np.asarray(distances, dtype=np.float64)
    if np.ptp(d) == 0:
        return float("nan")
    return float(spearmanr(d, np.asarray(dissimilarity, dtype=np.float64)).statistic)


@dataclass(frozen=True)
class LadderResult:
    """One base set's noise ladder under one GW setting."""

    kind: str
    """Base set kind (:func:`base_set`)."""
    seed: int
    """Seed of the base set, its ladder and the unrelated set."""
    distances: tuple[float, ...]
    """GW distance of the base to each rung, in rung order (rung 0: an isometric copy)."""
    spearman: float
    """Spearman correlation of ``distances`` with the rung index (1 = ordered exactly)."""
    self_distance: float
    """GW distance of the base to itself (0 for a proper distance)."""
    unrelated: float
    """GW distance of the base to an unrelated set of another shape (a reference for the scale of the values)."""

    def __post_init__(self) -> None:
        if len(self.distances) < 2:
            raise ConfigError("a noise ladder needs at least 2 rungs.")


def ladder_check(
    settings: GWSettings,
    kinds: Sequence[str] = ("gaussian", "clusters-3", "clusters-6"),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    n: int = 60,
    dim: int = 8,
    scales: Sequence[float] = NOISE_SCALES,
) -> list[LadderResult]:
    """The noise ladder of every base kind and seed under ``settings`` (same sets for every setting: seeded)."""
    out = []
    for kind in kinds:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            x = base_set(kind, n, dim, rng)
            rungs = noise_ladder(x, scales, rng)
            other = base_set("uniform" if kind != "uniform" else "clusters-4", n, dim, rng)
            px = prepare(x, settings)  # the base's cost matrix and (debiased) self term, once
            dist = tuple(gw_distance(px, r, settings).distance for r in rungs)
            out.append(
                LadderResult(
                    kind,
                    seed,
                    dist,
                    spearman(dist, range(len(dist))),
                    gw_distance(px, prepare(x, settings), settings).distance,
                    gw_distance(px, other, settings).distance,
                )
            )
    return out


def cluster_family(
    settings: GWSettings,
    base_k: int = 4,
    ks: Sequence[int] = (1, 2, 4, 6, 12),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    n: int = 60,
    dim: int = 8,
) -> dict[str, list[float]]:
    """GW distance of a ``base_k``-cluster set to fresh sets of ``k`` clusters (other centres), per seed, with the
    Spearman correlation against ``|log2(k / base_k)|`` (a soft expectation: other centres also move the distance)."""
    rows: dict[str, list[float]] = {f"k={k}": [] for k in ks}
    rows["spearman"] = []
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        px = prepare(base_set(f"clusters-{base_k}", n, dim, rng), settings)
        dist = [gw_distance(px, base_set(f"clusters-{k}", n, dim, rng), settings).distance for k in ks]
        for k, d in zip(ks, dist, strict=True):
            rows[f"k={k}"].append(d)
        rows["spearman"].append(spearman(dist, [abs(np.log2(k / base_k)) for k in ks]))
    return rows


def summarise_ladders(results: Sequence[LadderResult]) -> Mapping[str, float]:
    """Mean and minimum Spearman, share of ladders ordered exactly, mean self distance, and the mean ratio of the
    isometric copy's distance to the unrelated set's (0 for a distance that sees through isometries)."""
    rho = np.array([r.spearman for r in results])
    return {
        "mean_spearman": float(np.nanmean(rho)),
        "min_spearman": float(np.nanmin(rho)),
        "exactly_ordered": float(np.mean(rho >= 1.0 - 1e-12)),
        "mean_self_distance": float(np.mean([r.self_distance for r in results])),
        "isometry_over_unrelated": float(np.mean([r.distances[0] / max(r.unrelated, 1e-12) for r in results])),
    }
