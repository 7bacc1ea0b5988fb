"""The GW-SMM report: ``docs/results/gw-merging.md`` (+ the GW heatmap) assembled from the runs that measured it.

    python benchmarks/gw_merging_report.py --out docs/results      # seconds; trains and scores nothing

Parts read from ``--out`` (each part's own report names the command that reproduces it):

- ``merge-protocol.json``: every plan (GW, other similarities, measured-loss reference, expert, clustering, 20 random)
  under one fair protocol at T' = 3 on the ASAP-SAS LoRA suite (``benchmarks/merge_protocol.py``);
- ``merge-protocol-s8-lora-r6-expert-gw-random.json``: GW, expert and random plans with merged adapters factored
  to rank 6 and rank-8 surgery (the configuration chosen on validation in ``merge-lora-rank.json``);
- ``merge-protocol-full10-expert-gw.json`` (optional): GW and expert plans on the 10 full fine-tunes, and
  ``merge-protocol-full10-task-arithmetic-gw.json`` (optional): the GW plan merged by task arithmetic, λ tuned;
- ``merge-protocol-task-arithmetic-expert-gw.json`` (optional): the GW and expert plans of the LoRA suite merged by
  task arithmetic, λ tuned;
- ``merge-protocol-sweep.json``: the GW plans at T' = 1..10;
- ``gw-predict.json``: measured pairwise merge losses and their rank correlation with each similarity;
- ``gw-merging.json``: the issue's headline keys (written by merge_protocol.py) and the first run's figures
  (full fine-tunes at fixed TIES, ``full_finetune_fixed_ties``; its report is ``gw-merging-fixed-ties.md``).

A part that is absent is reported as not measured, never filled in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = ("kept", "refit", "surgery")
PRIMARY = "gw/entropic-q400-s0"
PARTS = {
    "protocol": "merge-protocol.json",
    "compressed": "merge-protocol-s8-lora-r6-expert-gw-random.json",
    "full10": "merge-protocol-full10-expert-gw.json",
    "full10_ta": "merge-protocol-full10-task-arithmetic-gw.json",
    "lora_ta": "merge-protocol-task-arithmetic-expert-gw.json",
    "sweep": "merge-protocol-sweep.json",
    "predict": "gw-predict.json",
    "headline": "gw-merging.json",
}
TOLERANCE = 0.03
"""Issue 15: the best method's GW plan at T' = 3 within this mean test QWK of the unmerged models."""
MIN_STORAGE_RATIO = 3.0


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def _groups(groups) -> str:
    return " / ".join(",".join(t.removeprefix("asap-") for t in g) for g in groups)


def load_parts(out: Path) -> dict[str, dict | None]:
    """Each part's JSON, or None where its file is absent."""
    parts = {}
    for key, name in PARTS.items():
        path = out / name
        parts[key] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return parts


def plan_rows(r: dict) -> list[str]:
    """Table rows: each named plan's mean test QWK per variant (and the GW variant's validation figure)."""
    named = [n for n in r["plans"] if not n.startswith(("random-", "gw-t"))]
    rows = []
    for n in named:
        v = r["plans"][n]["variants"]
        rows.append(
            f"| {n} | "
            + " | ".join(_f(v[x]["mean_qwk"]) for x in VARIANTS)
            + f" | {_groups(r['plans'][n]['groups'])} |"
        )
    n_random = sum(1 for n in r["plans"] if n.startswith("random-"))
    if n_random and r["tests"]:
        t = r["tests"]
        rows.append(
            f"| random, median of {n_random} | "
            + " | ".join(_f(t[x]["random_median_mean_qwk"]) for x in VARIANTS)
            + " | (range "
            + ", ".join(f"{x} {t[x]['random_min_max'][0]:.3f}–{t[x]['random_min_max'][1]:.3f}" for x in VARIANTS)
            + ") |"
        )
    return ["| plan | kept | refit | surgery | groups |", "|---|---:|---:|---:|---|", *rows]


def t_test_rows(r: dict, variant: str) -> list[str]:
    t = r["tests"].get(variant) or {}
    rows = ["| GW against | mean diff | t | p |", "|---|---:|---:|---:|"]
    for k, res in t.items():
        if k.startswith("vs_") and res is not None:
            other = k.removeprefix("vs_").replace("_", " ")
            rows.append(f"| {other} | {res['mean_diff']:+.3f} | {res['t']:.2f} | {res['p']:.3f} |")
    return rows


