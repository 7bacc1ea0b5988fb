"""The method contract, over every registered method (and the merged suite of every mergeable one).

Parametrised from the registry: a new method is covered without editing this file. Each case makes a tiny suite of
two demo tasks (one ordinal, one multi-label), opens it, and scores the same responses through every scorer the
method's capabilities promise: :class:`SuiteScorer`, the :class:`Engine` (or its refusal), the streaming ``score``
path and ``evaluate``; the results must agree. Also: the locked manifest writer under two real processes, and
"read and verify once" during a merge with head re-fits.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scoreplex.methods import METHODS
from scoreplex.suite import Suite

TASKS = ("demo-photosynthesis", "demo-circuit")
"""One ordinal and one multi-label demo task."""
CASES = [name for name in METHODS] + [f"merged-{name}" for name, m in METHODS.items() if m.capabilities.mergeable]


def _tiny_suite(case: str, root: Path, datasets, tiny_bb, tiny_backbone_path, small_options):
    """A tiny suite of ``case``, made the way its method's capabilities say it is made."""
    from scoreplex.training.loop import TrainConfig

    data = {t: datasets[t] for t in TASKS}
    name = case.removeprefix("merged-")
    method = METHODS[name]
    if method.capabilities.trains_per_task or method.capabilities.trains_jointly:  # both through train_suite
        from scoreplex.training.suite import train_suite

        suite = train_suite(data, root / name, small_options(name, max_length=32), backbone=tiny_bb)
        if case.startswith("merged-"):
            from scoreplex.merging import MergePlan, merge_suite
            from scoreplex.scorer import SuiteScorer

            plan = MergePlan(name="all", groups=[list(TASKS)])
            suite = merge_suite(SuiteScorer(suite, tiny_bb), plan, root / case, progress=False)
        return suite
    if method.capabilities.suite_wide_shared:  # a distilled student: trained on all tasks at once
        from scoreplex.data.splits import train_val_split
        from scoreplex.moe.model import MoEConfig
        from scoreplex.moe.train import StudentObjective, save_student, train_student

        splits = {t: train_val_split(d, val_fraction=0.25, seed=0) for t, d in data.items()}
        student, _ = train_student(
            tiny_bb.encoder,
            tiny_bb.tokenizer,
            tiny_bb.hidden,
            {t: s[0] for t, s in splits.items()},
            {t: s[1] for t, s in splits.items()},
            max_length=32,
            moe=MoEConfig(n_layers=1, n_experts=2, task_dim=8),
            objective=StudentObjective(kd_weight=0.0),
            config=TrainConfig(epochs=1, lr=1e-3, batch_size=16, patience=0),
            progress=False,
        )
        return save_student(student, root / name, tiny_bb.info.to_dict(), 32)
    pytest.fail(f"the contract test does not know how to make a tiny {name!r} suite; teach _tiny_suite its capability")


