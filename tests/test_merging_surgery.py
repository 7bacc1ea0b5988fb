"""Representation surgery (Yang et al. 2024): the module, its fit, and merged suites that carry it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.lora_suites import train_tiny_suite

from scoreplex.errors import ConfigError, UnknownNameError
from scoreplex.heads import RepresentationSurgery, ScoringHead, SurgicalHead, build_rubric_head
from scoreplex.merging import MergePlan, MergeSettings, PlanEvaluator, merge_suite
from scoreplex.merging.surgery import SurgerySettings, fit_surgery
from scoreplex.methods import MethodSettings

FAST = SurgerySettings(rank=4, steps=300, lr=1e-2, rows=40)


def test_fresh_surgery_is_the_identity_and_a_surgical_head_reads_through_it():
    torch.manual_seed(0)
    z = torch.randn(6, 8)
    assert torch.equal(RepresentationSurgery(8, 3)(z), z)
    head = build_rubric_head(8, [3, 2], {"surgery_rank": 3})
    assert isinstance(head, SurgicalHead) and isinstance(head.base, ScoringHead)
    assert {k.split(".")[0] for k in head.state_dict()} == {"surgery", "base"}
    head.eval()
    assert torch.equal(head(z), head.base(z))
    with torch.no_grad():
        head.surgery.up.weight.normal_()  # (a constant would be a uniform shift, which the head's LayerNorm removes)
    assert not torch.allclose(head(z), head.base(z))
    for bad in (0, 9, "4", True):
        with pytest.raises(ConfigError, match="surgery_rank"):
            build_rubric_head(8, [3], {"surgery_rank": bad})


def test_fit_surgery_removes_a_bias_the_module_can_express():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(300, 16, generator=g)
    direction = torch.randn(16, generator=g)
    merged = target + 0.8 * direction  # a shift: what a merged encoder does to a task's features, at its simplest
    module, info = fit_surgery(merged, target, SurgerySettings(rank=4, steps=400, lr=1e-2))
    assert info["l1_before"] == pytest.approx(float((0.8 * direction).abs().mean()), rel=1e-5)
    assert info["l1_after"] < 0.5 * info["l1_before"]
    again, info2 = fit_surgery(merged, target, SurgerySettings(rank=4, steps=400, lr=1e-2))
    assert info2["l1_after"] == info["l1_after"]  # seeded
    assert torch.equal(again.down.weight, module.down.weight)
    with pytest.raises(ConfigError, match="one shape"):
        fit_surgery(merged, target[:, :8])
    with pytest.raises(ConfigError, match="above the feature size"):
        fit_surgery(merged, target, SurgerySettings(rank=32))
    with pytest.raises(ConfigError, match="rank=0"):
        SurgerySettings(rank=0)
    with pytest.raises(UnknownNameError, match="per-task piece"):
        MergeSettings(per_task="masks")


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path):
    root = tmp_path_factory.mktemp("surgery") / "lora"
    return train_tiny_suite(demo_datasets, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(), max_length=32)


def _scorer(suite, path):
    from scoreplex.scorer import SuiteScorer

    return SuiteScorer(suite.root, backbone=str(path), decoding=False, lexical=False)


def test_merged_lora_suite_with_surgery_is_served_alike_by_scorer_and_engine(
    lora_suite, demo_datasets, tiny_bb, tiny_backbone_path, tmp_path
):
    from scoreplex.engine import Engine
    from scoreplex.suite import Suite

    scorer = _scorer(lora_suite, tiny_backbone_path)
    ids = lora_suite.task_ids
    plan = MergePlan("p", [ids[:3], ids[3:]])  # a group of three and a group of one
    settings = MergeSettings(per_task="surgery", surgery_rank=FAST.rank)
    merged = merge_suite(scorer, plan, tmp_path / "m", settings, unlabelled=demo_datasets, surgery=FAST, progress=False)
    plain = merge_suite(scorer, plan, tmp_path / "plain", progress=False)
    for t in ids[:3]:
        info = merged.task_info(t)
        assert info["config"]["surgery_rank"] == FAST.rank
        s = info["summary"]["surgery"]
        assert s["l1_after"] < s["l1_before"]  # the module brings merged features back toward the task's own
        _, tensors = Suite.open(merged.root).load_module(t)
        extra = {k: v for k, v in tensors.items() if k.startswith("head.surgery.")}
        assert sum(v.numel() for v in extra.values()) == 2 * 32 * FAST.rank  # 2 H r numbers per task
    assert "surgery_rank" not in merged.task_info(ids[3])["config"]  # a group of one is its own model: no surgery
    # the per-task piece is small beside the shared adapter it corrects
    assert merged.total_bytes < plain.total_bytes + 4 * 2 * 32 * FAST.rank * 4 + 4096 * 3

    again = _scorer(merged, tiny_backbone_path)
    ev = PlanEvaluator(scorer, demo_datasets, settings, unlabelled=demo_datasets, surgery=FAST)
    engine = Engine(Suite.open(merged.root), tiny_bb)
    differs = False
    for t in ids:
        texts = demo_datasets[t].texts
        a = again.predict(t, texts)
        assert np.array_equal(a.labels, ev.predictions(plan.groups[plan.group_of(t)])[t])
        b = engine.predict(t, texts)
        np.testing.assert_allclose(a.probs[0], b.probs[0], atol=1e-4, rtol=0)
        c = _scorer(plain, tiny_backbone_path).predict(t, texts)
        differs |= not np.allclose(a.probs[0], c.probs[0], atol=1e-4)
    assert differs  # the surgery changed what the merged suite scores
    from scoreplex.engine.onnx_export import export_onnx
    from scoreplex.engine.onnx_runtime import OnnxEngine

    export_onnx(merged.root, tmp_path / "onnx", backbone=tiny_bb)
    onnx = OnnxEngine(merged.root, tmp_path / "onnx", intra_op_threads=1)
    for t in ids[:3]:
        texts = demo_datasets[t].texts[:12]
        np.testing.assert_allclose(
            onnx.predict(t, texts).probs[0], engine.predict(t, texts).probs[0], atol=1e-4, rtol=0
        )


def test_surgery_needs_responses_and_excludes_a_head_refit(lora_suite, demo_datasets, tiny_backbone_path, tmp_path):
    scorer = _scorer(lora_suite, tiny_backbone_path)
    plan = MergePlan("p", [lora_suite.task_ids])
    settings = MergeSettings(per_task="surgery")
    with pytest.raises(ConfigError, match="needs responses of every task"):
        merge_suite(scorer, plan, tmp_path / "a", settings, progress=False)
    with pytest.raises(ConfigError, match="not both"):
        merge_suite(
            scorer, plan, tmp_path / "b", settings, refit=(demo_datasets, demo_datasets), unlabelled=demo_datasets,
            progress=False,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="needs responses of every task"):
        PlanEvaluator(scorer, demo_datasets, settings)
    ev = PlanEvaluator(scorer, demo_datasets, settings, refit=(demo_datasets, demo_datasets), unlabelled=demo_datasets)
    with pytest.raises(ConfigError, match="not both"):
        ev.evaluate(plan, refit=True)


def test_merge_cli_fits_surgery_on_full_fine_tunes(tiny_full_suite, demo_files, tiny_backbone_path, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.scorer import SuiteScorer
    from scoreplex.suite import Suite

    runner = CliRunner()
    out = tmp_path / "merged"
    common = [str(tiny_full_suite.root), str(demo_files["train"])]
    res = runner.invoke(app, ["merge", *common, str(out), "--groups", "1", "--cap", "30", "--per-task", "surgery",
                              "--surgery-rank", "4", "--eval", str(demo_files["test"])])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report" / "report.json").read_text())
    assert {"before", "after"} <= set(report["evaluation"])
    assert Suite.open(out).manifest["merge"]["surgery"]["rank"] == 4
    merged = SuiteScorer(out, backbone=str(tiny_backbone_path))
    for t in merged.suite.task_ids:
        assert merged.suite.task_info(t)["config"]["surgery_rank"] == 4
        assert isinstance(merged.model(t).head, SurgicalHead)
    assert len(merged.predict(t, ["a short answer", "another one"]).labels) == 2
    res = runner.invoke(app, ["merge", *common, str(tmp_path / "x"), "--per-task", "surgery", "--refit"])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(app, ["merge", *common, str(tmp_path / "y"), "--per-task", "masks"])
    assert res.exit_code == 2 and "per-task piece" in res.output
    res = runner.invoke(app, ["merge", *common, str(tmp_path / "z"), "--per-task", "surgery", "--surgery-rank", "64"])
    assert res.exit_code == 2 and "above the heads' feature size 32" in res.output
    assert not (tmp_path / "z" / "manifest.json").exists()  # refused before any suite was written
    res = runner.invoke(app, ["merge", *common, str(tmp_path / "w"), "--lora-rank", "0"])
    assert res.exit_code == 2 and "merged LoRA rank=0" in res.output


def test_merge_cli_defaults_to_surgery_unless_a_refit_or_none_is_asked(tiny_full_suite, demo_files, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.suite import Suite

    common = [str(tiny_full_suite.root), str(demo_files["train"])]
    expected = {(): True, ("--per-task", "none"): False, ("--refit",): False}
    for i, (extra, surgery) in enumerate(expected.items()):
        out = tmp_path / f"merged-{i}"
        res = CliRunner().invoke(app, ["merge", *common, str(out), "--groups", "1", "--cap", "30", *extra])
        assert res.exit_code == 0, (extra, res.output)
        merge = Suite.open(out).manifest["merge"]
        assert (merge["surgery"] is not None) is surgery, extra
        assert merge["head_refit"] is ("--refit" in extra)
