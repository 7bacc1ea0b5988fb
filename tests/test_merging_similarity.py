"""Task similarities for the merge plan search (issue 15): CKA, task vectors, text, the registry and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.lora_suites import train_tiny_suite

from scoreplex.errors import ConfigError, UnknownNameError
from scoreplex.merging import (
    SIMILARITIES,
    SimilarityMatrix,
    cka_matrix,
    cosine_matrix,
    linear_cka,
    planner_similarity,
    text_matrix,
)
from scoreplex.merging.similarity import SimilarityInputs, get_similarity, task_text
from scoreplex.methods import MethodSettings
from scoreplex.reports.merging import off_diagonal_range, plot_gw_heatmap


def _check_matrix(m: SimilarityMatrix, t: int) -> None:
    v = np.asarray(m.values)
    assert v.shape == (t, t) and np.allclose(v, v.T) and np.all(np.isfinite(v))
    if m.kind == "similarity":
        assert np.allclose(np.diag(v), 1.0)
    else:
        assert np.all(np.diag(v) == 0)
    s = m.similarity()
    off = ~np.eye(t, dtype=bool)
    assert np.allclose(np.diag(s), 1.0) and s[off].min() >= 0 and s[off].max() <= 1
    d = m.distances()
    assert np.all(np.diag(d) == 0) and np.allclose(d, d.T)


# -- pure measures --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [20, 200])  # n < d (Gram form) and n > d (feature form)
def test_linear_cka_is_one_on_itself_and_invariant_to_rotation_and_scale(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 50))
    y = x[:, :30] @ rng.normal(size=(30, 40)) + 0.5 * rng.normal(size=(n, 40))
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    base = linear_cka(x, y)
    assert 0 < base < 1
    assert linear_cka(3.0 * x @ q + 1.0, y) == pytest.approx(base)  # orthogonal map, isotropic scale, shift
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    # against the definition through HSIC with centring matrices (Kornblith et al. 2019, eq. 3-5)
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    assert base == pytest.approx(np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_)))
    with pytest.raises(ConfigError, match="same n"):
        linear_cka(x, y[:-1])


def test_cka_matrix_shape_symmetry_and_shared_rows():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    feats = {"a": base, "b": base @ np.linalg.qr(rng.normal(size=(8, 8)))[0], "c": rng.normal(size=(40, 8))}
    m = cka_matrix(feats)
    _check_matrix(m, 3)
    assert m.values[0, 1] == pytest.approx(1.0) and m.values[0, 2] < 0.9
    with pytest.raises(ConfigError, match="shared probe"):
        cka_matrix({"a": base, "b": base[:30]})


def test_cosine_matrix_of_task_vectors():
    rng = np.random.default_rng(1)
    u = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    v = {"w": rng.normal(size=(4, 3))}  # no "b": counts as zeros
    m = cosine_matrix({"u": u, "u2": {k: 2 * a for k, a in u.items()}, "v": v})
    _check_matrix(m, 3)
    flat_u = np.concatenate([u["b"].ravel(), u["w"].ravel()])
    flat_v = np.concatenate([np.zeros(3), v["w"].ravel()])
    assert m.values[0, 1] == pytest.approx(1.0)  # a model with itself (scaled)
    assert m.values[0, 2] == pytest.approx(flat_u @ flat_v / np.linalg.norm(flat_u) / np.linalg.norm(flat_v))
    with pytest.raises(ConfigError, match="zero"):
        cosine_matrix({"u": u, "z": {"w": np.zeros((4, 3))}})


def test_text_similarity_of_the_demo_specs():
    from scoreplex.data.demo import demo_specs

    specs = {s.id: s for s in demo_specs()}
    m = text_matrix({t: task_text(s) for t, s in specs.items()})
    _check_matrix(m, len(specs))
    same = text_matrix({"a": "plants make food from light", "b": "plants make food from light", "c": "electric bulb"})
    assert same.values[0, 1] == pytest.approx(1.0) and same.values[0, 2] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="no prompt or rubric"):
        text_matrix({"a": "", "b": ""})


def test_planner_similarity_treats_a_distance_and_a_negated_similarity_alike():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(5, 5))
    d = (a + a.T) / 2
    assert np.allclose(planner_similarity(d, "distance"), planner_similarity(-d, "similarity"))
    with pytest.raises(UnknownNameError, match="similarity kind"):
        planner_similarity(d, "closeness")
    with pytest.raises(ConfigError, match="symmetric"):
        SimilarityMatrix("x", ("a", "b"), np.array([[0.0, 1.0], [2.0, 0.0]]), "distance")


def test_registry_lists_the_names_and_refuses_an_unknown_one():
    assert {"gw", "gw-debiased", "gw-raw", "cka", "task-vector", "text"} <= set(SIMILARITIES)
    with pytest.raises(UnknownNameError, match="cka"):
        get_similarity("wasserstein")


def test_heatmap_colour_scale_leaves_out_the_diagonal(tmp_path):
    d = np.array([[0.0, 0.02, 0.04], [0.02, 0.0, 0.03], [0.04, 0.03, 0.0]])
    assert off_diagonal_range(d) == (0.02, 0.04)
    assert off_diagonal_range(np.eye(3) + 0.5) == (0.5, 0.5)
    plot_gw_heatmap(np.eye(3) * 0.5 + 0.2, ["a", "b", "c"], [["a", "b"], ["c"]], tmp_path / "h.png",
                    label="cka similarity", higher_is_closer=True)  # fmt: skip
    assert (tmp_path / "h.png").stat().st_size > 1000


# -- on tiny suites -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer(tiny_full_suite, tiny_backbone_path):
    from scoreplex.scorer import SuiteScorer

    return SuiteScorer(tiny_full_suite.root, backbone=str(tiny_backbone_path), decoding=False, lexical=False)


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_every_similarity_on_a_tiny_suite(name, scorer, demo_datasets, tmp_path):
    from scoreplex.merging import FeatureSettings, GWSettings

    inputs = SimilarityInputs(
        scorer,
        demo_datasets,
        FeatureSettings(cap=20),
        GWSettings(method="entropic", quantize=None),
        probe_size=24,
        cache_dir=tmp_path,
        progress=False,
    )
    m = get_similarity(name).compute(inputs)
    assert m.name == name and list(m.task_ids) == list(demo_datasets)
    _check_matrix(m, len(demo_datasets))


def test_task_vector_of_a_lora_suite_is_the_b_a_product(demo_datasets, tiny_bb, tiny_backbone_path, tmp_path):
    from scoreplex.merging import GroupMerger
    from scoreplex.scorer import SuiteScorer

    two = {t: demo_datasets[t] for t in list(demo_datasets)[:2]}
    suite = train_tiny_suite(two, tmp_path / "lora", tiny_bb, tiny_backbone_path, "lora", MethodSettings(), 32)
    merger = GroupMerger(SuiteScorer(suite.root, backbone=str(tiny_backbone_path), decoding=False, lexical=False))
    t = next(iter(two))
    vec = merger.task_vector(t)
    info, tensors = suite.load_module(t)
    module = next(iter(vec))
    a, b = tensors[f"lora.{module}.lora_A.weight"], tensors[f"lora.{module}.lora_B.weight"]
    scaling = info["config"]["lora_alpha"] / info["config"]["lora_r"]
    assert np.allclose(vec[module].numpy(), scaling * (b.float() @ a.float()).numpy())
    m = cosine_matrix({k: merger.task_vector(k) for k in two})
    _check_matrix(m, 2)
    assert cosine_matrix({"x": vec, "y": vec}).values[0, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["gw-raw", "cka", "task-vector", "text"])
def test_merge_cli_takes_each_similarity_and_refuses_an_unknown_one(name, tiny_full_suite, demo_files, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    runner = CliRunner()
    out = tmp_path / "merged"
    base = ["merge", str(tiny_full_suite.root), str(demo_files["train"])]
    res = runner.invoke(app, [*base, str(out), "--groups", "2", "--cap", "20", "--probe-size", "20",
                              "--quantize", "0", "--similarity", name])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["similarity"]["name"] == name and report["plan"]["similarity"] == name
    assert len(report["plan"]["groups"]) == 2 and ("gw" in report) == name.startswith("gw")
    if name == "gw-raw":
        res = runner.invoke(app, [*base, str(tmp_path / "x"), "--similarity", "wasserstein"])
        assert res.exit_code == 2 and "gw-debiased" in res.output
        res = runner.invoke(app, [*base, str(tmp_path / "y"), "--similarity", "gw-debiased", "--gw", "exact"])
        assert res.exit_code == 2 and "nothing to debias" in res.output