def comparison(r: dict | None, variant: str) -> dict | None:
    """GW, expert, random median, unmerged and the t-tests of one run at ``variant``."""
    if r is None or "gw" not in r["plans"]:
        return None
    t = r["tests"].get(variant, {})
    expert = r["plans"].get("expert", {}).get("variants", {}).get(variant, {}).get("mean_qwk")
    return {
        "gw": r["plans"]["gw"]["variants"][variant]["mean_qwk"],
        "expert": expert,
        "random_median": t.get("random_median_mean_qwk"),
        "unmerged": r["unmerged"]["mean_qwk"],
        "p_random": (t.get("vs_random_mean") or {}).get("p"),
        "p_expert": (t.get("vs_expert") or {}).get("p"),
        "beats_random_share": t.get("gw_beats_random_share"),
    }


def _storage(r: dict | None, key: str) -> float | None:
    return ((r or {}).get("storage") or {}).get(key)


def targets(parts: dict) -> list[str]:
    best = (parts["protocol"] or {}).get("best_variant") or "surgery"
    runs = {  # run -> (its report, its storage ratio with the per-task pieces counted)
        "LoRA suite, full-rank merged adapters": (
            parts["protocol"],
            _storage(parts["protocol"], "lora_ratio_surgery"),
        ),
        "LoRA suite, merged adapters at rank 6, surgery rank 8": (
            parts["compressed"],
            _storage(parts["compressed"], "lora_ratio_surgery"),
        ),
        "10 full fine-tunes": (parts["full10"], _storage(parts["full10"], "full_ratio_surgery")),
    }
    lines = [
        f"Best method (chosen on the GW plan's validation QWK): TIES tuned per group + **{best}**. T' = 3.",
        "",
        "| run | unmerged | GW plan | GW − unmerged (target ≥ −0.03) | expert | random median "
        "| GW above both? (p vs random mean, vs expert) | storage (target ≥ 3×) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, (r, ratio) in runs.items():
        c = comparison(r, best)
        if c is None:
            lines.append(f"| {name} | not measured | | | | | | |")
            continue
        diff = c["gw"] - c["unmerged"]
        above = None
        if c["expert"] is not None and c["random_median"] is not None:
            above = c["gw"] > c["expert"] and c["gw"] > c["random_median"]
        elif c["expert"] is not None:
            above = c["gw"] > c["expert"]
        ps = f"p {_f(c['p_random'])}, {_f(c['p_expert'])}"
        significant = all(p is not None and p < 0.05 for p in (c["p_random"], c["p_expert"]) if p is not None)
        verdict = "–" if above is None else "no" if not above else "yes" if significant else "above, not significantly"
        lines.append(
            f"| {name} | {c['unmerged']:.3f} | {c['gw']:.3f} | {diff:+.3f} ({_met(diff >= -TOLERANCE)}) | "
            f"{_f(c['expert'])} | {_f(c['random_median'])} | {verdict} "
            f"({ps}) | {_f(ratio, '.2f')}× ({_met(None if ratio is None else ratio >= MIN_STORAGE_RATIO)}) |"
        )
    return lines


def correlation_rows(pred: dict) -> list[str]:
    rows = ["| similarity | Spearman ρ with the pair's merge loss | p (pairs shuffled) | p (items shuffled, Mantel) |",
            "|---|---:|---:|---:|"]  # fmt: skip
    for name, c in pred["correlations"].items():
        mark = " (the default, `--similarity gw`)" if name == PRIMARY else ""
        rows.append(f"| {name}{mark} | {c['rho']:+.2f} | {c['p_pairs']:.3f} | {c['p_mantel']:.3f} |")
    return rows


def markdown(parts: dict) -> str:
    head, proto, pred = parts["headline"] or {}, parts["protocol"], parts["predict"]
    lines = [
        "# GW-SMM on ASAP-SAS: one fair protocol for every plan",
        "",
        "Assembled by `python benchmarks/gw_merging_report.py --out docs/results` from the runs below (each linked "
        "report names the command that reproduces it). Protocol, the same for every plan: each distinct group merged "
        "with TIES at every (density, λ) of a small grid, the point with the best mean validation QWK of its members "
        "kept per variant — **kept** (each item's own head), **refit** (a new head on the frozen merged encoder), "
        "**surgery** (each item's own head behind a representation surgery module, Yang et al. 2024, fitted without "
        "scores) — and test.tsv scored once per distinct group and variant. Every run merges with TIES unless its "
        "section says task arithmetic.",
        "",
        "## Targets (issue 15)",
        "",
        *targets(parts),
        "",
    ]
    best = (proto or {}).get("best_variant") or "surgery"
    spread = None
    if proto:
        values = [pl["variants"][best]["mean_qwk"] for pl in proto["plans"].values()]
        spread = (min(values), max(values))
    if "gw_merge_loss_spearman" in head:
        lines += [
            f"Does the GW distance predict mergeability? Spearman ρ between the default GW distance and the measured "
            f"pairwise merge loss: **{head['gw_merge_loss_spearman']:.2f}**; best similarity "
            f"`{head['best_similarity']}` ({head['best_similarity_spearman']:.2f})."
            + (
                f" The plan barely matters on ASAP-SAS: with {best} every plan of the comparison below scores "
                f"{spread[0]:.3f}–{spread[1]:.3f} mean test QWK."
                if spread
                else ""
            ),
            "",
        ]
    if proto:
        best = proto["best_variant"]
        lines += [
            "## Every plan at T' = 3 (LoRA suite, full-rank merged adapters)",
            "",
            f"[merge-protocol.md](merge-protocol.md) (`{proto['command']}`). Mean test QWK; unmerged "
            f"{proto['unmerged']['mean_qwk']:.3f}.",
            "",
            *plan_rows(proto),
            "",
            f"Paired t-tests over the 10 items, GW plan, variant {best} (items merged together are not independent, "
            "and there is no correction for the many comparisons: a screen, not a verdict):",
            "",
            *t_test_rows(proto, best),
            "",
        ]
    comp = parts["compressed"]
    if comp:
        lines += [
            "## Merged adapters factored to a small rank (the storage target)",
            "",
            f"[{comp['report_stem']}.md]({comp['report_stem']}.md) (`{comp['command']}`); the rank-6 / surgery-8 "
            "configuration was chosen on the GW plan's validation QWK among those at least 3× smaller "
            "([merge-lora-rank.md](merge-lora-rank.md)), which favours GW in this comparison.",
            "",
            *plan_rows(comp),
            "",
            *t_test_rows(comp, comp["best_variant"] or "surgery"),
            "",
        ]
    full = parts["full10"]
    if full:
        st = full.get("storage") or {}
        lines += [
            "## The 10 full fine-tunes",
            "",
            f"[{full['report_stem']}.md]({full['report_stem']}.md) (`{full['command']}`): GW plan computed on the full "
            "fine-tunes themselves (as `scoreplex merge` does), one merged encoder per group. Unmerged "
            f"{full['unmerged']['mean_qwk']:.3f}; storage {_f(st.get('full_source_bytes', 0) / 1e6, '.0f')} MB → "
            f"{_f(st.get('full_merged_bytes_surgery', 0) / 1e6, '.0f')} MB with surgery "
            f"({_f(st.get('full_ratio_surgery'), '.2f')}×).",
            "",
            *plan_rows(full),
            "",
            *t_test_rows(full, full["best_variant"] or "surgery"),
            "",
        ]
    for key, suite, ties in (("lora_ta", "LoRA suite", proto), ("full10_ta", "10 full fine-tunes", full)):
        ta = parts[key]
        if not ta or "gw" not in ta["plans"]:
            continue
        lam = sorted({g["chosen"][x]["scale"] for g in ta["groups"] for x in VARIANTS})
        lines += [
            f"## Task arithmetic, λ tuned on validation ({suite})",
            "",
            f"[{ta['report_stem']}.md]({ta['report_stem']}.md) (`{ta['command']}`): the same protocol with task "
            f"arithmetic (λ in {[p[1] for p in ta['protocol']['grid']]}; chosen per group and variant: {lam}); "
            f"unmerged {ta['unmerged']['mean_qwk']:.3f}. Mean test QWK:",
            "",
            "| plan | kept | refit | surgery | TIES on the same plan (kept / refit / surgery) |",
            "|---|---:|---:|---:|---|",
        ]
        for name, plan in ta["plans"].items():
            v = plan["variants"]
            same = ((ties or {}).get("plans") or {}).get(name)
            cell = "not run"
            if same and same["groups"] != plan["groups"]:
                cell = "other groups"  # TIES's run planned other groups under this name: not the same plan
            elif same:
                cell = " / ".join(_f(same["variants"][x]["mean_qwk"]) for x in VARIANTS)
            lines.append(f"| {name} | " + " | ".join(_f(v[x]["mean_qwk"]) for x in VARIANTS) + " | " + cell + " |")
        lines.append("")
    if pred:
        ref, rnd = pred["reference_plan"], pred["random_plans"]
        lines += [
            "## Does a similarity predict the merge loss?",
            "",
            f"[gw-predict.md](gw-predict.md) (`{pred['command']}`): for all {pred['n_pairs']} pairs of items, the "
            "validation QWK lost by merging the pair (tuned TIES, heads re-fitted) against each similarity. Plans can "
            "be searched by any of them (`scoreplex merge --similarity`); `loss_plan` plans by the measured losses "
            f"themselves (total loss {ref['total_loss']:+.3f} over its groups, against a median of "
            f"{rnd['median_total_loss']:+.3f} for {rnd['n']} random plans).",
            "",
            *correlation_rows(pred),
            "",
            "![merge loss against each similarity](gw-predict.png)",
            "",
            "![GW distances with the T' = 3 plan](gw-merging-heatmap.png)",
            "",
        ]
    sweep = parts["sweep"]
    if sweep and sweep.get("sweep"):
        lines += [
            "## T' = 1..10 (GW plans, every variant)",
            "",
            f"[merge-protocol-sweep.md](merge-protocol-sweep.md) (`{sweep['command']}`).",
            "",
            "| T' | kept | refit | surgery | groups |",
            "|---:|---:|---:|---:|---|",
            *[
                f"| {k} | " + " | ".join(_f(row[v]) for v in VARIANTS) + f" | {_groups(row['groups'])} |"
                for k, row in sweep["sweep"].items()
            ],
            "",
            "![mean test QWK against T'](merge-protocol-sweep.png)",
            "",
        ]
    old = head.get("full_finetune_fixed_ties")
    if old:
        lines += [
            "## The first run: full fine-tunes at fixed TIES (density 0.2, λ 1), heads kept",
            "",
            f"[gw-merging-fixed-ties.md](gw-merging-fixed-ties.md): unmerged {_f(old.get('unmerged_mean_qwk'))}, GW "
            f"plan {_f(old.get('gw_plan_t3_mean_qwk'))}, expert {_f(old.get('expert_plan_t3_mean_qwk'))}, random "
            f"median {_f(old.get('random_plans_t3_median_qwk'))}: untuned merging lost about 0.22 whatever the plan; "
            "the protocol above is what changed that.",
            "",
        ]
    return "\n".join(lines)


def update_json(parts: dict, path: Path) -> None:
    """gw-merging.json's keys for the full fine-tunes' runs (``full_finetunes_t3``, and
    ``full_finetunes_t3_task_arithmetic``) and the LoRA task-arithmetic run (``lora_t3_task_arithmetic``), when those
    runs are present, and the correlation keys from the current ``gw-predict.json`` (a re-run with more similarities
    can change the best one); the rest of the file is left as it is."""
    if parts["headline"] is None:
        return
    from scoreplex.suite import write_json_atomic

    d = dict(parts["headline"])
    pred = parts["predict"]
    if pred:
        for key in ("gw_merge_loss_spearman", "best_similarity", "best_similarity_spearman"):
            d[key] = pred[key]
    best = (parts["protocol"] or {}).get("best_variant") or "surgery"
    for key, part, storage in (
        ("full_finetunes_t3", "full10", "full_ratio_surgery"),
        ("full_finetunes_t3_task_arithmetic", "full10_ta", "full_ratio_surgery"),
        ("lora_t3_task_arithmetic", "lora_ta", "lora_ratio_surgery" if best == "surgery" else "lora_ratio_heads_kept"),
    ):
        r = parts[part]
        c = comparison(r, best)
        if c is None:
            continue
        d[key] = {
            **{f"{k}_mean_qwk" if k in ("gw", "expert", "unmerged") else k: v for k, v in c.items()},
            "variant": best,
            "variants": {v: r["plans"]["gw"]["variants"][v]["mean_qwk"] for v in VARIANTS},
            "storage_ratio": _storage(r, storage),
            "command": r["command"],
            "report": f"{r['report_stem']}.md",
        }
    if d != parts["headline"]:
        write_json_atomic(path, d)


def heatmap(parts: dict, out: Path) -> bool:
    """The default GW matrix of the LoRA suite with its T' = 3 plan, diagonal left out of the colour scale."""
    pred = parts["predict"]
    if not pred or PRIMARY not in pred.get("similarities", {}):
        return False
    from scoreplex.reports.merging import plot_gw_heatmap

    sim = pred["similarities"][PRIMARY]
    groups = pred["similarity_plans"][PRIMARY]["groups"]
    plot_gw_heatmap(
        np.asarray(sim["values"]),
        pred["task_ids"],
        groups,
        out / "gw-merging-heatmap.png",
        title="Debiased entropic GW (LoRA suite); red boxes = the T' = 3 GW plan",
    )
    return True


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results", help="folder holding the parts; gw-merging.md is written there")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    parts = load_parts(out)
    if parts["protocol"] is None and parts["compressed"] is None:
        print(f"error: {out} holds neither {PARTS['protocol']} nor {PARTS['compressed']}: run "
              "benchmarks/merge_protocol.py first.", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    text = markdown(parts)
    (out / "gw-merging.md").write_text(text, encoding="utf-8")
    update_json(parts, out / "gw-merging.json")
    drew = heatmap(parts, out)
    print(f"wrote {out / 'gw-merging.md'}" + (" and gw-merging-heatmap.png" if drew else ""))
    return text


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
