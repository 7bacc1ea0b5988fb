"""UniMoE-Guided student: MoE layers, distillation joined by id, mixed-batch training, suites, engine, adaptation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from scoreplex.errors import BackboneError, ConfigError, DataError, SuiteError, UnknownNameError
from scoreplex.methods import MethodSettings
from scoreplex.moe import (
    MoEConfig,
    MoEStudent,
    StudentObjective,
    adapt_to_task,
    compute_teacher_targets,
    distillation_loss,
    load_balance_loss,
    load_student,
    save_student,
    train_student,
)
from scoreplex.moe.model import MoELayer
from scoreplex.training import TrainConfig

CFG = TrainConfig(epochs=1, lr=1e-3, head_lr=1e-2, batch_size=16, patience=0)


def test_moe_layer_dense_and_top1_routing():
    torch.manual_seed(0)
    layer = MoELayer(8, MoEConfig(n_experts=3, task_dim=4, dropout=0.0)).eval()
    x, t = torch.randn(5, 8), torch.randn(5, 4)
    y, probs = layer(x, t)
    assert y.shape == (5, 8) and torch.allclose(probs.sum(-1), torch.ones(5))
    top1 = MoELayer(8, MoEConfig(n_experts=3, task_dim=4, dropout=0.0, top_k=1)).eval()
    top1.load_state_dict(layer.state_dict())
    y1, p1 = top1(x, t)
    best = p1.argmax(-1)
    want = torch.stack([top1.norm(x[i] + top1.experts[int(best[i])](x[i])) for i in range(5)])
    assert torch.allclose(y1, want, atol=1e-5)
    assert not torch.allclose(y, y1)  # dense mixing differs from routing to one expert
    with pytest.raises(ConfigError, match="top_k"):
        MoEConfig(n_experts=2, top_k=3)


def test_load_balance_loss_is_zero_only_for_uniform_use():
    uniform = torch.full((6, 4), 0.25)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 6)
    assert float(load_balance_loss([uniform])) == pytest.approx(0.0)
    assert float(load_balance_loss([skewed])) > 0.01
    assert float(load_balance_loss([])) == 0.0


def test_distillation_losses():
    torch.manual_seed(0)
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5)
    counts = [3, 2]
    assert float(distillation_loss(t, t, counts, 3.0, "kl")) == pytest.approx(0.0, abs=1e-6)
    kl = distillation_loss(s, t, counts, 3.0, "kl")
    assert float(kl.detach()) > 0
    kl.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert float(distillation_loss(s.detach(), t, counts, 3.0, "bce")) > 0
    with pytest.raises(UnknownNameError, match="distillation loss"):
        StudentObjective(kd_loss="mse")


# -- with the tiny BERT ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teachers_suite(tiny_full_suite):
    return tiny_full_suite


@pytest.fixture(scope="module")
def teachers(teachers_suite, demo_datasets, tiny_backbone_path, tmp_path_factory):
    from scoreplex.scorer import SuiteScorer

    scorer = SuiteScorer(teachers_suite.root, backbone=str(tiny_backbone_path))
    return compute_teacher_targets(scorer, demo_datasets, tmp_path_factory.mktemp("targets"), progress=False)


@pytest.fixture(scope="module")
def trained(tiny_bb, demo_datasets, teachers, tmp_path_factory):
    student, fit = train_student(
        tiny_bb.encoder,
        tiny_bb.tokenizer,
        tiny_bb.hidden,
        demo_datasets,
        demo_datasets,
        max_length=32,
        moe=MoEConfig(task_dim=8),
        config=CFG,
        teachers=teachers,
        progress=False,
    )
    root = tmp_path_factory.mktemp("moe") / "student"
    save_student(student, root, tiny_bb.info.to_dict(), 32)
    return student, root


def test_teacher_targets_are_joined_by_id_and_cached(
    teachers_suite, demo_datasets, teachers, tiny_backbone_path, tmp_path
):
    from scoreplex.data.dataset import TaskData
    from scoreplex.scorer import SuiteScorer

    t = "demo-food-web"
    data = demo_datasets[t]
    order = np.random.default_rng(0).permutation(len(data))
    shuffled = TaskData(data.spec, [data.ids[i] for i in order], [data.texts[i] for i in order], data.labels[order])
    want = teachers[t].lookup(data.ids)[torch.as_tensor(order)]
    assert torch.equal(teachers[t].lookup(shuffled.ids), want)  # rows follow the ids, not the row order
    with pytest.raises(DataError, match="no teacher output.*nope"):
        teachers[t].lookup(["nope", data.ids[0]])
    scorer = SuiteScorer(teachers_suite.root, backbone=str(tiny_backbone_path))
    first = compute_teacher_targets(scorer, {t: data}, tmp_path, progress=False)
    mtime = (tmp_path / f"{t}.safetensors").stat().st_mtime_ns
    again = compute_teacher_targets(scorer, {t: shuffled}, tmp_path, progress=False)  # same ids: reused
    assert (tmp_path / f"{t}.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(again[t].lookup(data.ids), first[t].lookup(data.ids))
    probs = first[t].probabilities(data.ids[:3])
    assert torch.allclose(probs[0].sum(-1), torch.ones(3))


def test_student_fine_tunes_its_own_encoder_copy_and_needs_teachers_for_kd(tiny_bb, demo_datasets, trained):
    student, _ = trained
    assert set(student.task_ids) == set(demo_datasets)
    base = dict(tiny_bb.encoder.named_parameters())
    changed = [n for n, p in student.encoder.named_parameters() if not torch.equal(p, base[n])]
    assert changed  # the student's encoder trained ...
    assert not any(p.requires_grad for p in tiny_bb.encoder.parameters())  # ... a copy: the shared backbone did not
    with pytest.raises(ConfigError, match="needs teacher targets"):
        train_student(
            tiny_bb.encoder,
            tiny_bb.tokenizer,
            tiny_bb.hidden,
            demo_datasets,
            demo_datasets,
            max_length=32,
            config=CFG,
            progress=False,
        )


def test_student_objective_mixes_tasks_and_uses_each_rows_teacher(tiny_bb, demo_datasets, teachers):
    from scoreplex.moe.train import _mixed, student_objective

    student = MoEStudent(
        copy.deepcopy(tiny_bb.encoder),
        tiny_bb.hidden,
        [d.spec for d in demo_datasets.values()],
        MoEConfig(task_dim=8, dropout=0.0, head_dropout=0.0),
        "mean",
    ).eval()
    mixed = _mixed(student, demo_datasets, tiny_bb.tokenizer, 32, teachers)
    assert len(set(mixed.task_index.tolist())) == 4
    from scoreplex.encoding import collate

    idx = [0, 1, len(mixed.task_index) - 1]
    batch = collate(mixed.enc, idx)
    batch["tasks"] = [mixed.task_ids[mixed.task_index[i]] for i in idx]
    batch["labels"] = torch.as_tensor(mixed.labels[idx])
    batch["teacher"] = [mixed.teacher[i] for i in idx]
    last = batch["tasks"][-1]
    assert torch.equal(batch["teacher"][-1], teachers[last].lookup([demo_datasets[last].ids[-1]])[0])
    specs = {t: d.spec for t, d in demo_datasets.items()}
    with torch.no_grad():
        no_kd = student_objective(student, batch, specs, StudentObjective(kd_weight=0.0, balance_weight=0.0))
        kd = student_objective(student, batch, specs, StudentObjective(kd_weight=1.0, balance_weight=0.0))
    assert float(kd) > float(no_kd) > 0


def test_student_suite_round_trip_scorer_and_engine(trained, demo_datasets, tiny_backbone_path):
    from scoreplex.engine import Engine
    from scoreplex.scorer import SuiteScorer

    student, root = trained
    loaded, _ = load_student(root, backbone=str(tiny_backbone_path))
    scorer = SuiteScorer(root, backbone=str(tiny_backbone_path))
    engine = Engine(root, backbone=str(tiny_backbone_path))
    pairs = [(t, demo_datasets[t].texts[i]) for i in range(3) for t in demo_datasets]
    rows = engine.score(pairs)  # one batch mixing all four tasks
    for (t, text), row in zip(pairs, rows, strict=True):
        a = scorer.predict(t, [text])
        for d, name in enumerate(a.spec.dimension_names):
            assert np.allclose(row["probs"][name], a.probs[d][0], atol=1e-5)
    from scoreplex.encoding import encode_texts
    from scoreplex.predictions import predict_logits

    enc = encode_texts(scorer.bb.tokenizer, demo_datasets["demo-argument"].texts[:8], 32)
    want = predict_logits(student.task_view("demo-argument"), enc)
    assert torch.allclose(predict_logits(loaded.task_view("demo-argument"), enc), want, atol=1e-5)
    with pytest.raises(SuiteError, match="trained on all tasks at once"):
        from scoreplex.methods import get_method

        get_method("moe").build(None, 8, demo_datasets["demo-food-web"].spec, MethodSettings(), "mean")


def test_adaptation_trains_only_the_new_embedding_and_head(trained, demo_datasets, tiny_backbone_path):
    from scoreplex.data.dataset import TaskData
    from scoreplex.tasks import TaskSpec

    _, root = trained
    student, bb = load_student(root, backbone=str(tiny_backbone_path))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    src = demo_datasets["demo-photosynthesis"]
    spec = TaskSpec.from_dict({**src.spec.to_dict(), "id": "demo-new"})
    data = TaskData(spec, src.ids, src.texts, src.labels)
    old_view = copy.deepcopy(student.task_view("demo-food-web"))
    res = adapt_to_task(
        student,
        bb.tokenizer,
        data,
        data,
        max_length=32,
        config=TrainConfig(epochs=3, lr=5e-2, batch_size=16, patience=0),
        progress=False,
    )
    after = dict(student.named_parameters())
    changed = {n for n in after if n not in before or not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(("task_embedding.demo-new", "heads.demo-new")) for n in changed)
    new = sum(p.numel() for n, p in after.items() if n not in before)
    assert res.new_parameters == new and res.total_parameters == sum(p.numel() for p in after.values())
    assert 0 < res.new_fraction < 0.05
    ids = torch.tensor([[2, 5, 6, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(student.task_view("demo-food-web").eval()(ids, mask), old_view.eval()(ids, mask))
    with pytest.raises(ConfigError, match="already in the student"):
        student.add_task(spec)


def test_truncated_backbone(tiny_backbone_path, tmp_path):
    from scoreplex.backbone import Backbone, truncated_backbone

    out = truncated_backbone(tiny_backbone_path, 1, tmp_path / "l1")
    bb = Backbone.load(out)
    assert len(bb.encoder.encoder.layer) == 1 and bb.encoder.config.num_hidden_layers == 1
    stamp = (out / "truncation.json").stat().st_mtime_ns
    truncated_backbone(tiny_backbone_path, 1, tmp_path / "l1")
    assert (out / "truncation.json").stat().st_mtime_ns == stamp  # reused
    with pytest.raises(BackboneError, match="choose 1..2"):
        truncated_backbone(tiny_backbone_path, 5, tmp_path / "bad")


def test_distill_and_adapt_commands(teachers_suite, demo_files, demo_datasets, tiny_backbone_path, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.data.dataset import TaskData
    from scoreplex.moe.runs import run_adapt
    from scoreplex.scorer import SuiteScorer
    from scoreplex.suite import Suite
    from scoreplex.tasks import TaskSpec

    out = tmp_path / "student"
    args = [
        "distill",
        str(teachers_suite.root),
        str(demo_files["train"]),
        str(out),
        "--layers",
        "1",
        "--backbone",
        str(tiny_backbone_path),
        "--epochs",
        "1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    suite = Suite.open(out)
    assert suite.method == "moe" and set(suite.task_ids) == set(demo_datasets)
    assert Suite.open(out).manifest["backbone"]["num_layers"] == 1
    shared_before = (out / "shared" / "student.safetensors").read_bytes()
    src = demo_datasets["demo-circuit"]
    spec = TaskSpec.from_dict({**src.spec.to_dict(), "id": "demo-circuit-2"})
    added = run_adapt(out, {spec.id: TaskData(spec, src.ids, src.texts, src.labels)}, progress=False)
    assert added[spec.id]["new_parameters"] > 0
    assert (out / "shared" / "student.safetensors").read_bytes() == shared_before  # nothing shared changed
    scorer = SuiteScorer(out)
    assert scorer.predict(spec.id, src.texts[:4]).labels.shape == (4, 2)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already holds a suite" in again.output


@pytest.mark.parametrize("module", ["scoreplex.moe", "scoreplex.moe.runs", "scoreplex.crossitem"])
def test_a_method_package_imports_first_in_a_fresh_interpreter(module):
    """The method registry imports each method's module; importing a method package first must not be circular."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
