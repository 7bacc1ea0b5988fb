"""GW-SMM: choose which task models to merge by Gromov–Wasserstein distances between their features, then merge
each group's encoders (TIES, task arithmetic, DARE-TIES) and keep every task's head (optionally behind a
representation surgery module).

features.py  each task model's features of its own responses (cached)
gromov.py    pairwise GW distances (POT, exact / entropic, debiased, numerics checked) and normalised similarities
similarity.py  the similarities a plan can be searched by (GW, linear CKA, task vectors, text) and their registry
synthetic.py point clouds of known similarity, to check that a GW distance orders them
plan.py      merge plans: exact optimal partition, measured-loss reference, clustering, random plans, plan files
merge.py     merging state dicts and LoRA adapters against the pretrained base
merged_suite.py  merged suites, head re-fit, plans evaluated side by side
surgery.py   a per-task representation surgery module beside the merged weights (Yang et al. 2024)
gwsmm.py     the whole method end to end: features -> GW -> plan -> merged suite + report (`scoreplex merge`)
"""

from scoreplex.merging.features import FeatureSettings, extract_features, suite_features
from scoreplex.merging.gromov import GromovError, GWMatrix, GWSettings, gw_distance, gw_matrix, normalised_similarity
from scoreplex.merging.merge import MERGE_METHODS, PER_TASK_PIECES, MergeSettings, merge_lora, merge_state_dicts
from scoreplex.merging.merged_suite import GroupMerger, PlanEvaluator, merge_suite, refit_head, unmerged_plan
from scoreplex.merging.plan import MergePlan, clustering_plan, loss_plan, optimal_plan, plan_score, random_plans
from scoreplex.merging.similarity import (
    SIMILARITIES,
    SimilarityMatrix,
    cka_matrix,
    cosine_matrix,
    linear_cka,
    planner_similarity,
    text_matrix,
)
from scoreplex.merging.surgery import SurgerySettings, fit_surgery

__all__ = [
    "MERGE_METHODS",
    "PER_TASK_PIECES",
    "SIMILARITIES",
    "FeatureSettings",
    "GWMatrix",
    "GWSettings",
    "GromovError",
    "GroupMerger",
    "MergePlan",
    "MergeSettings",
    "PlanEvaluator",
    "SimilarityMatrix",
    "SurgerySettings",
    "cka_matrix",
    "clustering_plan",
    "cosine_matrix",
    "extract_features",
    "fit_surgery",
    "gw_distance",
    "gw_matrix",
    "linear_cka",
    "loss_plan",
    "merge_lora",
    "merge_state_dicts",
    "merge_suite",
    "normalised_similarity",
    "optimal_plan",
    "plan_score",
    "planner_similarity",
    "random_plans",
    "refit_head",
    "suite_features",
    "text_matrix",
    "unmerged_plan",
]
