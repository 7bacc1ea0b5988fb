"""The cross-item scorer (one LoRA adapter over question + response pairs, a head per item) on the tiny BERT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoreplex.crossitem import CrossItemMethod, pairing_text
from scoreplex.crossitem.method import SHARED_NAME
from scoreplex.data.asap_sas import question_text
from scoreplex.encoding import encode_pairs, encode_texts
from scoreplex.errors import ConfigError, SuiteError
from scoreplex.suite import Suite
from scoreplex.tasks import TaskSpec

ITEMS = ("demo-photosynthesis", "demo-circuit", "demo-argument")
"""Three of the four demo items (one is multi-label); the fourth joins later."""


# -- pairing -----------------------------------------------------------------------------------------------------------
def test_pairs_put_the_item_text_before_the_response(tiny_bb):
    tok = tiny_bb.tokenizer
    q, r = "why do plants need light", "they make sugar from it"
    enc = encode_pairs(tok, q, [r], 64)
    q_ids = tok(q, add_special_tokens=False)["input_ids"]
    r_ids = tok(r, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[0] == [tok.cls_token_id, *q_ids, tok.sep_token_id, *r_ids, tok.sep_token_id]
    assert enc.input_ids[0] == tok(q, r)["input_ids"]  # the tokenizer's own pair encoding
    assert enc.input_ids[0] != encode_texts(tok, [r], 64).input_ids[0]
    assert enc.input_ids != encode_pairs(tok, "what is a circuit", [r], 64).input_ids  # the question matters
    assert encode_pairs(tok, "  ", [r], 64).input_ids == encode_texts(tok, [r], 64).input_ids  # no item text
    assert enc.truncated == 0


def test_the_question_is_cut_before_the_response(tiny_bb):
    tok = tiny_bb.tokenizer
    long_q = " ".join(f"word{i}" for i in range(200)) + " explain the result"
    r = "the lid was black so it got hot"
    r_ids = tok(r, add_special_tokens=False)["input_ids"]
    enc = encode_pairs(tok, long_q, [r], 48)
    ids = enc.input_ids[0]
    assert len(ids) == 48 and enc.truncated == 0
    assert ids[-len(r_ids) - 1 : -1] == r_ids  # the whole response is kept
    end_q = tok(" explain the result", add_special_tokens=False)["input_ids"]
    sep = ids.index(tok.sep_token_id)
    assert ids[sep - len(end_q) : sep] == end_q  # the question keeps its end (what it asks)

    long_r = " ".join(["heat"] * 300)
    enc = encode_pairs(tok, long_q, [long_r], 48, first_share=0.25)
    ids = enc.input_ids[0]
    assert len(ids) == 48 and enc.truncated == 1
    assert ids.index(tok.sep_token_id) - 1 == int(0.25 * (48 - 3))  # the question kept its floor


def test_question_text_of_an_asap_item_file():
    text = (
        "Data Set #9\nType of response: ... Rubric range:0-2\nA passage about space junk.\n"
        "Prompt-Organization of Article Item\nHow does the author organize\nthe article?\n"
        "Rubric for Organization of Article\n2 points\n"
    )
    assert question_text(text) == "How does the author organize the article?"
    assert question_text("no header here") == ""


def test_pairing_text_prefers_the_question_and_adds_the_reference():
    spec = TaskSpec.ordinal("q1", 2, prompt="Data Set #1", rubric="Score 2: full", metadata={"question": "Why?"})
    assert pairing_text(spec) == "Why?"
    assert pairing_text(spec, with_rubric=True) == "Why?\nScore 2: full"
    ref = TaskSpec.ordinal("q2", 2, prompt="Explain.", metadata={"reference_answer": "Because."})
    assert pairing_text(ref) == "Explain.\nBecause."


# -- training, scoring, adding ---------------------------------------------------------------------------------------
def _train_suite(folder, demo_datasets, tiny_bb, small_options, head: str, length_feature: bool = False):
    """A cross-item run on the three items and its suite, with the given head."""
    from scoreplex.crossitem.train import fit_cross_item, save_cross_item
    from scoreplex.methods import MethodSettings

    settings = MethodSettings(extra={"head": head}, length_feature=length_feature)
    options = small_options("cross-item", max_length=48, lexical=False, settings=settings)
    run = fit_cross_item({t: demo_datasets[t] for t in ITEMS}, options, tiny_bb)
    return run, save_cross_item(run, folder / "suite", tiny_bb, options)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_datasets, tiny_bb, small_options):
    return _train_suite(tmp_path_factory.mktemp("cross"), demo_datasets, tiny_bb, small_options, "per-item")


def test_training_scores_every_item_and_stores_its_text(trained, demo_datasets, tiny_bb):
    from scoreplex.scorer import SuiteScorer, open_scorer

    run, suite = trained
    suite = Suite.open(suite.root)  # every file verified
    assert suite.method == CrossItemMethod.name and sorted(suite.task_ids) == sorted(ITEMS)
    assert SHARED_NAME in suite.manifest["shared"]
    scorer = SuiteScorer(suite, tiny_bb)
    assert not isinstance(open_scorer(suite, tiny_bb), SuiteScorer)  # the engine serves cross-item suites
    for t in ITEMS:
        info = suite.task_info(t)
        assert info["config"]["pairing_text"] == pairing_text(demo_datasets[t].spec)
        assert set(suite.module_tensors(t)) == {k for k in suite.module_tensors(t) if k.startswith("head.")}
        pred = scorer.predict(t, demo_datasets[t].texts[:10])
        assert pred.labels.shape == (10, len(suite.spec(t).dimensions))
        assert all(np.allclose(p.sum(axis=1), 1.0, atol=1e-5) for p in pred.probs)
    assert len(run.result.history) == 2  # the small config: 2 epochs, no early stopping


def test_saved_suite_gives_the_trained_models_probabilities(trained, demo_datasets, tiny_bb):
    from scoreplex.heads import probabilities
    from scoreplex.predictions import predict_logits
    from scoreplex.scorer import SuiteScorer

    run, suite = trained
    scorer = SuiteScorer(Suite.open(suite.root), tiny_bb, decoding=False, lexical=False)
    for t in ITEMS:
        texts = demo_datasets[t].texts[:12]
        enc = encode_pairs(tiny_bb.tokenizer, run.texts[t], texts, run.max_length)
        with torch.no_grad():
            want = probabilities(predict_logits(run.model.task_view(t), enc), suite.spec(t).class_counts)
        got = scorer.predict(t, texts).probs
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


# -- served by the engine ----------------------------------------------------------------------------------------------
def test_the_engine_gives_the_suite_scorers_probabilities_per_item_and_mixed(trained, demo_datasets, tiny_bb):
    from scoreplex.engine import Engine
    from scoreplex.scorer import SuiteScorer

    _, suite = trained
    suite = Suite.open(suite.root)
    before = {k: v.clone() for k, v in tiny_bb.encoder.state_dict().items()}
    engine = Engine(suite, tiny_bb, batch_size=4)  # small batches: each one mixes items
    scorer = SuiteScorer(suite, tiny_bb, cache_size=len(ITEMS))
    texts = {t: demo_datasets[t].texts[:9] for t in ITEMS}
    want = {t: scorer.predict(t, texts[t]) for t in ITEMS}
    for t in ITEMS:
        got = engine.predict(t, texts[t])
        np.testing.assert_array_equal(got.labels, want[t].labels)
        for g, w in zip(got.probs, want[t].probs, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
    pairs = [(t, texts[t][i]) for i in range(9) for t in ITEMS]  # items interleaved
    rows = engine.score(pairs)
    for t in ITEMS:
        names = suite.spec(t).dimension_names
        mixed = [r for (task, _), r in zip(pairs, rows, strict=True) if task == t]
        for d, name in enumerate(names):
            np.testing.assert_allclose([r["probs"][name] for r in mixed], want[t].probs[d], atol=1e-5, rtol=0)
    # the shared adapter is folded once into the engine's own copy of the encoder: no adapter slots, and each item
    # holds only its head; the caller's backbone is untouched
    assert engine.lora is None
    for t in ITEMS:
        module = engine.store.get(t)
        head_bytes = sum(p.numel() * p.element_size() for p in module.head.state_dict().values())
        assert module.nbytes == head_bytes
    after = tiny_bb.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_engine_pairs_each_row_with_its_own_item(trained, demo_datasets, tiny_bb):
    """The same response scored under two items reads two different pairs (so two different pooled features)."""
    from scoreplex.engine import Engine

    _, suite = trained
    engine = Engine(Suite.open(suite.root), tiny_bb)
    text = demo_datasets[ITEMS[0]].texts[0]
    enc = engine._encode([ITEMS[0], ITEMS[1], ITEMS[0]], [text, text, text], {}, "raise")
    assert enc.input_ids[0] == enc.input_ids[2] != enc.input_ids[1]
    for i, t in enumerate((ITEMS[0], ITEMS[1])):
        want = CrossItemMethod().encode(tiny_bb.tokenizer, [text], suite.max_length, suite.task_info(t))
        assert enc.input_ids[i] == want.input_ids[0]
    assert enc.counts.responses == 3


def test_open_scorer_picks_the_engine_and_onnx_export_is_refused(trained, tiny_bb, tmp_path):
    from scoreplex.engine import Engine
    from scoreplex.engine.onnx_export import export_onnx
    from scoreplex.scorer import open_scorer

    _, suite = trained
    assert isinstance(open_scorer(suite, tiny_bb), Engine)
    for source in (suite, Engine(suite, tiny_bb)):
        with pytest.raises(ConfigError, match="PyTorch engine"):
            export_onnx(source, tmp_path / "onnx", **({"backbone": tiny_bb} if source is suite else {}))


def test_the_service_serves_a_cross_item_suite(trained, demo_datasets, tiny_bb, tiny_backbone_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from scoreplex.engine import Engine
    from scoreplex.service import ServiceSettings, create_app

    _, suite = trained
    pairs = [(t, demo_datasets[t].texts[i]) for i in range(3) for t in ITEMS]
    want = Engine(suite, tiny_bb).score(pairs)
    app = create_app(ServiceSettings(suite=suite.root, backbone=str(tiny_backbone_path), max_wait_ms=20))
    with TestClient(app) as client:
        body = {"responses": [{"id": f"r{i}", "task": t, "text": x} for i, (t, x) in enumerate(pairs)]}
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
    assert [g["task"] for g in results] == [t for t, _ in pairs]
    for got, row in zip(results, want, strict=True):
        assert got["error"] is None and got["scores"] == row["labels"]
        for dim, probs in row["probs"].items():
            np.testing.assert_allclose(got["probabilities"][dim], probs, atol=1e-5, rtol=0)


def test_the_pairing_text_changes_the_scores(trained, demo_datasets, tiny_bb):
    from scoreplex.scorer import SuiteScorer

    run, suite = trained
    t = ITEMS[0]
    scorer = SuiteScorer(Suite.open(suite.root), tiny_bb, decoding=False, lexical=False)
    texts = demo_datasets[t].texts[:8]
    info = dict(suite.task_info(t), config={**suite.task_info(t)["config"], "pairing_text": "an unrelated text"})
    model = scorer.model(t)
    from scoreplex.predictions import predict_logits

    with torch.no_grad():
        own = predict_logits(model, CrossItemMethod().encode(tiny_bb.tokenizer, texts, suite.max_length, info))
        paired = predict_logits(
            model, CrossItemMethod().encode(tiny_bb.tokenizer, texts, suite.max_length, suite.task_info(t))
        )
    assert not torch.allclose(own, paired)


def test_adding_an_item_trains_only_its_head(trained, demo_datasets, tiny_bb, tmp_path):
    import shutil

    from scoreplex.crossitem import add_item
    from scoreplex.scorer import SuiteScorer
    from scoreplex.suite import sha256_file

    _, trained_suite = trained
    root = tmp_path / "suite"
    shutil.copytree(trained_suite.root, root)
    suite = Suite.open(root)
    shared_file = root / suite.manifest["shared"][SHARED_NAME]["file"]
    before = {p: sha256_file(p) for p in [shared_file, *(root / "tasks" / t / "module.safetensors" for t in ITEMS)]}
    new = demo_datasets["demo-food-web"]
    summary = add_item(suite, new, backbone=tiny_bb, progress=False)
    assert {p: sha256_file(p) for p in before} == before  # the adapter and the other items are untouched
    reopened = Suite.open(root)
    assert new.spec.id in reopened.task_ids and reopened.shared_of(new.spec.id) == SHARED_NAME
    own = reopened.module_tensors(new.spec.id)  # the new item stores its head alone
    assert all(k.startswith("head.") for k in own)
    assert sum(v.numel() for v in own.values()) == summary["added"]["new_parameters"]
    pred = SuiteScorer(reopened, tiny_bb).predict(new.spec.id, new.texts[:5])
    assert pred.labels.shape == (5, len(new.spec.dimensions))
    with pytest.raises(ConfigError, match="already in the suite"):
        add_item(reopened, new, backbone=tiny_bb, progress=False)


def test_train_suite_hands_cross_item_to_its_trainer_and_refuses_a_finished_suite(
    trained, demo_datasets, tiny_bb, small_options
):
    from scoreplex.training.suite import train_suite

    _, suite = trained
    with pytest.raises(SuiteError, match="already holds a suite"):
        train_suite({t: demo_datasets[t] for t in ITEMS}, suite.root, small_options("cross-item"), backbone=tiny_bb)


def test_items_too_small_to_split_train_on_all_rows(demo_datasets, tiny_bb, small_options, tmp_path):
    from scoreplex.crossitem.train import fit_cross_item

    data = {t: demo_datasets[t] for t in ITEMS[:2]}
    tiny = demo_datasets[ITEMS[0]].subset([0])
    data[ITEMS[0]] = tiny
    options = small_options("cross-item", max_length=32, lexical=False, decoding=False)
    run = fit_cross_item(data, options, tiny_bb)
    assert run.unsplit == [ITEMS[0]] and len(run.train[ITEMS[0]]) == 1 and ITEMS[0] not in run.val
    assert ITEMS[1] in run.val


def test_unknown_cross_item_settings_are_refused():
    from scoreplex.crossitem.train import CrossItemSettings

    with pytest.raises(ConfigError, match="question_shares"):
        CrossItemSettings.from_extra({"question_shares": 0.3})
    with pytest.raises(ConfigError, match="question_share"):
        CrossItemSettings(question_share=1.5)


@pytest.mark.parametrize(("head", "head_type"), [(None, "softmax"), ("shared-ordinal", "ordinal")])
def test_cli_trains_and_evaluates_a_cross_item_suite(
    head, head_type, demo_files, demo_column_map, tiny_backbone_path, tmp_path
):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    labels = [a for d, c in demo_column_map.labels.items() for a in ("--label", f"{d}={c}")]
    out = tmp_path / "suite"
    args = ["train", demo_files["train"], "--out", out, "--method", "cross-item", "--backbone", tiny_backbone_path]
    args += ["--tasks", demo_files["tasks"], "--epochs", 1, "--batch-size", 16, "--max-length", 48, "--no-lexical"]
    args += ["--cross-item-head", head] if head else []
    result = CliRunner().invoke(app, [str(a) for a in [*args, *labels]], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "suite written to" in result.output and "validation QWK" in result.output
    assert not (out / ".checkpoints").exists()  # removed once the suite is written
    suite = Suite.open(out)
    assert suite.method == CrossItemMethod.name and len(suite.task_ids) == 4
    assert {suite.task_info(t)["config"]["head_type"] for t in suite.task_ids} == {head_type}
    ev = ["evaluate", out, demo_files["test"], "--backbone", tiny_backbone_path, *labels]
    result = CliRunner().invoke(app, [str(a) for a in ev], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert all(t in result.output for t in suite.task_ids)


def test_an_interrupted_run_resumes_from_its_checkpoint(demo_datasets, tiny_bb, small_options, tmp_path):
    from dataclasses import replace

    from scoreplex.crossitem.train import CHECKPOINT, fit_cross_item, train_cross_item

    data = {t: demo_datasets[t] for t in ITEMS[:2]}
    options = small_options("cross-item", max_length=32, lexical=False, decoding=False)
    out = tmp_path / "suite"
    ckpt = out / ".checkpoints" / CHECKPOINT
    calls = []

    def interrupt(logits) -> None:  # during epoch 2's validation: epoch 1 is checkpointed, epoch 2 is not
        calls.append(len(logits))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        fit_cross_item(data, options, tiny_bb, checkpoint_dir=ckpt, on_val_logits=interrupt)
    first_epoch = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))["history"][0]
    with pytest.raises(ConfigError, match="config.lr"):  # a resume with other settings is refused, not mixed in
        train_cross_item(data, out, replace(options, config=replace(options.config, lr=1e-4)), backbone=tiny_bb)
    suite = train_cross_item(data, out, options, backbone=tiny_bb)
    fit = suite.manifest["cross_item"]["fit"]
    assert fit["epochs_run"] == 2 and fit["history"][0] == first_epoch
    assert sorted(suite.task_ids) == sorted(data) and not (out / ".checkpoints").exists()


def test_few_shot_items_choose_the_epochs_by_cross_validation_then_refit_on_all_rows(
    demo_datasets, tiny_bb, small_options, tmp_path
):
    from scoreplex.crossitem.train import train_cross_item

    few = {t: demo_datasets[t].subset(range(24)) for t in ITEMS[:2]}  # 2-3 validation rows each: small items
    options = small_options("cross-item", max_length=32, lexical=False, cv_folds=3)
    suite = train_cross_item(few, tmp_path / "few", options, backbone=tiny_bb)
    record = suite.manifest["cross_item"]
    cv = record["cv"]
    assert cv["folds"] == 3 and sorted(cv["small_items"]) == sorted(few)
    assert len(cv["per_fold"]) == 3 and all(len(curve) == 2 for curve in cv["per_fold"])  # every epoch of every fold
    mean = np.mean(np.array(cv["per_fold"]), axis=0)
    assert np.allclose(cv["mean_pooled_qwk"], mean, atol=1e-5)
    assert cv["epochs"] == int(np.argmax(mean)) + 1
    fit = record["fit"]  # the refit: all rows, exactly the chosen number of epochs, nothing validated
    assert fit["epochs_run"] == cv["epochs"] and fit["best_pooled_qwk"] is None
    assert all(h["val"] is None for h in fit["history"])
    for t in few:  # validated and decoded out of fold: each response held out once, at the chosen epoch
        info = suite.task_info(t)
        assert info["summary"]["train"]["n_train"] == 24 and info["summary"]["train"]["validation"] == "out-of-fold"
        assert info["summary"]["metrics"]["validation"]["n"] == 24
        assert info["decoding"] is not None
    assert not (tmp_path / "few" / ".checkpoints").exists()

    # items with validation splits of their own: early stopping on the pooled split, as before
    options = small_options("cross-item", max_length=32, lexical=False, decoding=False, cv_folds=3, min_val_rows=0)
    suite = train_cross_item({t: demo_datasets[t] for t in ITEMS[:2]}, tmp_path / "big", options, backbone=tiny_bb)
    assert "cv" not in suite.manifest["cross_item"]
    assert suite.manifest["cross_item"]["fit"]["best_pooled_qwk"] is not None


def test_every_response_is_held_out_once_and_a_single_response_item_only_trains(
    demo_datasets, tiny_bb, small_options, tmp_path
):
    from scoreplex.crossitem.train import choose_cross_item_epochs, train_cross_item

    few = {ITEMS[0]: demo_datasets[ITEMS[0]].subset(range(10)), ITEMS[1]: demo_datasets[ITEMS[1]].subset([0])}
    options = small_options("cross-item", max_length=32, lexical=False, cv_folds=3)
    record, oof = choose_cross_item_epochs(few, options, tiny_bb, folds=3, folder=tmp_path / "cv")
    assert set(oof) == {ITEMS[0]}  # the single response is never held out
    for d, probs in enumerate(oof[ITEMS[0]]):  # every row filled out of fold: a row never held out would sum to 0
        assert probs.shape == (10, few[ITEMS[0]].spec.class_counts[d])
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert 1 <= record["epochs"] <= 2
    again, oof_again = choose_cross_item_epochs(few, options, tiny_bb, folds=3, folder=tmp_path / "cv")  # resumed
    assert again == record and np.array_equal(oof_again[ITEMS[0]][0], oof[ITEMS[0]][0])
    suite = train_cross_item(few, tmp_path / "suite", options, backbone=tiny_bb)
    assert suite.task_info(ITEMS[1])["summary"]["train"]["validation"] == "none"
    assert suite.task_info(ITEMS[0])["summary"]["train"]["n_val"] == 10


# -- head warm-up --------------------------------------------------------------------------------------------------
def test_the_head_warm_up_trains_only_the_heads(demo_datasets, tiny_bb):
    from scoreplex.crossitem.model import CrossItemModel
    from scoreplex.crossitem.train import warm_up_heads
    from scoreplex.methods.per_task import LoRA
    from scoreplex.training.loop import TrainConfig

    items = {t: demo_datasets[t] for t in ITEMS}
    encoder = LoRA.wrap(tiny_bb.encoder, 4, 8, 0.0, ["query", "value"])
    with torch.no_grad():  # a non-zero adapter, so "unchanged" covers the LoRA weights too
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model = CrossItemModel(encoder, tiny_bb.hidden, [d.spec for d in items.values()], "mean", head="shared-ordinal")
    enc = {t: encode_pairs(tiny_bb.tokenizer, t, d.texts, 32, d.labels) for t, d in items.items()}
    val_enc = {t: encode_pairs(tiny_bb.tokenizer, t, d.texts, 32) for t, d in items.items()}
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    heads_before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=16, head_warmup_epochs=3, head_warmup_lr=1e-2)
    result = warm_up_heads(model, enc, items, val_enc, config, progress=False)
    assert result.epochs_run == 3
    assert all(torch.equal(encoder_before[k], v) for k, v in encoder.state_dict().items())
    changed = [k for k, v in model.heads.state_dict().items() if not torch.equal(heads_before[k], v)]
    assert any(".latent." in k for k in changed) and any(k.endswith(".first") for k in changed)
    first = model.heads[ITEMS[0]].latent
    assert all(model.heads[t].latent is first for t in ITEMS)  # one latent, shared by every item


def test_fit_cross_item_warms_the_heads_up_first(demo_datasets, tiny_bb, small_options, monkeypatch):
    from dataclasses import replace

    from scoreplex.crossitem import train as cross_train

    calls = []
    real = cross_train.warm_up_heads
    monkeypatch.setattr(cross_train, "warm_up_heads", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    options = small_options("cross-item", max_length=32, lexical=False, decoding=False)
    data = {t: demo_datasets[t] for t in ITEMS[:2]}
    cross_train.fit_cross_item(data, options, tiny_bb)
    assert calls == []  # head_warmup_epochs=0: no warm-up
    warm = replace(options, config=replace(options.config, epochs=1, head_warmup_epochs=2))
    cross_train.fit_cross_item(data, warm, tiny_bb)
    assert len(calls) == 1 and calls[0].head_warmup_epochs == 2
    assert CrossItemMethod.training_defaults["head_warmup_epochs"] == 3  # as per-item LoRA


# -- the shared ordinal head ---------------------------------------------------------------------------------------
def test_the_ordinal_head_gives_valid_rank_consistent_probabilities():
    from scoreplex.heads import ORDINAL_RANGE, OrdinalHead, probabilities, rubric_loss

    torch.manual_seed(0)
    counts = [4, 2, 6]
    head = OrdinalHead(8, counts, dropout=0.0).eval()
    for theta, k in zip(head.thresholds(), counts, strict=True):  # fresh: evenly spaced over the latent range
        want = torch.tensor([ORDINAL_RANGE * (2 * (j + 1) / k - 1) for j in range(k - 1)])
        torch.testing.assert_close(theta, want)
    with torch.no_grad():  # any parameter values: the thresholds stay increasing
        head.gaps.normal_(0, 3)
        head.first.normal_(0, 3)
        head.scale.normal_(0, 2)
    assert all(bool((t[1:] > t[:-1]).all()) for t in head.thresholds())
    x = torch.randn(64, 8)
    logits = head(x)
    assert logits.shape == (64, sum(counts))
    for p in probabilities(logits, counts):
        assert bool((p >= 0).all())
        torch.testing.assert_close(p.sum(1), torch.ones(64))
    # rank consistency: sorted by the latent score, P(y > k) moves one way only in every dimension
    s = head.latent(x)
    order = torch.argsort(s)
    for d, p in enumerate(probabilities(logits, counts)):
        above = 1 - torch.cumsum(p[order], 1)[:, :-1]  # (B, K-1)
        steps = torch.diff(above, dim=0) * torch.sign(head.scale[d])
        assert bool((steps >= -1e-5).all())
    # the loss is the ordinal model's negative log-likelihood
    y = torch.stack([torch.randint(0, k, (64,)) for k in counts], 1)
    probs = probabilities(logits, counts)
    nll = sum(-torch.log(p[torch.arange(64), y[:, d]]).mean() for d, p in enumerate(probs))
    torch.testing.assert_close(rubric_loss(logits, y, counts), nll, atol=1e-4, rtol=1e-4)


def test_head_choices_are_checked():
    from scoreplex.crossitem.train import CrossItemSettings
    from scoreplex.heads import build_rubric_head

    with pytest.raises(ConfigError, match="shared-ordinal"):
        CrossItemSettings(head="ordinal-shared")
    with pytest.raises(ConfigError, match="head_hidden"):
        build_rubric_head(8, [3], {"head_type": "ordinal", "head_hidden": 16})
    with pytest.raises(ConfigError, match="softmax"):
        build_rubric_head(8, [3], {"head_type": "corn"})


@pytest.fixture(scope="module")
def trained_ordinal(tmp_path_factory, demo_datasets, tiny_bb, small_options):
    folder = tmp_path_factory.mktemp("cross-ordinal")
    return _train_suite(folder, demo_datasets, tiny_bb, small_options, "shared-ordinal")


def test_a_shared_ordinal_suite_stores_one_latent_and_round_trips(trained_ordinal, demo_datasets, tiny_bb):
    from scoreplex.heads import OrdinalHead, probabilities
    from scoreplex.predictions import predict_logits
    from scoreplex.scorer import SuiteScorer

    run, suite = trained_ordinal
    suite = Suite.open(suite.root)
    latent = {k: v for k, v in suite.module_tensors(ITEMS[0]).items() if k.startswith("head.latent.")}
    assert latent and all(k.startswith("head.") for k in suite.module_tensors(ITEMS[0]))
    scorer = SuiteScorer(suite, tiny_bb, decoding=False, lexical=False)
    for t in ITEMS:
        assert suite.task_info(t)["config"]["head_type"] == "ordinal"
        own = suite.module_tensors(t)
        assert all(torch.equal(own[k], v) for k, v in latent.items())  # every item holds the same latent
        assert isinstance(scorer.model(t).head, OrdinalHead)
        texts = demo_datasets[t].texts[:12]
        enc = encode_pairs(tiny_bb.tokenizer, run.texts[t], texts, run.max_length)
        with torch.no_grad():
            want = probabilities(predict_logits(run.model.task_view(t), enc), suite.spec(t).class_counts)
        for g, w in zip(scorer.predict(t, texts).probs, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def trained_length(tmp_path_factory, demo_datasets, tiny_bb, small_options):
    """A shared-ordinal suite whose latent score reads the response length too."""
    folder = tmp_path_factory.mktemp("cross-length")
    return _train_suite(folder, demo_datasets, tiny_bb, small_options, "shared-ordinal", length_feature=True)


def test_the_length_feature_is_one_slope_on_the_shared_latent(trained_length, demo_datasets, tiny_bb):
    from scoreplex.encoding import encode_pairs as pairs_of
    from scoreplex.scorer import SuiteScorer

    run, suite = trained_length
    suite = Suite.open(suite.root)
    slopes = [suite.module_tensors(t)["head.latent.length.weight"] for t in ITEMS]
    assert all(torch.equal(w, slopes[0]) for w in slopes) and float(slopes[0].abs()) > 0  # shared, and trained
    assert all(suite.task_info(t)["config"]["length_feature"] for t in ITEMS)
    # the response's token count, not the pair's: the question does not change it
    enc = pairs_of(tiny_bb.tokenizer, "a long question " * 5, ["short answer", "a much longer answer " * 4], 64)
    plain = encode_texts(tiny_bb.tokenizer, ["short answer", "a much longer answer " * 4], 64)
    assert enc.n_tokens.tolist() == plain.n_tokens.tolist()
    # a head without the token counts refuses to guess
    head = SuiteScorer(suite, tiny_bb).model(ITEMS[0]).head
    with pytest.raises(ConfigError, match="n_tokens"):
        head(torch.randn(2, tiny_bb.hidden))


@pytest.mark.parametrize("fixture", ["trained", "trained_ordinal", "trained_length"])
def test_the_engine_equals_the_suite_scorer_for_both_heads(fixture, request, demo_datasets, tiny_bb):
    from scoreplex.engine import Engine
    from scoreplex.scorer import SuiteScorer

    _, suite = request.getfixturevalue(fixture)
    suite = Suite.open(suite.root)
    engine = Engine(suite, tiny_bb, batch_size=4)
    scorer = SuiteScorer(suite, tiny_bb, cache_size=len(ITEMS))
    pairs = [(t, demo_datasets[t].texts[i]) for i in range(6) for t in ITEMS]
    rows = engine.score(pairs)
    for t in ITEMS:
        want = scorer.predict(t, [x for task, x in pairs if task == t])
        mixed = [r for (task, _), r in zip(pairs, rows, strict=True) if task == t]
        for d, name in enumerate(suite.spec(t).dimension_names):
            np.testing.assert_allclose([r["probs"][name] for r in mixed], want.probs[d], atol=1e-5, rtol=0)


def _copy_suite(suite, root):
    import shutil

    shutil.copytree(suite.root, root)
    return Suite.open(root)


def test_a_new_item_with_no_scored_answers_gets_predictions(trained_ordinal, demo_datasets, tiny_bb, tmp_path):
    from scoreplex.crossitem import add_item
    from scoreplex.engine import Engine
    from scoreplex.heads import ORDINAL_RANGE, OrdinalHead
    from scoreplex.scorer import SuiteScorer

    _, trained_suite = trained_ordinal
    suite = _copy_suite(trained_suite, tmp_path / "suite")
    new = demo_datasets["demo-food-web"]
    summary = add_item(suite, new.spec, backbone=tiny_bb, progress=False)
    assert summary["added"]["zero_shot"] and summary["added"]["new_parameters"] == 0
    suite = Suite.open(suite.root)
    own = suite.module_tensors(new.spec.id)
    ref = suite.module_tensors(ITEMS[0])
    assert all(torch.equal(own[k], ref[k]) for k in own if k.startswith("head.latent."))
    fresh = OrdinalHead(tiny_bb.hidden, new.spec.class_counts)  # thresholds evenly spaced over the latent range
    for name in ("first", "gaps", "scale"):
        torch.testing.assert_close(own[f"head.{name}"], getattr(fresh, name).detach())
    k = new.spec.class_counts[0]
    assert float(own["head.first"][0]) == pytest.approx(-ORDINAL_RANGE + 2 * ORDINAL_RANGE / k)
    pred = SuiteScorer(suite, tiny_bb, decoding=False, lexical=False).predict(new.spec.id, new.texts[:20])
    assert pred.labels.shape == (20, len(new.spec.dimensions))
    assert all(np.allclose(p.sum(axis=1), 1.0, atol=1e-5) for p in pred.probs)
    assert np.ptp(pred.probs[0][:, 1]) > 0  # scored by the shared latent, not a constant
    got = Engine(suite, tiny_bb).predict(new.spec.id, new.texts[:20])
    np.testing.assert_allclose(got.probs[0], pred.probs[0], atol=1e-5, rtol=0)


def test_a_per_item_suite_refuses_an_item_without_scored_answers(trained, demo_datasets, tiny_bb, tmp_path):
    from scoreplex.crossitem import add_item
    from scoreplex.errors import DataError

    suite = _copy_suite(trained[1], tmp_path / "suite")
    with pytest.raises(DataError, match="shared-ordinal"):
        add_item(suite, demo_datasets["demo-food-web"].spec, backbone=tiny_bb, progress=False)
    assert "demo-food-web" not in Suite.open(suite.root).task_ids


def test_adding_a_few_answers_fits_only_the_new_items_thresholds(trained_ordinal, demo_datasets, tiny_bb, tmp_path):
    from scoreplex.crossitem import add_item
    from scoreplex.heads import OrdinalHead
    from scoreplex.suite import sha256_file

    _, trained_suite = trained_ordinal
    suite = _copy_suite(trained_suite, tmp_path / "suite")
    root = suite.root
    shared_file = root / suite.manifest["shared"][SHARED_NAME]["file"]
    before = {p: sha256_file(p) for p in [shared_file, *(root / "tasks" / t / "module.safetensors" for t in ITEMS)]}
    new = demo_datasets["demo-food-web"].subset(list(range(24)))
    summary = add_item(suite, new, backbone=tiny_bb, progress=False)
    assert {p: sha256_file(p) for p in before} == before  # the adapter and the other items are untouched
    dims = len(new.spec.dimensions)
    fresh = OrdinalHead(tiny_bb.hidden, new.spec.class_counts)
    assert summary["added"]["new_parameters"] == fresh.first.numel() + fresh.gaps.numel()
    own = Suite.open(root).module_tensors(new.spec.id)
    ref = Suite.open(root).module_tensors(ITEMS[0])
    assert all(torch.equal(own[k], ref[k]) for k in own if k.startswith("head.latent."))  # latent: shared, frozen
    torch.testing.assert_close(own["head.scale"], torch.ones(dims))  # the scale is not fitted
    assert not torch.equal(own["head.first"], fresh.first.detach())  # the thresholds moved
