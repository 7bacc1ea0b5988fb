"""Merge plans: which tasks share one merged encoder.

A plan partitions the tasks into T' groups. :func:`optimal_plan` finds, exactly, the partition that maximises the
paper's objective — the total normalised similarity over pairs of tasks in the same group — by dynamic programming
over subsets (O(3^T) steps; timings in docs/results/gw-merging-fixed-ties.md; beyond ``MAX_EXACT_TASKS`` it refuses
rather than pretend). Because every pair adds a non-negative similarity, the objective alone favours one big
group and many singletons; group-size limits (``min_size`` / ``max_size``; by default balanced groups, as the paper's
trios of 9 tasks) keep plans comparable. Baselines: the authors' average-linkage clustering, seeded random plans
(drawn uniformly among the partitions that meet the same size limits), and plans read from a JSON file (an expert's
or an LLM's). :func:`loss_plan` is the reference a similarity is measured against: the optimal plan for the measured
pairwise merge losses themselves.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from scoreplex.errors import ConfigError

MAX_EXACT_TASKS = 16


@dataclass
class MergePlan:
    """A partition of task ids into groups, with where it came from."""

    name: str
    groups: list[list[str]]
    source: str = ""
    reasoning: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def group_of(self, task_id: str) -> int:
        for g, members in enumerate(self.groups):
            if task_id in members:
                return g
        raise KeyError(task_id)

    def validate(self, task_ids: list[str], *, where: str = "the plan") -> None:
        """Every task exactly once, no unknown task, no empty group."""
        seen: dict[str, int] = {}
        for g, members in enumerate(self.groups):
            if not members:
                raise ConfigError(f"{where}: group {g + 1} is empty; remove it or give it tasks.")
            for t in members:
                if t in seen:
                    raise ConfigError(f"{where}: task {t!r} is in groups {seen[t] + 1} and {g + 1}; keep it in one.")
                seen[t] = g
        unknown = sorted(set(seen) - set(task_ids))
        if unknown:
            raise ConfigError(
                f"{where}: tasks {unknown} are not in the suite; it holds {sorted(task_ids)}. Correct the task ids."
            )
        missing = sorted(set(task_ids) - set(seen))
        if missing:
            raise ConfigError(f"{where}: tasks {missing} are in no group; add each to a group (alone is fine).")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "groups": self.groups,
            "source": self.source,
            "reasoning": self.reasoning,
            **self.extra,
        }

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], task_ids: list[str] | None = None) -> MergePlan:
        """Read ``{"name": ..., "groups": [[task, ...], ...], "reasoning": ...}`` (JSON)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"plan file {p} does not exist; check the --plan path.") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"plan file {p} cannot be read ({exc}); give a UTF-8 JSON file.") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"plan file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}; fix the file."
            ) from None
        groups = data.get("groups") if isinstance(data, dict) else None
        if not isinstance(groups, list) or not all(
            isinstance(g, list) and all(isinstance(t, str) for t in g) for g in groups
        ):
            raise ConfigError(
                f'plan file {p}: "groups" must be a list of lists of task ids, e.g. '
                '{"name": "expert", "groups": [["asap-1", "asap-2"], ["asap-3"]]}.'
            )
        plan = cls(
            name=str(data.get("name", p.stem)),
            groups=groups,
            source=str(data.get("source", f"file:{p.name}")),
            reasoning=str(data.get("reasoning", "")),
        )
        if task_ids is not None:
            plan.validate(task_ids, where=f"plan file {p}")
        return plan


def plan_score(plan: MergePlan, similarity: np.ndarray, task_ids: list[str]) -> float:
    """The paper's objective: sum of S_ij over pairs in the same group."""
    pos = {t: i for i, t in enumerate(task_ids)}
    total = 0.0
    for members in plan.groups:
        idx = [pos[t] for t in members]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                total += float(similarity[idx[a], idx[b]])
    return total


