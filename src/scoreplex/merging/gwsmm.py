"""GW-SMM end to end (paper 000): features -> GW distances -> plan -> merged suite + report (``scoreplex merge``).

The plan search takes any registered task similarity (:mod:`scoreplex.merging.similarity`): GW (the method's own;
debiased for entropic solves), linear CKA, task-vector cosine or rubric text similarity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError
from scoreplex.merging.features import FeatureSettings
from scoreplex.merging.gromov import GWSettings, PairMap
from scoreplex.merging.merge import MergeSettings
from scoreplex.merging.merged_suite import PlanEvaluator, check_surgery_rank, merge_suite, unmerged_plan
from scoreplex.merging.plan import MergePlan, clustering_plan, optimal_plan, plan_score
from scoreplex.merging.similarity import SimilarityInputs, get_similarity
from scoreplex.suite import Suite, write_json_atomic

PLAN_METHODS = ("gw", "clustering")


@dataclass
class MergeJob:
    """Settings of one merge run."""

    n_groups: int = 3
    plan_method: str = "gw"
    plan_file: str | None = None
    """A plan JSON (an expert's or an LLM's); overrides ``plan_method``."""
    min_size: int | None = None
    max_size: int | None = None
    balanced: bool = True
    similarity: str = "gw"
    """The task similarity the plan is searched by (:data:`~scoreplex.merging.similarity.SIMILARITIES`)."""
    probe_size: int = 500
    """Responses in the shared probe set of ``similarity="cka"``."""
    features: FeatureSettings = field(default_factory=FeatureSettings)
    gw: GWSettings = field(default_factory=GWSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)
    refit: bool = False
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.plan_method not in PLAN_METHODS:
            from scoreplex.errors import unknown_name

            raise unknown_name("plan method", self.plan_method, PLAN_METHODS)
        get_similarity(self.similarity)  # an unknown name fails here, listing the valid ones
        if self.similarity == "gw-debiased" and self.gw.method == "exact":
            raise ConfigError(
                "similarity 'gw-debiased' with the exact GW solver: exact GW(X, X) is 0, there is nothing to debias; "
                "use the entropic solver, or similarity 'gw'."
            )
        if self.refit and self.merge.per_task == "surgery":
            raise ConfigError(
                "choose --refit or --per-task surgery, not both: surgery keeps each task's own head behind its module."
            )
        if self.probe_size < 2:
            raise ConfigError(f"probe_size={self.probe_size}; the CKA probe set needs at least 2 responses.")


def run_merge(
    suite: Suite | str | os.PathLike[str],
    data: Mapping[str, TaskData],
    out_dir: str | os.PathLike[str],
    job: MergeJob = MergeJob(),
    *,
    eval_data: Mapping[str, TaskData] | None = None,
    backbone: str | None = None,
    progress: bool = True,
    gw_pairs: PairMap | None = None,
) -> dict[str, Any]:
    """Features -> task similarity (GW by default) -> plan -> merged suite in ``out_dir`` (+ ``out_dir/report``:
    JSON, markdown, plots).

    ``suite`` is an open :class:`~scoreplex.suite.Suite` (or its folder): its files are read and verified once for
    features, merging and head re-fits. ``data`` holds each task's scored responses: features come from them, and a
    head re-fit trains on them (a seeded ``val_fraction`` split selects the epoch). ``eval_data``, when given, scores
    the suite before and after. ``gw_pairs`` computes the GW pairs (default: one after another here;
    :func:`scoreplex.cluster.gw.ray_gw_pairs` as Ray tasks, the same matrix).
    """
    from scoreplex.data.splits import train_val_split
    from scoreplex.paths import prepare_output_folder
    from scoreplex.reports.merging import plot_before_after, plot_gw_heatmap, task_table
    from scoreplex.scorer import SuiteScorer, evaluate_suite

    out = Path(out_dir)
    if (out / "manifest.json").is_file():  # merge_suite refuses it too, but only after the features and GW
        raise ConfigError(f"{out} already holds a suite; choose a new folder for the merged suite or delete it.")
    prepare_output_folder(out)  # a bad out_dir fails now, not after the features and GW distances
    scorer = SuiteScorer(suite, backbone)
    suite_dir = scorer.suite.root
    ids = scorer.suite.task_ids
    missing = [t for t in ids if t not in data]
    if missing:
        raise ConfigError(
            f"the data has no responses for suite tasks {missing}; every task model needs its own task's responses "
            "for its features."
        )
    data = {t: data[t] for t in ids}
    # everything that can be checked is checked before the features and GW distances (minutes of work)
    method = scorer.suite.method_object
    if not method.capabilities.mergeable:
        from scoreplex.methods import methods_with

        raise ConfigError(
            f"the suite at {suite_dir} is a {method.name!r} suite ({method.description}); merging needs task encoders: "
            f"give a suite of {' or '.join(methods_with('mergeable'))} models."
        )
    check_surgery_rank(job.merge, scorer.feature_width)
    plan = MergePlan.from_file(job.plan_file, ids) if job.plan_file else None
    if plan is None and not 1 <= job.n_groups <= len(ids):
        raise ConfigError(f"--groups {job.n_groups} for {len(ids)} tasks; choose T' between 1 and {len(ids)}.")
    report_dir = out / "report"
    t0 = time.perf_counter()
    splits = {t: train_val_split(d, val_fraction=job.val_fraction, seed=job.seed) for t, d in data.items()}
    inputs = SimilarityInputs(
        scorer,
        data,
        job.features,
        job.gw,
        probe_size=job.probe_size,
        pair_map=gw_pairs,
        cache_dir=out.parent / f".{out.name}-features",
        progress=progress,
    )
    measure = get_similarity(job.similarity).compute(inputs)
    sim = measure.similarity()
    if plan is not None:
        pass
    elif job.plan_method == "gw":
        plan = optimal_plan(sim, ids, job.n_groups, min_size=job.min_size, max_size=job.max_size, balanced=job.balanced)
        plan.source = f"{job.similarity}-optimal"
    else:
        plan = clustering_plan(measure.distances(), ids, job.n_groups)
    plan.extra["similarity"] = job.similarity
    plan.extra["similarity_objective"] = plan_score(plan, sim, ids)
    if "gw" in measure.info:
        plan.extra["gw_objective"] = plan.extra["similarity_objective"]
    refit = ({t: s[0] for t, s in splits.items()}, {t: s[1] for t, s in splits.items()}) if job.refit else None
    unlabelled = {t: s[0] for t, s in splits.items()} if job.merge.per_task == "surgery" else None
    merged = merge_suite(scorer, plan, out, job.merge, refit=refit, unlabelled=unlabelled, progress=progress)
    report: dict[str, Any] = {
        "suite": str(suite_dir),
        "merged_suite": str(out),
        "job": {**asdict(job), "features": asdict(job.features), "gw": asdict(job.gw), "merge": asdict(job.merge)},
        "plan": plan.to_dict(),
        "similarity": measure.to_dict(),
        "storage": {"before_bytes": scorer.suite.model_bytes, "after_bytes": merged.model_bytes},
    }
    if "gw" in measure.info:
        report["gw"] = measure.info["gw"]
    report["storage"]["ratio"] = report["storage"]["before_bytes"] / report["storage"]["after_bytes"]
    report_dir.mkdir(parents=True, exist_ok=True)
    kind = get_similarity(job.similarity)
    plot_gw_heatmap(
        measure.values,
        ids,
        plan.groups,
        report_dir / "gw-heatmap.png",
        label=f"{job.similarity} {kind.kind} ({'lower' if kind.kind == 'distance' else 'higher'} = more alike)",
        higher_is_closer=kind.kind == "similarity",
    )
    md = [
        f"# Merge report: {scorer.suite.root} -> {out}",
        "",
        f"Plan ({plan.source or plan.name}): " + " | ".join(", ".join(g) for g in plan.groups),
        "",
        f"Similarity {job.similarity} ({get_similarity(job.similarity).description}) over {len(ids)} tasks; storage "
        f"{report['storage']['before_bytes'] / 1e6:,.1f} MB -> {report['storage']['after_bytes'] / 1e6:,.1f} MB "
        f"({report['storage']['ratio']:.2f}x smaller).",
        "",
        f"![{job.similarity} {kind.kind}](gw-heatmap.png)",
    ]
    if eval_data is not None:
        # the unmerged plan only: no group is merged, so no per-task piece is fitted
        evaluator = PlanEvaluator(
            scorer, {t: eval_data[t] for t in ids if t in eval_data}, replace(job.merge, per_task="none")
        )
        if len(evaluator.eval_sets) != len(ids):
            raise ConfigError(f"the evaluation data lacks tasks {sorted(set(ids) - set(eval_data))}.")
        before = evaluator.evaluate(unmerged_plan(ids))
        after_scorer = SuiteScorer(merged, backbone)
        after = evaluate_suite(after_scorer, evaluator.eval_sets, progress=progress)
        report["evaluation"] = {"before": before, "after": after}
        results = {"before": before, "after": after}
        plot_before_after(
            {k: {t: v["tasks"][t]["qwk"] for t in ids} for k, v in results.items()},
            ids,
            report_dir / "before-after.png",
        )
        md += ["", "## Before / after (QWK)", "", task_table(results, ids), "", "![before/after](before-after.png)"]
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(report_dir / "report.json", report)
    (report_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return report
