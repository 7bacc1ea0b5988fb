"""Does a task similarity predict what merging two items costs? Measured pairwise merge losses on the LoRA suite
against GW (exact / entropic, raw / debiased, several feature summaries), linear CKA, task-vector cosine and text.

    python benchmarks/gw_predict.py --suite runs/asap-r8/lora --out docs/results      # 45 pairs: see the note
    # runs/asap-r8/lora: the rank-8 LoRA suite docs/results' merge figures were measured on (rank 16 is the default
    # since 2026-12-02): python benchmarks/asap_sas.py --methods lora --lora-rank 8 --work runs/asap-r8

Merge loss of a pair (i, j): the two LoRA adapters merged with TIES at every point of a small (density, lambda) grid;
each task's head re-fitted on the frozen merged encoder (on a seeded ``--refit-rows`` subsample of its training
split, early-stopped on validation: REFIT_CONFIG); each task's VALIDATION QWK measured. The grid point with the best
mean validation QWK of the pair is kept (the "tuned protocol": selected on validation; test.tsv is not read). Loss =
mean over the two tasks of (unmerged QWK - merged QWK), where "unmerged" is the task's own adapter with its head
re-fitted the same way (a group of one), so the difference isolates the merge; the suite's stored validation QWK is
recorded beside it. The split is the one the suite was selected on: a seeded stratified 10% of train.tsv.

Similarities of the same pairs come from the registry (:mod:`scoreplex.merging.similarity`) on features as
``scoreplex merge`` takes them (final-layer [CLS] of each task model on up to 1,000 of its own training responses):
GW forms named ``{exact|entropic|entropic-raw}-{all|q<k>}`` (entropic is debiased unless ``-raw``; ``q<k>``:
k-means summaries of k centroids, each at every ``--kmeans-seeds`` seed), CKA on a shared probe set, task-vector
cosine (LoRA B @ A) and TF-IDF text. Report: Spearman's rho between loss and each measure turned into a distance
(so a positive rho means "more alike, cheaper to merge"), with two permutation p-values (pairs shuffled; item labels
shuffled, the Mantel test, which respects that pairs sharing an item are not independent); one scatter panel per
measure; and at T' = 3 the plan each measure picks scored by the summed measured within-group pair losses, against
:func:`~scoreplex.merging.loss_plan` on the losses themselves (the reference) and random plans.

Every pair's result is cached as JSON under ``--work/pairs`` (atomic writes, checked against the protocol), and the
features and similarity matrices likewise, so a rerun resumes; ``--items`` / ``--max-pairs`` run a part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from _common import cached_json, whole_numbers
from scoreplex.data.splits import train_val_split
from scoreplex.errors import ConfigError
from scoreplex.merging import (
    FeatureSettings,
    GroupMerger,
    GWSettings,
    MergeSettings,
    loss_plan,
    optimal_plan,
    random_plans,
    refit_head,
)
from scoreplex.merging.features import sample_indices
from scoreplex.merging.merged_suite import REFIT_CONFIG
from scoreplex.merging.similarity import SimilarityInputs, get_similarity
from scoreplex.suite import write_json_atomic

GRIDS = {
    "one": ((0.2, 1.0),),
    "small": ((0.2, 1.0), (0.2, 2.0), (0.5, 1.0), (0.5, 2.0)),
}
"""Named (TIES density, lambda) grids; ``--grid`` also takes an explicit list ``0.2:1,0.5:2``."""
DEFAULT_FORMS = "exact-q50,exact-q200,entropic-q50,entropic-q200,entropic-q400,entropic-raw-q200,entropic-all"
PRIMARY_FORM = "gw/entropic-q400-s0"
"""What ``scoreplex merge`` uses by default: debiased entropic GW (eps 0.05) on 400 k-means centroids, seed 0."""
OTHER_MEASURES = ("cka", "task-vector", "text")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="trained LoRA suite (read only)")
    ap.add_argument("--backbone", default=None, help="backbone folder (default: the suite's own)")
    ap.add_argument("--data", default=os.environ.get("SCOREPLEX_ASAP", "../shared/data/asap-sas"))
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--work", default="runs/gw-predict", help="cache: pair results, features, similarities")
    ap.add_argument("--items", default="", help="e.g. 1,2,3 (ASAP-SAS item numbers or task ids); default all")
    ap.add_argument("--max-pairs", type=int, default=None, help="measure at most this many new pairs this run")
    ap.add_argument("--grid", default="small", help=f"(density, lambda) grid: {', '.join(GRIDS)} or '0.2:1,0.5:2'")
    ap.add_argument("--refit-rows", type=int, default=300, help="training rows per head re-fit (seeded subsample)")
    ap.add_argument("--gw-forms", default=DEFAULT_FORMS, help="comma list of {exact|entropic|entropic-raw}-{all|q<k>}")
    ap.add_argument("--kmeans-seeds", default="0,1", type=whole_numbers, help="k-means seeds of every q<k> form")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--cap", type=int, default=1000, help="responses per task for features (0 = all)")
    ap.add_argument("--probe-size", type=int, default=500, help="CKA's shared probe set")
    ap.add_argument("--n-groups", type=int, default=3)
    ap.add_argument("--n-random", type=int, default=100, help="random plans for the plan comparison")
    ap.add_argument("--n-perm", type=int, default=10_000, help="permutations per p-value")
    ap.add_argument("--seed", type=int, default=0, help="validation split, refit subsample, permutations")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--losses-from",
        default=None,
        metavar="REPORT",
        help="take the pairwise merge losses from an earlier gw-predict.json (same items, grid, re-fit rows, seed, "
        "and a suite whose tasks have the same stored validation QWK) instead of measuring them again (~30 min); "
        "only the similarities are computed",
    )
    return ap.parse_args(argv)


def parse_grid(text: str) -> tuple[tuple[float, float], ...]:
    """``--grid``: a name of :data:`GRIDS` or ``density:lambda`` points separated by commas."""
    if text in GRIDS:
        return GRIDS[text]
    try:
        points = tuple((float(d), float(s)) for d, s in (p.split(":") for p in text.split(",") if p.strip()))
    except ValueError:
        raise ConfigError(f"--grid {text!r}: give one of {list(GRIDS)} or points like '0.2:1,0.5:2'.") from None
    for d, s in points:
        MergeSettings(density=d, scale=s)  # validates
    if not points:
        raise ConfigError("--grid is empty; give e.g. 'small'.")
    return points


def parse_gw_form(form: str, seed: int, epsilon: float) -> tuple[str, GWSettings]:
    """A GW form name (``exact-q200``, ``entropic-all``, ``entropic-raw-q400``) -> (registry measure, settings)."""
    head, _, summary = form.rpartition("-")
    measures = {"exact": "gw", "entropic": "gw-debiased", "entropic-raw": "gw-raw"}
    if head not in measures or not (summary == "all" or (summary[:1] == "q" and summary[1:].isdigit())):
        raise ConfigError(
            f"GW form {form!r}: give {{exact|entropic|entropic-raw}}-{{all|q<k>}}, e.g. entropic-q200 or exact-all."
        )
    quantize = None if summary == "all" else int(summary[1:])
    method = "exact" if head == "exact" else "entropic"
    return measures[head], GWSettings(method=method, epsilon=epsilon, quantize=quantize, seed=seed)


def measure_names(forms: list[str], seeds: list[int]) -> list[str]:
    """Report names ``gw/<form>-s<seed>`` (one per seed for k-means forms, ``gw/<form>`` for all points)."""
    out = []
    for f in forms:
        out += [f"gw/{f}"] if f.endswith("-all") else [f"gw/{f}-s{s}" for s in seeds]
    return out + list(OTHER_MEASURES)


def rank_correlation(
    losses: np.ndarray, distances: np.ndarray, *, n_perm: int = 10_000, seed: int = 0
) -> dict[str, float | int | None]:
    """Spearman's rho between pairwise merge losses and a pairwise distance, with two permutation p-values.

    ``losses``, ``distances``: ``(T, T)`` symmetric; off-diagonal NaN losses are pairs not measured. rho is Pearson's
    r of the average ranks of the measured upper-triangle pairs (scipy's ``spearmanr``). ``p_pairs``: two-sided,
    the pairs' distances shuffled (the plain permutation test); ``p_mantel``: two-sided, the item labels of the
    distance matrix shuffled (Mantel 1967), valid although pairs sharing an item are dependent, and only given when
    every pair was measured. Both are (1 + #{|rho_perm| >= |rho|}) / (1 + n_perm). rho is None below 3 pairs or
    for a constant input.
    """
    from scipy.stats import rankdata

    t = len(losses)
    iu = np.triu_indices(t, 1)
    y, x = np.asarray(losses, dtype=np.float64)[iu], np.asarray(distances, dtype=np.float64)[iu]
    keep = np.isfinite(y) & np.isfinite(x)
    n = int(keep.sum())
    out: dict[str, float | int | None] = {"rho": None, "p_pairs": None, "p_mantel": None, "n_pairs": n}
    if n < 3 or np.ptp(y[keep]) == 0 or np.ptp(x[keep]) == 0:
        return out

    def z(v: np.ndarray) -> np.ndarray:  # standardised ranks: rho = mean(z(x) * z(y))
        r = rankdata(v, axis=-1)
        r = r - r.mean(axis=-1, keepdims=True)
        return r / np.sqrt((r**2).mean(axis=-1, keepdims=True))

    zy = z(y[keep])
    rho = float(np.mean(z(x[keep]) * zy))
    out["rho"] = rho
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((n_perm, n)), axis=1)  # (n_perm, n) shuffles of the pairs
    null = (z(x[keep][perm]) * zy).mean(axis=1)
    out["p_pairs"] = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))
    if n == len(y):
        d = np.asarray(distances, dtype=np.float64)
        items = np.argsort(rng.random((n_perm, t)), axis=1)  # (n_perm, T) relabellings of the items
        xs = d[items[:, :, None], items[:, None, :]][:, iu[0], iu[1]]  # (n_perm, pairs)
        null = (z(xs) * zy).mean(axis=1)
        out["p_mantel"] = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))
    return out


def within_group_loss(groups: list[list[str]], losses: np.ndarray, ids: list[str]) -> float:
    """Sum of the measured pairwise losses over the pairs merged together by ``groups``."""
    pos = {t: i for i, t in enumerate(ids)}
    return float(sum(losses[pos[a], pos[b]] for g in groups for a, b in combinations(g, 2)))


def _finite(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def select_items(train_all: Mapping, items: str) -> dict:
    """The tasks named by ``--items`` (task ids, or ASAP-SAS item numbers as ``asap-<n>``), in the data's order."""
    if not items.strip():
        return dict(train_all)
    want = [w.strip() for w in items.split(",") if w.strip()]
    ids = [w if w in train_all else f"asap-{w}" for w in want]
    missing = [w for w, t in zip(want, ids, strict=True) if t not in train_all]
    if missing:
        raise ConfigError(f"--items {missing} are not in the data; it has {list(train_all)}.")
    return {t: d for t, d in train_all.items() if t in ids}


def read_losses(path: str, protocol: dict, ids: list[str], stored: dict[str, float | None]):
    """``(unmerged, pairs, provenance)`` from an earlier report (``--losses-from``), checked to be comparable.

    Raises:
        ConfigError: the file is not a gw_predict report, or its items, protocol (all but the suite's path) or the
            suite's stored validation QWK per task differ from this run's (the losses would belong to other models).
    """
    try:
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        theirs, unmerged, rows = r["protocol"], r["unmerged"], r["pairs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--losses-from {path}: not a gw_predict report ({exc}).") from None
    if r.get("task_ids") != ids:
        raise ConfigError(f"--losses-from {path} has items {r.get('task_ids')}; this run has {ids}. Give --items.")
    differ = sorted(k for k in set(protocol) | set(theirs) if k != "suite" and protocol.get(k) != theirs.get(k))
    if differ:
        raise ConfigError(f"--losses-from {path} measured the losses with other settings ({', '.join(differ)}).")
    if None in stored.values():
        raise ConfigError(
            f"--losses-from {path}: tasks {[t for t in ids if stored[t] is None]} of the suite record no validation "
            "QWK, so it cannot be checked that the losses belong to these models; measure them (drop the option)."
        )
    if len(rows) != len(ids) * (len(ids) - 1) // 2:
        raise ConfigError(f"--losses-from {path} holds {len(rows)} pairs, not all of them; measure them.")
    changed = [t for t in ids if unmerged[t]["stored_qwk"] != stored[t]]
    if changed:
        raise ConfigError(
            f"--losses-from {path}: the suite's tasks {changed} have another stored validation QWK than the suite "
            f"the losses were measured on ({theirs['suite']}): other models. Measure the losses (drop the option)."
        )
    base = {t: {"qwk": unmerged[t]["refit_qwk"]} for t in ids}
    pairs = {(p["a"], p["b"]): p for p in rows}
    # a report that itself reused losses names the run that measured them
    provenance = r.get("losses_from") or {
        "report": path,
        "command": r.get("command"),
        "date": r.get("date"),
        "suite": theirs["suite"],
    }
    return base, pairs, provenance


def main(argv=None, *, train_all: Mapping | None = None) -> dict:
    """Run the benchmark; ``train_all`` ({task: TaskData} of the training file) replaces reading ``--data``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from scoreplex.scorer import SuiteScorer

    grid = parse_grid(args.grid)
    seeds = args.kmeans_seeds
    forms = [f.strip() for f in args.gw_forms.split(",") if f.strip()]
    for f in forms:
        parse_gw_form(f, 0, args.epsilon)  # fail early on a bad name
    work = Path(args.work)
    if train_all is None:
        from scoreplex.data.asap_sas import load_asap_sas

        train_all = load_asap_sas(args.data, split="train")
    data = select_items(train_all, args.items)
    ids = list(data)
    if len(ids) < 2:
        raise ConfigError(f"pairs need at least 2 tasks; --items gave {ids}.")
    splits = {t: train_val_split(d, val_fraction=0.1, seed=args.seed) for t, d in data.items()}
    train_sets = {t: s[0] for t, s in splits.items()}
    val_sets = {t: s[1] for t, s in splits.items()}
    refit_sets = {t: d.subset(sample_indices(d.ids, args.refit_rows, args.seed)) for t, d in train_sets.items()}
    scorer = SuiteScorer(args.suite, backbone=args.backbone, decoding=False, lexical=False)
    if not scorer.suite.method_object.capabilities.has_adapters:
        raise ConfigError(f"{args.suite} is a {scorer.suite.method!r} suite; this benchmark merges LoRA adapters.")
    stored = {t: (scorer.suite.manifest["tasks"][t].get("metrics") or {}).get("validation", {}).get("qwk") for t in ids}
    protocol = {
        "merge": "ties",
        "grid": [list(p) for p in grid],
        "selection": "best mean validation QWK of the pair",
        "refit_rows": args.refit_rows,
        "refit_config": REFIT_CONFIG.to_dict(),
        "val_fraction": 0.1,
        "seed": args.seed,
        "suite": str(Path(args.suite).resolve()),
    }

    # 1. unmerged baselines and pair losses (cached per task / per pair) ------------------------------------------
    mergers = {p: GroupMerger(scorer, MergeSettings(density=p[0], scale=p[1])) for p in grid}

    def val_qwk(merger: GroupMerger, members: list[str]) -> tuple[dict[str, float | None], float]:
        """Each member's validation QWK on the group's merged adapter with its head re-fitted (refit_head's own
        validation metrics: the best epoch's decoded predictions, so the validation set is encoded once)."""
        group = merger.merge(members)
        out = {}
        for t in members:
            model = merger.task_model(group, t)
            _, metrics = refit_head(model, scorer.bb.tokenizer, refit_sets[t], val_sets[t], scorer.max_length)
            out[t] = _finite(metrics["qwk"])
        return out, group.info["svd_relative_error"]

    def unmerged(t: str) -> dict:
        t0 = time.perf_counter()
        q = val_qwk(mergers[grid[0]], [t])[0][t]  # a group of one is the adapter itself, whatever the grid point
        return {"task": t, "protocol": protocol, "qwk": q, "stored_qwk": stored[t], "seconds": time.perf_counter() - t0}

    base: dict[str, dict] = {}
    pairs: dict[tuple[str, str], dict] = {}
    losses_from = None
    if args.losses_from:
        base, pairs, losses_from = read_losses(args.losses_from, protocol, ids, stored)
    for t in ids if not losses_from else ():
        path = work / "unmerged" / f"{t}.json"
        cached = json.loads(path.read_text()) if path.is_file() else None
        if cached is None or cached["protocol"] != protocol:
            cached = unmerged(t)
            write_json_atomic(path, cached)
        base[t] = cached

    def measure_pair(a: str, b: str) -> dict:
        t0 = time.perf_counter()
        points = []
        for p, merger in mergers.items():
            q, err = val_qwk(merger, [a, b])
            mean = None if None in q.values() else (q[a] + q[b]) / 2
            points.append({"density": p[0], "scale": p[1], "qwk": q, "mean_qwk": mean, "svd_relative_error": err})
        valid = [p for p in points if p["mean_qwk"] is not None]
        best = max(valid, key=lambda p: p["mean_qwk"]) if valid else None
        loss = None
        if best is not None and base[a]["qwk"] is not None and base[b]["qwk"] is not None:
            loss = ((base[a]["qwk"] - best["qwk"][a]) + (base[b]["qwk"] - best["qwk"][b])) / 2
        return {
            "a": a,
            "b": b,
            "protocol": protocol,
            "grid": points,
            "best": best,
            "unmerged_qwk": {a: base[a]["qwk"], b: base[b]["qwk"]},
            "loss": loss,
            "seconds": time.perf_counter() - t0,
        }

    all_pairs = list(combinations(ids, 2))
    computed = 0
    for n, (a, b) in enumerate(all_pairs if not losses_from else (), 1):
        path = work / "pairs" / f"{a}__{b}.json"
        cached = json.loads(path.read_text()) if path.is_file() else None
        if cached is not None and cached["protocol"] == protocol:
            pairs[(a, b)] = cached
            continue
        if args.max_pairs is not None and computed >= args.max_pairs:
            continue
        res = measure_pair(a, b)
        write_json_atomic(path, res)
        pairs[(a, b)] = res
        computed += 1
        best = res["best"] or {}
        loss = "undefined" if res["loss"] is None else f"{res['loss']:+.4f}"
        print(
            f"[{n}/{len(all_pairs)}] {a} + {b}: merge loss {loss} (density {best.get('density')}, "
            f"lambda {best.get('scale')}) in {res['seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    pos = {t: i for i, t in enumerate(ids)}
    loss_m = np.full((len(ids), len(ids)), np.nan)
    for (a, b), r in pairs.items():
        if r["loss"] is not None:
            loss_m[pos[a], pos[b]] = loss_m[pos[b], pos[a]] = r["loss"]

    # 2. similarities (features and matrices cached) -------------------------------------------------------------
    inputs = SimilarityInputs(
        scorer,
        train_sets,
        FeatureSettings(cap=args.cap or None),
        GWSettings(),
        probe_size=args.probe_size,
        cache_dir=work / "features",
        progress=False,
    )
    sims: dict[str, dict] = {}
    for name in measure_names(forms, seeds):
        if name.startswith("gw/"):
            form, _, s = name[3:].rpartition("-s") if not name.endswith("-all") else (name[3:], "", "0")
            measure, settings = parse_gw_form(form, int(s), args.epsilon)
        else:
            measure, settings = name, GWSettings()
        key = _key({"ids": ids, "measure": measure, "gw": asdict(settings), "features": asdict(inputs.features),
                    "probe": args.probe_size, "suite": protocol["suite"]})  # fmt: skip

        def compute(measure=measure, settings=settings) -> dict:
            t0 = time.perf_counter()
            try:
                m = get_similarity(measure).compute(replace(inputs, gw=settings, _own=inputs.own_features()))
            except ConfigError as exc:  # e.g. no rubric text: this measure is not measured
                return {"error": str(exc), "seconds": time.perf_counter() - t0}
            return {"kind": m.kind, "values": np.asarray(m.values).tolist(), "seconds": time.perf_counter() - t0}

        sims[name] = cached_json(work / "similarities" / f"{name.replace('/', '_')}-{key}.json", compute)
        print(f"{name}: {sims[name].get('error') or 'ok'} ({sims[name]['seconds']:.1f}s)", file=sys.stderr, flush=True)

    # 3. rank correlations and plans -----------------------------------------------------------------------------
    correlations, plans = {}, {}
    k = args.n_groups
    complete = bool(np.all(np.isfinite(loss_m[~np.eye(len(ids), dtype=bool)])))
    plan_ok = complete and 1 < k < len(ids)
    for name, s in sims.items():
        if "error" in s:
            correlations[name] = {"rho": None, "p_pairs": None, "p_mantel": None, "n_pairs": 0, "error": s["error"]}
            continue
        v = np.asarray(s["values"])
        dist = v if s["kind"] == "distance" else -v  # "more alike" = smaller, as a loss
        correlations[name] = rank_correlation(loss_m, dist, n_perm=args.n_perm, seed=args.seed)
        if plan_ok:
            from scoreplex.merging.similarity import planner_similarity

            p = optimal_plan(planner_similarity(v, s["kind"]), ids, k, name=name)
            plans[name] = {"groups": p.groups, "total_loss": within_group_loss(p.groups, loss_m, ids)}
    reference = random_summary = None
    if plan_ok:
        ref = loss_plan(loss_m, ids, k)
        reference = {"groups": ref.groups, "total_loss": within_group_loss(ref.groups, loss_m, ids)}
        rand = [within_group_loss(p.groups, loss_m, ids) for p in random_plans(ids, k, args.n_random, seed=args.seed)]
        med, mean = float(np.median(rand)), float(np.mean(rand))
        random_summary = {"n": len(rand), "median_total_loss": med, "mean_total_loss": mean}
    rhos = {n: c["rho"] for n, c in correlations.items() if c["rho"] is not None}
    best_name = max(rhos, key=rhos.get) if rhos else None
    primary = (
        PRIMARY_FORM if PRIMARY_FORM in correlations else next((n for n in correlations if n.startswith("gw/")), None)
    )

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/gw_predict.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "protocol": protocol,
        "task_ids": ids,
        "n_pairs": int(np.isfinite(loss_m[np.triu_indices(len(ids), 1)]).sum()),
        "n_pairs_total": len(all_pairs),
        "pairs_computed_this_run": computed,
        "losses_from": losses_from,
        "gw_primary_form": primary,
        "gw_merge_loss_spearman": correlations[primary]["rho"] if primary else None,
        "best_similarity": best_name,
        "best_similarity_spearman": rhos.get(best_name) if best_name else None,
        "correlations": correlations,
        "plans_t": k,
        "reference_plan": reference,
        "similarity_plans": plans,
        "random_plans": random_summary,
        "unmerged": {t: {"refit_qwk": base[t]["qwk"], "stored_qwk": stored[t]} for t in ids},
        "pairs": [
            {"a": a, "b": b, "loss": r["loss"], "best": r["best"], "seconds": r["seconds"]}
            for (a, b), r in sorted(pairs.items(), key=lambda kv: (pos[kv[0][0]], pos[kv[0][1]]))
        ],
        "seconds_per_pair": float(np.mean([r["seconds"] for r in pairs.values()])) if pairs else None,
        "similarities": sims,
        "features": {"cap": args.cap or None, "pooling": "cls", "layer": -1, "probe_size": args.probe_size},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "gw-predict.json", report)
    from scoreplex.reports.merging import plot_loss_scatter

    panels = {}
    for name, s in sims.items():
        if "error" not in s:
            v = np.asarray(s["values"])
            iu = np.triu_indices(len(ids), 1)
            panels[name] = (v[iu], loss_m[iu], correlations[name]["rho"], s["kind"])
    plot_loss_scatter(panels, out / "gw-predict.png", ylabel="merge loss (validation QWK)")
    (out / "gw-predict.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / 'gw-predict.json'}, .md and .png", file=sys.stderr, flush=True)
    return report


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(r: dict) -> str:
    p = r["protocol"]
    grid = ", ".join(f"({d}, {s})" for d, s in p["grid"])
    lines = [
        "# Does a similarity predict the cost of merging two items? (ASAP-SAS, LoRA suite)",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}, {r['machine']}).",
        "",
        f"Protocol: each pair's LoRA adapters merged with TIES at (density, lambda) in {grid}; each head re-fitted "
        f"on the frozen merged encoder on a seeded subsample of {p['refit_rows']} training rows (early-stopped on "
        "validation); the grid point with the best mean validation QWK of the pair kept. Merge loss = mean over the "
        "two items of (own adapter, head re-fitted the same way) minus (merged) validation QWK. Validation = the "
        f"seeded stratified 10% split the suite was selected on; test.tsv is not read. {r['n_pairs']} of "
        f"{r['n_pairs_total']} pairs measured, {_f(r['seconds_per_pair'], '.0f')} s per pair.",
        "",
    ]
    src = r.get("losses_from")
    if src:
        lines += [
            f"The merge losses were measured by an earlier run (`{src['command']}`, {src['date']}, on "
            f"`{src['suite']}`) and read from `{src['report']}`; the suite here has the same stored validation QWK "
            "on every task (checked), and every similarity was computed in this run.",
            "",
        ]
    lines += [
        f"**Spearman's rho, merge loss vs the default GW ({r['gw_primary_form']}): "
        f"{_f(r['gw_merge_loss_spearman'])}**; best measure: {r['best_similarity']} "
        f"({_f(r['best_similarity_spearman'])}). Each measure is signed as a distance, so rho > 0 means "
        "'more alike, cheaper to merge'.",
        "",
        "| measure | rho | p (pairs shuffled) | p (Mantel, items shuffled) | pairs | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, c in r["correlations"].items():
        note = f" ({r['similarities'][n]['error']})" if c.get("error") else ""
        lines.append(
            f"| {n}{note} | {_f(c['rho'])} | {_f(c['p_pairs'], '.4f')} | {_f(c['p_mantel'], '.4f')} | "
            f"{c['n_pairs']} | {r['similarities'][n]['seconds']:.1f} |"
        )
    lines += [
        "",
        "The Mantel p-value permutes item labels (pairs that share an item are not independent); the plain one "
        "permutes pairs, as if they were.",
        "",
        "![merge loss against each measure](gw-predict.png)",
        "",
        f"## Plans at T' = {r['plans_t']}, scored by the summed measured losses of the pairs merged together",
        "",
    ]
    if r["reference_plan"] is None:
        lines.append("Not measured (needs every pair's loss, and 1 < T' < number of items).")
    else:
        ref, rnd = r["reference_plan"], r["random_plans"]
        fmt = " / ".join
        lines += [
            "| plan | summed pair loss | groups |",
            "|---|---:|---|",
            f"| measured losses (reference) | {ref['total_loss']:.3f} | {fmt(','.join(g) for g in ref['groups'])} |",
        ]
        for n, pl in r["similarity_plans"].items():
            lines.append(f"| {n} | {pl['total_loss']:.3f} | {fmt(','.join(g) for g in pl['groups'])} |")
        lines.append(f"| random (median of {rnd['n']}) | {rnd['median_total_loss']:.3f} | |")
    lines += [
        "",
        "## Pairs",
        "",
        "| pair | loss | density | lambda |",
        "|---|---:|---:|---:|",
    ]
    for pr in r["pairs"]:
        b = pr["best"] or {}
        lines.append(f"| {pr['a']} + {pr['b']} | {_f(pr['loss'], '+.4f')} | {b.get('density', '–')} | "
                     f"{b.get('scale', '–')} |")  # fmt: skip
    lines += ["", "## Unmerged validation QWK", "", "| item | head re-fitted | stored (suite) |", "|---|---:|---:|"]
    for t, u in r["unmerged"].items():
        lines.append(f"| {t} | {_f(u['refit_qwk'])} | {_f(u['stored_qwk'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)
