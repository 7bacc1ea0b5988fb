"""GW-SMM under one fair protocol for every plan: tuned TIES per group, then heads kept, heads re-fitted, or a
representation surgery per task; ASAP-SAS test QWK at T' = 3 for GW, other similarities, expert, clustering, the
measured-loss reference and random plans.

    python benchmarks/merge_protocol.py --suite runs/asap-r8/lora --out docs/results     # ~2 h on 2 cores
    # runs/asap-r8/lora: the rank-8 LoRA suite docs/results' merge figures were measured on (rank 16 is the default
    # since 2026-12-02): python benchmarks/asap_sas.py --methods lora --lora-rank 8 --work runs/asap-r8

Protocol (the same for every plan; each distinct group of two or more items is evaluated once and cached):
  1. merge the group's task models with TIES at every (density, lambda) of ``--grid``;
  2. at each point, each member's pooled features of its validation split and of a seeded ``--fit-rows`` subsample
     of its training split (one encoder pass each), and three variants:
     ``kept``    its own head on the merged features;
     ``refit``   a new head trained on the fit rows' merged features, early-stopped on validation (REFIT_CONFIG);
     ``surgery`` its own head behind a representation surgery module (Yang et al. 2024) fitted on the fit rows'
                 merged features against its own model's features of the same rows (their scores are not read);
  3. per variant, the grid point with the best mean validation QWK of the group's members;
  4. test.tsv: each member's test responses encoded once per chosen point, each variant scored at its own point.
Validation = the seeded stratified 10% split the suite was selected on. Groups of one are the unmerged model.

Plans at T' = 3: GW (the merge CLI's default measure) and the other similarities, their plans read from
``--predict`` (``benchmarks/gw_predict.py``'s report on the same suite, the pairwise merge losses, whose optimal
plan is the reference of what a similarity could achieve), the expert plan, average-linkage clustering of the GW
distances, and ``--n-random`` random plans. Report: ``<out>/merge-protocol.{json,md,png}``, and the keys of
``<out>/gw-merging.json`` that this protocol answers (the rest of that file, full fine-tunes, is left as it was).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from _common import HEADLINE_KEYS
from scoreplex.data.splits import train_val_split
from scoreplex.errors import ConfigError
from scoreplex.merging import GroupMerger, MergePlan, MergeSettings, clustering_plan, optimal_plan, random_plans
from scoreplex.merging.features import sample_indices
from scoreplex.merging.merge import merged_lora_rank
from scoreplex.merging.merged_suite import REFIT_CONFIG, refit_head_on_features
from scoreplex.merging.similarity import planner_similarity
from scoreplex.merging.surgery import SurgerySettings, fit_surgery
from scoreplex.methods.base import load_head
from scoreplex.metrics import evaluate_task, paired_t_test
from scoreplex.suite import write_json_atomic

GRIDS = {
    "one": ((0.2, 1.0),),
    "three": ((0.2, 1.0), (0.2, 2.0), (0.5, 2.0)),
    "small": ((0.2, 1.0), (0.2, 2.0), (0.5, 1.0), (0.5, 2.0)),
    "ta": ((1.0, 0.3), (1.0, 0.5), (1.0, 1.0)),  # task arithmetic: lambda only (Ilharco et al. 2023 tune it in [0, 1])
}
VARIANTS = ("kept", "refit", "surgery")
MERGE_NAMES = {"ties": "TIES", "task_arithmetic": "task arithmetic (density unused)"}
PRIMARY_MEASURE = "gw/entropic-q400-s0"
"""The plan `scoreplex merge` makes by default (debiased entropic GW on 400 k-means centroids)."""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="suite of per-item task models (read only)")
    ap.add_argument("--data", default=os.environ.get("SCOREPLEX_ASAP", "../shared/data/asap-sas"))
    ap.add_argument("--predict", default="docs/results/gw-predict.json", help="gw_predict.py's report on --suite")
    ap.add_argument(
        "--similarity-on-suite",
        default=None,
        metavar="NAME",
        help="compute this similarity (e.g. gw, the merge CLI's default) on --suite itself, from each task model's "
        "features of its training split, and plan by it, instead of reading --predict (a suite gw_predict.py has not "
        "measured, e.g. the full fine-tunes); the plans are then that similarity's ('gw'), expert, clustering and "
        "random, with no measured-loss reference",
    )
    ap.add_argument("--expert-plan", default="docs/results/plans/asap-expert-t3.json")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--work", default="runs/merge-protocol", help="cache of group results (a rerun resumes)")
    ap.add_argument(
        "--merge",
        default="ties",
        choices=("ties", "task_arithmetic"),
        help="merge method; task_arithmetic takes the 'ta' grid (lambda 0.3, 0.5, 1) unless --grid says otherwise, "
        "and its report is <out>/<--name>-task-arithmetic.*",
    )
    ap.add_argument("--grid", default=None, choices=sorted(GRIDS), help="(density, lambda) points (default: three)")
    ap.add_argument("--fit-rows", type=int, default=200, help="training rows per task for re-fit and surgery")
    ap.add_argument("--surgery-rank", type=int, default=16)
    ap.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        help="rank each group's merged adapter is factored back to by truncated SVD (default: the sum of the members' "
        "ranks, up to 64, which saves no storage); with it the report is <out>/<--name>-lora-r<R>.*",
    )
    ap.add_argument(
        "--only-plans",
        default=None,
        help="comma-separated plan names to evaluate (e.g. gw,expert,random: 'random' stands for the --n-random "
        "random plans); default: every plan",
    )
    ap.add_argument("--name", default="merge-protocol", help="stem of the report files")
    ap.add_argument("--n-random", type=int, default=20)
    ap.add_argument("--measures", default="gw/entropic-q400-s0,gw/entropic-all,cka,task-vector,text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-groups", type=int, default=None, help="evaluate at most this many new groups this run")
    ap.add_argument("--sweep", action="store_true", help="also the GW plans at T' = 1..number of items")
    ap.add_argument(
        "--only-sweep",
        action="store_true",
        help="only the GW plans at T' = 1..number of items (the curve), into merge-protocol-sweep.{json,md,png}; "
        "the T' = 3 comparison and gw-merging.json are left as they are",
    )
    ap.add_argument(
        "--single-group",
        action="store_true",
        help="no plans: merge all of the suite's tasks into one group (e.g. the few full fine-tunes at hand)",
    )
    return ap.parse_args(argv)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def read_predict(path: str) -> dict:
    """gw_predict.py's report at ``path`` (``--predict``), checked for what the plans read.

    Raises:
        ConfigError: it cannot be read, is not JSON, or lacks ``task_ids`` / the primary similarity / its plans.
    """
    try:
        predict = json.loads(Path(path).read_text(encoding="utf-8"))
        ok = (
            isinstance(predict["task_ids"], list)
            and isinstance(predict["similarities"][PRIMARY_MEASURE]["values"], list)
            and isinstance(predict["similarity_plans"], dict)
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        ok, why = False, f"{type(exc).__name__}: {exc}"
    else:
        why = "task_ids, similarities or similarity_plans of the wrong type"
    if not ok:
        raise ConfigError(
            f"--predict {path}: not a gw_predict.py report ({why}); run benchmarks/gw_predict.py on --suite first, "
            "or give --single-group / --similarity-on-suite."
        )
    return predict


def build_plans(args, ids: list[str], predict: dict | None) -> dict[str, MergePlan]:
    """Named plans at T' = 3 (similarity plans and the reference from ``--predict``), expert, clustering, random;
    with ``--sweep`` the GW plans ``gw-t<k>`` at every T'; with ``--single-group`` only the group of all tasks."""
    if args.only_plans and (args.single_group or args.only_sweep):
        raise ConfigError("--only-plans picks among the T' = 3 plans; not with --single-group or --only-sweep.")
    if args.single_group:
        return {"all-in-one": MergePlan("all-in-one", [list(ids)])}
    if predict["task_ids"] != ids:
        raise ConfigError(f"{args.predict} is about tasks {predict['task_ids']}, the suite has {ids}.")
    sim = predict["similarities"][PRIMARY_MEASURE]
    if args.only_sweep:
        sim_matrix = planner_similarity(np.asarray(sim["values"]), sim["kind"])
        return {f"gw-t{k}": optimal_plan(sim_matrix, ids, k, name=f"gw-t{k}") for k in range(1, len(ids) + 1)}
    plans = {}
    measures = PRIMARY_MEASURE if args.similarity_on_suite else args.measures
    for m in [m.strip() for m in measures.split(",") if m.strip()]:
        if m not in predict["similarity_plans"]:
            raise ConfigError(
                f"--measures {m!r} has no plan in {args.predict}; it has {list(predict['similarity_plans'])}."
            )
        plans["gw" if m == PRIMARY_MEASURE else m] = MergePlan(m, predict["similarity_plans"][m]["groups"])
    if predict.get("reference_plan"):
        plans["measured-loss"] = MergePlan("measured-loss", predict["reference_plan"]["groups"])
    plans["expert"] = MergePlan.from_file(args.expert_plan, ids)
    plans["clustering"] = clustering_plan(np.asarray(sim["values"]), ids, 3)
    for i, p in enumerate(random_plans(ids, 3, args.n_random, seed=args.seed)):
        plans[f"random-{i:02d}"] = p
    if args.sweep:
        sim_matrix = planner_similarity(np.asarray(sim["values"]), sim["kind"])
        for k in range(1, len(ids) + 1):
            plans[f"gw-t{k}"] = optimal_plan(sim_matrix, ids, k, name=f"gw-t{k}")
    if args.only_plans:
        wanted = {x.strip() for x in args.only_plans.split(",") if x.strip()}
        unknown = wanted - set(plans) - {"random"}
        if unknown:
            raise ConfigError(f"--only-plans {sorted(unknown)} are not plans of this run; it has {sorted(plans)}.")
        plans = {n: p for n, p in plans.items() if n in wanted or ("random" in wanted and n.startswith("random-"))}
    for name, p in plans.items():
        p.validate(ids, where=f"plan {name!r}")
    return plans


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from scoreplex.data.asap_sas import load_asap_sas
    from scoreplex.encoding import encode_texts
    from scoreplex.predictions import decode, embed_all
    from scoreplex.scorer import SuiteScorer

    t_start = time.perf_counter()
    # read before the suite is loaded, so a wrong --predict costs nothing
    predict = None if args.single_group or args.similarity_on_suite else read_predict(args.predict)
    grid = GRIDS[args.grid or ("ta" if args.merge == "task_arithmetic" else "three")]
    surgery = SurgerySettings(rank=args.surgery_rank, rows=args.fit_rows, seed=args.seed)
    scorer = SuiteScorer(args.suite, decoding=False, lexical=False)
    ids = scorer.suite.task_ids
    train_all = load_asap_sas(args.data, split="train")
    test_all = load_asap_sas(args.data, split="test")
    splits = {t: train_val_split(train_all[t], val_fraction=0.1, seed=args.seed) for t in ids}
    val_sets = {t: splits[t][1] for t in ids}
    fit_sets = {t: splits[t][0].subset(sample_indices(splits[t][0].ids, args.fit_rows, args.seed)) for t in ids}
    test_sets = {t: test_all[t] for t in ids}
    if args.similarity_on_suite and not args.single_group:
        predict = similarity_on_suite(scorer, args.similarity_on_suite, {t: splits[t][0] for t in ids}, args.work)
    plans = build_plans(args, ids, predict)
    protocol = {
        "merge": args.merge,
        "grid": [list(p) for p in grid],
        "variants": list(VARIANTS),
        "selection": "per group and variant, the grid point with the best mean validation QWK of its members",
        "fit_rows": args.fit_rows,
        "refit_config": REFIT_CONFIG.to_dict(),
        "surgery": asdict(surgery),
        "decoding": "argmax of each model's own probabilities (no stored decoding or lexical stack)",
        "suite": str(Path(args.suite).resolve()),
        "seed": args.seed,
    }
    if args.lora_rank is not None:  # only then: earlier runs' cached groups keep their keys
        MergeSettings(lora_rank=args.lora_rank)  # a rank below 1 stops here, before any work
        protocol["lora_rank"] = args.lora_rank
    work = Path(args.work)
    hidden = scorer.bb.hidden

    def feats(model, data) -> torch.Tensor:
        enc = encode_texts(scorer.bb.tokenizer, data.texts, scorer.max_length, long_inputs=scorer.long_inputs)
        return embed_all(model, enc)  # (N, H)

    def metrics(spec, data, logits) -> dict:
        return evaluate_task(spec, data.labels, decode(spec, data.ids, logits).labels)

    # unmerged: each task's own model (test once), and its features of the fit rows (surgery targets)
    own_fit: dict[str, torch.Tensor] = {}

    def unmerged(t: str) -> dict:
        model, spec = scorer.model(t), scorer.suite.spec(t)
        with torch.no_grad():
            val = metrics(spec, val_sets[t], model.head(feats(model, val_sets[t])))
            test = metrics(spec, test_sets[t], model.head(feats(model, test_sets[t])))
        return {"val": val, "test": test}

    base = {}
    # the same unmerged models whatever the merge, its grid or the merged rank
    unmerged_key = _key({k: v for k, v in protocol.items() if k not in ("lora_rank", "merge", "grid")})
    for i, t in enumerate(ids, 1):
        path = work / "unmerged" / f"{t}-{unmerged_key}.json"
        base[t] = json.loads(path.read_text()) if path.is_file() else None
        if base[t] is None:
            base[t] = unmerged(t)
            write_json_atomic(path, base[t])
            print(f"unmerged [{i}/{len(ids)}] {t}: validation QWK {_f(base[t]['val']['qwk'])}", file=sys.stderr,
                  flush=True)  # fmt: skip

    def evaluate_group(members: list[str]) -> dict:
        t0 = time.perf_counter()
        points, kept_models = [], []
        for d, lam in grid:
            settings = MergeSettings(method=args.merge, density=d, scale=lam, lora_rank=args.lora_rank)
            merger = GroupMerger(scorer, settings)
            group = merger.merge(members)
            row = {"density": d, "scale": lam, "svd_relative_error": group.info.get("svd_relative_error"), "val": {}}
            pieces = {}
            for t in members:
                spec = scorer.suite.spec(t)
                model = merger.task_model(group, t)
                zv, zf = feats(model, val_sets[t]), feats(model, fit_sets[t])
                if t not in own_fit:
                    own_fit[t] = feats(scorer.model(t), fit_sets[t])
                info, _ = scorer.suite.load_module(t)
                with torch.no_grad():
                    kept = metrics(spec, val_sets[t], model.head(zv))
                module, s_info = fit_surgery(zf, own_fit[t], surgery)
                with torch.no_grad():
                    surg = metrics(spec, val_sets[t], model.head(module(zv)))
                head, refit = refit_head_on_features(info["config"], fit_sets[t], zf, val_sets[t], zv)
                row["val"][t] = {"kept": kept["qwk"], "refit": refit["qwk"], "surgery": surg["qwk"],
                                 "surgery_l1": [s_info["l1_before"], s_info["l1_after"]]}  # fmt: skip
                refit_head = load_head(hidden, spec, info["config"], {f"head.{k}": v for k, v in head.items()})
                pieces[t] = {"model": model, "surgery": module, "refit": refit_head}
            points.append(row)
            kept_models.append(pieces)  # each member's merged model (built once per point) and fitted pieces
        chosen = {}
        for v in VARIANTS:
            means = [mean_q([p["val"][t][v] for t in members]) for p in points]
            chosen[v] = int(np.nanargmax(means)) if not all(np.isnan(means)) else 0
        test: dict[str, dict[str, dict]] = {v: {} for v in VARIANTS}
        for i in sorted(set(chosen.values())):
            pieces = kept_models[i]
            for t in members:
                spec = scorer.suite.spec(t)
                model = pieces[t]["model"]
                zt = feats(model, test_sets[t])
                with torch.no_grad():
                    for v in VARIANTS:
                        if chosen[v] != i:
                            continue
                        if v == "kept":
                            logits = model.head(zt)
                        elif v == "surgery":
                            logits = model.head(pieces[t]["surgery"](zt))
                        else:
                            logits = pieces[t]["refit"](zt)
                        m = metrics(spec, test_sets[t], logits)
                        test[v][t] = {"qwk": m["qwk"], "n": m["n"]}
        return {
            "members": members,
            "protocol": protocol,
            "points": points,
            "chosen": {v: {"density": grid[i][0], "scale": grid[i][1]} for v, i in chosen.items()},
            "test": test,
            "seconds": round(time.perf_counter() - t0, 1),
        }

    distinct: dict[frozenset, list[str]] = {}
    for p in plans.values():
        for g in p.groups:
            if len(g) > 1:
                distinct.setdefault(frozenset(g), sorted(g, key=ids.index))
    results: dict[frozenset, dict] = {}
    computed = 0
    for n, (key, members) in enumerate(distinct.items(), 1):
        path = work / "groups" / f"{'+'.join(m.removeprefix('asap-') for m in members)}-{_key(protocol)}.json"
        if path.is_file():
            results[key] = json.loads(path.read_text())
            continue
        if args.max_groups is not None and computed >= args.max_groups:
            continue
        results[key] = evaluate_group(members)
        write_json_atomic(path, results[key])
        computed += 1
        r = results[key]
        print(f"[{n}/{len(distinct)}] {'+'.join(members)}: test QWK "
              + ", ".join(f"{v} {mean_q([r['test'][v][t]['qwk'] for t in members]):.3f}" for v in VARIANTS)
              + f" ({r['seconds']:.0f}s)", file=sys.stderr, flush=True)  # fmt: skip
    missing = [g for k, g in distinct.items() if k not in results]
    report = summarise(args, argv, ids, plans, base, results, protocol, missing, scorer, t_start)
    if predict and "similarity_on_suite" in predict:  # the plan's matrix, computed on this suite in this run
        report["similarity_on_suite"] = {**predict["similarity_on_suite"], **predict["similarities"][PRIMARY_MEASURE]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name + ("-full" if args.single_group else "-sweep" if args.only_sweep else "")
    if args.merge != "ties":
        stem += "-" + args.merge.replace("_", "-")
    if args.lora_rank is not None:
        stem += f"-lora-r{args.lora_rank}"
    if args.only_plans:  # a subset never replaces the full report
        stem += "-" + "-".join(sorted(x.strip() for x in args.only_plans.split(",") if x.strip()))
    report["report_stem"] = stem
    write_json_atomic(out / f"{stem}.json", report)
    (out / f"{stem}.md").write_text(markdown(report), encoding="utf-8")
    if args.only_sweep and report["sweep"]:
        plot(report, out / f"{stem}.png")
    elif not missing and not args.single_group:
        plot(report, out / f"{stem}.png")
        headline = args.merge == "ties" and not args.similarity_on_suite  # gw-merging.json: TIES on the LoRA suite
        if headline and args.lora_rank is not None:
            update_gw_merging_compressed(out / "gw-merging.json", report)
        elif headline and not args.only_plans and args.name == "merge-protocol":
            update_gw_merging(out / "gw-merging.json", report, predict)
    print(f"wrote {out / stem}.json ({len(missing)} groups still to evaluate)", file=sys.stderr)
    return report


def similarity_on_suite(scorer, name: str, train_sets: dict, work: str) -> dict:
    """``name`` (a registered similarity, as ``scoreplex merge --similarity``) computed on the scorer's suite from
    each task model's features of its training split, shaped like the parts of gw_predict.py's report that
    :func:`build_plans` reads: the matrix and its optimal T' = 3 plan under :data:`PRIMARY_MEASURE`."""
    from scoreplex.merging.similarity import SimilarityInputs, get_similarity

    ids = scorer.suite.task_ids
    t0 = time.perf_counter()
    inputs = SimilarityInputs(scorer, train_sets, cache_dir=Path(work) / "features")
    measure = get_similarity(name).compute(inputs)
    plan = optimal_plan(measure.similarity(), ids, 3, name="gw")
    print(f"{name} on {scorer.suite.root}: {time.perf_counter() - t0:.0f} s; plan {plan.groups}", file=sys.stderr)
    return {
        "task_ids": ids,
        "similarities": {PRIMARY_MEASURE: {"kind": measure.kind, "values": np.asarray(measure.values).tolist()}},
        "similarity_plans": {PRIMARY_MEASURE: {"groups": plan.groups}},
        "similarity_on_suite": {"name": name, "seconds": round(time.perf_counter() - t0, 1)},
    }


def mean_q(values) -> float:
    """Mean of the defined values (None and NaN, an undefined QWK, left out); NaN when none is defined."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def t_test(a, b) -> dict | None:
    """paired_t_test over the items where both values are defined (None below 2 such items)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return paired_t_test(a[keep], b[keep]) if keep.sum() >= 2 else None


def validation_qwk(result: dict, variant: str, task: str) -> float | None:
    """A merged task's validation QWK under ``variant`` at the grid point that variant chose for its group."""
    c = result["chosen"][variant]
    point = next(p for p in result["points"] if p["density"] == c["density"] and p["scale"] == c["scale"])
    return point["val"][task][variant]


def summarise(args, argv, ids, plans, base, results, protocol, missing, scorer, t_start) -> dict:
    unmerged = {t: base[t]["test"]["qwk"] for t in ids}
    per_plan: dict[str, dict] = {}
    for name, p in plans.items():
        if any(frozenset(g) not in results for g in p.groups if len(g) > 1):
            continue
        row = {"groups": p.groups, "variants": {}}
        for v in VARIANTS:
            q, qv = {}, {}
            for g in p.groups:
                for t in g:
                    if len(g) == 1:
                        q[t], qv[t] = unmerged[t], base[t]["val"]["qwk"]
                    else:
                        q[t] = results[frozenset(g)]["test"][v][t]["qwk"]
                        qv[t] = validation_qwk(results[frozenset(g)], v, t)
            row["variants"][v] = {
                "tasks": {t: q[t] for t in ids},
                "mean_qwk": mean_q(q.values()),
                "val_mean_qwk": mean_q(qv.values()),
            }
        per_plan[name] = row
    summary: dict = {"unmerged_mean_qwk": mean_q(unmerged.values())}
    randoms = [n for n in per_plan if n.startswith("random-")]
    best_variant = None
    if "gw" in per_plan:  # chosen on VALIDATION (the GW plan's mean validation QWK), never on test
        best_variant = max(VARIANTS, key=lambda v: per_plan["gw"]["variants"][v]["val_mean_qwk"])
    tests = {}
    for v in VARIANTS:
        if "gw" not in per_plan:
            break
        gw = np.array([per_plan["gw"]["variants"][v]["tasks"][t] for t in ids], dtype=np.float64)
        rand_means = [per_plan[n]["variants"][v]["mean_qwk"] for n in randoms]
        rand_task_mean = [mean_q([per_plan[n]["variants"][v]["tasks"][t] for n in randoms]) for t in ids]
        tests[v] = {
            "gw_mean_qwk": mean_q(gw),
            "random_median_mean_qwk": float(np.median(rand_means)) if randoms else None,
            "random_min_max": [float(min(rand_means)), float(max(rand_means))] if randoms else None,
            "gw_beats_random_share": float(np.mean([mean_q(gw) > r for r in rand_means])) if randoms else None,
            "vs_unmerged": t_test(gw, [unmerged[t] for t in ids]),
            "vs_random_mean": t_test(gw, rand_task_mean) if randoms else None,
            **{
                f"vs_{o}": t_test(gw, [per_plan[o]["variants"][v]["tasks"][t] for t in ids])
                for o in per_plan
                if not o.startswith(("random-", "gw-t")) and o != "gw"
            },
        }
    storage = storage_report(scorer, per_plan.get("gw"), protocol, results)
    sweep = {
        int(n.removeprefix("gw-t")): {"groups": pl["groups"], **{v: pl["variants"][v]["mean_qwk"] for v in VARIANTS}}
        for n, pl in per_plan.items()
        if n.startswith("gw-t")
    }
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/merge_protocol.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "protocol": protocol,
        "suite_method": scorer.suite.manifest.get("method"),
        "task_ids": ids,
        "groups_evaluated": len(results),
        "groups_missing": [list(g) for g in missing],
        "seconds_per_group": float(np.median([r["seconds"] for r in results.values()])) if results else None,
        "unmerged": {"tasks": unmerged, "mean_qwk": summary["unmerged_mean_qwk"]},
        "best_variant": best_variant,
        "plans": per_plan,
        "tests": tests,
        "storage": storage,
        "sweep": dict(sorted(sweep.items())),
        "groups": [
            {
                "members": r["members"],
                "chosen": r["chosen"],
                "seconds": r["seconds"],
                "val": {f"{p['density']}:{p['scale']}": p["val"] for p in r["points"]},
                "svd_relative_error": {
                    f"{p['density']}:{p['scale']}": p.get("svd_relative_error") for p in r["points"]
                },
            }
            for r in results.values()
        ],  # fmt: skip
        "wall_seconds_this_run": round(time.perf_counter() - t_start, 1),
    }


