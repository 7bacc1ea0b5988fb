"""Decoding: temperature scaling, ordinal cut points, binary thresholds, routing, storage in the task module."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoreplex.decoding import (
    ALL_HUMAN,
    Decoding,
    DimensionDecoding,
    RouteOptions,
    agreement,
    calibration_consistency,
    dimension_confidence,
    expected_calibration_error,
    fit_cutpoints,
    fit_decoding,
    fit_route_threshold,
    fit_temperature,
    meets_human_share,
    temperature_scale,
)
from scoreplex.errors import ConfigError, SuiteError
from scoreplex.metrics import automated_criteria, meets_human, quadratic_weighted_kappa
from scoreplex.tasks import TaskSpec

SPEC = TaskSpec.ordinal("item", 3)  # scores 0..3


def _overconfident(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose argmax is right 60% of the time but which claim ~99% confidence."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    guess = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    logits = rng.normal(0, 0.3, (n, k))
    logits[np.arange(n), guess] += 6.0
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), y


def test_temperature_softens_an_overconfident_model_and_lowers_ece():
    p, y = _overconfident(2000, 4)
    t = fit_temperature(p, y)
    assert t > 1.5
    before, after = expected_calibration_error(p, y), expected_calibration_error(temperature_scale(p, t), y)
    assert before > 0.25
    assert after < 0.05
    # the argmax never changes under a temperature
    assert np.array_equal(temperature_scale(p, t).argmax(axis=1), p.argmax(axis=1))


def test_ece_is_zero_for_a_calibrated_predictor():
    y = np.array([0, 1] * 50)
    p = np.full((100, 2), 0.5)  # 50% confident, right half of the time
    assert expected_calibration_error(p, y) == pytest.approx(0.0)


def _calibrated(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities with labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = np.exp(2 * rng.normal(size=(n, k)))
    p /= p.sum(axis=1, keepdims=True)
    return p, np.array([rng.choice(k, p=row) for row in p])


def test_calibration_consistency_separates_chance_from_miscalibration():
    p, y = _calibrated(557, 4)
    calibrated = calibration_consistency(p, y)
    # a calibrated model still measures an ECE well above 0 on 557 responses: the floor is of the same size ...
    assert calibrated["ece"] == pytest.approx(expected_calibration_error(p, y))
    assert 0.02 < calibrated["floor"] < 0.08 and calibrated["floor"] < calibrated["floor_q95"]
    assert calibrated["p_value"] > 0.05 and calibrated["n"] == 557  # ... and is not rejected
    sharp = np.exp(3 * np.log(p))  # the same model, overconfident
    sharp /= sharp.sum(axis=1, keepdims=True)
    over = calibration_consistency(sharp, y)
    assert over["ece"] > over["floor_q95"] and over["p_value"] < 0.01
    assert calibration_consistency(sharp, y) == over  # seeded
    many = calibration_consistency(*_calibrated(20000, 4))  # the floor shrinks with N
    assert many["floor"] < calibrated["floor"] / 3


def test_task_calibration_corrects_for_several_dimensions_and_skips_missing_scores():
    from scoreplex.decoding import task_calibration
    from scoreplex.metrics import MISSING

    p, y = _calibrated(300, 2, seed=4)
    q, z = _calibrated(300, 2, seed=5)
    spec = TaskSpec.multilabel("ml", ["a", "b"])
    z = z.copy()
    z[:50] = MISSING  # dimension b scored on 250 responses only
    out = task_calibration(spec, np.stack([y, z], axis=1), [p, q])
    a, b = out["dimensions"]["a"], out["dimensions"]["b"]
    assert a["n"] == 300 and b["n"] == 250
    assert b["ece"] == pytest.approx(expected_calibration_error(q[50:], z[50:]))
    assert out["p_value"] == pytest.approx(min(1.0, 2 * min(a["p_value"], b["p_value"])))  # Bonferroni
    assert out["ece"] == pytest.approx((a["ece"] + b["ece"]) / 2)


def test_cutpoints_fix_a_biased_expected_score():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 1500)
    # the model's expected score is squeezed towards the middle: argmax and k-0.5 rounding under-use 0 and 3
    e = 1.5 + 0.35 * (y - 1.5) + rng.normal(0, 0.2, y.size)
    default = quadratic_weighted_kappa(y, np.searchsorted([0.5, 1.5, 2.5], e, side="right"), labels=range(4))
    cuts = fit_cutpoints(e, y, 4)
    tuned = quadratic_weighted_kappa(y, np.searchsorted(cuts, e, side="right"), labels=range(4))
    assert list(cuts) == sorted(cuts)
    assert tuned > default + 0.1


def _ordinal_probs(y: np.ndarray, k: int, spread: float, rng) -> np.ndarray:
    centre = 1.5 + 0.5 * (y - 1.5) + rng.normal(0, spread, y.size)
    logits = -((np.arange(k)[None, :] - centre[:, None]) ** 2) * 2.0
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def test_fit_decoding_keeps_cutpoints_only_when_they_beat_argmax_out_of_fold():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 600)
    p = _ordinal_probs(y, 4, 0.15, rng)
    dec = fit_decoding(SPEC, [p], y[:, None], human=None)
    rep = dec.fitted["dimensions"]["score"]
    assert dec.dimensions[0].rule == "cutpoints"
    assert rep["qwk_cutpoints_out_of_fold"] > rep["qwk_argmax_out_of_fold"]
    assert dec.route_threshold is None  # no human reference: no routing
    # already perfect probabilities: nothing to gain, argmax stays
    exact = np.eye(4)[y] * 0.97 + 0.01
    assert fit_decoding(SPEC, [exact], y[:, None]).dimensions[0].rule == "argmax"


def test_routing_automates_the_confident_part_at_human_agreement():
    rng = np.random.default_rng(3)
    n = 800
    y = rng.integers(0, 4, n)
    sure = rng.random(n) < 0.6  # 60% easy responses the model gets right with high confidence
    guess = np.where(sure, y, rng.integers(0, 4, n))
    p = np.full((n, 4), 0.0)
    p[np.arange(n), guess] = np.where(sure, 0.95, 0.4)
    p += (1 - p.sum(axis=1, keepdims=True)) / 4
    human = {"qwk": 0.9, "exact": 0.85, "adjacent": 1.0, "n": 100}
    dec = fit_decoding(SPEC, [p], y[:, None], human=human)
    assert dec.route_threshold is not None and 0 < dec.route_threshold <= 1
    pred = dec.predictions(SPEC, [str(i) for i in range(n)], [p])
    auto = pred.automated
    assert 0.5 < auto.mean() < 0.75
    a = agreement(SPEC, y[auto][:, None], pred.labels[auto])
    assert a["qwk"] >= human["qwk"] and a["exact"] >= human["exact"]
    assert set(pred.routes) == {"auto", "human"}
    # a human reference no engine subset reaches: everything goes to humans
    never = fit_decoding(SPEC, [p], y[:, None], human={"qwk": 1.01, "exact": 1.01})
    assert never.route_threshold == ALL_HUMAN
    assert not never.predictions(SPEC, ["a"], [p[:1]]).automated.any()


def test_quadratic_confidence_weighs_how_far_the_doubt_lies():
    # both rows give the predicted class 0.6; row 0 doubts the neighbour, row 1 the far end of the scale
    p = np.array([[0.0, 0.6, 0.4, 0.0], [0.0, 0.6, 0.0, 0.4]])
    classes = np.array([1, 1])
    top = dimension_confidence(p, classes, "top")
    quad = dimension_confidence(p, classes, "quadratic")
    assert np.allclose(top, [0.6, 0.6])
    assert np.allclose(quad, [1 - 0.4 / 9, 1 - 0.4 * 4 / 9])
    assert quad[0] > quad[1]
    # binary: the two kinds agree
    pb = np.array([[0.3, 0.7], [0.8, 0.2]])
    assert np.allclose(dimension_confidence(pb, np.array([1, 0]), "quadratic"), [0.7, 0.8])
    with pytest.raises(ValueError, match="unknown confidence kind"):
        dimension_confidence(p, classes, "entropy")
    # the decoding's kind reaches Predictions.confidence (and the route)
    dec = Decoding((DimensionDecoding(),), 0.9, route_confidence="quadratic")
    pred = dec.predictions(SPEC, ["a", "b"], [p])
    assert np.allclose(pred.confidence, quad)
    assert pred.routes == ["auto", "human"]
    assert Decoding.from_dict(json.loads(json.dumps(dec.to_dict())), SPEC) == dec
    # a server's confidences (the client's Predictions) are returned as sent, not recomputed as top-class
    from scoreplex.predictions import Predictions

    remote = Predictions(SPEC, ["a", "b"], pred.labels, [p], given_confidence=pred.confidence)
    assert np.allclose(remote.confidence, quad)


def test_meets_human_counts_an_undefined_qwk_as_full_agreement():
    # one score everywhere for both pairs: QWK is 0/0; exact agreement decides
    assert meets_human({"qwk": None, "exact": 1.0}, {"qwk": float("nan"), "exact": 1.0})
    assert not meets_human({"qwk": None, "exact": 0.99}, {"qwk": None, "exact": 1.0})
    assert meets_human({"qwk": 0.9, "exact": 0.8}, {"qwk": 0.9, "exact": 0.8})
    assert not meets_human({"qwk": 0.89, "exact": 0.9}, {"qwk": 0.9, "exact": 0.8})
    assert not meets_human({"qwk": 0.95, "exact": None}, {"qwk": 0.9, "exact": 0.8})
    # in the test-time report: engine and human give class 2 to every automated response (QWK undefined)
    from scoreplex.metrics import training_reference

    y = np.array([[2], [2], [2], [0]])
    auto = np.array([True, True, True, False])
    ref = training_reference({"qwk": 0.9, "exact": 0.95, "n": 40})
    rep = automated_criteria(SPEC, y, np.array([[2], [2], [2], [1]]), auto, reference=ref)
    assert rep["qwk"] is None and rep["exact"] == 1.0
    assert rep["meets_human"] is True
    wrong = automated_criteria(SPEC, y, np.array([[2], [2], [1], [1]]), auto, reference=ref)
    assert wrong["meets_human"] is False


def _routing_case(n: int, seed: int, engine_error: float, human_error: float):
    """Scores 0..3, an engine wrong on ``engine_error`` of the responses and a second rater wrong on
    ``human_error``, with the engine surer where it is right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    wrong = rng.random(n) < engine_error
    pred = np.where(wrong, (y + 1) % 4, y)
    second = np.where(rng.random(n) < human_error, (y + 1) % 4, y)
    conf = np.where(wrong, rng.uniform(0.3, 0.8, n), rng.uniform(0.5, 1.0, n))
    return y[:, None], pred[:, None], second[:, None], conf


