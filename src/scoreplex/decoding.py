"""From class probabilities to the score a testing programme uses: calibrated, ordinal, and routed.

A task module's ``decoding`` (a top-level key of its ``task.json``) holds, per rubric dimension,

* a **temperature** ``T`` (Guo et al. 2017, "On calibration of modern neural networks", Sec. 4.2): the model's
  probabilities ``p`` become ``softmax(log p / T)``, with ``T`` minimising the negative log-likelihood on the
  validation split (``T > 1`` softens an over-confident model);
* a **rule**: ``argmax``; ``cutpoints`` for an ordinal dimension (the expected score ``E = sum_k k p_k`` is cut at
  ``K - 1`` increasing points tuned on validation to maximise QWK, the "optimised rounder" of the Kaggle ASAP
  competitions); or ``threshold`` for a binary dimension (``1`` when ``p_1 >= t``, ``t`` tuned on validation).

and, per task, a **routing threshold** on a confidence (over the dimensions, the smallest per-dimension confidence
of the task's ``route_confidence`` kind, :func:`dimension_confidence`: ``top``, the probability of the predicted
class, or ``quadratic``, one minus the expected quadratic disagreement between the predicted class and the class
distribution): responses at or above it are scored by the engine alone (route ``auto``), the others go to a human
rater (route ``human``). The threshold is fitted on validation (:func:`fit_route_threshold`) so that the automated
responses agree with the human score at least as well as a second human rater does (QWK and exact agreement,
Williamson, Xi & Breyer 2012), so the engine automates as much as it can without lowering agreement.

Every scorer (:class:`~scoreplex.scorer.SuiteScorer`, the engine, the ONNX engine, the service, ``scoreplex score``)
decodes through :meth:`Decoding.predictions`. A module without ``decoding`` decodes by argmax at ``T = 1`` and
automates everything, as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scoreplex.errors import ConfigError, SuiteError
from scoreplex.metrics import meets_human, quadratic_weighted_kappa
from scoreplex.tasks import TaskSpec

RULES = ("argmax", "cutpoints", "threshold")
ALL_HUMAN = 2.0
"""A routing threshold above every possible confidence: every response goes to a human rater."""
ROUTE_CONFIDENCES = ("top", "quadratic")
"""Kinds of routing confidence (:func:`dimension_confidence`)."""
ROUTE_CONFIDENCE = "quadratic"
"""The confidence new routing thresholds are fitted on. Chosen out of fold on the ASAP-SAS validation splits
(``benchmarks/routing.py``, docs/results/routing.md): against ``top`` it automated 50.6% vs 48.6% of held-out
responses and met the second rater on 26.2% vs 21.2% of held-out halves (mean over 10 items, 200 halves each)."""
ROUTE_RULES = ("lowest", "confident")
"""How a routing threshold is picked among the validation confidences (:func:`fit_route_threshold`)."""
ROUTE_RULE = "lowest"
"""The rule new routing thresholds are picked by (docs/results/routing.md: it automates the most)."""
ROUTE_LEVEL = 0.8
"""Default share of bootstrap draws in which the automated responses must meet the human yardstick (``confident``)."""
ROUTE_DRAWS = 400
"""Bootstrap draws per candidate threshold of the ``confident`` rule."""
MIN_AUTOMATED = 20
"""Fewest validation responses a routing threshold may automate (agreement on fewer is too noisy to trust)."""
_LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class RouteOptions:
    """How a task's routing threshold is fitted (``--route-confidence``, ``--route-rule``, ``--route-level`` of
    ``scoreplex train`` and ``scoreplex calibrate``; :func:`fit_routing`).

    The defaults, ``quadratic`` confidence and the ``lowest`` rule, are the combination chosen out of fold on the
    ASAP-SAS validation splits (docs/results/routing.md). There, with the quadratic confidence, ``confident`` at 0.8
    met the second rater on 28.3% of held-out halves against 26.2% for ``lowest``, but automated 36.8% of responses
    against 50.6%: a choice for programmes that value agreement over automation.

    Raises:
        ConfigError: an unknown ``confidence`` or ``rule``, or ``level`` outside ``(0, 1)``.
    """

    confidence: str = ROUTE_CONFIDENCE
    """The confidence routed on: one of :data:`ROUTE_CONFIDENCES` (:func:`dimension_confidence`)."""
    rule: str = ROUTE_RULE
    """How the threshold is picked: one of :data:`ROUTE_RULES` (:func:`fit_route_threshold`)."""
    level: float = ROUTE_LEVEL
    """``confident``: the share of bootstrap resamples whose automated responses must meet the yardstick."""

    def __post_init__(self) -> None:
        if self.confidence not in ROUTE_CONFIDENCES:
            raise ConfigError(
                f"routing confidence (--route-confidence) {self.confidence!r} is unknown; give one of "
                f"{', '.join(ROUTE_CONFIDENCES)}"
            )
        if self.rule not in ROUTE_RULES:
            raise ConfigError(
                f"routing rule (--route-rule) {self.rule!r} is unknown; give one of {', '.join(ROUTE_RULES)}"
            )
        if not (isinstance(self.level, (int, float)) and 0 < self.level < 1):
            raise ConfigError(
                f"routing level (--route-level) {self.level!r} must lie strictly between 0 and 1, e.g. {ROUTE_LEVEL}"
            )


@dataclass(frozen=True)
class DimensionDecoding:
    """How one rubric dimension turns probabilities ``(N, K)`` into classes ``(N,)``."""

    temperature: float = 1.0
    """Divides the log-probabilities (Guo et al. 2017); 1.0 leaves them as the model gave them."""
    rule: str = "argmax"
    """``argmax``, ``cutpoints`` (ordinal) or ``threshold`` (binary)."""
    cutpoints: tuple[float, ...] = ()
    """``K - 1`` increasing points on the expected-score scale ``[0, K - 1]``; class = how many are <= E."""
    threshold: float = 0.5
    """Binary ``threshold`` rule: class 1 when ``p_1 >= threshold``."""

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities ``(N, K)``."""
        return temperature_scale(probs, self.temperature)

    def classes(self, probs: np.ndarray) -> np.ndarray:
        """Classes ``(N,)`` from (calibrated) probabilities ``(N, K)`` by this dimension's rule."""
        if self.rule == "cutpoints":
            return np.searchsorted(np.asarray(self.cutpoints), expected_score(probs), side="right").astype(np.int64)
        if self.rule == "threshold":
            return (probs[:, 1] >= self.threshold).astype(np.int64)
        return probs.argmax(axis=1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "rule": self.rule}
        if self.rule == "cutpoints":
            out["cutpoints"] = list(self.cutpoints)
        if self.rule == "threshold":
            out["threshold"] = self.threshold
        return out