def storage_report(scorer, gw_plan, protocol, results) -> dict | None:
    """Bytes of the per-task models against a T' = 3 merged suite (shared group parts + per-task pieces), float32.

    LoRA: a group's merged adapter has rank min(sum of the members' ranks, 64) (what ``merge_lora`` writes), so it
    is about as large as its members' adapters together and merging saves little storage; with ``--lora-rank R``
    (``protocol["lora_rank"]``) each group's adapter is factored back to rank R, one member's size. Full fine-tunes
    (from ``gw-merging.json``'s measured suite sizes) are computed alongside for the same per-task pieces.
    """
    if gw_plan is None:
        return None
    suite = scorer.suite
    per_task_encoder, heads = 0, 0
    ranks, encoder_bytes, head_bytes = {}, {}, {}
    for t in suite.task_ids:
        info, tensors = suite.load_module(t)
        encoder_bytes[t] = sum(v.numel() * 4 for k, v in tensors.items() if not k.startswith("head."))
        head_bytes[t] = sum(v.numel() * 4 for k, v in tensors.items() if k.startswith("head."))
        per_task_encoder += encoder_bytes[t]
        heads += head_bytes[t]
        ranks[t] = int(info["config"].get("lora_r", 0))
    surgery_bytes = 2 * scorer.feature_width * protocol["surgery"]["rank"] * 4  # 2H for mean+max windows
    if not any(ranks.values()):  # full fine-tunes: a merged group keeps one encoder and its members' heads
        merged = sum(
            encoder_bytes[g[0]] + sum(head_bytes[t] for t in g) + (len(g) * surgery_bytes if len(g) > 1 else 0)
            for g in gw_plan["groups"]
        )
        source = per_task_encoder + heads
        return {
            "full_source_bytes": source,
            "full_merged_bytes_surgery": merged,
            "full_ratio_surgery": source / merged,
            "surgery_bytes_per_task": surgery_bytes,
            "counted": "float32 tensors of this suite's task modules; a merged group = one encoder + its members' "
            "heads and surgery modules",
        }
    if not all(ranks.values()):
        return None  # a mixed suite
    n_adapted = sum(1 for k in suite.load_module(suite.task_ids[0])[1] if k.endswith("lora_A.weight"))
    per_rank = per_task_encoder / sum(ranks.values())  # bytes per unit of LoRA rank over all adapted modules

    def group_rank(g) -> int:  # what merge_lora writes (protocol["lora_rank"] None: the sum of ranks up to 64)
        return merged_lora_rank([ranks[t] for t in g], protocol.get("lora_rank"))

    merged_adapters = sum(per_rank * group_rank(g) for g in gw_plan["groups"])
    n_merged_tasks = sum(len(g) for g in gw_plan["groups"] if len(g) > 1)
    out = {
        "lora_per_task_bytes": per_task_encoder + heads,
        "lora_merged_bytes_heads_kept": merged_adapters + heads,
        "lora_merged_bytes_surgery": merged_adapters + heads + n_merged_tasks * surgery_bytes,
        "surgery_bytes_per_task": surgery_bytes,
        "adapted_modules": n_adapted,
        "merged_lora_ranks": [group_rank(g) for g in gw_plan["groups"]],
    }
    out["lora_ratio_heads_kept"] = out["lora_per_task_bytes"] / out["lora_merged_bytes_heads_kept"]
    out["lora_ratio_surgery"] = out["lora_per_task_bytes"] / out["lora_merged_bytes_surgery"]
    gw_json = Path("docs/results/gw-merging.json")
    if gw_json.is_file():  # the full fine-tunes' suites as measured by gw_merging.py, plus the same surgery pieces
        st = json.loads(gw_json.read_text()).get("storage") or {}
        if st.get("source_bytes") and st.get("merged_bytes"):
            with_surgery = st["merged_bytes"] + n_merged_tasks * surgery_bytes
            out["full_source_bytes"] = st["source_bytes"]
            out["full_merged_bytes_surgery"] = with_surgery
            out["full_ratio_surgery"] = st["source_bytes"] / with_surgery
    return out


