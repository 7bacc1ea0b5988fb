"""How much do ASAP-SAS figures move with the training seed alone? Seed-to-seed spread of one method's runs.

    python benchmarks/asap_sas.py --methods lora --train-seed 1 --work runs/asap-seed1 --out runs/asap-seed1/out
    python benchmarks/seeds.py --report docs/results/asap-sas.json --report runs/asap-seed1/out/asap-sas.json \\
        --out docs/results

Reads ``asap_sas.py`` reports of one method on the same items, validation split, backbone, settings and training
configuration that differ only in ``--train-seed`` (model initialisation, batch order, dropout) and writes
``<name>.{json,md,png}`` (``--name``, default ``seeds``): per item and on the mean over items, the validation QWK
(the figure recipes are chosen on) and the test QWK, routing and criteria figures of each seed, with their spread.
Nothing is selected on the test figures here; they show how far one run's test figure can be from another's, to read
single-seed differences against. No model is run: seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from scoreplex.errors import ConfigError
from scoreplex.suite import write_json_atomic

SAME = ("split seed", "max length", "items", "backbone", "settings", "training config")
"""What the runs must share: everything but the training seed."""
FIGURES = (
    ("items_passing_criteria", "items passing the criteria"),
    ("items_auto_meeting_human", "items whose automated part meets the second rater"),
    ("mean_automation_rate", "mean automation rate"),
    ("mean_ece_after", "mean ECE after temperature"),
)
"""Per-run summary figures of the method, (key, label)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--report",
        action="append",
        required=True,
        metavar="ASAP_SAS_JSON",
        help="an asap_sas.py report (repeat, one per training seed; at least 2)",
    )
    ap.add_argument("--method", default="lora", help="the method compared across seeds (full, lora, head)")
    ap.add_argument("--out", default="docs/results", help="folder for <name>.{json,md,png}")
    ap.add_argument("--name", default="seeds", help="file name of the report, without extension")
    return ap.parse_args(argv)


