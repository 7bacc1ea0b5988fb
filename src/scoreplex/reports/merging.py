"""Plots and tables of merge results: the GW distance heatmap with the chosen groups, per-task before/after bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def off_diagonal_range(matrix: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of a square matrix's off-diagonal entries (``(0, 1)`` for a 1 x 1 matrix): a heatmap's colour
    limits, so the trivial diagonal does not stretch the scale."""
    m = np.asarray(matrix, dtype=np.float64)
    off = ~np.eye(len(m), dtype=bool)
    return (float(m[off].min()), float(m[off].max())) if off.any() else (0.0, 1.0)


def plot_gw_heatmap(
    distances: np.ndarray,
    task_ids: Sequence[str],
    groups: Sequence[Sequence[str]],
    path: str | Path,
    title: str = "",
    *,
    label: str = "GW distance (lower = more alike)",
    higher_is_closer: bool = False,
) -> None:
    """A task-by-task matrix (GW distances, or any similarity with ``higher_is_closer``) with tasks ordered by group
    and each group boxed. The colour scale spans the off-diagonal entries only and the diagonal is masked (grey): a
    zero (distance) or one (similarity) diagonal would otherwise squeeze the pairs that matter into a few colours."""
    plt = _plt()
    order = [t for g in groups for t in g]
    pos = [list(task_ids).index(t) for t in order]
    d = np.asarray(distances, dtype=np.float64)[np.ix_(pos, pos)]
    shown = np.ma.masked_array(d, mask=np.eye(len(order), dtype=bool))
    lo, hi = off_diagonal_range(d)
    cmap = plt.get_cmap("viridis" if higher_is_closer else "viridis_r").copy()
    cmap.set_bad("lightgrey")
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(shown, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right")
    ax.set_yticks(range(len(order)), order)
    start = 0
    for g in groups:
        ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), len(g), len(g), fill=False, ec="red", lw=2))
        start += len(g)
    for i in range(len(order)):
        for j in range(len(order)):
            if i != j:
                ax.text(j, i, f"{d[i, j]:.3f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, label=label + "; diagonal left out")
    ax.set_title(title or f"{label.split(' (')[0]}; red boxes = merged groups")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_before_after(
    series: Mapping[str, Mapping[str, float]], task_ids: Sequence[str], path: str | Path, ylabel: str = "QWK (test)"
) -> None:
    """Grouped bars: one bar per plan (``series[name][task] = value``) for each task (the GW-SMM paper's Fig. 2)."""
    plt = _plt()
    names = list(series)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(task_ids)), 4.2))
    x = np.arange(len(task_ids))
    for i, name in enumerate(names):
        vals = [series[name].get(t, np.nan) for t in task_ids]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, list(task_ids), rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    lo = np.nanmin([v for s in series.values() for v in s.values()] or [0])
    ax.set_ylim(max(0.0, min(lo - 0.05, 0.5)), 1.0)
    ax.legend(ncol=min(len(names), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def task_table(results: Mapping[str, Mapping], task_ids: Sequence[str], metric: str = "qwk") -> str:
    """Markdown table: tasks as rows, one column per result (``results[name]["tasks"][task][metric]``)."""
    names = list(results)
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in task_ids:
        cells = []
        for n in names:
            v = results[n]["tasks"][t].get(metric)
            cells.append("–" if v is None else f"{v:.3f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    means = []
    for n in names:
        vals = [results[n]["tasks"][t].get(metric) for t in task_ids]
        vals = [v for v in vals if v is not None]
        means.append(f"**{np.mean(vals):.3f}**" if vals else "–")
    lines.append("| mean | " + " | ".join(means) + " |")
    return "\n".join(lines)


def plot_loss_scatter(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, float | None, str]],
    path: str | Path,
    ylabel: str = "merge loss",
) -> None:
    """One scatter panel per measure: ``panels[name] = (measure values, losses, Spearman rho or None, kind)`` over
    the same pairs (NaN losses: pairs not measured, left out). ``kind`` (``distance`` / ``similarity``) labels the
    x axis with the direction in which pairs are more alike."""
    plt = _plt()
    names = list(panels)
    cols = min(4, max(len(names), 1))
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        x, y, rho, kind = panels[name]
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[keep], y[keep], s=14, alpha=0.8)
        ax.set_title(f"{name}\nrho = {'–' if rho is None else f'{rho:.2f}'}", fontsize=8)
        ax.set_xlabel(f"{kind} ({'lower' if kind == 'distance' else 'higher'} = more alike)", fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
