"""benchmarks/routing.py: out-of-fold comparison of routing rules on a validation split (synthetic data, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import routing
from scoreplex.data.dataset import TaskData
from scoreplex.errors import ConfigError
from scoreplex.tasks import TaskSpec


def _item(n: int = 160, seed: int = 0, engine_error: float = 0.1) -> dict:
    rng = np.random.default_rng(seed)
    spec = TaskSpec.ordinal("asap-x", 3)
    y = rng.integers(0, 4, n)
    wrong = rng.random(n) < engine_error
    guess = np.where(wrong, (y + 1) % 4, y)
    probs = np.full((n, 4), 0.02)
    probs[np.arange(n), guess] = np.where(wrong, 0.5, rng.uniform(0.7, 0.94, n))
    probs /= probs.sum(axis=1, keepdims=True)
    second = np.where(rng.random(n) < 0.15, (y + 1) % 4, y)
    val = TaskData(spec, [f"r{i}" for i in range(n)], ["t"] * n, y[:, None], second[:, None])
    return {"val": val, "probs": [probs], "human": {"qwk": 0.85, "exact": 0.85, "n": 500}}


def test_every_variant_and_yardstick_is_judged_out_of_fold(tmp_path):
    res = routing.run_item(_item(), splits=3, seed=0)
    assert len(res) == len(routing.VARIANTS) * len(routing.YARDSTICKS)
    for figures in res.values():
        assert 0.0 <= figures["automation_rate"] <= 1.0 and 0.0 <= figures["meets_share"] <= 1.0
    # the bootstrap margin never automates more than the lowest threshold on the same halves
    for yard in routing.YARDSTICKS:
        assert (
            res[f"{yard}: quadratic/confident-0.9"]["automation_rate_on_fit_half"]
            <= res[f"{yard}: quadratic/lowest"]["automation_rate_on_fit_half"] + 1e-12
        )
    report = {
        "suite": "s",
        "splits": 3,
        "date": "d",
        "machine": "m",
        "seconds": 1.0,
        "summary": {k: {f"mean_{m}": v[m] for m in v} for k, v in res.items()},
        "items": {"asap-x": res},
    }
    routing.write_report(report, tmp_path)
    text = (tmp_path / "routing.md").read_text()
    assert "| asap-x |" in text and "quadratic confidence automated" in text
    assert (tmp_path / "routing.png").stat().st_size > 0
    json.dumps(report, allow_nan=False)


def test_a_missing_suite_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--suite"):
        routing.main(["--suite", str(tmp_path / "nothing"), "--out", str(tmp_path)])
