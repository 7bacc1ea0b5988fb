"""GW-SMM: GW distances, plan search, TIES / DARE / task arithmetic, merged suites, the merge CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from tests.lora_suites import train_tiny_suite

from scoreplex.errors import ConfigError, SuiteError
from scoreplex.merging import (
    FeatureSettings,
    GromovError,
    GWSettings,
    MergePlan,
    MergeSettings,
    PlanEvaluator,
    clustering_plan,
    gromov,
    gw_distance,
    gw_matrix,
    loss_plan,
    merge_lora,
    merge_state_dicts,
    merge_suite,
    normalised_similarity,
    optimal_plan,
    plan_score,
    random_plans,
    suite_features,
    unmerged_plan,
)
from scoreplex.merging.features import sample_indices
from scoreplex.methods import MethodSettings


# -- GW distances ---------------------------------------------------------------------------------------------------
def _blobs(rng, n, centres, spread=0.05, dim=5):
    c = rng.normal(size=(centres, dim))
    return c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim))


@pytest.mark.parametrize("method", ["exact", "entropic"])
def test_gw_is_invariant_to_rotation_and_shift_but_sees_structure(method):
    rng = np.random.default_rng(0)
    x = _blobs(rng, 80, 3)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    moved = x @ q + 3.0  # an isometry: same intra-set distances
    other = rng.normal(size=(80, 5))  # one diffuse cloud: a different shape
    s = GWSettings(method=method, epsilon=0.05)
    same = gw_distance(x, moved, s).distance
    diff = gw_distance(x, other, s).distance
    assert same >= 0 and diff > 0
    # exact GW of isometric sets is ~0; the entropic value carries the regularisation's blur, still well below
    assert same < (0.25 if method == "exact" else 0.5) * diff


def test_gw_rejects_nan_and_negative_values(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    monkeypatch.setattr(gromov, "_solve", lambda *a, **k: (float("nan"), 3, True, []))
    with pytest.raises(GromovError, match="nan"):
        gw_distance(x, y, GWSettings(method="exact"))
    monkeypatch.setattr(gromov, "_solve", lambda *a, **k: (-0.5, 3, True, []))
    with pytest.raises(GromovError, match="-0.5"):
        gw_distance(x, y, GWSettings(method="exact"))
    monkeypatch.setattr(gromov, "_solve", lambda *a, **k: (-1e-12, 3, True, []))
    assert gw_distance(x, y, GWSettings(method="exact")).distance == 0.0  # rounding is clipped, not an error


def test_entropic_retries_with_larger_epsilon_until_converged(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    seen = []

    def fake(c1, c2, p, q, settings, epsilon):
        seen.append(epsilon)
        return 0.1, 50, epsilon >= 0.2, []

    monkeypatch.setattr(gromov, "_solve", fake)
    r = gw_distance(x, y, GWSettings(method="entropic", epsilon=0.05, retries=3, debias=False))
    assert seen == [0.05, 0.1, 0.2] and r.retries == 2 and r.epsilon == 0.2
    seen.clear()
    with pytest.raises(GromovError, match="retries"):
        gw_distance(x, y, GWSettings(method="entropic", epsilon=0.01, retries=2, debias=False))


def test_debiased_entropic_gw_removes_the_self_term_and_orders_a_noise_ladder():
    from scoreplex.merging.synthetic import ladder_check, summarise_ladders

    raw = GWSettings(method="entropic", debias=False)
    deb = GWSettings(method="entropic")
    assert deb.debiased and not raw.debiased and not GWSettings(method="exact").debiased
    kw = dict(kinds=("clusters-3", "gaussian"), seeds=(0, 1), n=40, dim=6)
    d, r = ladder_check(deb, **kw), ladder_check(raw, **kw)
    sd, sr = summarise_ladders(d), summarise_ladders(r)
    assert sd["mean_self_distance"] == 0.0 and sr["mean_self_distance"] > 0  # the bias debiasing removes
    assert sd["isometry_over_unrelated"] < 0.05 < sr["isometry_over_unrelated"]  # isometric copies read as ~equal
    assert sd["mean_spearman"] >= 0.9 and sd["mean_spearman"] > sr["mean_spearman"]
    x, y = _blobs(np.random.default_rng(0), 30, 3), _blobs(np.random.default_rng(1), 30, 2)
    assert gw_distance(x, y).raw_distance is None  # exact by default: nothing to debias
    res = gw_distance(x, y, deb)
    assert res.distance == pytest.approx(res.raw_distance - sum(res.self_distances) / 2, abs=1e-12)
    with pytest.raises(ConfigError, match="exact GW"):
        GWSettings(method="exact", debias=True)


def test_debiasing_solves_the_three_terms_at_one_epsilon_and_clamps_negatives():
    def res(d, eps):
        return gromov.GWResult(d, "entropic", eps, 10, True, 0.0)

    calls = []

    def resolve(which, eps):
        calls.append((which, eps))
        return res(0.05, eps)

    r = gromov.debiased(res(0.3, 0.1), res(0.2, 0.05), res(0.1, 0.1), resolve)
    assert calls == [("xx", 0.1)] and r.distance == pytest.approx(0.3 - 0.025 - 0.05) and r.epsilon == 0.1
    assert any("re-solved" in n for n in r.notes)
    r = gromov.debiased(res(0.1, 0.05), res(0.3, 0.05), res(0.1, 0.05), resolve)
    assert r.distance == 0.0 and any("clamped" in n for n in r.notes) and r.raw_distance == 0.1


def test_debiased_gw_matrix_sends_self_pairs_through_the_pair_map():
    rng = np.random.default_rng(5)
    feats = {"a": _blobs(rng, 30, 2), "b": _blobs(rng, 30, 3), "c": rng.normal(size=(30, 5))}
    s = GWSettings(method="entropic")
    seen = []

    def recording_map(ready, pairs, settings):  # what a remote map sees: raw settings, cross and self pairs
        seen.append((list(pairs), settings.debias))
        yield from reversed(list(gromov.local_pairs(ready, pairs, settings)))

    m = gw_matrix(feats, s, progress=False, pair_map=recording_map)
    pairs, debias = seen[0]
    assert debias is False and {("a", "a"), ("b", "b"), ("c", "c"), ("a", "b")} <= set(pairs) and len(pairs) == 6
    d = m.distances
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0) and np.all(d >= 0)
    assert d[0, 1] == pytest.approx(gw_distance(feats["a"], feats["b"], s).distance, rel=1e-9)
    assert all(p["raw_distance"] is not None and len(p["self_distances"]) == 2 for p in m.pairs)
    assert [(p["a"], p["b"]) for p in m.pairs] == [("a", "b"), ("a", "c"), ("b", "c")]


def test_quantized_gw_keeps_the_mass_and_tracks_the_exact_value():
    rng = np.random.default_rng(3)
    x, y, z = _blobs(rng, 300, 3), _blobs(rng, 300, 3), rng.normal(size=(300, 5))
    support, w = gromov.summarise(x, 40, seed=0)
    assert len(support) <= 40 and w.sum() == pytest.approx(1.0) and (w > 0).all()
    q = GWSettings(quantize=40)
    assert gw_distance(x, y, q).distance < gw_distance(x, z, q).distance


def test_gw_matrix_is_symmetric_and_similarity_normalised():
    rng = np.random.default_rng(4)
    feats = {"a": _blobs(rng, 40, 2), "b": _blobs(rng, 40, 2), "c": rng.normal(size=(40, 5))}
    m = gw_matrix(feats, progress=False)
    d = m.distances
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0) and np.all(d >= 0)
    s = m.similarity()
    off = ~np.eye(3, dtype=bool)
    assert s[off].max() == pytest.approx(1.0) and s[off].min() == pytest.approx(0.0)
    assert m.peak_bytes > 0 and len(m.pairs) == 3
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        gw_matrix({"a": feats["a"]}, progress=False)


# -- plans ----------------------------------------------------------------------------------------------------------
def _all_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _all_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first, *part[i]]] + part[i + 1 :]
        yield [[first], *part]


@pytest.mark.parametrize(
    ("n", "k", "balanced", "max_size"), [(7, 3, True, None), (7, 2, False, None), (6, 3, False, 2)]
)
def test_optimal_plan_matches_brute_force(n, k, balanced, max_size):
    rng = np.random.default_rng(n + k)
    s = rng.random((n, n))
    s = (s + s.T) / 2
    ids = [f"t{i}" for i in range(n)]
    plan = optimal_plan(s, ids, k, balanced=balanced, max_size=max_size)
    plan.validate(ids)
    lo, hi = plan.extra["size_limits"]
    feasible = [p for p in _all_partitions(ids) if len(p) == k and all(lo <= len(g) <= hi for g in p)]
    best = max(plan_score(MergePlan("x", p), s, ids) for p in feasible)
    assert plan.n_groups == k and all(lo <= len(g) <= hi for g in plan.groups)
    assert plan_score(plan, s, ids) == pytest.approx(best)
    assert plan.extra["objective"] == pytest.approx(best)


def test_loss_plan_minimises_the_summed_pairwise_loss():
    rng = np.random.default_rng(11)
    ids = [f"t{i}" for i in range(6)]
    a = rng.uniform(size=(6, 6))
    losses = (a + a.T) / 2
    np.fill_diagonal(losses, np.nan)  # a pair of a task with itself is never measured
    plan = loss_plan(losses, ids, 3)
    clean = np.nan_to_num(losses)

    def total(groups):
        return sum(clean[ids.index(x), ids.index(y)] for g in groups for x, y in itertools.combinations(g, 2))

    best = min(total(p) for p in _all_partitions(ids) if len(p) == 3 and all(len(g) == 2 for g in p))
    assert plan.extra["total_loss"] == pytest.approx(best) and total(plan.groups) == pytest.approx(best)
    with pytest.raises(ConfigError, match="symmetric"):
        loss_plan(clean + np.triu(np.ones((6, 6)), 1), ids, 3)
    with pytest.raises(ConfigError, match="shape"):
        loss_plan(clean[:5, :5], ids, 3)


def test_plan_search_errors_are_clear():
    s = np.ones((4, 4))
    ids = ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match="between 1 and 4"):
        optimal_plan(s, ids, 5)
    with pytest.raises(ConfigError, match="no partition"):
        optimal_plan(s, ids, 2, max_size=1)
    big = [f"t{i}" for i in range(30)]
    with pytest.raises(ConfigError, match="too large"):
        optimal_plan(np.ones((30, 30)), big, 3)


def test_random_plans_are_valid_seeded_and_uniform():
    ids = ["a", "b", "c", "d"]
    plans = random_plans(ids, 2, 3000, seed=0)
    for p in plans[:50]:
        p.validate(ids)
        assert sorted(len(g) for g in p.groups) == [2, 2]
    counts = {}
    for p in plans:
        key = tuple(sorted(tuple(sorted(g)) for g in p.groups))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3 and min(counts.values()) > 850  # 3 partitions, each ~1000
    again = random_plans(ids, 2, 5, seed=0)
    assert [p.groups for p in again] == [p.groups for p in plans[:5]]
    # unbalanced: group sizes 1+3 appear too, weighted by how many partitions have them (4 of 7)
    loose = random_plans(ids, 2, 2000, seed=1, balanced=False)
    share_13 = np.mean([sorted(len(g) for g in p.groups) == [1, 3] for p in loose])
    assert share_13 == pytest.approx(4 / 7, abs=0.05)


def test_clustering_plan_groups_the_close_tasks():
    d = np.array([[0, 1, 9, 9], [1, 0, 9, 9], [9, 9, 0, 1], [9, 9, 1, 0]], dtype=float)
    plan = clustering_plan(d, ["a", "b", "c", "d"], 2)
    assert sorted(sorted(g) for g in plan.groups) == [["a", "b"], ["c", "d"]]
    assert normalised_similarity(d)[0, 1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"groups": [["a", "b"], ["c"]]}', r"\['d'\] are in no group"),
        ('{"groups": [["a", "b"], ["b", "c", "d"]]}', "'b' is in groups 1 and 2"),
        ('{"groups": [["a", "b", "x"], ["c", "d"]]}', r"\['x'\] are not in the suite"),
        ('{"groups": [["a", "b", "c", "d"], []]}', "group 2 is empty"),
        ('{"groups": "a,b"}', "must be a list of lists"),
        ('{"groups": [["a"],', "not valid JSON"),
    ],
)
def test_plan_file_errors_name_the_problem(tmp_path, content, match):
    f = tmp_path / "plan.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        MergePlan.from_file(f, ["a", "b", "c", "d"])


# -- merging tensors ------------------------------------------------------------------------------------------------
def test_ties_trims_elects_sign_and_takes_the_disjoint_mean():
    base = {"w": torch.zeros(5), "ids": torch.arange(5)}
    a = {"w": torch.tensor([4.0, -1.0, 0.1, 2.0, 0.0]), "ids": torch.arange(5)}
    b = {"w": torch.tensor([2.0, 3.0, 0.2, -4.0, 0.0]), "ids": torch.arange(5)}
    merged = merge_state_dicts(base, [a, b], MergeSettings(method="ties", density=0.4))
    # top-40% (2 of 5) per task: a keeps [4, 2] at 0 and 3, b keeps [3, -4] at 1 and 3.
    # signs: pos 0: +; pos 1: +; pos 3: 2 + (-4) < 0 -> '-': only b's -4 kept.
    assert torch.allclose(merged["w"], torch.tensor([4.0, 3.0, 0.0, -4.0, 0.0]))
    assert torch.equal(merged["ids"], base["ids"])
    ta = merge_state_dicts(base, [a, b], MergeSettings(method="task_arithmetic", scale=0.5))
    assert torch.allclose(ta["w"], 0.5 * (a["w"] + b["w"]))


def test_task_vectors_are_taken_against_the_pretrained_base():
    base = {"w": torch.full((6,), 10.0)}
    tuned = {"w": torch.tensor([11.0, 9.0, 10.0, 12.0, 10.0, 10.0])}
    same_as_base = {"w": base["w"].clone()}
    merged = merge_state_dicts(base, [tuned, same_as_base], MergeSettings(method="ties", density=1.0))
    # the untouched model adds nothing, so the tuned model's vector survives whole (disjoint mean over non-zeros)
    assert torch.allclose(merged["w"], tuned["w"])
    only = merge_state_dicts(base, [tuned], MergeSettings(method="ties", density=0.2))
    assert torch.equal(only["w"], tuned["w"])  # a group of one is not trimmed


def test_dare_ties_is_seeded_and_rescales():
    torch.manual_seed(0)
    base = {"w": torch.zeros(2000)}
    a, b = {"w": torch.randn(2000)}, {"w": torch.randn(2000)}
    s = MergeSettings(method="dare_ties", density=0.5, seed=3)
    m1, m2 = merge_state_dicts(base, [a, b], s), merge_state_dicts(base, [a, b], s)
    assert torch.equal(m1["w"], m2["w"])
    assert 0.3 < (m1["w"] != 0).float().mean() < 0.9


def test_mismatched_state_dicts_are_refused():
    with pytest.raises(SuiteError, match="does not have the base encoder's tensors"):
        merge_state_dicts({"w": torch.zeros(2)}, [{"w": torch.ones(2)}, {"v": torch.ones(2)}])
    with pytest.raises(ConfigError, match="density"):
        MergeSettings(density=0.0)


def test_lora_merge_factors_back_the_merged_update():
    torch.manual_seed(0)

    def adapter(r):
        return {"m.lora_A.weight": torch.randn(r, 12), "m.lora_B.weight": torch.randn(10, r)}

    a, b = adapter(2), adapter(3)
    state, r, err = merge_lora([(a, 2.0), (b, 0.5)], MergeSettings(method="task_arithmetic"))
    assert r == 5 and err < 1e-5
    want = 2.0 * a["m.lora_B.weight"] @ a["m.lora_A.weight"] + 0.5 * b["m.lora_B.weight"] @ b["m.lora_A.weight"]
    got = state["m.lora_B.weight"] @ state["m.lora_A.weight"]
    assert torch.allclose(got, want, atol=1e-4)
    _, _, err_low = merge_lora([(a, 2.0), (b, 0.5)], MergeSettings(method="task_arithmetic", lora_rank=1))
    assert err_low > 0.05  # rank 1 cannot hold a rank-5 update: the error is reported, not hidden
    _, r_high, err_high = merge_lora([(a, 2.0), (b, 0.5)], MergeSettings(method="task_arithmetic", lora_rank=40))
    assert r_high == 5 and err_high < 1e-5  # never padded above the members' ranks together
    alone, r_one, err_one = merge_lora([(b, 0.5)], MergeSettings(lora_rank=1))
    assert r_one == 3 and err_one < 1e-5  # a group of one keeps its own adapter at any merged rank


# -- suites ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_suite(tiny_full_suite):
    return tiny_full_suite


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path):
    root = tmp_path_factory.mktemp("merge") / "lora"
    return train_tiny_suite(demo_datasets, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(), max_length=32)


def _scorer(suite, path):
    """The models' own probabilities: a merged task keeps neither its source's decoding nor a stacked lexical model
    (both were fitted to the unmerged model; `scoreplex calibrate` refits them)."""
    from scoreplex.scorer import SuiteScorer

    return SuiteScorer(suite.root, backbone=str(path), decoding=False, lexical=False)


def test_features_are_subsampled_by_id_and_cached(full_suite, demo_datasets, tiny_backbone_path, tmp_path):
    ids = [f"r{i}" for i in range(50)]
    picked = {ids[i] for i in sample_indices(ids, 10, seed=0)}
    rev = ids[::-1]
    assert {rev[i] for i in sample_indices(rev, 10, seed=0)} == picked  # row order does not matter
    assert len(picked) == 10 and sample_indices(ids, None, 0).tolist() == list(range(50))
    scorer = _scorer(full_suite, tiny_backbone_path)
    s = FeatureSettings(cap=20)
    f1 = suite_features(scorer, demo_datasets, s, cache_dir=tmp_path, progress=False)
    assert {k: v.shape for k, v in f1.items()} == {t: (20, 32) for t in demo_datasets}
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    f2 = suite_features(scorer, demo_datasets, s, cache_dir=tmp_path, progress=False)
    assert all(np.array_equal(f1[t], f2[t]) for t in f1)
    mid = suite_features(scorer, demo_datasets, FeatureSettings(cap=20, layer=1), progress=False)
    assert not np.allclose(mid["demo-food-web"], f1["demo-food-web"])
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        suite_features(scorer, demo_datasets, FeatureSettings(cap=5, layer=7), progress=False)


def test_merged_full_suite_loads_scores_and_is_smaller(full_suite, demo_datasets, tiny_backbone_path, tmp_path):
    from scoreplex.scorer import SuiteScorer
    from scoreplex.suite import Suite

    scorer = _scorer(full_suite, tiny_backbone_path)
    ids = full_suite.task_ids
    plan = MergePlan("p", [ids[:2], ids[2:]])
    merged = merge_suite(scorer, plan, tmp_path / "m", progress=False)
    assert merged.method == "full" and set(merged.task_ids) == set(ids)
    assert merged.total_bytes < 0.6 * full_suite.total_bytes  # 2 encoders instead of 4
    reopened = SuiteScorer(tmp_path / "m", backbone=str(tiny_backbone_path))
    # the scorer reads exactly the merged encoder the evaluator builds in memory
    ev = PlanEvaluator(scorer, demo_datasets)
    res = ev.evaluate(plan)
    for t in ids:
        pred = reopened.predict(t, demo_datasets[t].texts).labels
        assert np.array_equal(pred, ev.predictions(plan.groups[plan.group_of(t)])[t])
        assert res["tasks"][t]["n"] == len(demo_datasets[t])
    # merging changed the encoders: a task's merged model differs from its own fine-tune
    own = scorer.model(ids[0]).encoder.state_dict()
    shared = Suite.open(tmp_path / "m").load_shared("group-0")
    key = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(shared[key], own[key.removeprefix("encoder.")])
    with pytest.raises(ConfigError, match="already holds a suite"):
        merge_suite(scorer, plan, tmp_path / "m", progress=False)


def test_unmerged_plan_reproduces_the_source_suite(full_suite, demo_datasets, tiny_backbone_path):
    scorer = _scorer(full_suite, tiny_backbone_path)
    ev = PlanEvaluator(scorer, demo_datasets)
    res = ev.evaluate(unmerged_plan(full_suite.task_ids))
    for t, data in demo_datasets.items():
        assert np.array_equal(ev.predictions([t])[t], scorer.predict(t, data.texts).labels)
        assert "qwk" in res["tasks"][t]


def test_shared_module_corruption_and_removal(full_suite, tiny_backbone_path, tmp_path):
    from scoreplex.suite import Suite

    scorer = _scorer(full_suite, tiny_backbone_path)
    ids = full_suite.task_ids
    merge_suite(scorer, MergePlan("p", [ids[:3], ids[3:]]), tmp_path / "m", progress=False)
    s = Suite.open(tmp_path / "m")
    for t in ids[3:]:
        s.remove_task(t)
    assert "group-1" not in s.manifest["shared"] and not (tmp_path / "m/shared/group-1.safetensors").exists()
    f = tmp_path / "m/shared/group-0.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(SuiteError, match="shared module 'group-0'.*SHA-256"):
        Suite.open(tmp_path / "m")


def test_head_refit_trains_new_heads_on_the_merged_encoder(full_suite, demo_datasets, tiny_backbone_path, tmp_path):
    from scoreplex.data.splits import train_val_split
    from scoreplex.merging.merged_suite import REFIT_CONFIG
    from scoreplex.suite import Suite

    scorer = _scorer(full_suite, tiny_backbone_path)
    ids = full_suite.task_ids
    splits = {t: train_val_split(d, val_fraction=0.25, seed=0) for t, d in demo_datasets.items()}
    refit = ({t: s[0] for t, s in splits.items()}, {t: s[1] for t, s in splits.items()})
    cfg = REFIT_CONFIG.__class__(epochs=3, lr=1e-2, batch_size=16, patience=0)
    plan = MergePlan("p", [ids])
    plain = merge_suite(scorer, plan, tmp_path / "plain", progress=False)
    refitted = merge_suite(scorer, plan, tmp_path / "refit", refit=refit, refit_config=cfg, progress=False)
    t = ids[0]
    _, a = Suite.open(plain.root).load_module(t)
    _, b = Suite.open(refitted.root).load_module(t)
    assert not torch.equal(a["head.net.2.weight"], b["head.net.2.weight"])
    assert "validation" in refitted.task_info(t)["summary"]["metrics"]
    assert refitted.manifest["merge"]["head_refit"] is True


def test_lora_groups_of_one_reproduce_each_adapter(lora_suite, demo_datasets, tiny_backbone_path, tmp_path):
    scorer = _scorer(lora_suite, tiny_backbone_path)
    ids = lora_suite.task_ids
    merged = merge_suite(scorer, unmerged_plan(ids), tmp_path / "m", progress=False)
    again = _scorer(merged, tiny_backbone_path)
    for t in ids:
        a = scorer.predict(t, demo_datasets[t].texts)
        b = again.predict(t, demo_datasets[t].texts)
        assert np.allclose(a.probs[0], b.probs[0], atol=1e-4)
    plan = MergePlan("p", [ids[:2], ids[2:]])
    summed = merge_suite(scorer, plan, tmp_path / "sum", MergeSettings(method="task_arithmetic"), progress=False)
    assert summed.manifest["merge"]["groups"][0]["svd_relative_error"] < 1e-4  # rank 16 holds two rank-8 updates
    pair = merge_suite(scorer, plan, tmp_path / "pair", progress=False)
    # TIES trims entries of the dense updates, so the merged update is no longer low-rank: the error is reported
    assert 0 < pair.manifest["merge"]["groups"][0]["svd_relative_error"] < 1
    assert _scorer(pair, tiny_backbone_path).predict(ids[0], demo_datasets[ids[0]].texts[:5]).labels.shape == (5, 1)


def test_a_merged_lora_adapter_can_be_factored_to_one_members_rank(
    lora_suite, demo_datasets, tiny_backbone_path, tmp_path
):
    from scoreplex.suite import Suite

    scorer = _scorer(lora_suite, tiny_backbone_path)
    ids = lora_suite.task_ids
    plan = MergePlan("p", [ids])
    summed = merge_suite(scorer, plan, tmp_path / "sum", progress=False)
    small = merge_suite(scorer, plan, tmp_path / "r4", MergeSettings(lora_rank=4), progress=False)
    shared = Suite.open(small.root).load_shared("group-0")
    a_keys = [k for k in shared if k.endswith("lora_A.weight")]
    assert a_keys and all(shared[k].shape[0] == 4 for k in a_keys)
    assert all(v.shape[1] == 4 for k, v in shared.items() if k.endswith("lora_B.weight"))
    assert small.total_bytes < summed.total_bytes  # one rank-4 adapter instead of rank 4 x 8
    err = [s.manifest["merge"]["groups"][0]["svd_relative_error"] for s in (summed, small)]
    assert err[1] > err[0]  # truncation loses part of the merged update, and says how much
    for t in ids:
        assert small.task_info(t)["config"]["lora_r"] == 4
    pred = _scorer(small, tiny_backbone_path).predict(ids[1], demo_datasets[ids[1]].texts[:5])
    assert pred.labels.shape == (5, 1)
    with pytest.raises(ConfigError, match="merged LoRA rank=0"):
        MergeSettings(lora_rank=0)


def test_merge_cli_writes_a_lora_suite_at_the_asked_rank(lora_suite, demo_files, tiny_backbone_path, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.suite import Suite

    out = tmp_path / "merged"
    args = ["merge", str(lora_suite.root), str(demo_files["train"]), str(out), "--groups", "1", "--cap", "30"]
    res = CliRunner().invoke(app, [*args, "--lora-rank", "2"])
    assert res.exit_code == 0, res.output
    merged = Suite.open(out)
    shared = merged.load_shared("group-0")
    assert all(v.shape[0] == 2 for k, v in shared.items() if k.endswith("lora_A.weight"))
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["storage"]["after_bytes"] < report["storage"]["before_bytes"]
    assert f"({report['storage']['ratio']:.2f}x)" in res.output
    # the models only: the report folder written into the merged suite is not counted
    assert report["storage"]["after_bytes"] == merged.model_bytes < merged.total_bytes
    assert report["storage"]["before_bytes"] == Suite.open(lora_suite.root).model_bytes


def test_head_suite_cannot_be_merged(demo_datasets, tiny_bb, tiny_backbone_path, tmp_path):
    from scoreplex.merging import GroupMerger

    suite = train_tiny_suite(
        {k: demo_datasets[k] for k in list(demo_datasets)[:2]},
        tmp_path / "h",
        tiny_bb,
        tiny_backbone_path,
        "head",
        MethodSettings(),
        max_length=32,
    )
    with pytest.raises(SuiteError, match="head.*already shares one encoder"):
        GroupMerger(_scorer(suite, tiny_backbone_path))


def test_merge_cli_writes_suite_and_report(full_suite, demo_files, tiny_backbone_path, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    runner = CliRunner()
    out = tmp_path / "merged"
    args = [
        "merge",
        str(full_suite.root),
        str(demo_files["train"]),
        str(out),
        "--groups",
        "2",
        "--cap",
        "30",
        "--eval",
        str(demo_files["test"]),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report" / "report.json").read_text())
    assert len(report["plan"]["groups"]) == 2 and report["storage"]["ratio"] > 1.5
    assert {"before", "after"} <= set(report["evaluation"])
    assert (out / "report" / "gw-heatmap.png").stat().st_size > 1000
    assert (out / "report" / "before-after.png").is_file()
    bad = tmp_path / "plan.json"
    bad.write_text('{"groups": [["demo-food-web"]]}')
    res = runner.invoke(
        app, ["merge", str(full_suite.root), str(demo_files["train"]), str(tmp_path / "x"), "--plan", str(bad)]
    )
    assert res.exit_code == 2 and "in no group" in res.output


def test_all_partitions_helper_counts_bell_numbers():
    assert sum(1 for _ in _all_partitions(list("abcde"))) == 52
    assert len(list(itertools.islice(_all_partitions(list("ab")), 5))) == 2
