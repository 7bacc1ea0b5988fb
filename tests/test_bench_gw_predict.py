"""Smoke test of benchmarks/gw_predict.py (issue 15): pairwise merge losses of a tiny LoRA suite of 3 demo tasks
against the similarity registry, the report's keys, and a rerun served from the pair cache; plus its statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.conftest import load_benchmark
from tests.lora_suites import train_tiny_suite

from scoreplex.errors import ConfigError
from scoreplex.methods import MethodSettings

TOP_KEYS = ("command", "date", "machine", "protocol", "gw_merge_loss_spearman", "best_similarity",
            "best_similarity_spearman", "n_pairs", "correlations", "reference_plan", "similarity_plans")  # fmt: skip


def _load_bench():
    return load_benchmark("gw_predict")


def test_rank_correlation_matches_scipy_and_its_p_values_respond():
    from scipy.stats import spearmanr

    bench = _load_bench()
    rng = np.random.default_rng(0)
    t = 6
    pts = rng.normal(size=(t, 2))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)  # (T, T) distances
    iu = np.triu_indices(t, 1)
    noise = rng.normal(size=(t, t))
    loss = d + 0.05 * (noise + noise.T)
    res = bench.rank_correlation(loss, d, n_perm=2000, seed=0)
    assert res["rho"] == pytest.approx(spearmanr(loss[iu], d[iu]).statistic)
    assert res["rho"] > 0.8 and res["p_pairs"] < 0.01 and res["p_mantel"] < 0.05 and res["n_pairs"] == 15
    unrelated = rng.permutation(loss[iu])
    shuffled = np.zeros((t, t))
    shuffled[iu] = unrelated
    shuffled += shuffled.T
    weak = bench.rank_correlation(shuffled, d, n_perm=2000, seed=0)
    assert weak["p_pairs"] > res["p_pairs"]
    # unmeasured pairs are left out, and the Mantel test (it needs the whole matrix) is not given
    part = loss.copy()
    part[0, 1] = part[1, 0] = np.nan
    res = bench.rank_correlation(part, d, n_perm=200)
    assert res["n_pairs"] == 14 and res["p_mantel"] is None and -1 <= res["rho"] <= 1
    assert bench.rank_correlation(np.ones((t, t)), d)["rho"] is None  # constant losses: undefined


def test_grid_and_form_names_are_checked():
    bench = _load_bench()
    assert bench.parse_grid("0.2:1,0.5:2") == ((0.2, 1.0), (0.5, 2.0))
    measure, settings = bench.parse_gw_form("entropic-raw-q200", 1, 0.05)
    assert measure == "gw-raw" and settings.quantize == 200 and settings.seed == 1 and settings.method == "entropic"
    assert bench.parse_gw_form("exact-all", 0, 0.05)[1].quantize is None
    with pytest.raises(ConfigError, match="GW form"):
        bench.parse_gw_form("sinkhorn-q10", 0, 0.05)
    with pytest.raises(ConfigError, match="density"):
        bench.parse_grid("0:1")


def test_benchmark_on_a_tiny_lora_suite_and_its_cache(demo_datasets, tiny_bb, tiny_backbone_path, tmp_path):
    bench = _load_bench()
    three = {t: demo_datasets[t] for t in list(demo_datasets)[:3]}
    suite = train_tiny_suite(three, tmp_path / "lora", tiny_bb, tiny_backbone_path, "lora", MethodSettings(), 32)
    argv = [
        *("--suite", str(suite.root), "--backbone", str(tiny_backbone_path)),
        *("--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")),
        *("--grid", "0.2:1", "--refit-rows", "20", "--cap", "20", "--probe-size", "12"),
        *("--gw-forms", "exact-q4,entropic-all", "--kmeans-seeds", "0,1"),
        *("--n-groups", "2", "--n-random", "5", "--n-perm", "200"),
    ]
    report = bench.main(argv, train_all=three)
    for key in TOP_KEYS:
        assert key in report
    assert report["n_pairs_total"] == 3 and report["pairs_computed_this_run"] == 3
    names = {"gw/exact-q4-s0", "gw/exact-q4-s1", "gw/entropic-all", "cka", "task-vector", "text"}
    assert set(report["correlations"]) == names
    for c in report["correlations"].values():
        assert c["rho"] is None or -1 <= c["rho"] <= 1
    assert report["gw_primary_form"] == "gw/exact-q4-s0"  # the default form was not asked for: the first GW one
    for p in report["pairs"]:
        assert p["loss"] is None or -1 <= p["loss"] <= 2
        assert p["best"] is None or (p["best"]["density"], p["best"]["scale"]) == (0.2, 1.0)
    if report["n_pairs"] == 3:  # every loss defined: the plans are scored, and the reference is the best of them
        ref = report["reference_plan"]["total_loss"]
        assert all(ref <= pl["total_loss"] + 1e-12 for pl in report["similarity_plans"].values())
    out = tmp_path / "out"
    stored = json.loads((out / "gw-predict.json").read_text())
    assert stored["n_pairs_total"] == 3 and (out / "gw-predict.png").stat().st_size > 1000
    assert "merge loss" in (out / "gw-predict.md").read_text()

    pair_files = sorted((tmp_path / "work" / "pairs").glob("*.json"))
    assert len(pair_files) == 3
    before = {p: p.stat().st_mtime_ns for p in pair_files}
    again = bench.main(argv, train_all=three)
    assert again["pairs_computed_this_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in pair_files} == before
    assert again["correlations"] == report["correlations"]
    # a changed protocol is not served from the cache; --max-pairs bounds the new work
    changed = bench.main([*argv, "--refit-rows", "16", "--max-pairs", "1"], train_all=three)
    assert changed["pairs_computed_this_run"] == 1

    # --losses-from: the losses of the first report, only the similarities computed (a fresh work folder)
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps(json.loads(json.dumps(report))))
    fresh = [*argv[: argv.index("--work")], "--work", str(tmp_path / "work2"), *argv[argv.index("--work") + 2 :]]
    reused = bench.main([*fresh, "--losses-from", str(kept)], train_all=three)
    assert reused["pairs_computed_this_run"] == 0 and not (tmp_path / "work2" / "pairs").exists()
    assert [p["loss"] for p in reused["pairs"]] == [p["loss"] for p in report["pairs"]]
    assert reused["correlations"] == report["correlations"]
    assert (
        reused["losses_from"]["report"] == str(kept)
        and "measured by an earlier run" in (out / "gw-predict.md").read_text()
    )
    with pytest.raises(ConfigError, match="other settings \\(refit_rows\\)"):
        bench.main([*fresh, "--refit-rows", "16", "--losses-from", str(kept)], train_all=three)
    other = json.loads(kept.read_text())
    other["unmerged"][list(three)[0]]["stored_qwk"] = 0.123
    kept.write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="other models"):
        bench.main([*fresh, "--losses-from", str(kept)], train_all=three)