def update_gw_merging(path: Path, r: dict, predict: dict) -> None:
    """The keys of gw-merging.json that this protocol answers, under ``fair_protocol`` and at the top level."""
    if not path.is_file():
        return
    d = json.loads(path.read_text())
    best = r["best_variant"]
    t = r["tests"][best]
    s = r["storage"]
    headline = HEADLINE_KEYS
    if "full_finetune_fixed_ties" not in d:  # the first run's figures: full fine-tunes, TIES at density 0.2, lambda 1
        d["full_finetune_fixed_ties"] = {k: d.pop(k) for k in headline if k in d}
    for k in headline:
        d.pop(k, None)
    d.update(
        headline_source=(
            "the fair protocol on the ASAP-SAS LoRA suite (benchmarks/merge_protocol.py, best variant "
            f"{best!r}); the full fine-tunes under fixed TIES are in full_finetune_fixed_ties"
        ),
        fair_protocol_command=r["command"],
        best_method=f"ties-tuned+{best}",
        unmerged_mean_qwk=r["unmerged"]["mean_qwk"],
        gw_plan_t3_mean_qwk=t["gw_mean_qwk"],
        expert_plan_t3_mean_qwk=r["plans"]["expert"]["variants"][best]["mean_qwk"],
        clustering_plan_t3_mean_qwk=r["plans"]["clustering"]["variants"][best]["mean_qwk"],
        gw_refit_t3_mean_qwk=r["tests"]["refit"]["gw_mean_qwk"],
        random_plans_t3_median_qwk=t["random_median_mean_qwk"],
        gw_beats_random_share=t["gw_beats_random_share"],
        storage_ratio_t3=s["lora_ratio_surgery"] if best == "surgery" else s["lora_ratio_heads_kept"],
        storage_ratio_t3_full_finetunes_with_surgery=s.get("full_ratio_surgery"),
    )
    d["gw_merge_loss_spearman"] = predict["gw_merge_loss_spearman"]
    d["best_similarity"] = predict["best_similarity"]
    d["best_similarity_spearman"] = predict["best_similarity_spearman"]
    write_json_atomic(path, d)
    md = path.with_suffix(".md")
    if md.is_file():  # the same figures at the top of the markdown, between markers a rerun replaces
        text = md.read_text(encoding="utf-8")
        start, end = "<!-- fair-protocol -->", "<!-- /fair-protocol -->"
        if start in text and end in text:
            text = text[: text.index(start)] + text[text.index(end) + len(end) + 1 :]
        title, _, rest = text.partition("\n")
        block = (
            f"{start}\n**Headline figures now come from one fair protocol on the LoRA suite** "
            f"([merge-protocol.md](merge-protocol.md), `{r['command']}`): best variant on validation "
            f"**{best}**; T' = 3 mean test QWK: unmerged {r['unmerged']['mean_qwk']:.3f}, GW plan "
            f"{t['gw_mean_qwk']:.3f}, expert {d['expert_plan_t3_mean_qwk']:.3f}, random median "
            f"{_f(t['random_median_mean_qwk'])}. The figures below are the first run's: full fine-tunes, TIES at fixed "
            f"density 0.2, lambda 1 (`full_finetune_fixed_ties` in the JSON).\n{end}\n"
        )
        md.write_text(f"{title}\n\n{block}{rest}", encoding="utf-8")