@pytest.fixture(scope="module")
def contract_suites(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path, small_options):
    root = tmp_path_factory.mktemp("contract")
    return {case: _tiny_suite(case, root, demo_datasets, tiny_bb, tiny_backbone_path, small_options) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_every_method_scores_alike_through_every_scorer(
    case, contract_suites, demo_datasets, demo_files, demo_column_map, tiny_bb, tmp_path
):
    from scoreplex.data.load import read_dataset
    from scoreplex.data.readers import ColumnMap
    from scoreplex.errors import ConfigError
    from scoreplex.scorer import SuiteScorer, evaluate_suite
    from scoreplex.streaming import score_file

    suite = Suite.open(contract_suites[case].root)  # open: every file verified
    method = suite.method_object
    assert sorted(suite.task_ids) == sorted(TASKS)
    scorer = SuiteScorer(suite, tiny_bb, cache_size=4)
    texts = {t: demo_datasets[t].texts[:12] for t in TASKS}
    want = {t: scorer.predict(t, texts[t]) for t in TASKS}
    for t in TASKS:
        probs = want[t].probs
        assert len(probs) == len(suite.spec(t).dimensions)
        assert all(np.allclose(p.sum(axis=1), 1.0, atol=1e-5) for p in probs)

    # the engine, where the method promises one shared backbone pass
    if method.capabilities.shares_backbone_pass:
        from scoreplex.engine import Engine

        engine = Engine(suite, tiny_bb, batch_size=5)
        pairs = [(t, x) for i in range(12) for t in TASKS for x in [texts[t][i]]]  # tasks interleaved
        rows = engine.score(pairs)
        for t in TASKS:
            got = engine.predict(t, texts[t])
            np.testing.assert_array_equal(got.labels, want[t].labels)
            for g, w in zip(got.probs, want[t].probs, strict=True):
                np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
            mixed = [r for (task, _), r in zip(pairs, rows, strict=True) if task == t]
            assert [r["labels"] for r in mixed] == [
                dict(zip(suite.spec(t).dimension_names, map(int, lab), strict=True)) for lab in want[t].labels
            ]
    else:
        from scoreplex.engine import Engine

        with pytest.raises(ConfigError, match="cannot share a backbone pass"):
            Engine(suite, tiny_bb)

    # the streaming `score` path (it picks its scorer from the method's capabilities)
    from scoreplex.data.readers import read_table, write_table

    source = tmp_path / "test.csv"
    write_table(source, [r for r in read_table(demo_files["test"]) if r["task"] in TASKS])
    out = tmp_path / "scores.csv"
    result = score_file(suite, source, out, columns=demo_column_map, backbone=None, progress=False)
    assert result["rows"] > 0
    scored = read_table(out)
    specs = {t: suite.spec(t) for t in TASKS}
    dims = {d for spec in specs.values() for d in spec.dimension_names}
    columns = ColumnMap(
        labels={d: c for d, c in demo_column_map.labels.items() if d in dims},
        second={d: c for d, c in demo_column_map.second.items() if d in dims},
    )
    test = read_dataset(source, columns=columns, specs=specs)
    for t in TASKS:
        ref = scorer.predict(t, test[t].texts, test[t].ids)
        by_id = {r["id"]: r for r in scored if r["task"] == t}
        for rid, lab in zip(ref.ids, ref.labels, strict=True):
            for d, name in enumerate(suite.spec(t).dimension_names):
                assert int(by_id[rid][f"pred_{name}"]) == int(lab[d]), (case, t, rid, name)

    # evaluate agrees with the scorer's own labels
    report = evaluate_suite(scorer, {t: test[t] for t in TASKS})
    assert set(report["tasks"]) == set(TASKS) and np.isfinite(report["mean_qwk"])


def test_registry_methods_answer_the_contract():
    for name, method in METHODS.items():
        assert method.name == name and method.description
        caps = method.capabilities
        assert not (caps.exportable_onnx and not caps.shares_backbone_pass)  # one graph implies one shared pass
        if caps.trains_per_task:
            from scoreplex.training.suite import default_config

            assert default_config(name).epochs >= 1  # the method's own defaults build a valid TrainConfig


# -- one locked writer ------------------------------------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import sys, torch
    from scoreplex.suite import Suite
    from scoreplex.tasks import TaskSpec
    suite = Suite.open(sys.argv[1], verify=False)
    for i in range(int(sys.argv[3])):
        spec = TaskSpec.ordinal(f"{sys.argv[2]}-{i}", 2)
        suite.add_task(spec, {"head.w": torch.zeros(2)}, {}, {"metrics": {}})
    """
)


def test_two_processes_adding_tasks_lose_nothing(tmp_path, tiny_bb):
    root = tmp_path / "suite"
    Suite.create(root, method="head", backbone=tiny_bb.info.to_dict(), pooling="mean", max_length=32)
    n = 25
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), who, str(n)], stderr=subprocess.PIPE)
        for who in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    suite = Suite.open(root, verify=False)
    assert sorted(suite.task_ids) == sorted(f"{w}-{i}" for w in ("a", "b") for i in range(n))
    for task_id in suite.task_ids:  # every entry's files exist and match their hashes
        suite.verify_task(task_id)


# -- read and verify once ---------------------------------------------------------------------------------------------
def test_merge_with_refit_hashes_each_module_once(tiny_full_suite, demo_datasets, tiny_bb, tmp_path):
    from scoreplex.merging.features import FeatureSettings
    from scoreplex.merging.gromov import GWSettings
    from scoreplex.merging.gwsmm import MergeJob, run_merge

    suite = Suite.open(tiny_full_suite.root)  # open verifies: the only hash of each file
    job = MergeJob(
        n_groups=2,
        features=FeatureSettings(cap=20),
        gw=GWSettings(method="exact", quantize=None),
        refit=True,
    )
    run_merge(suite, demo_datasets, tmp_path / "merged", job, backbone=tiny_bb, progress=False)
    modules = [f"tasks/{t}/module.safetensors" for t in suite.task_ids]
    assert [suite.hash_counts[m] for m in modules] == [1] * len(modules)
    assert max(suite.hash_counts.values()) == 1