def load_runs(paths: list[str], method: str) -> list[dict]:
    """Per report: its training seed, command, and the method's per-item validation and test QWK and summary figures.

    Raises:
        ConfigError: fewer than 2 reports, a report unreadable or without ``method``, reports that differ in split
            seed, max length, items, backbone, method settings or training config (anything but the training seed),
            or two reports with the same training seed.
    """
    if len(paths) < 2:
        raise ConfigError("--report: give at least two asap_sas.py reports, one per training seed.")
    runs, first = [], None
    for path in paths:
        try:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
            mm = report["methods"][method]
            tasks = {tid: (float(t["val_qwk"]), float(t["test_qwk"])) for tid, t in mm["tasks"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"--report {path}: not an asap_sas.py report with a {method!r} run ({exc!r}); give the asap-sas.json "
                "that benchmarks/asap_sas.py wrote."
            ) from None
        config = dict(mm.get("config") or {})
        train_seed = int(config.pop("seed", report.get("train_seed", 0)))  # the seed this method was trained with
        backbone = report.get("backbone") if isinstance(report.get("backbone"), dict) else {}
        shared = (report.get("seed", 0), report.get("max_length"), sorted(tasks), backbone.get("sha256"))
        same = dict(zip(SAME, (*shared, mm.get("settings"), config), strict=True))
        if first is None:
            first = (path, same)
        elif same != first[1]:
            diff = "; ".join(
                f"{k}: {first[1][k]} in {first[0]}, {same[k]} here" for k in SAME if same[k] != first[1][k]
            )
            raise ConfigError(
                f"--report {path}: differs from the first report in more than the training seed ({diff}); give runs "
                "of one recipe on one split that differ only in --train-seed."
            )
        carried = mm.get("carried_from") or {}
        runs.append(
            {
                "file": str(path),
                "train_seed": train_seed,
                "command": carried.get("command") or report.get("command"),
                "label": mm.get("label", method),
                "tasks": tasks,
                **{k: mm.get(k) for k, _ in FIGURES},
            }
        )
    seeds = [r["train_seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--report: two reports share a training seed ({seeds}); give one report per seed.")
    return runs


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (ddof 1) and range of ``values``."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "min": float(v.min()), "max": float(v.max())}


def summarise(runs: list[dict]) -> dict:
    """Per item and over items: the seeds' validation and test QWK with their spread, and the summary figures."""
    items = sorted(runs[0]["tasks"], key=lambda t: int(t.split("-")[-1]))
    per_item = {}
    for tid in items:
        val = [r["tasks"][tid][0] for r in runs]
        test = [r["tasks"][tid][1] for r in runs]
        per_item[tid] = {"val_qwk": val, "test_qwk": test, "val": spread(val), "test": spread(test)}
    val_means = [float(np.mean([r["tasks"][t][0] for t in items])) for r in runs]
    test_means = [float(np.mean([r["tasks"][t][1] for t in items])) for r in runs]
    figures = {
        key: spread([r[key] for r in runs]) if all(r[key] is not None for r in runs) else None for key, _ in FIGURES
    }
    val_sd = spread(val_means)["sd"]
    return {
        "seeds": [r["train_seed"] for r in runs],
        "degrees_of_freedom": len(runs) - 1,
        "mean_val_qwk": spread(val_means),
        "mean_val_qwk_per_seed": val_means,
        "mean_test_qwk_per_seed": test_means,
        "mean_test_qwk": spread(test_means),
        "median_item_val_sd": float(np.median([p["val"]["sd"] for p in per_item.values()])),
        "median_item_test_sd": float(np.median([p["test"]["sd"] for p in per_item.values()])),
        # the SD of the difference between two single-seed runs' mean validation QWK: sqrt(2) x the seeds' SD
        "sd_of_a_difference_in_mean_val_qwk": float(np.sqrt(2) * val_sd),
        "figures": figures,
        "items": per_item,
    }


def write_report(report: dict, out: Path, name: str = "seeds") -> None:
    """``<name>.json`` (atomically), ``<name>.md`` and ``<name>.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{name}.json", report)
    s, runs = report["summary"], report["runs"]
    head = " | ".join(f"seed {r['train_seed']}" for r in runs)
    lines = [
        f"# Training-seed spread: {runs[0]['label']} on ASAP-SAS ({len(runs)} seeds, one validation split)",
        "",
        f"Reproduce: `{report['command']}` ({report['date']}; {report['machine']}). The runs:",
        "",
        *[f"- seed {r['train_seed']}: `{r['command']}`" for r in runs],
        "",
        "The runs share the items, the seeded 10% validation split of train.tsv, the token cap, the backbone, the "
        "method's settings and training configuration (checked); they differ only in the training seed "
        "(initialisation, batch order, dropout). SD: the sample standard deviation over the seeds "
        f"({s['degrees_of_freedom']} degree(s) of freedom). Validation QWK: the best epoch's, before "
        "decoding (what recipes are chosen on); test QWK: decoded, as reported. Nothing is selected on test here.",
        "",
        f"| item | validation QWK: {head} | SD | test QWK: {head} | SD |",
        "|---|" + "---|" * (2 * len(runs) + 2),
    ]
    for tid, p in s["items"].items():
        val = " | ".join(f"{v:.3f}" for v in p["val_qwk"])
        test = " | ".join(f"{v:.3f}" for v in p["test_qwk"])
        lines.append(f"| {tid} | {val} | {p['val']['sd']:.3f} | {test} | {p['test']['sd']:.3f} |")
    val = " | ".join(f"**{v:.3f}**" for v in s["mean_val_qwk_per_seed"])
    test = " | ".join(f"**{v:.3f}**" for v in s["mean_test_qwk_per_seed"])
    lines.append(f"| **mean** | {val} | {s['mean_val_qwk']['sd']:.3f} | {test} | {s['mean_test_qwk']['sd']:.3f} |")
    lines += ["", "| figure on test | " + head + " | mean | SD |", "|---|" + "---|" * (len(runs) + 2)]
    for key, label in FIGURES:
        f = s["figures"][key]
        if f is None:
            lines.append(f"| {label} | " + " | ".join("–" for _ in runs) + " | not measured in every run | – |")
            continue
        cells = " | ".join(f"{r[key]:.3f}" if isinstance(r[key], float) else str(r[key]) for r in runs)
        lines.append(f"| {label} | {cells} | {f['mean']:.3f} | {f['sd']:.3f} |")
    lines += [
        "",
        f"Mean validation QWK over the items moves by SD {s['mean_val_qwk']['sd']:.4f} with the seed alone "
        f"(range {s['mean_val_qwk']['min']:.3f}–{s['mean_val_qwk']['max']:.3f}); the SD of the difference between "
        f"two single-seed runs of one recipe on this split is then {s['sd_of_a_difference_in_mean_val_qwk']:.4f} "
        f"(√2 × SD; from {len(runs)} seeds, a rough estimate). Per item the median "
        f"SD is {s['median_item_val_sd']:.3f} on validation and {s['median_item_test_sd']:.3f} on test. Mean test QWK: "
        f"SD {s['mean_test_qwk']['sd']:.4f} (range {s['mean_test_qwk']['min']:.3f}–{s['mean_test_qwk']['max']:.3f}).",
        "",
    ]
    (out / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(s["items"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "val_qwk", "validation QWK"), (axes[1], "test_qwk", "test QWK")):
        for j, r in enumerate(runs):
            ys = [s["items"][t][key][j] for t in items]
            ax.scatter(
                np.arange(len(items)) + (j - (len(runs) - 1) / 2) * 0.12, ys, s=14, label=f"seed {r['train_seed']}"
            )
        ax.set_xticks(np.arange(len(items)), [t.replace("asap-", "") for t in items])
        ax.set_xlabel("ASAP-SAS item")
        ax.set_title(title)
    axes[0].set_ylabel("QWK")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{runs[0]['label']}: the same split, {len(runs)} training seeds")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    runs = load_runs(args.report, args.method)
    report = {
        "method": args.method,
        "summary": summarise(runs),
        "runs": [{k: v for k, v in r.items() if k != "tasks"} for r in runs],
        "command": "python benchmarks/seeds.py " + shlex.join(argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}",
    }
    write_report(report, Path(args.out), args.name)
    print(f"wrote {args.out}/{args.name}.json, .md, .png")
    return report


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