def update_gw_merging_compressed(path: Path, r: dict) -> None:
    """gw-merging.json's ``compressed_lora["r<R>-s<S>"]``: the GW plan at T' = 3 with every group's merged adapter
    factored back to rank R (and rank-S surgery modules), its test QWK per variant and storage ratio."""
    if not path.is_file() or "gw" not in r["plans"]:
        return
    d = json.loads(path.read_text())
    p, s, gw = r["protocol"], r["storage"], r["plans"]["gw"]["variants"]
    entry = {
        "command": r["command"],
        "lora_rank": p["lora_rank"],
        "surgery_rank": p["surgery"]["rank"],
        "best_variant": r["best_variant"],
        "unmerged_mean_qwk": r["unmerged"]["mean_qwk"],
        "gw_plan_t3_mean_qwk": {v: gw[v]["mean_qwk"] for v in VARIANTS},
        "gw_plan_t3_val_mean_qwk": {v: gw[v]["val_mean_qwk"] for v in VARIANTS},
        "storage_ratio_t3": {"kept": s["lora_ratio_heads_kept"], "surgery": s["lora_ratio_surgery"]} if s else None,
        "other_plans_t3_mean_qwk": {
            n: pl["variants"][r["best_variant"]]["mean_qwk"]
            for n, pl in r["plans"].items()
            if n != "gw" and not n.startswith(("gw-t", "random-"))
        },
        "random_plans_t3_median_qwk": r["tests"][r["best_variant"]]["random_median_mean_qwk"],
        "n_random_plans": sum(1 for n in r["plans"] if n.startswith("random-")),
        "tests": r["tests"][r["best_variant"]],
    }
    d.setdefault("compressed_lora", {})[r["report_stem"]] = entry  # one entry per rank, surgery rank and plan set
    best = r["best_variant"]
    if entry["n_random_plans"] and "expert" in r["plans"] and s:  # a full comparison: its storage is the headline
        if "storage_ratio_t3_uncompressed_lora" not in d:
            d["storage_ratio_t3_uncompressed_lora"] = d.get("storage_ratio_t3")
        d.update(
            storage_ratio_t3=s["lora_ratio_surgery"] if best == "surgery" else s["lora_ratio_heads_kept"],
            storage_ratio_t3_source=(
                f"merged LoRA rank {p['lora_rank']}, surgery rank {p['surgery']['rank']} ({r['report_stem']}.md); "
                "the other headline QWKs are the uncompressed protocol's (merge-protocol.md)"
            ),
            compressed_lora_t3={
                "gw_plan_mean_qwk": gw[best]["mean_qwk"],
                "expert_plan_mean_qwk": r["plans"]["expert"]["variants"][best]["mean_qwk"],
                "random_plans_median_qwk": entry["random_plans_t3_median_qwk"],
                "unmerged_mean_qwk": r["unmerged"]["mean_qwk"],
                "variant": best,
            },
        )
    write_json_atomic(path, d)