def test_bootstrap_share_tracks_the_margin_over_the_second_rater():
    y, pred, second, _ = _routing_case(300, 0, engine_error=0.05, human_error=0.20)
    better = meets_human_share(SPEC, y, pred, second, {}, draws=300)
    y, pred, second, _ = _routing_case(300, 0, engine_error=0.20, human_error=0.05)
    worse = meets_human_share(SPEC, y, pred, second, {}, draws=300)
    assert better > 0.95 and worse < 0.05
    # against a fixed reference instead of a second rater
    fixed = meets_human_share(SPEC, y, pred, None, {"qwk": 0.0, "exact": 0.0}, draws=50)
    assert fixed == 1.0


def test_confident_rule_automates_less_than_lowest_and_with_a_margin():
    y, pred, second, conf = _routing_case(400, 1, engine_error=0.15, human_error=0.12)
    human = {"qwk": 0.9, "exact": 0.88, "n": 400}
    t_low, low = fit_route_threshold(SPEC, conf, y, pred, human, second, rule="lowest")
    t_conf, sure = fit_route_threshold(SPEC, conf, y, pred, human, second, rule="confident", level=0.9)
    assert t_low < 1 and t_conf < 1
    assert t_conf >= t_low and sure["automation_rate"] <= low["automation_rate"]
    assert sure["meets_share"] >= 0.9 and sure["rule"] == "confident"
    with pytest.raises(ConfigError, match="routing rule .* is unknown"):
        fit_route_threshold(SPEC, conf, y, pred, human, second, rule="best")
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        fit_route_threshold(SPEC, conf, y, pred, human, second, rule="confident", level=1.0)