@dataclass(frozen=True)
class Decoding:
    """A task's decoding: one :class:`DimensionDecoding` per rubric dimension, the routing threshold, and the facts
    it was fitted to (``human`` reference agreement, validation figures) for reports."""

    dimensions: tuple[DimensionDecoding, ...]
    route_threshold: float | None = None
    """Confidence at or above which a response is automated; None automates every response; a value above 1
    (:data:`ALL_HUMAN`) sends every response to a human rater."""
    human: Mapping[str, Any] | None = None
    """Agreement of two human raters on the training data: ``{"qwk", "exact", "adjacent", "n"}``."""
    human_automated: Mapping[str, Any] | None = None
    """Agreement of the two raters on the validation responses the routing threshold automates (``{"qwk",
    "exact", "n"}``): the fair yardstick of the automated part, which holds the responses the engine is surest of
    (and a narrower score range, which lowers any rater pair's QWK)."""
    fitted: Mapping[str, Any] = field(default_factory=dict)
    """Validation figures of the fit (for reports only; scoring never reads them)."""
    route_confidence: str = "top"
    """The confidence the routing threshold applies to (one of :data:`ROUTE_CONFIDENCES`); modules written before
    it existed route on ``top``."""

    @classmethod
    def identity(cls, spec: TaskSpec) -> Decoding:
        """Argmax at temperature 1, every response automated: what a module without ``decoding`` gets."""
        return cls(tuple(DimensionDecoding() for _ in spec.dimensions))

    def calibrate(self, probs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [d.calibrate(p) for d, p in zip(self.dimensions, probs, strict=True)]

    def predictions(self, spec: TaskSpec, ids: Sequence[str], probs: Sequence[np.ndarray]):
        """:class:`~scoreplex.predictions.Predictions` from the model's probabilities ``[(N, K_d)]``: calibrated,
        decoded by each dimension's rule, and routed."""
        from scoreplex.predictions import Predictions

        calibrated = self.calibrate(probs)
        n = len(ids)
        if n == 0:
            labels = np.zeros((0, len(spec.dimensions)), dtype=np.int64)
        else:
            labels = np.stack([d.classes(p) for d, p in zip(self.dimensions, calibrated, strict=True)], axis=1)
        pred = Predictions(
            spec=spec, ids=list(ids), labels=labels, probs=calibrated, confidence_kind=self.route_confidence
        )
        if self.route_threshold is not None:
            pred.automated = pred.confidence >= self.route_threshold
        return pred

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dimensions": [d.to_dict() for d in self.dimensions],
            "route_threshold": self.route_threshold,
        }
        if self.route_confidence != "top":
            out["route_confidence"] = self.route_confidence
        if self.human is not None:
            out["human"] = dict(self.human)
        if self.human_automated is not None:
            out["human_automated"] = dict(self.human_automated)
        if self.fitted:
            out["fitted"] = dict(self.fitted)
        return out

    @classmethod
    def from_dict(cls, d: Any, spec: TaskSpec) -> Decoding:
        """Parse a task module's ``decoding`` (untrusted JSON); SuiteError naming the task and the field."""

        def bad(what: str) -> SuiteError:
            return SuiteError(
                f"task {spec.id!r}: its decoding {what}; refit it with `scoreplex calibrate` or retrain the task."
            )

        if d is None:
            return cls.identity(spec)
        if not isinstance(d, Mapping) or not isinstance(d.get("dimensions"), list):
            raise bad("is not an object with a 'dimensions' list")
        if len(d["dimensions"]) != len(spec.dimensions):
            raise bad(f"has {len(d['dimensions'])} dimensions but the task has {len(spec.dimensions)}")
        dims = []
        for dim, raw in zip(spec.dimensions, d["dimensions"], strict=True):
            if not isinstance(raw, Mapping):
                raise bad(f"entry for dimension {dim.name!r} is not an object")
            t = raw.get("temperature", 1.0)
            if not _finite(t) or not 0.01 <= t <= 100:
                raise bad(f"temperature of dimension {dim.name!r} is {t!r}, not a number in [0.01, 100]")
            rule = raw.get("rule", "argmax")
            if rule not in RULES:
                raise bad(f"rule of dimension {dim.name!r} is {rule!r}, not one of {', '.join(RULES)}")
            cuts: tuple[float, ...] = ()
            threshold = 0.5
            if rule == "cutpoints":
                c = raw.get("cutpoints")
                if (
                    dim.kind != "ordinal"
                    or not isinstance(c, list)
                    or len(c) != dim.num_classes - 1
                    or not all(_finite(x) for x in c)
                    or any(b < a for a, b in zip(c, c[1:], strict=False))
                ):
                    raise bad(
                        f"cutpoints of dimension {dim.name!r} are not {dim.num_classes - 1} increasing numbers "
                        "of an ordinal dimension"
                    )
                cuts = tuple(float(x) for x in c)
            if rule == "threshold":
                threshold = raw.get("threshold")
                if dim.num_classes != 2 or not _finite(threshold) or not 0 <= threshold <= 1:
                    raise bad(f"threshold of dimension {dim.name!r} is not a number in [0, 1] of a binary dimension")
            dims.append(DimensionDecoding(float(t), rule, cuts, float(threshold)))
        route = d.get("route_threshold")
        if route is not None and (not _finite(route) or not 0 <= route <= ALL_HUMAN):
            raise bad(f"route_threshold is {route!r}, not null or a number in [0, {ALL_HUMAN}]")
        human = d.get("human")
        human = dict(human) if isinstance(human, Mapping) else None
        human_auto = d.get("human_automated")
        human_auto = dict(human_auto) if isinstance(human_auto, Mapping) else None
        fitted = d.get("fitted") if isinstance(d.get("fitted"), Mapping) else {}
        kind = d.get("route_confidence", "top")
        if kind not in ROUTE_CONFIDENCES:
            raise bad(f"route_confidence is {kind!r}, not one of {', '.join(ROUTE_CONFIDENCES)}")
        return cls(tuple(dims), None if route is None else float(route), human, human_auto, dict(fitted), kind)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------------------- pieces


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise for probabilities ``(N, K)`` (equal to dividing the logits by ``T``)."""
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs, _LOG_FLOOR, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_score(probs: np.ndarray) -> np.ndarray:
    """``E = sum_k k p_k`` per row ``(N,)`` on the scale ``[0, K - 1]``."""
    return probs @ np.arange(probs.shape[1], dtype=probs.dtype)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The ``T`` in ``[0.05, 20]`` minimising the negative log-likelihood of classes ``y (N,)`` under
    ``softmax(log p / T)`` (Guo et al. 2017, Sec. 4.2); a bounded 1-D search on ``log T`` (scipy)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(probs, _LOG_FLOOR, 1.0))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[rows, y] - np.log(np.exp(z).sum(axis=1))).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def fit_cutpoints(expected: np.ndarray, y: np.ndarray, num_classes: int, passes: int = 3) -> tuple[float, ...]:
    """``K - 1`` increasing cut points on the expected score maximising QWK with ``y`` (the optimised rounder):
    coordinate search, each point over a 41-step grid between its neighbours, starting at ``k - 0.5``."""
    cuts = np.arange(num_classes - 1, dtype=np.float64) + 0.5
    labels = range(num_classes)

    def qwk(c: np.ndarray) -> float:
        return quadratic_weighted_kappa(y, np.searchsorted(c, expected, side="right"), labels=labels)

    best = qwk(cuts)
    for _ in range(passes):
        improved = False
        for j in range(len(cuts)):
            lo = cuts[j - 1] if j > 0 else 0.0
            hi = cuts[j + 1] if j + 1 < len(cuts) else float(num_classes - 1)
            for v in np.linspace(lo, hi, 41)[1:-1]:
                trial = cuts.copy()
                trial[j] = v
                score = qwk(trial)
                if score > best + 1e-12:
                    best, cuts, improved = score, trial, True
        if not improved:
            break
    return tuple(float(c) for c in cuts)


def fit_binary_threshold(p1: np.ndarray, y: np.ndarray) -> float:
    """The threshold on ``p_1`` maximising Cohen's kappa with ``y`` (0/1) over a grid 0.05..0.95."""
    grid = np.linspace(0.05, 0.95, 19)
    scores = [quadratic_weighted_kappa(y, (p1 >= t).astype(int), labels=range(2)) for t in grid]
    return float(grid[int(np.argmax(scores))])


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE (Guo et al. 2017, Eq. 3): ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over ``bins``
    equal-width confidence bins of the argmax probability; ``probs (N, K)``, ``y (N,)``."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def calibration_consistency(
    probs: np.ndarray, y: np.ndarray, bins: int = 15, draws: int = 1000, seed: int = 0
) -> dict[str, float]:
    """How large the top-label ECE of ``probs (N, K)`` against ``y (N,)`` is next to what a *perfectly calibrated*
    model with the same confidences would measure on ``N`` responses: consistency resampling (Bröcker & Smith 2007,
    "Increasing the reliability of reliability diagrams", Weather and Forecasting 22(3)). Each of ``draws`` draws
    marks each response correct with probability equal to its confidence (what calibration means) and computes the
    ECE of that draw; binning and a finite ``N`` make it positive even then.

    Returns ``{"ece", "floor" (mean ECE over the draws), "floor_q95" (its 95th percentile), "p_value" (share of draws
    whose ECE is at least the measured one: small means miscalibrated beyond chance), "n"}``. Seeded, so the same
    inputs give the same figures."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    observed = expected_calibration_error(probs, np.asarray(y), bins)
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)  # (N,) as expected_calibration_error
    share = np.bincount(which, minlength=bins) / max(1, len(conf))  # (bins,)
    count = np.maximum(np.bincount(which, minlength=bins), 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins) / count  # (bins,)
    simulated = np.empty(draws)
    chunk = max(1, min(draws, (1 << 22) // max(1, len(conf))))  # draws per chunk: memory bounded, whatever N
    for start in range(0, draws, chunk):
        c = min(chunk, draws - start)
        correct = rng.random((c, len(conf))) < conf  # (c, N): right with probability = confidence
        slots = (np.arange(c)[:, None] * bins + which).ravel()
        acc = np.bincount(slots, weights=correct.ravel(), minlength=c * bins).reshape(c, bins) / count
        simulated[start : start + c] = (share * np.abs(acc - mean_conf)).sum(axis=1)
    return {
        "ece": observed,
        "floor": float(simulated.mean()),
        "floor_q95": float(np.quantile(simulated, 0.95)),
        "p_value": float((simulated >= observed - 1e-12).mean()),
        "n": int(len(conf)),
    }


def task_calibration(spec: TaskSpec, y_true: np.ndarray, probs: Sequence[np.ndarray]) -> dict[str, Any]:
    """Top-label calibration of a task's class probabilities ``probs [(N, K_d)]`` against the human scores
    ``y_true (N, D)`` (class positions; missing scores left out): :func:`calibration_consistency` per rubric
    dimension, and over the dimensions the mean ``ece`` and ``floor`` and a ``p_value`` for the task: the smallest
    over its dimensions times their number (Bonferroni, at most 1), so that a task with many rubric dimensions is
    not flagged more often by chance. None for a dimension (and the means) with no scored response."""
    y_true = np.asarray(y_true)
    dims = {}
    for d, (dim, p) in enumerate(zip(spec.dimensions, probs, strict=True)):
        scored = y_true[:, d] >= 0
        dims[dim.name] = calibration_consistency(np.asarray(p)[scored], y_true[scored, d]) if scored.any() else None
    known = [c for c in dims.values() if c is not None]
    return {
        "ece": float(np.mean([c["ece"] for c in known])) if known else None,
        "floor": float(np.mean([c["floor"] for c in known])) if known else None,
        "p_value": min(1.0, len(known) * min(c["p_value"] for c in known)) if known else None,
        "dimensions": dims,
    }


def agreement(spec: TaskSpec, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """QWK (mean over dimensions), exact and adjacent agreement (every dimension equal / within 1) and ``n`` of
    ``(N, D)`` scores, as :func:`scoreplex.metrics.task_agreement`; a figure with no scored rows is ``nan``."""
    from scoreplex.metrics import task_agreement

    a = task_agreement(spec, np.asarray(y_true), np.asarray(y_pred))
    return {k: float("nan") if a[k] is None else float(a[k]) for k in ("qwk", "exact", "adjacent")} | {"n": a["n"]}


def dimension_confidence(probs: np.ndarray, classes: np.ndarray, kind: str = "top") -> np.ndarray:
    """Confidence ``(N,)`` in ``[0, 1]`` of the predicted ``classes (N,)`` of one dimension under its class
    probabilities ``probs (N, K)``.

    ``top``: ``p[class]``, the probability that the predicted class is exactly right. ``quadratic``: ``1 - sum_k
    p_k (k - class)^2 / (K - 1)^2``, one minus the expected disagreement with the predicted class under QWK's
    quadratic weights (Cohen 1968), so a response whose doubt lies on the neighbouring score counts as surer than
    one torn between the scale's ends; for ``K = 2`` the two are equal.

    Raises:
        ValueError: an unknown ``kind`` (a task module's kind is checked when it is read, :meth:`Decoding.from_dict`).
    """
    probs = np.asarray(probs, dtype=np.float64)
    rows = np.arange(len(classes))
    if kind == "top":
        return probs[rows, classes]
    if kind == "quadratic":
        k = probs.shape[1]
        if k < 2:
            return np.ones(len(classes))
        dist = (np.arange(k)[None, :] - np.asarray(classes)[:, None]) ** 2 / (k - 1) ** 2
        return 1.0 - (probs * dist).sum(axis=1)
    raise ValueError(f"unknown confidence kind {kind!r}; give one of {', '.join(ROUTE_CONFIDENCES)}")


def _qwk_draws(t: np.ndarray, p: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    """QWK ``(B,)`` of ``t (n,)`` against ``p (n,)`` (classes ``0..k-1``) on each bootstrap row of ``idx (B, n)``;
    1.0 where undefined (one class in both), as :func:`scoreplex.metrics.task_agreement` in fits."""
    b, n = idx.shape
    if k < 2:
        return np.ones(b)
    codes = (np.arange(b)[:, None] * k * k + t[idx] * k + p[idx]).ravel()
    observed = np.bincount(codes, minlength=b * k * k).reshape(b, k, k).astype(np.float64)  # (B, K, K)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n  # (B, K, K)
    w = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2 / (k - 1) ** 2  # (K, K)
    num, den = (w * observed).sum(axis=(1, 2)), (w * expected).sum(axis=(1, 2))
    return np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), 1.0)


def _agreement_draws(spec: TaskSpec, t: np.ndarray, p: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean QWK over dimensions and exact agreement (every dimension equal), each ``(B,)``, of fully scored
    ``t, p (n, D)`` on the bootstrap rows ``idx (B, n)``."""
    qwk = np.mean([_qwk_draws(t[:, d], p[:, d], dim.num_classes, idx) for d, dim in enumerate(spec.dimensions)], axis=0)
    exact = np.all(t == p, axis=1)[idx].mean(axis=1)
    return qwk, exact


def meets_human_share(
    spec: TaskSpec,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    second: np.ndarray | None,
    human: Mapping[str, Any],
    *,
    draws: int = ROUTE_DRAWS,
    seed: int = 0,
) -> float:
    """Share of ``draws`` bootstrap resamples (Efron & Tibshirani 1993) of the responses in which the engine's
    scores ``y_pred (n, D)`` meet the human yardstick against ``y_true (n, D)`` (:func:`meets_human`): a second
    rater's scores ``second (n, D)`` resampled with the same rows (paired), or, with ``second`` None, the fixed
    reference ``human`` (``{"qwk", "exact"}``). Rows with a missing score (-1) on either side are left out; 0.0
    when none is left."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rows = np.all(y_true >= 0, axis=1) & np.all(y_pred >= 0, axis=1)
    if second is not None:
        rows &= np.all(np.asarray(second) >= 0, axis=1)
    n = int(rows.sum())
    if n == 0:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    t = y_true[rows]
    e_qwk, e_exact = _agreement_draws(spec, t, y_pred[rows], idx)
    if second is not None:
        h_qwk, h_exact = _agreement_draws(spec, t, np.asarray(second)[rows], idx)
    else:
        h_qwk, h_exact = np.full(draws, float(human["qwk"])), np.full(draws, float(human["exact"]))
    tol = 1e-9
    return float(np.mean((e_qwk >= h_qwk - tol) & (e_exact >= h_exact - tol)))


def fit_route_threshold(
    spec: TaskSpec,
    confidence: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    human: Mapping[str, Any],
    second: np.ndarray | None = None,
    rule: str = ROUTE_RULE,
    level: float = ROUTE_LEVEL,
    seed: int = 0,
) -> tuple[float, dict[str, Any]]:
    """A confidence threshold whose automated responses (confidence >= it, at least :data:`MIN_AUTOMATED`) agree
    with the human score ``y_true`` at least as well as a second human rater does
    (:func:`scoreplex.metrics.meets_human`); :data:`ALL_HUMAN` when no threshold does.

    ``rule`` ``lowest``: the lowest threshold whose validation responses meet the yardstick. It automates the most
    on validation and is optimistic: chosen where the validation agreement happened to clear the bar, it clears it
    on new responses far less often (``benchmarks/routing.py`` measures how often, out of fold). ``confident``: the
    lowest threshold whose automated responses meet the yardstick in at least ``level`` of the bootstrap resamples
    (:func:`meets_human_share`), so the bar is cleared with a margin that shrinks as validation grows.

    With ``second`` (``(N, D)`` second-rater scores of the same responses, -1 where absent) the second rater is
    judged on the same automated responses, so both sides face the same, narrower score range; without it, on the
    reference ``human`` (the two raters over all double-scored training responses). Returns the threshold and its
    validation figures (``automation_rate``, ``auto_qwk``, ``auto_exact``, ``human_qwk``, ``human_exact``, and for
    ``confident`` the ``meets_share``).

    Raises:
        ConfigError: ``rule`` not one of :data:`ROUTE_RULES`, or ``level`` outside ``(0, 1)`` (:class:`RouteOptions`).
    """
    RouteOptions(rule=rule, level=level)  # checks them
    order = np.sort(np.unique(confidence))
    has_second = second is not None and np.all(second >= 0, axis=1).sum() >= MIN_AUTOMATED
    for t in order:
        auto = confidence >= t
        if auto.sum() < MIN_AUTOMATED:
            break
        a = agreement(spec, y_true[auto], y_pred[auto])
        if has_second:
            both = auto & np.all(second >= 0, axis=1)
            if both.sum() < MIN_AUTOMATED:
                break
            h = agreement(spec, y_true[both], second[both])
        else:
            h = {"qwk": human["qwk"], "exact": human["exact"], "n": human.get("n")}
        if a["n"] < MIN_AUTOMATED or not meets_human(a, h):
            continue
        figures = {
            "automation_rate": float(auto.mean()),
            **{f"auto_{k}": v for k, v in a.items()},
            "human_qwk": h["qwk"],
            "human_exact": h["exact"],
            "human_n": h["n"],
            "human_on": "the automated responses" if has_second else "all double-scored training responses",
            "rule": rule,
        }
        if rule == "confident":
            share = meets_human_share(
                spec, y_true[auto], y_pred[auto], second[auto] if has_second else None, h, seed=seed
            )
            if share < level:
                continue
            figures.update(meets_share=share, level=level)
        return float(t), figures
    return ALL_HUMAN, {"automation_rate": 0.0, "rule": rule}


# ------------------------------------------------------------------------------------------------------------ fit


def _split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2 :]


def _keeps_rule(fit_one, apply_one, base_one, y: np.ndarray, k: int, seed: int) -> tuple[bool, float, float]:
    """2-fold cross-fitting inside validation: fit the rule on one half, score both rules on the other; keep the
    rule when its out-of-fold QWK (mean of the two folds) is higher than argmax's."""
    a, b = _split_halves(len(y), seed)
    tuned, plain = [], []
    for fit_idx, eval_idx in ((a, b), (b, a)):
        params = fit_one(fit_idx)
        tuned.append(quadratic_weighted_kappa(y[eval_idx], apply_one(params, eval_idx), labels=range(k)))
        plain.append(quadratic_weighted_kappa(y[eval_idx], base_one(eval_idx), labels=range(k)))
    return float(np.mean(tuned)) > float(np.mean(plain)), float(np.mean(tuned)), float(np.mean(plain))


def _fit_dimension(dim, pd: np.ndarray, y: np.ndarray, seed: int) -> tuple[DimensionDecoding, dict[str, Any]]:
    """One dimension's temperature and rule from its validation probabilities ``(n, K)`` and scores ``(n,)``."""
    k = dim.num_classes
    if len(y) == 0:
        return DimensionDecoding(), {"temperature": 1.0, "rule": "argmax", "n": 0}
    t = fit_temperature(pd, y)
    pc = temperature_scale(pd, t)
    report: dict[str, Any] = {
        "n": int(len(y)),
        "temperature": t,
        "ece_before": expected_calibration_error(pd, y),
        "ece_after": expected_calibration_error(pc, y),
        "qwk_argmax": quadratic_weighted_kappa(y, pc.argmax(axis=1), labels=range(k)),
    }
    rule, cuts, threshold = "argmax", (), 0.5
    if len(y) >= 20 and dim.kind == "ordinal" and k > 2:
        e = expected_score(pc)
        keep, oof, oof_plain = _keeps_rule(
            lambda idx: fit_cutpoints(e[idx], y[idx], k),
            lambda c, idx: np.searchsorted(np.asarray(c), e[idx], side="right"),
            lambda idx: pc[idx].argmax(axis=1),
            y,
            k,
            seed,
        )
        report.update(qwk_cutpoints_out_of_fold=oof, qwk_argmax_out_of_fold=oof_plain)
        if keep:
            rule, cuts = "cutpoints", fit_cutpoints(e, y, k)
    elif len(y) >= 20 and k == 2:
        keep, oof, oof_plain = _keeps_rule(
            lambda idx: fit_binary_threshold(pc[idx, 1], y[idx]),
            lambda th, idx: (pc[idx, 1] >= th).astype(int),
            lambda idx: pc[idx].argmax(axis=1),
            y,
            k,
            seed,
        )
        report.update(qwk_threshold_out_of_fold=oof, qwk_argmax_out_of_fold=oof_plain)
        if keep:
            rule, threshold = "threshold", fit_binary_threshold(pc[:, 1], y)
    report["rule"] = rule
    return DimensionDecoding(t, rule, cuts, threshold), report


def fit_decoding(
    spec: TaskSpec,
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    human: Mapping[str, Any] | None = None,
    second: np.ndarray | None = None,
    route: bool = True,
    seed: int = 0,
    routing: RouteOptions | None = None,
) -> Decoding:
    """Fit a task's :class:`Decoding` on its validation split.

    Args:
        spec: the task.
        probs: the model's class probabilities per dimension ``[(N, K_d)]`` on the validation responses.
        labels: ``(N, D)`` human scores (``-1``: not scored; such rows are left out of that dimension's fit).
        human: agreement of two human raters (:func:`agreement` of the training data's two scores); routing needs it.
        second: ``(N, D)`` second-rater scores of the validation responses (-1: none), when there are; the routing
            threshold then holds the engine to the second rater's agreement on the same automated responses.
        route: fit a routing threshold (when ``human`` is given).
        seed: seeds the halves of the cross-fitting that decides whether a tuned rule beats argmax.
        routing: how the routing threshold is fitted (:class:`RouteOptions`; None: its defaults).

    Per dimension: the temperature (always), then the cut points (ordinal) or threshold (binary), kept only when
    2-fold cross-fitting inside validation says they beat argmax out of fold (so a rule is not both tuned and judged
    on the same responses); the final rule is refitted on all validation responses. Then the routing threshold
    (:func:`fit_routing`).

    Raises:
        ConfigError: ``routing`` holds an unknown confidence kind or rule (:class:`RouteOptions`).
    """
    routing = RouteOptions() if routing is None else routing
    labels = np.asarray(labels).reshape(len(labels), -1)
    dims: list[DimensionDecoding] = []
    fitted: dict[str, Any] = {"n_validation": int(len(labels)), "dimensions": {}}
    for d, (dim, p) in enumerate(zip(spec.dimensions, probs, strict=True)):
        rows = labels[:, d] >= 0
        decoding_d, report = _fit_dimension(dim, p[rows], labels[rows, d], seed)
        dims.append(decoding_d)
        fitted["dimensions"][dim.name] = report
    decoding = Decoding(tuple(dims), None, dict(human) if human else None, None, fitted)
    pred = decoding.predictions(spec, [str(i) for i in range(len(labels))], list(probs))
    fitted["decoded"] = agreement(spec, labels, pred.labels)
    if route:
        decoding = fit_routing(
            spec,
            decoding,
            probs,
            labels,
            human=human,
            second=second,
            confidence=routing.confidence,
            rule=routing.rule,
            level=routing.level,
            seed=seed,
        )
    return decoding


def fit_routing(
    spec: TaskSpec,
    decoding: Decoding,
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    human: Mapping[str, Any] | None,
    second: np.ndarray | None = None,
    confidence: str = ROUTE_CONFIDENCE,
    rule: str = ROUTE_RULE,
    level: float = ROUTE_LEVEL,
    seed: int = 0,
) -> Decoding:
    """``decoding`` with a routing threshold fitted on the validation probabilities ``probs [(N, K_d)]`` and human
    scores ``labels (N, D)`` (:func:`fit_route_threshold` on the ``confidence`` kind, by ``rule`` at ``level``,
    bootstrap seeded by ``seed``); ``decoding`` unchanged, without routing, when ``human`` lacks a finite QWK or
    exact agreement.

    Raises:
        ConfigError: an unknown ``confidence`` or ``rule``, or ``level`` outside ``(0, 1)`` (:class:`RouteOptions`).
    """
    RouteOptions(confidence, rule, level)  # checks them
    if not (human and _finite(human.get("qwk")) and _finite(human.get("exact"))):
        return decoding
    labels = np.asarray(labels).reshape(len(labels), -1)
    base = dataclasses.replace(decoding, route_threshold=None, route_confidence=confidence)
    pred = base.predictions(spec, [str(i) for i in range(len(labels))], list(probs))
    second = None if second is None else np.asarray(second).reshape(len(labels), -1)
    threshold, route_report = fit_route_threshold(
        spec, pred.confidence, labels, pred.labels, human, second, rule=rule, level=level, seed=seed
    )
    route_report["confidence"] = confidence
    fitted = {**decoding.fitted, "routing": route_report}
    human_auto = None
    if "human_qwk" in route_report and second is not None:
        human_auto = {k: route_report[f"human_{k}"] for k in ("qwk", "exact", "n")}
    return dataclasses.replace(base, route_threshold=threshold, human_automated=human_auto, fitted=fitted)


def describe_decoding(decoding: Decoding) -> str:
    """One line for logs: each dimension's temperature and rule, the validation QWK, and the automation rate."""
    parts = []
    for name, rep in decoding.fitted.get("dimensions", {}).items():
        parts.append(f"{name}: T={rep['temperature']:.2f}, {rep['rule']}")
    decoded = decoding.fitted.get("decoded", {})
    if _finite(decoded.get("qwk")):
        parts.append(f"validation QWK {decoded['qwk']:.3f}")
    routing = decoding.fitted.get("routing")
    if routing is not None:
        parts.append(f"automation rate {routing['automation_rate']:.0%} at the human-human agreement")
    return "decoding " + "; ".join(parts) if parts else "decoding: argmax"
