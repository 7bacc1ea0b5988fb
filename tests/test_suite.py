"""Tests of scoreplex.suite and scoreplex.training.suite and scoreplex.scorer: train a suite, score with it, verify
it, resume it.

Suites are trained once per module on the tiny BERT: LoRA and head-only on an ordinal and a multi-label demo task,
full fine-tuning on the ordinal task only. Tests that damage a suite work on a copy.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from scoreplex.backbone import backbone_fingerprint, tiny_bert
from scoreplex.data.dataset import TaskData
from scoreplex.data.splits import train_val_split
from scoreplex.errors import BackboneMismatchError, ConfigError, DataError, SuiteError, UnknownTaskError
from scoreplex.methods import MethodSettings, get_method
from scoreplex.metrics import evaluate_task
from scoreplex.scorer import SuiteScorer, evaluate_suite
from scoreplex.suite import FORMAT_VERSION, MODULE_FILE, TASK_FILE, Suite, sha256_file
from scoreplex.training import TrainConfig
from scoreplex.training import suite as pipeline
from scoreplex.training.suite import TrainOptions, pick_max_length, train_suite

ORDINAL, MULTI = "demo-photosynthesis", "demo-argument"
VAL_FRACTION = 0.25
SUITE_TASKS = {"lora": [ORDINAL, MULTI], "head": [ORDINAL, MULTI], "full": [ORDINAL]}


@pytest.fixture(scope="module")
def suites(tmp_path_factory, tiny_bb, demo_datasets, small_options) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suites")
    out = {}
    for method, tasks in SUITE_TASKS.items():
        out[method] = root / method
        train_suite(
            {t: demo_datasets[t] for t in tasks},
            out[method],
            small_options(method, val_fraction=VAL_FRACTION),
            backbone=tiny_bb,
        )
    return out


@pytest.fixture(scope="module")
def scorers(suites) -> dict[str, SuiteScorer]:
    return {method: SuiteScorer(path) for method, path in suites.items()}


@pytest.fixture
def lora_copy(suites, tmp_path: Path) -> Path:
    return Path(shutil.copytree(suites["lora"], tmp_path / "suite"))


def all_files(root: Path) -> list[Path]:
    return [f for f in root.rglob("*") if f.is_file()]


# -- what a suite holds --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SUITE_TASKS))
def test_manifest_records_backbone_method_tasks_and_versions(suites, tiny_backbone_path, method):
    m = json.loads((suites[method] / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == "scoreplex-suite" and m["format_version"] == FORMAT_VERSION
    assert m["method"] == method and m["pooling"] == "mean"
    assert m["backbone"]["sha256"] == backbone_fingerprint(tiny_backbone_path)
    assert m["backbone"]["model_type"] == "bert" and m["backbone"]["hidden_size"] == 32
    assert isinstance(m["max_length"], int) and 8 <= m["max_length"] <= 256
    assert list(m["tasks"]) == SUITE_TASKS[method]
    assert {"scoreplex", "torch", "transformers", "peft", "safetensors"} <= set(m["versions"])
    for tid, entry in m["tasks"].items():
        folder = suites[method] / "tasks" / tid
        assert entry["files"] == {n: sha256_file(folder / n) for n in (MODULE_FILE, TASK_FILE)}
        assert entry["bytes"] == sum((folder / n).stat().st_size for n in (MODULE_FILE, TASK_FILE))
        assert "qwk" in entry["metrics"]["validation"]


@pytest.mark.parametrize("method", sorted(SUITE_TASKS))
def test_suite_holds_only_json_and_safetensors(suites, method):
    files = all_files(suites[method])
    assert {f.suffix for f in files} == {".json", ".safetensors"}
    assert not any(f.suffix in (".pickle", ".pkl", ".pt", ".pth", ".bin") for f in files)
    assert not (suites[method] / ".checkpoints").exists()  # removed once every task is saved
    assert Suite.open(suites[method]).total_bytes == sum(f.stat().st_size for f in files)


def test_task_json_holds_spec_config_and_summary(suites, demo_datasets, small_config):
    suite = Suite.open(suites["lora"])
    assert suite.spec(MULTI) == demo_datasets[MULTI].spec
    info = suite.task_info(MULTI)
    assert info["method"] == "lora" and info["config"]["lora_targets"] == ["query", "value"]
    train = info["summary"]["train"]
    assert train["n_train"] + train["n_val"] == len(demo_datasets[MULTI])
    assert train["n_val"] == math.ceil(VAL_FRACTION * len(demo_datasets[MULTI]))
    assert train["config"] == small_config.to_dict() and train["epochs_run"] == small_config.epochs


def test_module_sizes_order_full_lora_head(suites):
    def neural_bytes(suite: Suite) -> int:  # a stacked lexical model, where validation kept one, is not the method's
        return sum(t.numel() * t.element_size() for t in suite.module_tensors(ORDINAL).values())

    sizes = {m: neural_bytes(Suite.open(p)) for m, p in suites.items()}
    assert sizes["full"] > 5 * sizes["lora"] and sizes["lora"] > sizes["head"]
    # the default rank (16) on the tiny BERT's query/value: 2 layers x 2 projections x (A 16x32 + B 32x16), fp32
    lora = Suite.open(suites["lora"]).module_tensors(ORDINAL)
    assert sum(t.numel() for k, t in lora.items() if k.startswith("lora.")) == 2 * 2 * (16 * 32 + 32 * 16)


def test_model_bytes_counts_what_the_manifest_names_and_nothing_else(lora_copy):
    suite = Suite.open(lora_copy)
    named = (lora_copy / "manifest.json").stat().st_size + sum(
        f.stat().st_size for t in suite.task_ids for f in (lora_copy / "tasks" / t).iterdir()
    )
    assert suite.model_bytes == named
    before_total = suite.total_bytes
    (lora_copy / "report.md").write_text("x" * 10_000)  # a report kept beside the models is not a model
    assert Suite.open(lora_copy).model_bytes == named
    assert Suite.open(lora_copy).total_bytes == before_total + 10_000


# -- scoring -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(SUITE_TASKS))
def test_predictions_have_valid_shapes_probabilities_and_confidence(scorers, demo_datasets, method):
    for tid in SUITE_TASKS[method]:
        data = demo_datasets[tid]
        pred = scorers[method].predict(tid, data.texts, data.ids)
        spec = data.spec
        assert pred.ids == data.ids and pred.labels.shape == (len(data), len(spec.dimensions))
        decoding = scorers[method].suite.decoding(tid)
        chosen = []
        for d, (dim, p) in enumerate(zip(spec.dimensions, pred.probs, strict=True)):
            assert p.shape == (len(data), dim.num_classes)
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
            np.testing.assert_array_equal(pred.labels[:, d], decoding.dimensions[d].classes(p))
            if decoding.dimensions[d].rule == "argmax":
                np.testing.assert_array_equal(pred.labels[:, d], p.argmax(axis=1))
            chosen.append(p[np.arange(len(data)), pred.labels[:, d]])
        conf = pred.confidence
        assert conf.shape == (len(data),)
        np.testing.assert_allclose(conf, np.min(chosen, axis=0))
        rows = pred.rows()
        assert len(rows) == len(data) and rows[0]["task"] == tid
        assert {r["route"] for r in rows} <= {"auto", "human"}
        assert rows[0].keys() == {"id", "task", "confidence", "route"} | {f"pred_{d}" for d in spec.dimension_names} | {
            f"prob_{dim.name}_{k}" for dim in spec.dimensions for k in range(dim.num_classes)
        }


@pytest.mark.parametrize("method", sorted(SUITE_TASKS))
def test_saved_suite_reproduces_the_recorded_validation_metrics(suites, demo_datasets, small_config, method):
    # the recorded figure is the trained model's own (argmax, no stacked lexical model), as early stopping saw it
    raw = SuiteScorer(suites[method], decoding=False, lexical=False)
    for tid in SUITE_TASKS[method]:
        _, val = train_val_split(demo_datasets[tid], val_fraction=VAL_FRACTION, seed=small_config.seed)
        pred = raw.predict(tid, val.texts, val.ids)
        got = evaluate_task(val.spec, val.labels, pred.labels)
        recorded = Suite.open(suites[method]).manifest["tasks"][tid]["metrics"]["validation"]
        assert got["accuracy"] == pytest.approx(recorded["accuracy"])
        assert got["qwk"] == pytest.approx(recorded["qwk"], nan_ok=True)


def test_scores_do_not_depend_on_which_rows_are_scored_together(scorers, demo_datasets):
    data = demo_datasets[MULTI]
    whole = scorers["lora"].predict(MULTI, data.texts, data.ids)
    pick = np.random.default_rng(0).permutation(len(data))[:17]
    part = scorers["lora"].predict(MULTI, [data.texts[i] for i in pick], [data.ids[i] for i in pick])
    np.testing.assert_array_equal(part.labels, whole.labels[pick])
    for a, b in zip(part.probs, whole.probs, strict=True):
        np.testing.assert_allclose(a, b[pick], atol=1e-5)


def test_module_cache_eviction_does_not_change_scores(suites, demo_datasets):
    scorer = SuiteScorer(suites["lora"], cache_size=1)
    texts = demo_datasets[ORDINAL].texts[:8]
    first = scorer.predict(ORDINAL, texts)
    scorer.predict(MULTI, demo_datasets[MULTI].texts[:3])  # evicts ORDINAL
    assert list(scorer._cache) == [MULTI]
    again = scorer.predict(ORDINAL, texts)
    np.testing.assert_allclose(again.probs[0], first.probs[0], atol=1e-6)
    assert first.ids == [str(i) for i in range(8)]


def test_evaluate_suite_reports_every_task_and_human_agreement(scorers, demo_datasets):
    data = {t: demo_datasets[t] for t in (ORDINAL, MULTI)}
    result = evaluate_suite(scorers["lora"], data)
    assert list(result["tasks"]) == [ORDINAL, MULTI]
    assert result["mean_qwk"] == pytest.approx(np.mean([m["qwk"] for m in result["tasks"].values()]))
    for tid, m in result["tasks"].items():
        assert m["n"] == len(data[tid]) and "human" in m  # the demo has a second rater on every fifth response
    assert result["human_mean_qwk"] == pytest.approx(np.mean([m["human"]["qwk"] for m in result["tasks"].values()]))


def test_evaluate_suite_rejects_unknown_tasks_and_unscored_data(scorers, demo_datasets):
    with pytest.raises(UnknownTaskError, match="demo-circuit"):
        evaluate_suite(scorers["full"], {"demo-circuit": demo_datasets["demo-circuit"]})
    d = demo_datasets[ORDINAL]
    unscored = TaskData(d.spec, d.ids, d.texts)
    with pytest.raises(DataError, match="scored responses"):
        evaluate_suite(scorers["full"], {ORDINAL: unscored})


# -- refusing what does not fit ----------------------------------------------------------------------------------


def test_corrupted_module_is_refused_naming_the_task(lora_copy):
    module = lora_copy / "tasks" / MULTI / MODULE_FILE
    raw = bytearray(module.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    module.write_bytes(bytes(raw))
    with pytest.raises(SuiteError) as exc:
        Suite.open(lora_copy, verify=True)
    assert repr(MULTI) in str(exc.value) and "SHA-256" in str(exc.value)
    suite = Suite.open(lora_copy, verify=False)  # still readable without verification
    suite.verify_task(ORDINAL)
    with pytest.raises(SuiteError, match=MULTI):
        suite.load_module(MULTI)


def test_edited_task_json_is_refused(lora_copy):
    task_json = lora_copy / "tasks" / ORDINAL / TASK_FILE
    task_json.write_text(task_json.read_text(encoding="utf-8").replace('"lora"', '"full"'), encoding="utf-8")
    with pytest.raises(SuiteError, match=ORDINAL):
        Suite.open(lora_copy)


def test_deleted_module_is_refused_naming_the_task(lora_copy):
    (lora_copy / "tasks" / ORDINAL / MODULE_FILE).unlink()
    with pytest.raises(SuiteError) as exc:
        Suite.open(lora_copy)
    assert repr(ORDINAL) in str(exc.value) and "missing" in str(exc.value)


def test_damaged_or_foreign_manifests_are_refused(lora_copy, tmp_path: Path):
    with pytest.raises(SuiteError, match="no manifest.json"):
        Suite.open(tmp_path / "empty")
    manifest = lora_copy / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    manifest.write_text(json.dumps({**data, "format_version": FORMAT_VERSION + 1}), encoding="utf-8")
    with pytest.raises(SuiteError, match="Upgrade scoreplex"):
        Suite.open(lora_copy)
    manifest.write_text(json.dumps(data)[:-20], encoding="utf-8")
    with pytest.raises(SuiteError, match="corrupt"):
        Suite.open(lora_copy)


def test_another_backbone_is_refused(suites, tmp_path: Path):
    other = tiny_bert(tmp_path / "other", seed=1)
    with pytest.raises(BackboneMismatchError) as exc:
        SuiteScorer(suites["lora"], backbone=str(other))
    assert isinstance(exc.value, SuiteError)
    assert str(other) in str(exc.value)


def test_unknown_task_is_a_key_error_listing_the_tasks(suites, scorers):
    with pytest.raises(UnknownTaskError) as exc:
        scorers["lora"].predict("demo-circuit", ["some text"])
    assert isinstance(exc.value, KeyError)
    assert ORDINAL in str(exc.value) and MULTI in str(exc.value)
    with pytest.raises(KeyError):
        Suite.open(suites["lora"]).spec("nope")


def test_create_refuses_an_existing_suite_with_other_settings(suites, tiny_bb):
    existing = Suite.open(suites["lora"])
    kw = {"backbone": tiny_bb.info.to_dict(), "pooling": "mean", "max_length": existing.manifest["max_length"]}
    assert Suite.create(suites["lora"], method="lora", **kw).task_ids == existing.task_ids  # compatible: reopened
    with pytest.raises(SuiteError) as exc:
        Suite.create(suites["lora"], **{**kw, "method": "full"})
    assert "'method'" in str(exc.value) and "full" in str(exc.value)
    with pytest.raises(SuiteError, match="'pooling'"):
        Suite.create(suites["lora"], method="lora", **{**kw, "pooling": "cls"})
    with pytest.raises(SuiteError, match="'backbone'"):
        Suite.create(suites["lora"], method="lora", **{**kw, "backbone": {**kw["backbone"], "sha256": "0" * 64}})
    with pytest.raises(SuiteError, match="already holds a suite"):
        Suite.create(suites["lora"], method="lora", exist_ok=False, **kw)


def test_train_suite_into_a_suite_of_another_method_fails(suites, demo_datasets, tiny_bb, small_options):
    with pytest.raises(SuiteError, match="'method'"):
        train_suite({ORDINAL: demo_datasets[ORDINAL]}, suites["lora"], small_options("head"), backbone=tiny_bb)


def test_train_suite_rejects_no_data_and_unknown_methods(tmp_path: Path, demo_datasets, tiny_bb):
    with pytest.raises(ConfigError, match="no tasks"):
        train_suite({}, tmp_path / "s", TrainOptions(progress=False), backbone=tiny_bb)
    with pytest.raises(KeyError, match="lora"):
        train_suite({ORDINAL: demo_datasets[ORDINAL]}, tmp_path / "s", TrainOptions(method="qlora"), backbone=tiny_bb)
    assert not (tmp_path / "s").exists()


def test_train_task_needs_labels(demo_datasets, tiny_bb, small_config):
    d = demo_datasets[ORDINAL]
    unscored = TaskData(d.spec, d.ids, d.texts)
    with pytest.raises(DataError, match=ORDINAL):
        pipeline.train_task(
            tiny_bb,
            unscored,
            d,
            method="head",
            pooling="mean",
            max_length=32,
            config=small_config,
            settings=MethodSettings(),
        )


# -- resuming ------------------------------------------------------------------------------------------------------


def test_rerunning_a_finished_suite_trains_nothing(suites, demo_datasets, tiny_bb, small_options, monkeypatch):
    before = {f: f.read_bytes() for f in all_files(suites["head"])}

    def fail(*a, **k):
        raise AssertionError("train_task must not be called for finished tasks")

    monkeypatch.setattr(pipeline, "train_task", fail)
    data = {t: demo_datasets[t] for t in SUITE_TASKS["head"]}
    suite = train_suite(data, suites["head"], small_options("head", val_fraction=VAL_FRACTION), backbone=tiny_bb)
    assert suite.task_ids == SUITE_TASKS["head"]
    assert {f: f.read_bytes() for f in all_files(suites["head"])} == before


def test_an_interrupted_suite_resumes_with_the_missing_task_only(
    tmp_path: Path, demo_datasets, tiny_bb, small_options, monkeypatch
):
    data = {t: demo_datasets[t] for t in (ORDINAL, MULTI)}
    options = small_options("head", val_fraction=VAL_FRACTION)

    def interrupt(result):
        raise KeyboardInterrupt(f"stopped after {result.task_id}")

    with pytest.raises(KeyboardInterrupt):
        train_suite(data, tmp_path / "s", options, backbone=tiny_bb, on_task_done=interrupt)
    partial = Suite.open(tmp_path / "s")  # a loadable suite of the tasks finished so far
    assert partial.task_ids == [ORDINAL]
    kept = sha256_file(tmp_path / "s" / "tasks" / ORDINAL / MODULE_FILE)

    calls = []
    real = pipeline.train_task

    def spy(bb, train, val, **kw):
        calls.append(train.spec.id)
        return real(bb, train, val, **kw)

    monkeypatch.setattr(pipeline, "train_task", spy)
    done = []
    suite = train_suite(data, tmp_path / "s", options, backbone=tiny_bb, on_task_done=done.append)
    assert calls == [MULTI] and [r.task_id for r in done] == [MULTI]
    assert suite.task_ids == [ORDINAL, MULTI]
    assert sha256_file(tmp_path / "s" / "tasks" / ORDINAL / MODULE_FILE) == kept
    Suite.open(tmp_path / "s", verify=True)

    # and the resumed suite equals one trained in a single run
    single = train_suite(data, tmp_path / "single", options, backbone=tiny_bb)
    for tid in single.task_ids:
        assert sha256_file(tmp_path / "single" / "tasks" / tid / MODULE_FILE) == sha256_file(
            tmp_path / "s" / "tasks" / tid / MODULE_FILE
        )


def test_on_task_done_reports_each_task(tmp_path: Path, demo_datasets, tiny_bb, small_options):
    done = []
    data = {t: demo_datasets[t] for t in (ORDINAL, MULTI)}
    suite = train_suite(data, tmp_path / "s", small_options("head"), backbone=tiny_bb, on_task_done=done.append)
    assert [r.task_id for r in done] == [ORDINAL, MULTI]
    for r in done:
        assert r.n_train + r.n_val == len(data[r.task_id])
        assert r.module_bytes == suite.task_bytes(r.task_id)
        assert r.fit.epochs_run == 2 and "qwk" in r.val_metrics


def test_explicit_validation_sets_are_used(tmp_path: Path, demo_datasets, tiny_bb, small_options):
    d = demo_datasets[ORDINAL]
    train, val = d.subset(range(40)), d.subset(range(40, 60))
    done = []
    train_suite(
        {ORDINAL: train},
        tmp_path / "s",
        small_options("head"),
        val_sets={ORDINAL: val},
        backbone=tiny_bb,
        on_task_done=done.append,
    )
    assert (done[0].n_train, done[0].n_val) == (40, 20)


def test_pick_max_length_covers_most_responses(tiny_bb, demo_datasets):
    from scoreplex.encoding import token_lengths

    max_len, share = pick_max_length(tiny_bb, demo_datasets)
    lengths = np.concatenate([token_lengths(tiny_bb.tokenizer, d.texts) for d in demo_datasets.values()])
    assert max_len % 8 == 0 and max_len <= tiny_bb.max_positions
    assert share == pytest.approx(float((lengths > max_len).mean())) and share <= 0.01


# -- head warm-up and recommended configs ------------------------------------------------------------------------


def train_lora_task(tiny_bb, data, config, checkpoint_dir=None):
    train, val = train_val_split(data, val_fraction=VAL_FRACTION, seed=config.seed)
    model, result, _ = pipeline.train_task(
        tiny_bb, train, val, method="lora", pooling="mean", max_length=64, config=config,
        settings=MethodSettings(), checkpoint_dir=checkpoint_dir, progress=False,
    )  # fmt: skip
    return {k: v.clone() for k, v in get_method("lora").module_state(model).items()}, result


def test_head_warmup_moves_only_the_head_before_the_encoder_part_trains(tiny_bb, demo_datasets, monkeypatch):
    seen = []
    real_fit = pipeline.fit

    def spy(model, *args, **kw):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        seen.append((kw["description"], trainable))
        return real_fit(model, *args, **kw)

    monkeypatch.setattr(pipeline, "fit", spy)
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=16, patience=0, head_warmup_epochs=2)
    train_lora_task(tiny_bb, demo_datasets[MULTI], config)
    (warm_desc, warm_params), (main_desc, main_params) = seen
    assert warm_desc.startswith("head warm-up") and main_desc.startswith("lora")
    assert warm_params and all(n.startswith("head.") for n in warm_params)
    assert any("lora_" in n for n in main_params)


def test_a_resumed_task_with_head_warmup_equals_an_uninterrupted_one(tiny_bb, demo_datasets, tmp_path, monkeypatch):
    config = TrainConfig(epochs=3, lr=1e-3, batch_size=16, patience=0, head_warmup_epochs=2)
    reference, ref_result = train_lora_task(tiny_bb, demo_datasets[MULTI], config)

    real_fit = pipeline.fit

    def interrupted_fit(model, make, steps, objective, validate, cfg, **kw):
        if kw.get("checkpoint_dir") is None:  # the warm-up
            return real_fit(model, make, steps, objective, validate, cfg, **kw)
        calls = []

        def validate_then_stop(mdl):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt("simulated interruption in epoch 2")
            return validate(mdl)

        return real_fit(model, make, steps, objective, validate_then_stop, cfg, **kw)

    monkeypatch.setattr(pipeline, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train_lora_task(tiny_bb, demo_datasets[MULTI], config, checkpoint_dir=tmp_path / "ckpt")
    monkeypatch.setattr(pipeline, "fit", real_fit)
    resumed, result = train_lora_task(tiny_bb, demo_datasets[MULTI], config, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert np.array_equal(resumed[k].numpy(), reference[k].numpy()), k
    assert [h["val"] for h in result.history] == [h["val"] for h in ref_result.history]


def test_default_config_per_method_and_overrides():
    lora = pipeline.default_config("lora")
    assert lora.head_warmup_epochs > 0 and lora.lr == pipeline.DEFAULT_LR["lora"]
    full = pipeline.default_config("full")
    assert full.head_lr is not None and full.head_lr > full.lr and full.head_warmup_epochs == 0
    assert pipeline.default_config("head").head_warmup_epochs == 0
    tuned = pipeline.default_config("lora", epochs=1, lr=None, seed=4)
    assert (tuned.epochs, tuned.lr, tuned.seed) == (1, lora.lr, 4)  # None means "the default"
    with pytest.raises(KeyError, match="full, head, lora"):
        pipeline.default_config("qlora")
    with pytest.raises(ConfigError, match="epochs"):
        pipeline.default_config("head", epochs=0)


def test_default_settings_per_method_and_overrides():
    assert (pipeline.default_settings("lora").lora_r, pipeline.default_settings("lora").lora_alpha) == (16, 32)
    assert pipeline.default_settings("full").lora_r == MethodSettings().lora_r  # other methods keep the field defaults
    tuned = pipeline.default_settings("lora", lora_r=4, lora_alpha=None, lora_targets="all-linear")
    assert (tuned.lora_r, tuned.lora_alpha, tuned.lora_targets) == (4, 32, "all-linear")  # None means "the default"
    assert TrainOptions(method="lora").settings.lora_r == 16 and TrainOptions(method="head").settings.lora_r == 8