def size_limits(
    n_tasks: int, n_groups: int, min_size: int | None, max_size: int | None, balanced: bool
) -> tuple[int, int]:
    """Resolve group-size limits; ``balanced`` means sizes floor(T/T')..ceil(T/T')."""
    if not 1 <= n_groups <= n_tasks:
        raise ConfigError(f"{n_groups} groups for {n_tasks} tasks; choose T' between 1 and {n_tasks}.")
    lo = min_size if min_size is not None else (n_tasks // n_groups if balanced else 1)
    hi = max_size if max_size is not None else (math.ceil(n_tasks / n_groups) if balanced else n_tasks)
    if lo < 1 or hi < lo or lo * n_groups > n_tasks or hi * n_groups < n_tasks:
        raise ConfigError(
            f"no partition of {n_tasks} tasks into {n_groups} groups has every group size in [{lo}, {hi}]; "
            "loosen min/max group size."
        )
    return lo, hi


def optimal_plan(
    similarity: np.ndarray,
    task_ids: list[str],
    n_groups: int,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    balanced: bool = True,
    name: str = "gw",
) -> MergePlan:
    """The exact best partition into ``n_groups`` groups under the size limits (dynamic programming over subsets)."""
    n = len(task_ids)
    if n > MAX_EXACT_TASKS:
        raise ConfigError(
            f"exact plan search over {n} tasks is too large (limit {MAX_EXACT_TASKS}: O(3^T)); split the item bank, or "
            "use the clustering plan."
        )
    lo, hi = size_limits(n, n_groups, min_size, max_size, balanced)
    s = np.asarray(similarity, dtype=np.float64)
    full = (1 << n) - 1
    # score of every subset as a group: add the new top element's similarities to the rest
    score = np.zeros(1 << n)
    for mask in range(1, 1 << n):
        top = mask.bit_length() - 1
        rest = mask ^ (1 << top)
        score[mask] = score[rest] + sum(s[top, j] for j in range(top) if rest >> j & 1)
    size = np.array([bin(m).count("1") for m in range(1 << n)])

    @cache
    def best(mask: int, k: int) -> tuple[float, tuple[int, ...]]:
        remaining = int(size[mask])
        if k == 0:
            return (0.0, ()) if mask == 0 else (-math.inf, ())
        if not k * lo <= remaining <= k * hi:
            return -math.inf, ()
        low = mask & -mask  # the lowest remaining task must be in some group: enumerate groups containing it
        rest = mask ^ low
        top_val, top_groups = -math.inf, ()
        sub = rest
        while True:
            group = sub | low
            g = int(size[group])
            if lo <= g <= hi:
                val, groups = best(mask ^ group, k - 1)
                val += score[group]
                if val > top_val + 1e-12:
                    top_val, top_groups = val, (group, *groups)
            if sub == 0:
                break
            sub = (sub - 1) & rest
        return top_val, top_groups

    value, masks = best(full, n_groups)
    best.cache_clear()
    groups = [[task_ids[i] for i in range(n) if m >> i & 1] for m in masks]
    return MergePlan(
        name=name, groups=groups, source="gw-optimal", extra={"objective": float(value), "size_limits": [lo, hi]}
    )


def loss_plan(
    losses: np.ndarray,
    task_ids: list[str],
    n_groups: int,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    balanced: bool = True,
    name: str = "measured-loss",
) -> MergePlan:
    """The plan that minimises the total measured loss over pairs merged together: :func:`optimal_plan` with
    similarity ``-losses`` (unscaled, so the objective is minus the summed pairwise losses).

    ``losses`` ``(T, T)``: e.g. the validation QWK lost when merging each pair of tasks alone (higher = worse to
    merge); symmetric, finite off the diagonal (the diagonal is ignored and may be NaN). What any similarity could at
    best achieve if pairwise losses added up, the reference planner of issue 15.

    Raises:
        ConfigError: wrong shape, asymmetric or non-finite off-diagonal losses, or infeasible size limits.
    """
    d = np.array(losses, dtype=np.float64)
    n = len(task_ids)
    if d.shape != (n, n):
        raise ConfigError(f"pairwise losses of shape {d.shape} for {n} tasks; give a ({n}, {n}) matrix.")
    np.fill_diagonal(d, 0.0)
    if not np.all(np.isfinite(d)) or not np.allclose(d, d.T):
        raise ConfigError("pairwise losses must be finite and symmetric off the diagonal (loss of i+j = loss of j+i).")
    plan = optimal_plan(-d, task_ids, n_groups, min_size=min_size, max_size=max_size, balanced=balanced, name=name)
    plan.source = "measured-loss-optimal"
    plan.extra["total_loss"] = -plan.extra.pop("objective")
    return plan


def clustering_plan(
    distances: np.ndarray, task_ids: list[str], n_groups: int, *, name: str = "clustering"
) -> MergePlan:
    """The authors' notebooks: average-linkage hierarchical clustering of the GW distances cut into ``n_groups``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(task_ids)
    if not 1 <= n_groups <= n:
        raise ConfigError(f"{n_groups} groups for {n} tasks; choose T' between 1 and {n}.")
    if n_groups == n:
        labels = np.arange(n)
    elif n_groups == 1:
        labels = np.zeros(n, dtype=int)
    else:
        z = linkage(squareform(np.asarray(distances, dtype=np.float64), checks=False), method="average")
        labels = fcluster(z, t=n_groups, criterion="maxclust")
    groups: dict[int, list[str]] = {}
    for t, lab in zip(task_ids, labels, strict=True):
        groups.setdefault(int(lab), []).append(t)
    plan = MergePlan(name=name, groups=list(groups.values()), source="average-linkage")
    if plan.n_groups != n_groups:  # tied merge heights: fcluster cannot cut exactly there
        plan.extra["requested_groups"] = n_groups
    return plan


def random_plans(
    task_ids: list[str],
    n_groups: int,
    n_plans: int,
    *,
    seed: int = 0,
    min_size: int | None = None,
    max_size: int | None = None,
    balanced: bool = True,
) -> list[MergePlan]:
    """``n_plans`` seeded random partitions meeting the size limits (a distribution of baselines, not one draw).

    Drawn by shuffling the tasks and cutting them into group sizes drawn uniformly among the feasible size vectors,
    weighted by how many partitions each size vector has, so every feasible partition is equally likely."""
    n = len(task_ids)
    lo, hi = size_limits(n, n_groups, min_size, max_size, balanced)
    size_vectors = _size_vectors(n, n_groups, lo, hi)
    weights = np.array([_n_partitions_with_sizes(v) for v in size_vectors], dtype=np.float64)
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n_plans):
        sizes = size_vectors[rng.choice(len(size_vectors), p=weights / weights.sum())]
        order = rng.permutation(n)
        groups, start = [], 0
        for sz in sizes:
            groups.append(sorted((task_ids[j] for j in order[start : start + sz]), key=task_ids.index))
            start += sz
        plans.append(MergePlan(name=f"random-{i}", groups=groups, source=f"random(seed={seed})"))
    return plans


def _size_vectors(n: int, k: int, lo: int, hi: int) -> list[tuple[int, ...]]:
    """Non-increasing size vectors of k groups summing to n within [lo, hi]."""
    out: list[tuple[int, ...]] = []

    def rec(left: int, parts: int, cap: int, acc: tuple[int, ...]) -> None:
        if parts == 0:
            if left == 0:
                out.append(acc)
            return
        for sz in range(min(cap, hi, left), lo - 1, -1):
            rec(left - sz, parts - 1, sz, acc + (sz,))

    rec(n, k, hi, ())
    return out


def _n_partitions_with_sizes(sizes: tuple[int, ...]) -> int:
    """Number of set partitions of sum(sizes) elements into unlabeled groups of these sizes."""
    n = sum(sizes)
    count = math.factorial(n)
    for sz in sizes:
        count //= math.factorial(sz)
    for rep in {sz: sizes.count(sz) for sz in sizes}.values():
        count //= math.factorial(rep)
    return count
