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


def plot_gw_heatmap(
    distances: np.ndarray, task_ids: Sequence[str], groups: Sequence[Sequence[str]], path: str | Path, title: str = ""
) -> None:
    """GW distances with tasks ordered by group and each group boxed."""
    plt = _plt()
    order = [t for g in groups for t in g]
    pos = [list(task_ids).index(t) for t in order]
    d = np.asarray(distances)[np.ix_(pos, pos)]
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(d, cmap="viridis_r")
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
    fig.colorbar(im, ax=ax, label="GW distance (lower = more alike)")
    ax.set_title(title or "GW distances; red boxes = merged groups")
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