def _f(v, fmt=".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def markdown(r: dict) -> str:
    p = r["protocol"]
    grid = ", ".join(f"({d}, {s})" for d, s in p["grid"])
    single = "all-in-one" in r["plans"]
    only_sweep = all(n.startswith("gw-t") for n in r["plans"]) and bool(r["plans"])
    full = r.get("suite_method") == "full"
    kind = "models" if single or full else "adapters"
    suite_name = "full fine-tunes" if full else "LoRA suite"
    title = f"GW-SMM under one fair protocol (ASAP-SAS, {suite_name}, T' = 3)"
    if single:
        title = f"All {len(r['task_ids'])} task models of {p['suite']} merged into one, under the fair protocol"
    elif only_sweep:
        title = f"GW-SMM under one fair protocol: GW plans at T' = 1..{len(r['task_ids'])} (ASAP-SAS, {suite_name})"
    lines = [
        f"# {title}",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}, {r['machine']}).",
        "",
        f"Every distinct group of every plan: its task {kind} merged with {MERGE_NAMES.get(p['merge'], p['merge'])} "
        f"at (density, lambda) in {grid}; per "
        f"variant the grid point with the best mean validation QWK of its members; test.tsv scored once per group "
        f"and variant at that point. Variants: **kept** (each item's own head), **refit** (a new head on "
        f"{p['fit_rows']} training rows' merged features, early-stopped on validation), **surgery** (each item's own "
        f"head behind a rank-{p['surgery']['rank']} representation surgery module, Yang et al. 2024, fitted on the "
        f"same {p['fit_rows']} rows without their scores). {p['decoding']}. "
        + (
            f"Each group's merged adapter factored back to rank {p['lora_rank']} by truncated SVD. "
            if p.get("lora_rank")
            else ""
        )
        + f"{r['groups_evaluated']} groups, median {_f(r['seconds_per_group'], '.0f')} s each.",
        "",
    ]
    if r["groups_missing"]:
        lines += [f"**Incomplete**: {len(r['groups_missing'])} groups not evaluated yet; rerun to resume.", ""]
    lines += [
        f"Unmerged ({len(r['task_ids'])} {kind}, heads kept): mean test QWK **{r['unmerged']['mean_qwk']:.3f}**.",
        "",
    ]
    if r["best_variant"]:
        gw = r["plans"]["gw"]["variants"]
        vals = ", ".join(f"{v} {_f(gw[v]['val_mean_qwk'])}" for v in VARIANTS)
        lines += [f"Variant chosen on validation (GW plan's mean validation QWK: {vals}): **{r['best_variant']}**.", ""]
    named = [n for n in r["plans"] if not n.startswith(("random-", "gw-t"))]
    if named:
        lines += ["| plan | kept | refit | surgery | groups |", "|---|---:|---:|---:|---|"]
    for n in named:
        pl = r["plans"][n]
        g = " / ".join(",".join(x.removeprefix("asap-") for x in grp) for grp in pl["groups"])
        lines.append(f"| {n} | " + " | ".join(_f(pl["variants"][v]["mean_qwk"]) for v in VARIANTS) + f" | {g} |")
    n_random = sum(1 for n in r["plans"] if n.startswith("random-"))
    if r["tests"] and n_random:
        lines.append(f"| random, median of {n_random} | "
                     + " | ".join(_f(r["tests"][v]["random_median_mean_qwk"]) for v in VARIANTS) + " | |")  # fmt: skip
    if r["tests"]:
        lines += ["", "## GW plan against the others (paired t-tests over the 10 items' test QWK)", ""]
        lines += [
            "Items merged in one group are not independent, and there are many comparisons (no correction): read the "
            "p-values as a screen, not a verdict.",
            "",
            "| variant | comparison | mean diff | t | p |",
            "|---|---|---:|---:|---:|",
        ]
        for v, t in r["tests"].items():
            for k, res in t.items():
                if k.startswith("vs_") and res is not None:
                    lines.append(f"| {v} | GW {k.replace('_', ' ')} | {res['mean_diff']:+.3f} | {res['t']:.2f} | "
                                 f"{res['p']:.3f} |")  # fmt: skip
        shares = ", ".join(f"{v} {_f(t['gw_beats_random_share'], '.0%')}" for v, t in r["tests"].items())
        lines += ["", f"GW beats this share of the random plans: {shares}" if n_random else "", ""]
    s = r["storage"]
    if s and "lora_per_task_bytes" not in s:  # full fine-tunes, measured on this suite
        lines += [
            "## Storage (GW plan, float32)",
            "",
            f"- {len(r['task_ids'])} full fine-tunes: {s['full_source_bytes'] / 1e6:.1f} MB",
            f"- merged + surgery (one encoder per merged group, each member's head and rank-{p['surgery']['rank']} "
            f"surgery module): {s['full_merged_bytes_surgery'] / 1e6:.1f} MB (**{s['full_ratio_surgery']:.2f}x** "
            "smaller)",
            "",
        ]
    elif s:
        lines += [
            "## Storage (GW plan, float32)",
            "",
            f"- LoRA per-task models (10 adapters + heads): {s['lora_per_task_bytes'] / 1e6:.2f} MB",
            f"- merged, heads kept: {s['lora_merged_bytes_heads_kept'] / 1e6:.2f} MB "
            f"(**{s['lora_ratio_heads_kept']:.2f}x** smaller)",
            f"- merged + surgery: {s['lora_merged_bytes_surgery'] / 1e6:.2f} MB (**{s['lora_ratio_surgery']:.2f}x**); "
            f"one surgery module is {s['surgery_bytes_per_task'] / 1e3:.0f} KB",
            "",
            (
                f"Each merged group's adapter is factored back to rank {p['lora_rank']} by truncated SVD (ranks "
                f"{s['merged_lora_ranks']}); the per-task surgery modules add to it."
                if p.get("lora_rank")
                else "A merged group's adapter keeps rank min(sum of the members' ranks, 64), so merging LoRA "
                "adapters saves no storage; the per-task surgery modules add to it."
            ),
        ]
        if "full_ratio_surgery" in s:
            lines.append(
                f"For the 10 full fine-tunes ({s['full_source_bytes'] / 1e6:.1f} MB, as measured by gw_merging.py), "
                f"3 merged encoders (the size gw_merging.py measured for its T' = 3 plan) plus one surgery module per "
                f"merged task take {s['full_merged_bytes_surgery'] / 1e6:.1f} MB: **{s['full_ratio_surgery']:.2f}x** "
                "smaller (sizes from the stored formats; the surgery's QWK was measured on the LoRA suite only)."
            )
        lines.append("")
    if r["sweep"]:
        lines += ["## GW plans at T' = 1..10 (mean test QWK)", "", "| T' | kept | refit | surgery | groups |",
                  "|---:|---:|---:|---:|---|"]  # fmt: skip
        for k, row in r["sweep"].items():
            g = " / ".join(",".join(x.removeprefix("asap-") for x in grp) for grp in row["groups"])
            lines.append(f"| {k} | " + " | ".join(_f(row[v]) for v in VARIANTS) + f" | {g} |")
        lines.append("")
    if single:
        pl = r["plans"]["all-in-one"]["variants"]
        vals = ", ".join(f"{v} {_f(pl[v]['val_mean_qwk'])}" for v in VARIANTS)
        lines += ["", f"Mean validation QWK at each variant's chosen point: {vals}.", ""]
        lines += ["## All tasks merged into one", "", "| item | unmerged | " + " | ".join(VARIANTS) + " |",
                  "|---|---:|" + "---:|" * len(VARIANTS)]  # fmt: skip
        for t in r["task_ids"]:
            lines.append(f"| {t} | {_f(r['unmerged']['tasks'][t])} | "
                         + " | ".join(_f(pl[v]["tasks"][t]) for v in VARIANTS) + " |")  # fmt: skip
        lines.append(f"| mean | {_f(r['unmerged']['mean_qwk'])} | "
                     + " | ".join(_f(pl[v]["mean_qwk"]) for v in VARIANTS) + " |")  # fmt: skip
        return "\n".join(lines) + "\n"
    if only_sweep:
        png = r.get("report_stem", "merge-protocol-sweep") + ".png"
        return "\n".join([*lines, f"![mean test QWK against T']({png})", ""]) + "\n"
    png = r.get("report_stem", "merge-protocol") + ".png"
    lines += [f"![per-plan mean test QWK]({png})", "", "## Per item (test QWK, GW plan)", ""]
    if "gw" in r["plans"]:
        lines += ["| item | unmerged | " + " | ".join(VARIANTS) + " |", "|---|---:|" + "---:|" * len(VARIANTS)]
        for t in r["task_ids"]:
            cells = " | ".join(_f(r["plans"]["gw"]["variants"][v]["tasks"][t]) for v in VARIANTS)
            lines.append(f"| {t} | {_f(r['unmerged']['tasks'][t])} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if all(n.startswith("gw-t") for n in r["plans"]):  # --only-sweep: the curve alone
        fig, ax2 = plt.subplots(figsize=(7, 4.5))
        _sweep_axes(ax2, r)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, 2 if r["sweep"] else 1, figsize=(13 if r["sweep"] else 8, 4.5), squeeze=False)
    ax = axes[0, 0]
    named = [n for n in r["plans"] if not n.startswith(("random-", "gw-t"))]
    randoms = [n for n in r["plans"] if n.startswith("random-")]
    for i, v in enumerate(VARIANTS):
        xs = np.arange(len(named)) + (i - 1) * 0.25
        ax.bar(xs, [r["plans"][n]["variants"][v]["mean_qwk"] for n in named], width=0.25, label=v)
        rv = [r["plans"][n]["variants"][v]["mean_qwk"] for n in randoms]
        if rv:
            ax.scatter(np.full(len(rv), len(named) + (i - 1) * 0.25), rv, s=10, color=f"C{i}")
    ax.axhline(r["unmerged"]["mean_qwk"], color="k", ls="--", lw=1, label="unmerged")
    ax.set_xticks(np.arange(len(named) + 1), [*named, "random"], rotation=30, ha="right")
    ax.set_ylabel("mean test QWK (10 items)")
    lo = min(min(r["plans"][n]["variants"][v]["mean_qwk"] for n in r["plans"]) for v in VARIANTS)
    ax.set_ylim(max(0.0, lo - 0.05), r["unmerged"]["mean_qwk"] + 0.03)
    ax.legend(fontsize=8, ncol=4)
    ax.set_title("T' = 3 merges of the ASAP-SAS LoRA suite, one protocol for every plan", fontsize=9)
    if r["sweep"]:
        _sweep_axes(axes[0, 1], r)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _sweep_axes(ax, r: dict) -> None:
    """Mean test QWK of the GW plans against T', one line per variant, the unmerged suite dashed."""
    ks = list(r["sweep"])
    for i, v in enumerate(VARIANTS):
        ax.plot(ks, [r["sweep"][k][v] for k in ks], marker="o", color=f"C{i}", label=v)
    ax.axhline(r["unmerged"]["mean_qwk"], color="k", ls="--", lw=1, label="unmerged")
    ax.set_xlabel("T' (merged adapters kept, GW plans)")
    ax.set_ylabel("mean test QWK")
    ax.legend(fontsize=8)


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
