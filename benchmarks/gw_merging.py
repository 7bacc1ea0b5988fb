"""GW-SMM on the 10 ASAP-SAS items: which full fine-tunes to merge, merged with TIES, against other merge plans.

    python benchmarks/gw_merging.py --suite runs/asap-sas/full --out docs/results     # about 40 min on 2 cores

Inputs: the 10 per-item full fine-tunes of ``make bench-asap`` (``runs/asap-sas/full``). Features: each model's
final-layer [CLS] vector on its own item's training responses (the train part of the seeded 10% validation split
that selected the models). GW distances: entropic (the paper's solver) on k-means summaries of each item (400
centroids weighted by cluster mass), checked against exact GW on the same summaries, on 500-response subsamples, and
on every response for a few pairs. Plans at T' = 3 (balanced 4/3/3): the GW-optimal plan, a rubric-based expert
plan (``docs/results/plans/asap-expert-t3.json``), the authors' average-linkage clustering and ``--n-random`` random
plans; a sweep T' = 1..10 of GW plans. Every plan merges each group's encoders with TIES (density 0.2, lambda 1)
against the pretrained MiniLM and keeps each item's head; the named plans are also run with heads re-fitted on the
frozen merged encoder (selected on validation). test.tsv is scored once per distinct merged group. Intermediate
results (features, GW matrices, plan scores) are cached under ``--work``, so a rerun resumes.
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
import torch

from _common import HEADLINE_KEYS, cached_json
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.merging import (
    FeatureSettings,
    GWSettings,
    MergePlan,
    MergeSettings,
    PlanEvaluator,
    clustering_plan,
    gw_matrix,
    merge_suite,
    optimal_plan,
    plan_score,
    random_plans,
    suite_features,
    unmerged_plan,
)
from scoreplex.metrics import paired_t_test
from scoreplex.scorer import SuiteScorer, evaluate_suite
from scoreplex.suite import write_json_atomic

GW_VARIANTS = {
    "exact-q400": GWSettings(method="exact", quantize=400),
    "entropic-q400": GWSettings(method="entropic", epsilon=0.05, quantize=400),
    "exact-cap500": GWSettings(method="exact", subsample=500),
}
PRIMARY = "entropic-q400"
"""Entropic GW (the paper's solver) on 400 k-means centroids per item weighted by cluster mass (every response still
counts). Exact GW on every response (1,140-1,627 per item) took 40-90 s per pair here (dozens of conditional-gradient
iterations, each a 1,500 x 1,600 network-simplex solve), about 45 min for the 45 pairs; `REFERENCE_PAIRS` times it
for a few pairs, and exact GW on the same summaries and on uniform 500-response subsamples are compared."""
REFERENCE_PAIRS = (("asap-3", "asap-4"), ("asap-5", "asap-6"), ("asap-1", "asap-8"))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="runs/asap-sas/full", help="suite of per-item full fine-tunes")
    ap.add_argument("--data", default=os.environ.get("SCOREPLEX_ASAP", "../shared/data/asap-sas"))
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--work", default="runs/gw-merging", help="cache and merged suites")
    ap.add_argument("--lora-suite", default="runs/asap-sas/lora", help="LoRA suite merged with the same GW plan")
    ap.add_argument("--expert-plan", default="docs/results/plans/asap-expert-t3.json")
    ap.add_argument("--n-groups", type=int, default=3)
    ap.add_argument("--n-random", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-refit", action="store_true")
    ap.add_argument("--no-demo", action="store_true", help="skip the multi-label demo section")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_all = load_asap_sas(args.data, split="train")
    test_sets = load_asap_sas(args.data, split="test")
    splits = {t: train_val_split(d, val_fraction=0.1, seed=args.seed) for t, d in train_all.items()}
    train_sets = {t: s[0] for t, s in splits.items()}
    val_sets = {t: s[1] for t, s in splits.items()}
    ids = list(test_sets)
    scorer = SuiteScorer(args.suite)

    # 1. features (cached) ------------------------------------------------------------------------------------
    def extract() -> dict:
        t = time.perf_counter()
        suite_features(scorer, train_sets, FeatureSettings(cap=None), cache_dir=work / "features")
        return {"seconds": time.perf_counter() - t}

    feature_seconds = cached_json(work / "features-seconds.json", extract)["seconds"]  # the first, uncached pass
    feats = suite_features(scorer, train_sets, FeatureSettings(cap=None), cache_dir=work / "features")
    sizes = {t: int(len(f)) for t, f in feats.items()}
    print("features", sizes, f"{feature_seconds:.1f}s", flush=True)

    # 2. GW matrices (cached) ---------------------------------------------------------------------------------
    gw = {}
    for name, settings in GW_VARIANTS.items():
        gw[name] = cached_json(work / f"gw-{name}.json", lambda s=settings: gw_matrix(feats, s).to_dict())
        print(f"GW {name}: {gw[name]['seconds']:.1f}s", flush=True)
    from scipy.stats import spearmanr

    def upper(m):
        m = np.asarray(m)
        return m[np.triu_indices(len(m), 1)]

    from scoreplex.merging import gw_distance

    def reference():
        out = []
        for a, b in REFERENCE_PAIRS:
            r = gw_distance(feats[a], feats[b], GWSettings(method="exact"))
            out.append({"a": a, "b": b, "distance": r.distance, "seconds": r.seconds, "n_iter": r.n_iter})
            print(f"exact GW on all points {a} vs {b}: {r.distance:.5f} in {r.seconds:.1f}s", flush=True)
        return out

    reference_pairs = cached_json(work / "gw-reference-pairs.json", reference)
    primary_d = np.asarray(gw[PRIMARY]["distances"])
    primary_s = np.asarray(gw[PRIMARY]["similarity"])
    agreement = {
        name: {
            "spearman_vs_primary": float(spearmanr(upper(v["distances"]), upper(primary_d)).statistic),
            "plan_t3": optimal_plan(np.asarray(v["similarity"]), ids, args.n_groups).groups,
        }
        for name, v in gw.items()
    }

    # 3. plans ------------------------------------------------------------------------------------------------
    k = args.n_groups
    plans = {
        "gw": optimal_plan(primary_s, ids, k, name="gw"),
        "expert": MergePlan.from_file(args.expert_plan, ids),
        "clustering": clustering_plan(primary_d, ids, k),
    }
    if agreement["exact-q400"]["plan_t3"] != plans["gw"].groups:
        plans["gw-exact"] = optimal_plan(np.asarray(gw["exact-q400"]["similarity"]), ids, k, name="gw-exact")
    randoms = random_plans(ids, k, args.n_random, seed=args.seed)
    for p in [*plans.values(), *randoms]:
        p.extra["gw_objective"] = plan_score(p, primary_s, ids)

    # 4. evaluation on test.tsv -------------------------------------------------------------------------------
    evaluator = PlanEvaluator(scorer, test_sets, MergeSettings(), refit=(train_sets, val_sets))
    cache = work / "plan-results"
    cache.mkdir(exist_ok=True)

    def run(plan: MergePlan, refit: bool = False) -> dict:
        path = cache / (f"{plan.name}{'-refit' if refit else ''}.json")
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored["plan"]["groups"] == plan.groups:
                return stored
        t = time.perf_counter()
        res = evaluator.evaluate(plan, refit=refit)
        res["seconds"] = time.perf_counter() - t
        write_json_atomic(path, res)
        print(
            f"{plan.name}{' (refit)' if refit else ''}: mean QWK {res['mean_qwk']:.4f} ({res['seconds']:.0f}s)",
            flush=True,
        )
        return res

    results = {"unmerged": run(unmerged_plan(ids))}
    for name, p in plans.items():
        results[name] = run(p)
    if not args.no_refit:
        for name in ("gw", "expert", "clustering"):
            results[f"{name}+refit"] = run(plans[name], refit=True)
    random_results = [run(p) for p in randoms]
    sweep = {}
    if not args.no_sweep:
        for tp in range(1, len(ids) + 1):
            p = optimal_plan(primary_s, ids, tp, name=f"gw-t{tp}")
            p.extra["gw_objective"] = plan_score(p, primary_s, ids)
            r = run(p)
            sweep[tp] = {"gw": {"groups": p.groups, "mean_qwk": r["mean_qwk"], "objective": p.extra["gw_objective"]}}

    def qwks(res):
        return [res["tasks"][t]["qwk"] for t in ids]

    random_means = [r["mean_qwk"] for r in random_results]
    random_per_task_mean = np.mean([qwks(r) for r in random_results], axis=0)
    tests = {
        "gw_vs_unmerged": paired_t_test(qwks(results["gw"]), qwks(results["unmerged"])),
        "gw_vs_expert": paired_t_test(qwks(results["gw"]), qwks(results["expert"])),
        "gw_vs_clustering": paired_t_test(qwks(results["gw"]), qwks(results["clustering"])),
        "gw_vs_random_mean": paired_t_test(qwks(results["gw"]), random_per_task_mean),
    }
    if "gw+refit" in results:
        tests["gw_refit_vs_gw"] = paired_t_test(qwks(results["gw+refit"]), qwks(results["gw"]))
        tests["gw_refit_vs_expert_refit"] = paired_t_test(qwks(results["gw+refit"]), qwks(results["expert+refit"]))
    gw_rank = float(np.mean([results["gw"]["mean_qwk"] > m for m in random_means]))

    # 5. the merged suite on disk: storage, and a check that it scores as evaluated in memory ----------------------
    merged_dir = work / "merged-gw-t3"
    if not (merged_dir / "manifest.json").is_file():
        merge_suite(scorer, plans["gw"], merged_dir, MergeSettings())
    merged_scorer = SuiteScorer(merged_dir)
    on_disk = evaluate_suite(merged_scorer, test_sets, progress=False)
    storage = {
        "source_bytes": scorer.suite.model_bytes,
        "merged_bytes": merged_scorer.suite.model_bytes,
    }
    storage["ratio"] = storage["source_bytes"] / storage["merged_bytes"]

    # 5b. the same GW plan applied to the per-item LoRA adapters (merged as dense updates, factored back by SVD)
    lora = None
    if Path(args.lora_suite).is_dir():
        lora_eval = PlanEvaluator(SuiteScorer(args.lora_suite), test_sets, MergeSettings())

        def lora_run(plan: MergePlan) -> dict:
            path = work / f"lora-{plan.name}.json"
            if path.is_file() and json.loads(path.read_text())["plan"]["groups"] == plan.groups:
                return json.loads(path.read_text())
            res = lora_eval.evaluate(plan)
            write_json_atomic(path, res)
            return res

        lu, lg = lora_run(unmerged_plan(ids)), lora_run(plans["gw"])
        merged_groups = [lora_eval.merger.merge(g) for g in plans["gw"].groups]
        errors = [m.info["svd_relative_error"] for m in merged_groups]
        ranks = [m.config["lora_r"] for m in merged_groups]
        lora = {
            "unmerged_mean_qwk": lu["mean_qwk"],
            "gw_mean_qwk": lg["mean_qwk"],
            "tasks": {t: {"unmerged": lu["tasks"][t]["qwk"], "gw": lg["tasks"][t]["qwk"]} for t in ids},
            "svd_relative_error": errors,
            "ranks": ranks,
        }
        print(f"LoRA: unmerged {lu['mean_qwk']:.4f}, GW plan {lg['mean_qwk']:.4f}", flush=True)

    # 6. how far the exact plan search scales ----------------------------------------------------------------------
    scaling = {}
    rng = np.random.default_rng(0)
    for n in (10, 12, 14):
        s = rng.random((n, n))
        s = (s + s.T) / 2
        t = time.perf_counter()
        optimal_plan(s, [f"t{i}" for i in range(n)], 3 if n < 14 else 4)
        scaling[n] = round(time.perf_counter() - t, 3)
        print(f"plan search {n} tasks: {scaling[n]}s", flush=True)

    demo = None if args.no_demo else demo_section(work / "demo")

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/gw_merging.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "gw_matrix_seconds": gw[PRIMARY]["seconds"],
        "gw_primary_variant": PRIMARY,
        "gw_reference_pairs": reference_pairs,
        "gw_matrix_peak_mb": gw[PRIMARY]["peak_bytes"] / 1e6,
        "unmerged_mean_qwk": results["unmerged"]["mean_qwk"],
        "gw_plan_t3_mean_qwk": results["gw"]["mean_qwk"],
        "expert_plan_t3_mean_qwk": results["expert"]["mean_qwk"],
        "clustering_plan_t3_mean_qwk": results["clustering"]["mean_qwk"],
        "random_plans_t3_median_qwk": float(np.median(random_means)),
        "storage_ratio_t3": storage["ratio"],
        "gw_refit_t3_mean_qwk": results.get("gw+refit", {}).get("mean_qwk"),
        "gw_beats_random_share": gw_rank,
        "feature_sizes": sizes,
        "feature_seconds": feature_seconds,
        "gw_variants": {
            n: {"seconds": v["seconds"], "peak_mb": v["peak_bytes"] / 1e6, **agreement[n]} for n, v in gw.items()
        },
        "gw_matrices": gw,
        "plans": {n: p.to_dict() for n, p in plans.items()},
        "random_plans": [
            {"groups": p.groups, "gw_objective": p.extra["gw_objective"], "mean_qwk": r["mean_qwk"]}
            for p, r in zip(randoms, random_results, strict=True)
        ],
        "results": results,
        "t_tests": tests,
        "sweep": sweep,
        "storage": storage,
        "merged_suite_on_disk_mean_qwk": on_disk["mean_qwk"],
        "plan_search_seconds": scaling,
        "merge_settings": MergeSettings().__dict__,
        "demo_multilabel": demo,
        "lora_merge_t3": lora,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gw-merging.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if "headline_source" in earlier:  # merge_protocol.py's fair protocol owns the headline keys: this run's go under
        fixed = {k: report.pop(k) for k in HEADLINE_KEYS if k in report}  # full_finetune_fixed_ties
        report = {**earlier, **report, "full_finetune_fixed_ties": fixed}
    write_json_atomic(path, report)
    from scoreplex.reports.merging import plot_before_after, plot_gw_heatmap

    plot_gw_heatmap(
        primary_d,
        ids,
        plans["gw"].groups,
        out / "gw-merging-fixed-ties-heatmap.png",
        "ASAP-SAS: entropic GW distances of the 10 full fine-tunes; red = GW plan (T'=3)",
    )
    bars = {n: {t: results[n]["tasks"][t]["qwk"] for t in ids} for n in ("unmerged", "gw", "expert", "clustering")}
    bars["random (median per task)"] = {
        t: float(np.median([r["tasks"][t]["qwk"] for r in random_results])) for t in ids
    }
    if "gw+refit" in results:
        bars["gw + head re-fit"] = {t: results["gw+refit"]["tasks"][t]["qwk"] for t in ids}
    plot_before_after(bars, ids, out / "gw-merging-fixed-ties-bars.png")
    (out / "gw-merging-fixed-ties.md").write_text(markdown(report, ids), encoding="utf-8")
    print(f"wrote {out / 'gw-merging.json'} and gw-merging-fixed-ties.md", flush=True)
    return report


def _p(t: dict) -> str:
    return f"mean diff {t['mean_diff']:+.3f}, t = {t['t']:.2f}, p = {t['p']:.3f}"


def markdown(r: dict, ids: list[str]) -> str:
    from scoreplex.reports.merging import task_table

    res = r["results"]
    named = {k: res[k] for k in ("unmerged", "gw", "expert", "clustering", "gw-exact") if k in res}
    named.update({k: v for k, v in res.items() if k.endswith("+refit")})
    lines = [
        "# GW-SMM on ASAP-SAS: merging 10 full fine-tunes into T' = 3 models",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}, {r['machine']}). Inputs: the 10 per-item full fine-tunes of "
        "`make bench-asap`; merged with TIES (density 0.2, lambda 1) against the pretrained MiniLM, each item keeping "
        "its head. test.tsv scored once per distinct merged group; head re-fits selected on the validation split.",
        "",
        "## Headline (mean test QWK over the 10 items)",
        "",
        "| | mean QWK |",
        "|---|---:|",
        f"| unmerged (10 models) | {r['unmerged_mean_qwk']:.3f} |",
        f"| GW plan, T'=3 | {r['gw_plan_t3_mean_qwk']:.3f} |",
        f"| expert plan, T'=3 | {r['expert_plan_t3_mean_qwk']:.3f} |",
        f"| average-linkage clustering (authors' code), T'=3 | {r['clustering_plan_t3_mean_qwk']:.3f} |",
        f"| random plans, T'=3 (median of {len(r['random_plans'])}) | {r['random_plans_t3_median_qwk']:.3f} |",
    ]
    if r.get("gw_refit_t3_mean_qwk") is not None:
        lines.append(f"| GW plan + head re-fit | {r['gw_refit_t3_mean_qwk']:.3f} |")
    rq = sorted(p["mean_qwk"] for p in r["random_plans"])
    lines += [
        "",
        f"GW plan beats {r['gw_beats_random_share'] * 100:.0f}% of the random plans (random means range "
        f"{rq[0]:.3f}–{rq[-1]:.3f}). Storage: {r['storage']['source_bytes'] / 1e6:,.1f} MB → "
        f"{r['storage']['merged_bytes'] / 1e6:,.1f} MB (**{r['storage_ratio_t3']:.2f}×** smaller). The merged suite "
        f"written to disk and scored through `SuiteScorer` gives mean QWK {r['merged_suite_on_disk_mean_qwk']:.3f} "
        "(the same merge evaluated in memory above).",
        "",
        "### Paired t-tests over the 10 items (per-item QWK)",
        "",
    ]
    lines += [f"- {k.replace('_', ' ')}: {_p(v)}" for k, v in r["t_tests"].items()]
    lines += ["", "## Plans at T' = 3", ""]
    for k, p in r["plans"].items():
        groups = " | ".join(", ".join(g) for g in p["groups"])
        lines.append(f"- **{k}**: {groups} (GW objective {p.get('gw_objective', float('nan')):.2f})")
    lines += ["", "![GW heatmap](gw-merging-fixed-ties-heatmap.png)", "", "## Per item (test QWK)", "",
              task_table(named, ids)]  # fmt: skip
    lines += ["", "![before/after per item](gw-merging-fixed-ties-bars.png)", ""]
    lines += [
        "## GW distances: solvers and time",
        "",
        "| variant | seconds (45 pairs) | peak traced MB | Spearman vs primary | T'=3 plan |",
        "|---|---:|---:|---:|---|",
    ]
    for n, v in r["gw_variants"].items():
        plan = " / ".join(",".join(t.replace("asap-", "") for t in g) for g in v["plan_t3"])
        lines.append(f"| {n} | {v['seconds']:.1f} | {v['peak_mb']:.0f} | {v['spearman_vs_primary']:.3f} | {plan} |")
    ref = r.get("gw_reference_pairs") or []
    if ref:
        pos = {t: i for i, t in enumerate(ids)}
        prim = np.asarray(r["gw_matrices"][r["gw_primary_variant"]]["distances"])
        lines += [
            "",
            "Exact GW on every response (no summarising) for a few pairs, against the primary variant:",
            "",
            "| pair | exact, all points | seconds | iterations | primary |",
            "|---|---:|---:|---:|---:|",
        ]
        for p in ref:
            lines.append(
                f"| {p['a']} – {p['b']} | {p['distance']:.4f} | {p['seconds']:.1f} | {p['n_iter']} | "
                f"{prim[pos[p['a']], pos[p['b']]]:.4f} |"
            )
    lines += [
        "",
        f"Features: final-layer [CLS] of each model on its own item's training responses "
        f"({min(r['feature_sizes'].values())}–{max(r['feature_sizes'].values())} per item), "
        f"{r['feature_seconds']:.0f} s on first extraction (then cached). Exact plan search time by number of tasks: "
        + ", ".join(f"{n}: {s:.2f} s" for n, s in r["plan_search_seconds"].items())
        + ".",
    ]
    if r["sweep"]:
        lines += [
            "",
            "## Sweep T' = 1..10 (GW plans, balanced groups, no head re-fit)",
            "",
            "| T' (encoders kept of 10) | mean test QWK | GW objective | GW groups (item numbers) |",
            "|---:|---:|---:|---|",
        ]
        for tp, v in r["sweep"].items():
            groups = " / ".join(",".join(t.replace("asap-", "") for t in g) for g in v["gw"]["groups"])
            lines.append(f"| {tp} | {v['gw']['mean_qwk']:.3f} | {v['gw']['objective']:.2f} | {groups} |")
    if r.get("lora_merge_t3"):
        lo = r["lora_merge_t3"]
        lines += [
            "",
            "## The same GW plan on the per-item LoRA adapters (T' = 3, heads kept)",
            "",
            f"Mean test QWK {lo['unmerged_mean_qwk']:.3f} (10 adapters) → {lo['gw_mean_qwk']:.3f} (3 merged adapters; "
            "TIES on the dense updates, factored back by SVD to ranks "
            + ", ".join(str(k) for k in lo["ranks"])
            + ", relative error "
            + ", ".join(f"{e:.2f}" for e in lo["svd_relative_error"])
            + ").",
        ]
    if r.get("demo_multilabel"):
        d = r["demo_multilabel"]
        lines += [
            "",
            "## Multi-label path (generated demo items, T' = 2)",
            "",
            f"Plan: {d['plan']}",
            "",
            "| task | QWK before | after | exact match before | after | per-label accuracy after |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for t, b in d["before"].items():
            a = d["after"][t]
            em = f"{b['exact_match']:.3f} | {a['exact_match']:.3f}" if b.get("exact_match") is not None else "– | –"
            pla = ", ".join(f"{x:.2f}" for x in a["per_label_accuracy"]) if a.get("per_label_accuracy") else "–"
            lines.append(f"| {t} | {b['qwk']:.3f} | {a['qwk']:.3f} | {em} | {pla} |")
    return "\n".join(lines) + "\n"


def demo_section(work: Path) -> dict:
    """The multi-label path: full fine-tunes of the 4 demo items (2 multi-label) merged at T' = 2."""
    from scoreplex.data.demo import demo_column_labels, demo_specs, write_demo
    from scoreplex.data.load import read_dataset
    from scoreplex.data.readers import ColumnMap
    from scoreplex.training.suite import TrainOptions, default_config, train_suite

    files = write_demo(work / "data", n_train=160, n_test=80)
    labels = demo_column_labels(demo_specs())
    cols = ColumnMap(labels=labels, second={d: f"{d}_rater2" for d in labels})
    specs = {s.id: s for s in demo_specs()}
    train = read_dataset(files["train"], columns=cols, specs=specs)
    test = read_dataset(files["test"], columns=cols, specs=specs)
    suite_dir = work / "full"
    train_suite(train, suite_dir, TrainOptions(method="full", config=default_config("full", epochs=3), progress=False))
    scorer = SuiteScorer(suite_dir)
    ids = list(test)
    feats = suite_features(scorer, train, FeatureSettings(cap=None), cache_dir=work / "features", progress=False)
    m = gw_matrix(feats, GWSettings(), progress=False)
    plan = optimal_plan(m.similarity(), ids, 2)
    ev = PlanEvaluator(scorer, test)
    before, after = ev.evaluate(unmerged_plan(ids)), ev.evaluate(plan)
    keys = ("qwk", "accuracy", "exact_match", "per_label_accuracy", "multilabel_micro_f1", "multilabel_macro_f1")
    return {
        "plan": plan.groups,
        "gw_distances": m.distances.tolist(),
        "before": {t: {k: before["tasks"][t].get(k) for k in keys} for t in ids},
        "after": {t: {k: after["tasks"][t].get(k) for k in keys} for t in ids},
        "dimensions_after": {t: after["tasks"][t]["dimensions"] for t in ids},
    }


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
