"""Does averaging two suites' class probabilities help? Validation QWK of two suites and of their ensemble.

Per item, on the benchmark's validation split (seeded stratified 10% of train.tsv; test.tsv is not read): QWK of
suite A, suite B and the mean of their calibrated class probabilities (as the engine returns them: temperature, and
the stacked lexical model where the task keeps one), each decoded by argmax and by rounding the expected score.
Prints one line per item and the means; with ``--out`` also writes ``<name>.json`` and ``<name>.md`` there.

    python benchmarks/recipe_ensemble.py --a runs/asap-v2/lora --b runs/asap-v3/lora --items 1,2,3,4
    python benchmarks/recipe_ensemble.py --a runs/asap-sas/lora --b runs/asap-mpnet/lora \\
        --backbone-b .cache/all-mpnet-base-v2 --items 1,2,3,4,5,6,7,8,9,10 --out docs/results
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

from _common import whole_numbers
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.engine import Engine
from scoreplex.metrics import quadratic_weighted_kappa
from scoreplex.suite import write_json_atomic

COLUMNS = ("A argmax", "B argmax", "A+B argmax", "A expected", "B expected", "A+B expected")
KEYS = ("a_argmax", "b_argmax", "ensemble_argmax", "a_expected", "b_expected", "ensemble_expected")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="first suite (LoRA or head-only)")
    ap.add_argument("--b", required=True, help="second suite, trained on the same items and split")
    ap.add_argument("--backbone-a", default=None, help="suite A's backbone folder when it is not the packaged default")
    ap.add_argument("--backbone-b", default=None, help="suite B's backbone folder when it is not the packaged default")
    ap.add_argument(
        "--items", required=True, type=whole_numbers, help="comma-separated item numbers that both suites hold"
    )
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's split seed")
    ap.add_argument("--out", default=None, help="folder for <name>.json and <name>.md (default: print only)")
    ap.add_argument("--name", default="suite-ensemble", help="file name of the report, without extension")
    return ap.parse_args(argv)


def item_row(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> list[float]:
    """QWK of A, B and their mean probabilities ``(n, K)`` against ``y (n,)``: argmax, then the rounded expected
    score (the order of :data:`COLUMNS`)."""
    pe = (pa + pb) / 2
    ks = np.arange(pa.shape[1])
    row = [quadratic_weighted_kappa(y, p.argmax(1)) for p in (pa, pb, pe)]
    row += [quadratic_weighted_kappa(y, np.rint(p @ ks).astype(int)) for p in (pa, pb, pe)]
    return row


def items_beating_both(items: list[dict]) -> int:
    """How many items' ensemble QWK (argmax) is above both suites' own."""
    return int(sum(it["ensemble_argmax"] > max(it["a_argmax"], it["b_argmax"]) for it in items))


def write_report(report: dict, out: Path, name: str) -> None:
    """``<name>.json`` (atomically) and ``<name>.md`` under ``out``."""
    write_json_atomic(out / f"{name}.json", report)
    lines = [
        "# Two suites and their ensemble (mean class probabilities), ASAP-SAS validation",
        "",
        f"Reproduce: `{report['command']}` ({report['date']}; {report['machine']}).",
        "",
        f"A: `{report['a']}`; B: `{report['b']}`. Validation QWK on the benchmark's seeded stratified 10% split of "
        "train.tsv (test.tsv is not read); *argmax*: the top class of the calibrated probabilities; *expected*: the "
        "expected score rounded. The probabilities are the engine's: each task's temperature, and its stacked lexical "
        "model where it keeps one, so A's and B's figures differ from their best epoch's validation QWK; both were "
        "fitted on this same split for each suite alone (a lexical model is kept where it helps there), which favours "
        "A and B slightly over their ensemble.",
        "",
        "| item | n | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for item in report["items"]:
        lines.append(f"| {item['item']} | {item['n']} | " + " | ".join(f"{item[k]:.3f}" for k in KEYS) + " |")
    mean = report["mean"]
    lines.append("| **mean** | | " + " | ".join(f"**{mean[k]:.3f}**" for k in KEYS) + " |")
    lines += [
        "",
        f"The ensemble's argmax beats the better of A and B on {report['items_ensemble_beats_both']} of "
        f"{len(report['items'])} items; mean ensemble − A {mean['ensemble_argmax'] - mean['a_argmax']:+.3f}, "
        f"ensemble − B {mean['ensemble_argmax'] - mean['b_argmax']:+.3f} (argmax).",
        "",
    ]
    (out / f"{name}.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    train = load_asap_sas(args.data, split="train", items=args.items)
    engines = Engine(args.a, backbone=args.backbone_a), Engine(args.b, backbone=args.backbone_b)

    def probs(engine: Engine, task: str, texts: list[str]) -> np.ndarray:  # (n, K) of the first dimension
        return np.array([o["probs"][next(iter(o["probs"]))] for o in engine.score([(task, x) for x in texts])])

    items = []
    print("item", *COLUMNS, sep=" | ")
    for task, data in train.items():
        _, val = train_val_split(data, val_fraction=0.1, seed=args.seed)
        y = np.asarray(val.labels)[:, 0]
        pa, pb = (probs(e, task, list(val.texts)) for e in engines)
        row = item_row(y, pa, pb)
        items.append({"item": task, "n": int(len(y)), **dict(zip(KEYS, row, strict=True))})
        print(task, *(f"{x:.3f}" for x in row), sep=" | ", flush=True)
    mean = {k: float(np.mean([it[k] for it in items])) for k in KEYS}
    print("mean", *(f"{mean[k]:.3f}" for k in KEYS), sep=" | ")
    report = {
        "a": args.a,
        "b": args.b,
        "mean": mean,
        "items_ensemble_beats_both": items_beating_both(items),
        "items": items,
        "command": "python benchmarks/recipe_ensemble.py " + shlex.join(argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if args.out:
        write_report(report, Path(args.out), args.name)
    return report


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
