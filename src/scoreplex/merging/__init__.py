"""GW-SMM: choose which task models to merge by Gromov–Wasserstein distances between their features, then merge
each group's encoders (TIES, task arithmetic, DARE-TIES) and keep every task's head.

features.py  each task model's features of its own responses (cached)
gromov.py    pairwise GW distances (POT, exact / entropic, numerics checked) and normalised similarities
plan.py      merge plans: exact optimal partition, average-linkage clustering, random plans, plan files
merge.py     merging state dicts and LoRA adapters against the pretrained base
merged_suite.py  merged suites, head re-fit, plans evaluated side by side
gwsmm.py     the whole method end to end: features -> GW -> plan -> merged suite + report (`scoreplex merge`)
"""

from scoreplex.merging.features import FeatureSettings, extract_features, suite_features
from scoreplex.merging.gromov import GromovError, GWMatrix, GWSettings, gw_distance, gw_matrix, normalised_similarity
from scoreplex.merging.merge import MERGE_METHODS, MergeSettings, merge_lora, merge_state_dicts
from scoreplex.merging.merged_suite import GroupMerger, PlanEvaluator, merge_suite, refit_head, unmerged_plan
from scoreplex.merging.plan import MergePlan, clustering_plan, optimal_plan, plan_score, random_plans

__all__ = [
    "MERGE_METHODS",
    "FeatureSettings",
    "GWMatrix",
    "GWSettings",
    "GromovError",
    "GroupMerger",
    "MergePlan",
    "MergeSettings",
    "PlanEvaluator",
    "clustering_plan",
    "extract_features",
    "gw_distance",
    "gw_matrix",
    "merge_lora",
    "merge_state_dicts",
    "merge_suite",
    "normalised_similarity",
    "optimal_plan",
    "plan_score",
    "random_plans",
    "refit_head",
    "suite_features",
    "unmerged_plan",
]