def test_route_options_pick_the_confidence_and_the_rule_that_fit_decoding_uses():
    y, pred, second, conf = _routing_case(400, 1, engine_error=0.15, human_error=0.12)
    p = np.tile(((1 - conf) / 3)[:, None], (1, 4))  # the predicted class gets conf, the rest share what is left
    p[np.arange(len(p)), pred[:, 0]] = conf
    human = {"qwk": 0.9, "exact": 0.88, "n": 400}
    fits = {
        name: fit_decoding(SPEC, [p], y, human=human, second=second, routing=options)
        for name, options in {
            "default": None,
            "top": RouteOptions(confidence="top"),
            "confident": RouteOptions(rule="confident", level=0.9),
        }.items()
    }
    assert fits["default"].route_confidence == "quadratic" and fits["top"].route_confidence == "top"
    routed = {name: dec.fitted["routing"] for name, dec in fits.items()}
    assert routed["default"]["rule"] == "lowest" and routed["confident"]["rule"] == "confident"
    assert routed["confident"]["meets_share"] >= 0.9
    assert routed["confident"]["automation_rate"] <= routed["default"]["automation_rate"]
    for bad, match in [
        ({"confidence": "entropy"}, r"routing confidence \(--route-confidence\) 'entropy' is unknown"),
        ({"rule": "best"}, r"routing rule \(--route-rule\) 'best' is unknown"),
        ({"level": 1.0}, "strictly between 0 and 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            RouteOptions(**bad)


def test_binary_dimensions_get_thresholds():
    spec = TaskSpec.multilabel("ml", ["evidence", "claim"])
    rng = np.random.default_rng(4)
    n = 600
    y = np.stack([rng.random(n) < 0.15, rng.random(n) < 0.5], axis=1).astype(int)
    # dimension 0 under-predicts the rare class: p1 sits at 0.3 for true positives
    p0 = np.where(y[:, 0] == 1, 0.3, 0.05) + rng.normal(0, 0.03, n).clip(-0.04, 0.04)
    p1 = np.where(y[:, 1] == 1, 0.8, 0.2)
    probs = [np.stack([1 - p0, p0], axis=1), np.stack([1 - p1, p1], axis=1)]
    dec = fit_decoding(spec, probs, y)
    assert dec.dimensions[0].rule == "threshold"
    assert dec.dimensions[0].threshold < 0.5
    pred = dec.predictions(spec, [str(i) for i in range(n)], probs)
    assert quadratic_weighted_kappa(y[:, 0], pred.labels[:, 0], labels=range(2)) > 0.9


def test_round_trip_and_untrusted_json_is_rejected_clearly():
    dec = Decoding(
        (DimensionDecoding(1.7, "cutpoints", (0.4, 1.6, 2.2)),),
        0.55,
        {"qwk": 0.9, "exact": 0.8},
        {"qwk": 0.7, "exact": 0.9, "n": 40},
        {},
    )
    again = Decoding.from_dict(json.loads(json.dumps(dec.to_dict())), SPEC)
    assert again == dec
    assert Decoding.from_dict(None, SPEC) == Decoding.identity(SPEC)
    bad = [
        "nonsense",
        {"dimensions": []},
        {"dimensions": [{"temperature": 0}]},
        {"dimensions": [{"temperature": float("nan")}]},
        {"dimensions": [{"rule": "eval"}]},
        {"dimensions": [{"rule": "cutpoints", "cutpoints": [2.0, 1.0, 0.5]}]},
        {"dimensions": [{"rule": "cutpoints", "cutpoints": [0.5]}]},
        {"dimensions": [{"rule": "threshold", "threshold": 0.5}]},  # not a binary dimension
        {"dimensions": [{}], "route_threshold": -1},
        {"dimensions": [{}], "route_threshold": "high"},
        {"dimensions": [{}], "route_confidence": "entropy"},
    ]
    for raw in bad:
        with pytest.raises(SuiteError, match="task 'item': its decoding"):
            Decoding.from_dict(raw, SPEC)


def test_trained_suite_stores_decoding_and_every_scorer_uses_it(tiny_bb, small_options, demo_datasets, tmp_path):
    from scoreplex.engine import Engine
    from scoreplex.scorer import SuiteScorer
    from scoreplex.suite import Suite
    from scoreplex.training.suite import train_suite

    task = next(iter(demo_datasets))
    suite = train_suite({task: demo_datasets[task]}, tmp_path / "s", small_options("lora"), backbone=tiny_bb)
    info = suite.task_info(task)
    assert "decoding" in info and info["decoding"]["dimensions"]
    data = demo_datasets[task]
    texts, ids = data.texts[:30], data.ids[:30]
    spec = suite.spec(task)
    # force a decoding whose effect is visible: route everything to humans, temperature 3
    forced = Decoding(tuple(DimensionDecoding(3.0) for _ in spec.dimensions), ALL_HUMAN)
    suite.set_decoding(task, forced)
    reopened = Suite.open(tmp_path / "s")  # hashes re-checked against the rewritten task.json
    assert reopened.decoding(task) == forced
    for scorer in (SuiteScorer(reopened, backbone=tiny_bb), Engine(reopened, tiny_bb)):
        pred = scorer.predict(task, texts, ids)
        assert not pred.automated.any()
        assert all(p.max() < 0.9 for p in pred.probs)  # softened
        assert pred.rows()[0]["route"] == "human"
    rows = Engine(reopened, tiny_bb).score([(task, texts[0])])
    assert rows[0]["route"] == "human"
    reopened.set_decoding(task, None)
    assert "decoding" not in Suite.open(tmp_path / "s").task_info(task)


def test_train_fits_routing_as_its_route_options_say(tiny_bb, small_options, tmp_path):
    from tests.conftest import _demo_columns

    from scoreplex.data.demo import demo_specs, write_demo
    from scoreplex.data.load import read_dataset
    from scoreplex.training.suite import train_suite

    # 200 responses, every fifth double-scored: enough for the two raters' reference (20), so routing is fitted
    files = write_demo(tmp_path / "demo", n_train=200, n_test=10)
    data = read_dataset(files["train"], columns=_demo_columns(), specs={s.id: s for s in demo_specs()})
    task = next(iter(data))
    stored = {}
    for name, routing in [("default", RouteOptions()), ("chosen", RouteOptions("top", "confident", 0.9))]:
        options = small_options("head", routing=routing, lexical=False)
        stored[name] = train_suite({task: data[task]}, tmp_path / name, options, backbone=tiny_bb).decoding(task)
    assert all(dec.human is not None for dec in stored.values())
    assert stored["default"].route_confidence == "quadratic" and stored["chosen"].route_confidence == "top"
    assert stored["default"].fitted["routing"]["rule"] == "lowest"
    assert stored["chosen"].fitted["routing"]["rule"] == "confident"


def test_calibrate_command_fits_and_stores_decoding(tiny_bb, tiny_backbone_path, small_options, demo_files, tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.suite import Suite

    runner = CliRunner()
    out = tmp_path / "suite"
    common = ["--task-col", "task", "--text-col", "text", "--id-col", "id"]
    r = runner.invoke(
        app,
        ["train", str(demo_files["train"]), "--out", str(out), "--tasks", str(demo_files["tasks"]), "--method", "head",
         "--backbone", str(tiny_backbone_path), "--epochs", "2", "--no-decoding", "--no-progress", *common],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    suite = Suite.open(out)
    assert all("decoding" not in suite.task_info(t) for t in suite.task_ids)
    r = runner.invoke(app, ["calibrate", str(out), str(demo_files["test"]), *common])
    assert r.exit_code == 0, r.output
    assert "stored the decoding of" in r.output
    suite = Suite.open(out)
    for t in suite.task_ids:
        dec = suite.decoding(t)
        assert dec.fitted["n_validation"] > 0 and all(d.temperature != 1.0 for d in dec.dimensions)
    # data for a task the suite lacks: a clear error, exit code 2
    bad = tmp_path / "bad.csv"
    bad.write_text("id,task,text,score\n1,nope,some answer,1\n", encoding="utf-8")
    r = runner.invoke(app, ["calibrate", str(out), str(bad), *common])
    assert r.exit_code == 2 and "nope" in r.output
    # a routing option out of range: named, exit code 2, the stored decoding untouched
    before = {t: suite.decoding(t) for t in suite.task_ids}
    for option in (["--route-rule", "best"], ["--route-confidence", "entropy"], ["--route-level", "1.5"]):
        r = runner.invoke(app, ["calibrate", str(out), str(demo_files["test"]), *option, *common])
        assert r.exit_code == 2 and option[1] in r.output and "Traceback" not in r.output, r.output
    assert {t: Suite.open(out).decoding(t) for t in suite.task_ids} == before


@pytest.mark.parametrize(
    ("command", "args", "named"),
    [
        ("train", ["--route-rule", "best"], "--route-rule"),
        ("train", ["--route-confidence", "entropy"], "--route-confidence"),
        ("train", ["--no-decoding", "--route-rule", "confident"], "--no-decoding"),
        ("train", ["--route-level", "0.9"], "--route-rule confident only"),
        ("calibrate", ["--route-level", "0"], "--route-level"),
        ("calibrate", ["--no-route", "--route-confidence", "top"], "--no-route"),
    ],
)
def test_route_options_are_checked_before_any_file_is_read(tmp_path, command, args, named):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    missing = str(tmp_path / "no-such-file.csv")  # read only after the options are checked
    head = [missing, "--out", str(tmp_path / "s")] if command == "train" else [str(tmp_path / "no-suite"), missing]
    r = CliRunner().invoke(app, [command, *head, *args])
    assert r.exit_code == 2 and named in r.output and "Traceback" not in r.output, r.output
    assert "no-such-file" not in r.output  # the options' error, not the missing file's


def test_cli_route_defaults_are_the_library_defaults():
    import inspect

    from scoreplex import cli

    for command in (cli.train, cli.calibrate):
        params = inspect.signature(command).parameters
        defaults = RouteOptions(*(params[f"route_{k}"].default for k in ("confidence", "rule", "level")))
        assert defaults == RouteOptions()


def test_routing_holds_the_engine_to_the_second_rater_on_the_same_responses():
    """A confident subset that is almost all one score has a low QWK for any pair of raters; with the second
    rater's scores the threshold compares like with like and still automates it."""
    rng = np.random.default_rng(5)
    n = 400
    y = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 4, n))
    easy = y == 0  # blank-like answers: the model is sure, and right
    guess = np.where(easy, 0, np.clip(y + rng.integers(-1, 2, n), 0, 3))
    p = np.full((n, 4), 0.0)
    p[np.arange(n), guess] = np.where(easy, 0.97, 0.45)
    p += (1 - p.sum(axis=1, keepdims=True)) / 4
    second = np.where(rng.random(n) < 0.9, y, np.clip(y + 1, 0, 3))  # a second rater agreeing 90% of the time
    human = agreement(SPEC, y[:, None], second[:, None])
    global_only = fit_decoding(SPEC, [p], y[:, None], human=human)
    same_responses = fit_decoding(SPEC, [p], y[:, None], human=human, second=second[:, None])
    assert same_responses.human_automated is not None
    assert same_responses.human_automated["qwk"] < human["qwk"]  # the narrower range lowers the raters' QWK too
    pred = same_responses.predictions(SPEC, [str(i) for i in range(n)], [p])
    assert pred.automated.mean() >= 0.4
    auto = pred.automated
    a = agreement(SPEC, y[auto][:, None], pred.labels[auto])
    h = agreement(SPEC, y[auto][:, None], second[auto][:, None])
    assert a["qwk"] >= h["qwk"] and a["exact"] >= h["exact"]
    assert global_only.human_automated is None
