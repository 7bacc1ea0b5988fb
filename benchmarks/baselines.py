"""The simple baselines on ASAP-SAS (issue 12, item 5): lexical TF-IDF and length-only, per item, on the test set.

    python benchmarks/baselines.py --out docs/results --work runs/baselines

Per item (all 10): :func:`scoreplex.baselines.evaluate_baselines` fits the lexical model (word 1-2-gram + char 2-5-gram
TF-IDF, logistic regression, C = 4) and the length model (logistic regression on log word and character counts) on
every scored response of train.tsv, and scores test.tsv (QWK of the argmax, labels 0..K-1). When
``docs/results/asap-sas.json`` (the ASAP-SAS benchmark) holds the suites' per-item test QWK, the margin of each suite
over the better baseline is reported beside it; those suites were trained on 90% of train.tsv (the rest chose the
epoch), so the baselines see ~10% more training rows. One process, one thread (``threadpoolctl``); the fitted
results are cached under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from _common import cached_json, whole_numbers
from scoreplex.baselines import BASELINES, evaluate_baselines
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.suite import write_json_atomic

SUITES = {"lora": "LoRA r8 + head", "head": "head only"}
"""Suites of the ASAP-SAS benchmark whose per-item test QWK (``items.<id>.<key>_qwk``) is compared, if present."""


def suite_qwks(path: Path) -> dict[str, dict[str, float]]:
    """``{suite: {item: test QWK}}`` from the ASAP-SAS benchmark's JSON (empty if absent)."""
    if not path.is_file():
        return {}
    items = json.loads(path.read_text()).get("items", {})
    out: dict[str, dict[str, float]] = {}
    for key in SUITES:
        values = {tid: r[f"{key}_qwk"] for tid, r in items.items() if r.get(f"{key}_qwk") is not None}
        if values:
            out[key] = values
    return out


def markdown(report: dict) -> str:
    names = list(report["baselines"])
    suites = list(report["suites"])
    lines = [
        "# Simple baselines on ASAP-SAS (issue 12, item 5)",
        "",
        f"Reproduce: `{report['command']}` ({report['date']}; {report['machine']}; one thread; fitting all items: "
        + ", ".join(f"{n} {s:.1f} s" for n, s in report["fit_seconds"].items())
        + ").",
        "",
        "Fitted per item on every scored response of train.tsv, evaluated on test.tsv (QWK of the argmax, labels "
        "0..K-1); the same code as `scoreplex baseline TRAIN TEST` and `scoreplex evaluate SUITE TEST --baselines "
        "TRAIN`.",
        "",
    ]
    lines += [f"- `{n}`: {d}" for n, d in report["baselines"].items()]
    if suites:
        lines += [
            "",
            f"Suites (test QWK from `{report['suites_source']}`, trained on 90% of train.tsv): "
            + ", ".join(f"`{s}` ({SUITES[s]})" for s in suites)
            + "; margin = suite QWK minus the better baseline's. The suites' QWK is the decoded one users get; the "
            "LoRA suite also stacks this lexical model onto its head where a cross-fitted check keeps it (2 items).",
        ]
    header = ["item", "n train", "n test"] + [f"{n} QWK" for n in names] + ["better"]
    for s in suites:
        header += [f"{s} QWK", f"{s} margin"]
    lines += ["", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for tid, t in report["items"].items():
        cells = [tid, str(t["n_train"]), str(t["n"])]
        cells += ["n/a" if t[n] is None else f"{t[n]:.3f}" for n in names] + [t["best"] or "n/a"]
        for s in suites:
            q, m = t.get(f"{s}_qwk"), t.get(f"{s}_margin")
            cells += ["n/a" if q is None else f"{q:.3f}", "n/a" if m is None else f"{m:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    mean = ["**mean**", "", ""] + [_bold(report["mean_qwk"][n]) for n in names] + [""]
    for s in suites:
        mean += [_bold(report["suite_mean_qwk"][s]), _bold(report["mean_margin"][s], sign=True)]
    lines += ["| " + " | ".join(mean) + " |", ""]
    for s in suites:
        lines.append(
            f"- `{s}` beats the better baseline on **{report['items_ahead'][s]} of {len(report['items'])}** items."
        )
    lines.append("")
    return "\n".join(lines)


def _bold(value: float | None, sign: bool = False) -> str:
    return "n/a" if value is None else f"**{value:+.3f}**" if sign else f"**{value:.3f}**"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--out", default="docs/results", help="folder for baselines.{json,md}")
    ap.add_argument("--suites", default="docs/results/asap-sas.json", help="ASAP-SAS benchmark JSON to compare")
    ap.add_argument("--items", default="1,2,3,4,5,6,7,8,9,10", type=whole_numbers)
    ap.add_argument("--work", default="runs/baselines", help="cache of the fitted results (resumable)")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    t0 = time.perf_counter()
    items = [f"asap-{i}" for i in args.items]
    train = load_asap_sas(args.data, split="train", items=items)
    test = load_asap_sas(args.data, split="test", items=items)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = cached_json(work / f"items-{'-'.join(items)}.json", lambda: evaluate_baselines(train, test))
    suites = suite_qwks(Path(args.suites))
    per_item = {}
    for tid, t in result["tasks"].items():
        row = {"n_train": t["n_train"], "n": t["n"], "best": t["best"], "best_qwk": t["best_qwk"]}
        row.update({n: t[n]["qwk"] for n in BASELINES})
        for s, qwks in suites.items():
            q = qwks.get(tid)
            row[f"{s}_qwk"] = q
            row[f"{s}_margin"] = None if q is None or t["best_qwk"] is None else q - t["best_qwk"]
        per_item[tid] = row
        print(f"{tid}: " + ", ".join(f"{n} {row[n]:.3f}" for n in BASELINES if row[n] is not None), flush=True)

    def mean(key: str) -> float | None:
        values = [r[key] for r in per_item.values() if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/baselines.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "baselines": result["baselines"],
        "mean_qwk": result["mean_qwk"],
        "lexical_mean_test_qwk": result["mean_qwk"].get("lexical"),
        "length_mean_test_qwk": result["mean_qwk"].get("length"),
        "suites_source": args.suites,
        "suites": {s: SUITES[s] for s in suites},
        "suite_mean_qwk": {s: mean(f"{s}_qwk") for s in suites},
        "mean_margin": {s: mean(f"{s}_margin") for s in suites},
        "items_ahead": {s: sum((r.get(f"{s}_margin") or 0) > 0 for r in per_item.values()) for s in suites},
        "items": per_item,
        "per_task_metrics": result["tasks"],
        "seconds": round(time.perf_counter() - t0, 1),
        "fit_seconds": {
            n: round(sum(t[n].get("fit_seconds", 0.0) for t in result["tasks"].values()), 1) for n in BASELINES
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "baselines.json", report)
    (out / "baselines.md").write_text(markdown(report))
    print(f"wrote {out / 'baselines.json'} and {out / 'baselines.md'}")
    return report


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
