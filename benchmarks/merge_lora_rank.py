"""How small can a merged LoRA suite be? The GW plan at T' = 3 under merge_protocol.py's fair protocol, each group's
merged adapter factored back to rank R (``scoreplex merge --lora-rank R``) and each task keeping a rank-S surgery
module: test QWK against storage, for several (R, S).

    python benchmarks/merge_lora_rank.py --suite runs/asap-r8/lora --configs 3:16,4:8,6:8,8:16 --out docs/results
    # runs/asap-r8/lora: the rank-8 LoRA suite docs/results' merge figures were measured on (rank 16 is the default
    # since 2026-12-02): python benchmarks/asap_sas.py --methods lora --lora-rank 8 --work runs/asap-r8

Per (R, S): ``benchmarks/merge_protocol.py --only-plans gw --lora-rank R --surgery-rank S`` (its per-config report in
``<work>/reports``, its groups cached in ``<work>``, so a rerun resumes). The configuration is CHOSEN ON VALIDATION:
among those whose merged suite with surgery is at least ``--min-ratio`` times smaller than the per-task adapters, the
highest mean validation QWK of the GW plan's surgery variant; test.tsv figures are reported for all, read once.
Writes ``<out>/merge-lora-rank.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import merge_protocol
from scoreplex.suite import write_json_atomic

VARIANTS = merge_protocol.VARIANTS


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"3:16,4:8"`` -> ``[(3, 16), (4, 8)]`` (merged LoRA rank, surgery rank)."""
    out = []
    for part in text.split(","):
        r, _, s = part.strip().partition(":")
        if not (r.isdigit() and s.isdigit()):
            from scoreplex.errors import ConfigError

            raise ConfigError(f"--configs {part!r}: give merged-rank:surgery-rank pairs, e.g. 4:8,6:8")
        out.append((int(r), int(s)))
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="the LoRA suite (read only)")
    ap.add_argument("--configs", default="3:16,4:8,6:8,8:16", help="merged-rank:surgery-rank pairs")
    ap.add_argument("--min-ratio", type=float, default=3.0, help="storage budget: per-task bytes / merged bytes")
    ap.add_argument("--work", default="runs/merge-protocol-r", help="group cache (shared with merge_protocol.py)")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    reports = Path(args.work) / "reports"
    rows = []
    for r, s in parse_configs(args.configs):
        print(f"merged LoRA rank {r}, surgery rank {s}", file=sys.stderr, flush=True)
        rep = merge_protocol.main(
            ["--suite", args.suite, "--only-plans", "gw", "--lora-rank", str(r), "--surgery-rank", str(s),
             "--work", args.work, "--name", f"merge-lora-rank-s{s}", "--out", str(reports)]
        )  # fmt: skip
        gw = rep["plans"].get("gw")
        if gw is None:
            raise SystemExit(f"rank {r}, surgery {s}: the GW plan's groups are not all evaluated; rerun to resume.")
        st = rep["storage"]
        errors = [  # each group's ||merged - factored|| / ||merged|| at the TIES point its surgery variant chose
            g["svd_relative_error"][f"{g['chosen']['surgery']['density']}:{g['chosen']['surgery']['scale']}"]
            for g in rep["groups"]
        ]
        rows.append(
            {
                "lora_rank": r,
                "surgery_rank": s,
                "storage_ratio": {"kept": st["lora_ratio_heads_kept"], "surgery": st["lora_ratio_surgery"]},
                "merged_bytes": {
                    "kept": st["lora_merged_bytes_heads_kept"],
                    "surgery": st["lora_merged_bytes_surgery"],
                },
                "svd_relative_error_median": float(np.median(errors)),
                "val_mean_qwk": {v: gw["variants"][v]["val_mean_qwk"] for v in VARIANTS},
                "test_mean_qwk": {v: gw["variants"][v]["mean_qwk"] for v in VARIANTS},
                "test_qwk_surgery": gw["variants"]["surgery"]["tasks"],
                "report": str(reports / f"{rep['report_stem']}.md"),
            }
        )
        unmerged, per_task_bytes = rep["unmerged"]["mean_qwk"], st["lora_per_task_bytes"]
    within = [x for x in rows if x["storage_ratio"]["surgery"] >= args.min_ratio]
    chosen = max(within, key=lambda x: x["val_mean_qwk"]["surgery"]) if within else None
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/merge_lora_rank.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "plan": "gw (T' = 3, gw-predict.json's default-measure plan)",
        "selection": f"surgery variant, highest GW-plan mean validation QWK among storage ratio >= {args.min_ratio}",
        "unmerged_mean_qwk": unmerged,
        "lora_per_task_bytes": per_task_bytes,
        "configs": rows,
        "chosen": None if chosen is None else {k: chosen[k] for k in ("lora_rank", "surgery_rank")},
        "chosen_test_mean_qwk": None if chosen is None else chosen["test_mean_qwk"]["surgery"],
        "chosen_storage_ratio": None if chosen is None else chosen["storage_ratio"]["surgery"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "merge-lora-rank.json", result)
    (out / "merge-lora-rank.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "merge-lora-rank.png")
    print(f"wrote {out / 'merge-lora-rank'}.{{json,md,png}}", file=sys.stderr)
    return result


def markdown(r: dict) -> str:
    f = merge_protocol._f
    lines = [
        "# Merged LoRA suites factored to a small rank: QWK against storage (ASAP-SAS, GW plan, T' = 3)",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}). Each row: merge_protocol.py's fair protocol (TIES grid chosen "
        "per group on validation) on the GW plan, every group's merged adapter factored back to rank R by truncated "
        "SVD, each merged task with its own head (kept), a re-fitted head, or its head behind a rank-S surgery "
        "module. Storage: float32 bytes of the 10 per-task adapters + heads over the merged suite's (shared "
        "adapters + heads + surgery modules).",
        "",
        f"Unmerged (10 adapters of rank 8): mean test QWK **{r['unmerged_mean_qwk']:.3f}**, "
        f"{r['lora_per_task_bytes'] / 1e6:.2f} MB. SVD error: median over the groups of ||merged update - "
        "rank-R factors||_F / ||merged update||_F, at the TIES point the surgery variant chose (TIES trimming makes "
        "the merged update high-rank, so much of it is cut; surgery is what wins the QWK back).",
        "",
        "| R | S | storage, kept | storage, surgery | val kept | val refit | val surgery | test kept | test refit "
        "| test surgery | SVD error |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["configs"]:
        pick = r["chosen"] == {"lora_rank": x["lora_rank"], "surgery_rank": x["surgery_rank"]}
        mark = " **(chosen)**" if pick else ""
        lines.append(
            f"| {x['lora_rank']} | {x['surgery_rank']}{mark} | {x['storage_ratio']['kept']:.2f}x | "
            f"{x['storage_ratio']['surgery']:.2f}x | "
            + " | ".join(f(x["val_mean_qwk"][v]) for v in VARIANTS)
            + " | "
            + " | ".join(f(x["test_mean_qwk"][v]) for v in VARIANTS)
            + f" | {x['svd_relative_error_median']:.2f} |"
        )
    lines += ["", f"Selection: {r['selection']}."]
    if r["chosen"]:
        c = r["chosen"]
        lines.append(
            f"Chosen: R = {c['lora_rank']}, S = {c['surgery_rank']}: mean test QWK **{r['chosen_test_mean_qwk']:.3f}**"
            f" ({r['chosen_test_mean_qwk'] - r['unmerged_mean_qwk']:+.3f} against unmerged) at "
            f"**{r['chosen_storage_ratio']:.2f}x** smaller."
        )
    else:
        lines.append("No configuration meets the storage budget.")
    lines += ["", "![test QWK against storage](merge-lora-rank.png)", ""]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, v in enumerate(("kept", "surgery")):
        xs = [x["storage_ratio"][v] for x in r["configs"]]
        ys = [x["test_mean_qwk"][v] for x in r["configs"]]
        ax.scatter(xs, ys, color=f"C{i}", label="heads kept (or re-fitted)" if v == "kept" else "heads behind surgery")
        for x, xx, yy in zip(r["configs"], xs, ys, strict=True):
            label = f"R{x['lora_rank']}" + (f"/S{x['surgery_rank']}" if v == "surgery" else "")
            ax.annotate(label, (xx, yy), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.axhline(r["unmerged_mean_qwk"], color="k", ls="--", lw=1, label="unmerged (1x)")
    ax.axhline(r["unmerged_mean_qwk"] - 0.03, color="grey", ls=":", lw=1, label="unmerged - 0.03")
    ax.axvline(3.0, color="grey", ls="-.", lw=1, label="3x smaller")
    ax.set_xlabel("storage: per-task adapters / merged suite (float32 bytes)")
    ax.set_ylabel("mean test QWK (10 items)")
    ax.set_title("GW plan, T' = 3: merged LoRA rank R, surgery rank S", fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
