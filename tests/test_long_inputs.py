"""Long answers: truncation reported where it happens, and the windows mode (overlapping windows of ``max_length``
tokens, pooled vectors averaged per response) in training, SuiteScorer, the PyTorch engine and the ONNX engine.

The suites are trained on the tiny BERT at ``max_length`` 16 (the demo responses are 6-57 tokens long), so most
responses span several windows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_suites import ADAPTER_CONFIG, QK_TASKS, QV_TASKS
from scoreplex.encoding import (
    LengthCounts,
    LongInputs,
    collate,
    encode_texts,
    length_counts,
    window_count,
    window_mean,
    window_starts,
)
from scoreplex.engine import Engine
from scoreplex.errors import ConfigError, SuiteError
from scoreplex.heads import probabilities
from scoreplex.methods import MethodSettings
from scoreplex.scorer import SuiteScorer, evaluate_suite
from scoreplex.suite import Suite
from scoreplex.training.suite import TrainOptions, train_suite, training_truncation

MAX_LENGTH = 16
STRIDE = 5
WINDOWS = LongInputs("windows", stride=STRIDE)
TASKS = (*QV_TASKS, *QK_TASKS[:1])


def _train(datasets, root: Path, bb, path: Path, method: str = "lora", long_inputs: LongInputs = WINDOWS, **changes):
    changes = {"settings": MethodSettings(lora_r=4, lora_alpha=8), "max_length": MAX_LENGTH, **changes}
    options = TrainOptions(
        method=method, backbone=str(path), config=ADAPTER_CONFIG, progress=False, long_inputs=long_inputs, **changes
    )
    return train_suite(datasets, root, options, backbone=bb)


@pytest.fixture(scope="module")
def windows_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("long") / "lora"
    _train({t: demo_datasets[t] for t in TASKS}, root, tiny_bb, tiny_backbone_path)
    return root


@pytest.fixture(scope="module")
def truncating_copy(tmp_path_factory, windows_suite) -> Path:
    """The same trained modules, read in truncate mode."""
    root = Path(shutil.copytree(windows_suite, tmp_path_factory.mktemp("long") / "truncate"))
    Suite.open(root, verify=False).update(long_inputs=None)
    return root


@pytest.fixture(scope="module")
def texts(demo_datasets, tiny_bb):
    """Per task: 10 responses longer than max_length and 4 that fit."""
    out = {}
    for t in TASKS:
        lengths = [len(tiny_bb.tokenizer(x)["input_ids"]) for x in demo_datasets[t].texts]
        long = [x for x, n in zip(demo_datasets[t].texts, lengths, strict=True) if n > MAX_LENGTH + 8]
        short = [x for x, n in zip(demo_datasets[t].texts, lengths, strict=True) if n <= MAX_LENGTH]
        assert len(long) >= 10 and len(short) >= 4, "the demo data should hold long and short responses"
        out[t] = long[:10] + short[:4]
    return out


def _short(texts, tokenizer):
    return {t: [x for x in xs if len(tokenizer(x)["input_ids"]) <= MAX_LENGTH] for t, xs in texts.items()}


def _probs_close(a, b, atol):
    assert len(a.probs) == len(b.probs)
    for pa, pb in zip(a.probs, b.probs, strict=True):
        np.testing.assert_allclose(pa, pb, atol=atol, rtol=0)


# -- windows and their counts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [3, 16, 17, 20, 31, 57])
@pytest.mark.parametrize("step", [1, 5, 14])
def test_windows_cover_every_token_and_are_full(length, step):
    body, total = MAX_LENGTH - 2, length - 2
    starts = window_starts(length, MAX_LENGTH, step)
    assert len(starts) == window_count(length, MAX_LENGTH, step)
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + body, total)))
    assert covered == set(range(total))
    if total > body:
        assert all(0 <= s <= total - body for s in starts)  # every window holds `body` tokens
        assert starts[-1] == total - body
        assert all(b - a <= step for a, b in zip(starts, starts[1:], strict=False))


def test_collate_cuts_long_rows_into_windows_and_keeps_short_rows(tiny_bb, texts):
    t = TASKS[0]
    enc = encode_texts(tiny_bb.tokenizer, texts[t], MAX_LENGTH, long_inputs=WINDOWS)
    batch = collate(enc, range(len(enc)))
    owner = batch["windows"].tolist()
    assert sorted(set(owner)) == list(range(len(enc)))
    assert batch["input_ids"].shape[1] == MAX_LENGTH
    for j, x in enumerate(enc.input_ids):
        rows = [i for i, o in enumerate(owner) if o == j]
        windows = [batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist() for i in rows]
        assert all(w[0] == x[0] and w[-1] == x[-1] and len(w) <= MAX_LENGTH for w in windows)
        if len(x) <= MAX_LENGTH:
            assert windows == [x]
        else:
            assert len(windows) == window_count(len(x), MAX_LENGTH, STRIDE) > 1
    # a batch of short rows is the truncate mode's batch, without a `windows` entry
    short = encode_texts(tiny_bb.tokenizer, _short(texts, tiny_bb.tokenizer)[t], MAX_LENGTH, long_inputs=WINDOWS)
    plain = encode_texts(tiny_bb.tokenizer, _short(texts, tiny_bb.tokenizer)[t], MAX_LENGTH)
    a, b = collate(short, range(len(short))), collate(plain, range(len(plain)))
    assert "windows" not in a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_counts_agree_between_encoding_and_lengths(tiny_bb, texts):
    xs = [x for t in TASKS for x in texts[t]]
    for long_inputs in (LongInputs(), WINDOWS, LongInputs("windows", stride=STRIDE, max_windows=2)):
        enc = encode_texts(tiny_bb.tokenizer, xs, MAX_LENGTH, long_inputs=long_inputs)
        assert enc.counts == length_counts(tiny_bb.tokenizer, xs, MAX_LENGTH, long_inputs)
    n_long = 10 * len(TASKS)
    assert length_counts(tiny_bb.tokenizer, xs, MAX_LENGTH) == LengthCounts(len(xs), n_long, 0)
    assert length_counts(tiny_bb.tokenizer, xs, MAX_LENGTH, WINDOWS) == LengthCounts(len(xs), 0, n_long)
    assert length_counts(tiny_bb.tokenizer, xs, MAX_LENGTH, LongInputs("windows", stride=1, max_windows=2)).cut > 0


def test_window_mean_averages_per_row():
    pooled = torch.arange(12.0).reshape(4, 3)
    out = window_mean(pooled, torch.tensor([0, 1, 1, 2]), 3)
    torch.testing.assert_close(out, torch.stack([pooled[0], pooled[1:3].mean(0), pooled[3]]))


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "slide"}, {"mode": "windows", "stride": 0}, {"mode": "windows", "pool": "max"}, {"max_windows": 0}],
)
def test_bad_long_input_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        LongInputs(**kwargs)


def test_a_stride_longer_than_a_window_is_refused_before_training(demo_datasets, tiny_bb, tiny_backbone_path, tmp_path):
    with pytest.raises(ConfigError, match="window-stride 14 or less"):
        _train(
            {TASKS[0]: demo_datasets[TASKS[0]]},
            tmp_path / "s",
            tiny_bb,
            tiny_backbone_path,
            long_inputs=LongInputs("windows", stride=MAX_LENGTH),
        )
    assert not (tmp_path / "s").exists()


# -- training records the mode and the counts ------------------------------------------------------------------------
def test_manifest_records_the_mode_and_the_training_counts(windows_suite, demo_datasets, tiny_bb):
    suite = Suite.open(windows_suite)
    assert suite.long_inputs == WINDOWS
    xs = [x for t in TASKS for x in demo_datasets[t].texts]
    assert training_truncation(suite) == length_counts(tiny_bb.tokenizer, xs, MAX_LENGTH, WINDOWS)
    assert training_truncation(suite).windowed > 0


def test_retraining_into_the_suite_in_another_mode_is_refused(
    windows_suite, demo_datasets, tiny_bb, tiny_backbone_path, tmp_path
):
    root = Path(shutil.copytree(windows_suite, tmp_path / "s"))
    with pytest.raises(SuiteError, match="long_inputs"):
        _train({TASKS[0]: demo_datasets[TASKS[0]]}, root, tiny_bb, tiny_backbone_path, long_inputs=LongInputs())


def test_a_manifest_with_an_unreadable_mode_names_the_field(windows_suite, tmp_path):
    root = Path(shutil.copytree(windows_suite, tmp_path / "s"))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["long_inputs"] = {"mode": "slide"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SuiteError, match="long_inputs"):
        SuiteScorer(root, backbone=None).predict(TASKS[0], ["a"])


# -- scoring: the invariants -----------------------------------------------------------------------------------------
def test_short_responses_score_exactly_as_in_truncate_mode(windows_suite, truncating_copy, tiny_bb, texts):
    short = _short(texts, tiny_bb.tokenizer)
    windows, plain = SuiteScorer(windows_suite, tiny_bb), SuiteScorer(truncating_copy, tiny_bb)
    engine_w, engine_t = Engine(windows_suite, tiny_bb), Engine(truncating_copy, tiny_bb)
    for t in TASKS:
        for a, b in ((windows, plain), (engine_w, engine_t)):
            pa, pb = a.predict(t, short[t]), b.predict(t, short[t])
            for x, y in zip(pa.probs, pb.probs, strict=True):
                np.testing.assert_array_equal(x, y)
    # and the long ones do not: the mode changes what the model sees
    long = texts[TASKS[0]][:10]
    pa, pb = windows.predict(TASKS[0], long), plain.predict(TASKS[0], long)
    assert not np.allclose(pa.probs[0], pb.probs[0], atol=1e-4)


def test_windows_mode_is_the_mean_of_the_window_embeddings_by_hand(windows_suite, tiny_bb, texts):
    scorer = SuiteScorer(windows_suite, tiny_bb, decoding=False, lexical=False)
    t = TASKS[0]
    model = scorer.model(t)
    spec = scorer.suite.spec(t)
    body = MAX_LENGTH - 2
    text = max(texts[t], key=len)
    ids = tiny_bb.tokenizer(text)["input_ids"]
    inner = ids[1:-1]
    starts = list(range(0, len(inner) - body + 1, STRIDE))
    if starts[-1] != len(inner) - body:
        starts.append(len(inner) - body)
    assert len(starts) > 2
    with torch.no_grad():
        vecs = []
        for s in starts:
            window = torch.tensor([[ids[0], *inner[s : s + body], ids[-1]]])
            vecs.append(model.embed(window, torch.ones_like(window))[0])
        logits = model.head(torch.stack(vecs).mean(0, keepdim=True))
    want = [p.numpy() for p in probabilities(logits, spec.class_counts)]
    got = scorer.predict(t, [text]).probs
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def test_engine_matches_suite_scorer_in_windows_mode(windows_suite, tiny_bb, texts):
    scorer = SuiteScorer(windows_suite, tiny_bb)
    engine = Engine(windows_suite, tiny_bb, batch_size=8, max_tokens=64)
    for t in TASKS:
        _probs_close(engine.predict(t, texts[t]), scorer.predict(t, texts[t]), atol=1e-5)
    assert engine.length_counts.windowed == scorer.length_counts.windowed == 10 * len(TASKS)
    # mixed tasks in one pass: each window runs with its own row's adapter
    pairs = [(t, x) for t in TASKS for x in texts[t]]
    order = np.random.default_rng(0).permutation(len(pairs))
    pairs = [pairs[i] for i in order]
    mixed = Engine(windows_suite, tiny_bb, batch_size=32, max_tokens=None).score(pairs)
    for (t, x), row in zip(pairs, mixed, strict=True):
        alone = scorer.predict(t, [x])
        for d, name in enumerate(alone.spec.dimension_names):
            np.testing.assert_allclose(row["probs"][name], alone.probs[d][0], atol=1e-5, rtol=0)


def test_head_only_suite_trains_and_scores_in_windows_mode(demo_datasets, tiny_bb, tiny_backbone_path, tmp_path, texts):
    t = TASKS[0]
    _train({t: demo_datasets[t]}, tmp_path / "head", tiny_bb, tiny_backbone_path, method="head")
    scorer = SuiteScorer(tmp_path / "head", tiny_bb)
    _probs_close(Engine(tmp_path / "head", tiny_bb).predict(t, texts[t]), scorer.predict(t, texts[t]), atol=1e-5)


def test_onnx_engine_matches_the_pytorch_engine_in_windows_mode(windows_suite, tiny_bb, tmp_path, texts):
    from scoreplex.engine.onnx_export import export_onnx
    from scoreplex.engine.onnx_runtime import OnnxEngine

    export_onnx(windows_suite, tmp_path / "onnx", backbone=tiny_bb)
    pairs = [(t, x) for t in TASKS for x in texts[t]]
    want = Engine(windows_suite, tiny_bb, batch_size=8).score(pairs)
    got = OnnxEngine(windows_suite, tmp_path / "onnx", batch_size=8, intra_op_threads=1).score(pairs)
    for row, ref in zip(got, want, strict=True):
        assert row["labels"] == ref["labels"]
        for name, p in row["probs"].items():
            np.testing.assert_allclose(p, ref["probs"][name], atol=1e-4, rtol=0)


def test_evaluate_reports_the_responses_cut_per_task(truncating_copy, windows_suite, tiny_bb, demo_datasets):
    data = {t: demo_datasets[t] for t in TASKS}
    plain = evaluate_suite(SuiteScorer(truncating_copy, tiny_bb), data, progress=False)
    windows = evaluate_suite(SuiteScorer(windows_suite, tiny_bb), data, progress=False)
    for t in TASKS:
        want = length_counts(tiny_bb.tokenizer, data[t].texts, MAX_LENGTH)
        assert plain["tasks"][t]["truncation"] == want.to_dict()
        assert windows["tasks"][t]["truncation"]["windowed"] == want.cut
        assert windows["tasks"][t]["truncation"]["cut"] == 0
    assert plain["truncation"]["responses"] == sum(len(d) for d in data.values())
    assert plain["truncation"]["cut"] == sum(m["truncation"]["cut"] for m in plain["tasks"].values()) > 0


# -- the CLI prints the counts ---------------------------------------------------------------------------------------
def test_cli_trains_in_windows_mode_and_reports_long_responses_everywhere(tmp_path, tiny_backbone_path, tiny_bb):
    import csv

    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.data.demo import demo_specs, write_demo

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    files = write_demo(tmp_path / "data", n_train=30, n_test=10)
    labels = []
    for d in dict.fromkeys(d.name for s in demo_specs() for d in s.dimensions):
        labels += ["--label", f"{d}={d}"]
    with open(files["test"], encoding="utf-8", newline="") as fh:
        test_texts = [r["text"] for r in csv.DictReader(fh)]
    with open(files["train"], encoding="utf-8", newline="") as fh:
        train_texts = [r["text"] for r in csv.DictReader(fh)]
    suite = tmp_path / "suite"
    args = ("--backbone", tiny_backbone_path, "--epochs", 1, "--max-length", MAX_LENGTH, "--no-lexical")
    out = invoke("train", files["train"], "--out", suite, "--tasks", files["tasks"], *args, *labels,
                 "--long-inputs", "windows", "--window-stride", STRIDE)  # fmt: skip
    trained = length_counts(tiny_bb.tokenizer, train_texts, MAX_LENGTH, WINDOWS)
    assert trained.windowed > 0
    assert Suite.open(suite).long_inputs.pool == "mean+max"  # the CLI's default window pooling
    line = f"{trained.windowed} of {len(train_texts)} responses longer than max_length {MAX_LENGTH} encoded as windows"
    assert line in out
    info = invoke("info", suite)
    assert f"long inputs windows (stride {STRIDE}" in info and line in info
    scored = length_counts(tiny_bb.tokenizer, test_texts, MAX_LENGTH, WINDOWS)
    line = f"{scored.windowed} of {len(test_texts)} responses longer than max_length {MAX_LENGTH} encoded as windows"
    assert line in invoke("evaluate", suite, files["test"], *labels)
    assert line in invoke("score", suite, files["test"], tmp_path / "scores.csv", "--no-progress")
    # the default mode says how many responses it cut
    plain = tmp_path / "plain"
    out = invoke("train", files["train"], "--out", plain, "--tasks", files["tasks"], *args, *labels)
    cut = length_counts(tiny_bb.tokenizer, train_texts, MAX_LENGTH)
    assert f"truncation: {cut.cut} of {len(train_texts)} responses ({100 * cut.cut_share:.1f}%) cut" in out
    assert "long inputs truncate" in invoke("info", plain)


# -- the response-length feature -------------------------------------------------------------------------------------
def test_a_fresh_length_feature_leaves_the_head_unchanged():
    from scoreplex.heads import ScoringHead

    torch.manual_seed(0)
    plain = ScoringHead(8, [3, 2], hidden=4)
    torch.manual_seed(0)
    with_length = ScoringHead(8, [3, 2], hidden=4, length_feature=True)
    x, n = torch.randn(5, 8), torch.tensor([3, 10, 100, 512, 900])
    plain.eval(), with_length.eval()
    torch.testing.assert_close(with_length(x, n), plain(x))
    with pytest.raises(ConfigError, match="n_tokens"):
        with_length(x)
    with torch.no_grad():
        with_length.length.weight.fill_(1.0)
    assert not torch.allclose(with_length(x, n), plain(x))


@pytest.mark.parametrize("method", ["lora", "head"])
def test_length_feature_trains_and_engine_matches_suite_scorer(
    method, demo_datasets, tiny_bb, tiny_backbone_path, tmp_path, texts, windows_suite
):
    t = TASKS[0]
    options = dict(settings=MethodSettings(lora_r=4, lora_alpha=8, length_feature=True))
    _train({t: demo_datasets[t]}, tmp_path / "s", tiny_bb, tiny_backbone_path, method=method, **options)
    suite = Suite.open(tmp_path / "s")
    assert suite.task_info(t)["config"]["length_feature"] is True
    assert float(suite.module_tensors(t)["head.length.weight"].abs().sum()) > 0  # it trained
    scorer = SuiteScorer(suite, tiny_bb)
    _probs_close(Engine(suite, tiny_bb, batch_size=4).predict(t, texts[t]), scorer.predict(t, texts[t]), atol=1e-5)
    # off by default: task.json and the module as before
    assert "length_feature" not in Suite.open(windows_suite).task_info(t)["config"]
    assert not any(k.startswith("head.length") for k in Suite.open(windows_suite).module_tensors(t))


# -- mean+max window pooling -----------------------------------------------------------------------------------------
MEANMAX = LongInputs("windows", stride=STRIDE, pool="mean+max")


def test_pool_windows_puts_the_mean_and_the_maximum_side_by_side():
    from scoreplex.encoding import pool_windows

    pooled = torch.tensor([[1.0, -2.0], [3.0, -4.0], [-1.0, 5.0], [0.5, 0.5]])
    owner = torch.tensor([0, 0, 0, 1])
    out = pool_windows(pooled, owner, 2, "mean+max")
    want = torch.tensor([[1.0, -1 / 3, 3.0, 5.0], [0.5, 0.5, 0.5, 0.5]])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(pool_windows(pooled, owner, 2, "mean"), window_mean(pooled, owner, 2))
    # one window per row: the vector twice, or itself for the mean
    torch.testing.assert_close(pool_windows(pooled, None, 4, "mean+max"), torch.cat([pooled, pooled], 1))
    torch.testing.assert_close(pool_windows(pooled, None, 4, "mean"), pooled)
    with pytest.raises(ConfigError, match="mean\\+max"):
        pool_windows(pooled, owner, 2, "attention")


@pytest.fixture(scope="module")
def meanmax_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("long") / "meanmax"
    _train({t: demo_datasets[t] for t in TASKS[:2]}, root, tiny_bb, tiny_backbone_path, long_inputs=MEANMAX)
    return root


def test_a_mean_max_suite_records_its_pooling_and_its_heads_read_twice_the_width(meanmax_suite, tiny_bb):
    suite = Suite.open(meanmax_suite)
    assert suite.long_inputs == MEANMAX
    for t in TASKS[:2]:
        assert suite.task_info(t)["config"]["window_pool"] == "mean+max"
        assert suite.module_tensors(t)["head.net.0.weight"].shape == (2 * tiny_bb.hidden,)


def test_mean_max_scores_are_the_head_on_the_window_mean_and_maximum_by_hand(meanmax_suite, tiny_bb, texts):
    scorer = SuiteScorer(meanmax_suite, tiny_bb, decoding=False, lexical=False)
    t = TASKS[0]
    model = scorer.model(t)
    body = MAX_LENGTH - 2
    text = max(texts[t], key=len)
    ids = tiny_bb.tokenizer(text)["input_ids"]
    inner = ids[1:-1]
    starts = sorted({min(s, len(inner) - body) for s in range(0, len(inner) - body + STRIDE, STRIDE)})
    assert len(starts) > 2
    with torch.no_grad():
        windows = torch.tensor([[ids[0], *inner[s : s + body], ids[-1]] for s in starts])
        out = model.encoder(input_ids=windows, attention_mask=torch.ones_like(windows)).last_hidden_state
        vecs = out.mean(1)  # (W, H): mean pooling over each full window
        feats = torch.cat([vecs.mean(0), vecs.max(0).values])[None]
        logits = model.head(feats)
    want = probabilities(logits, scorer.suite.spec(t).class_counts)
    for g, w in zip(scorer.predict(t, [text]).probs, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


def test_engine_and_onnx_match_suite_scorer_with_mean_max(meanmax_suite, tiny_bb, tmp_path, texts):
    from scoreplex.engine.onnx_export import export_onnx
    from scoreplex.engine.onnx_runtime import OnnxEngine

    scorer = SuiteScorer(meanmax_suite, tiny_bb)
    pairs = [(t, x) for t in TASKS[:2] for x in texts[t]]  # long and short rows of two tasks, mixed
    pairs = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
    engine = Engine(meanmax_suite, tiny_bb, batch_size=32, max_tokens=None).score(pairs)
    export_onnx(meanmax_suite, tmp_path / "onnx", backbone=tiny_bb)
    onnx = OnnxEngine(meanmax_suite, tmp_path / "onnx", batch_size=8, intra_op_threads=1).score(pairs)
    for (t, x), row, orow in zip(pairs, engine, onnx, strict=True):
        alone = scorer.predict(t, [x])
        for d, name in enumerate(alone.spec.dimension_names):
            np.testing.assert_allclose(row["probs"][name], alone.probs[d][0], atol=1e-5, rtol=0)
            np.testing.assert_allclose(orow["probs"][name], alone.probs[d][0], atol=1e-4, rtol=0)


def test_a_task_whose_head_disagrees_with_the_suite_pooling_is_refused_by_name(meanmax_suite, tiny_bb, tmp_path):
    root = Path(shutil.copytree(meanmax_suite, tmp_path / "s"))
    Suite.open(root, verify=False).update(long_inputs=WINDOWS.to_dict())  # the heads still read mean+max
    with pytest.raises(SuiteError, match=f"{TASKS[0]}.*'mean\\+max' window features"):
        Engine(root, tiny_bb).predict(TASKS[0], ["a response"])
    with pytest.raises(SuiteError, match=f"{TASKS[0]}.*'mean\\+max' window features"):
        SuiteScorer(root, tiny_bb).predict(TASKS[0], ["a response"])


def test_head_only_suite_trains_and_scores_with_mean_max(demo_datasets, tiny_bb, tiny_backbone_path, tmp_path, texts):
    t = TASKS[0]
    _train({t: demo_datasets[t]}, tmp_path / "head", tiny_bb, tiny_backbone_path, method="head", long_inputs=MEANMAX)
    suite = Suite.open(tmp_path / "head")
    assert suite.task_info(t)["config"]["window_pool"] == "mean+max"
    scorer = SuiteScorer(suite, tiny_bb)
    _probs_close(Engine(suite, tiny_bb).predict(t, texts[t]), scorer.predict(t, texts[t]), atol=1e-5)


def test_cli_refuses_an_unknown_window_pool_with_exit_code_2(tmp_path, tiny_backbone_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app
    from scoreplex.data.demo import write_demo

    files = write_demo(tmp_path / "data", n_train=30, n_test=10)
    args = ["train", files["train"], "--out", tmp_path / "s", "--tasks", files["tasks"], "--backbone",
            tiny_backbone_path, "--long-inputs", "windows", "--window-pool", "attention"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert "window pooling 'attention' is unknown" in result.output and "mean+max" in result.output
    assert not (tmp_path / "s").exists()


def test_a_mean_max_suite_merges_with_surgery_or_refit_heads_and_is_served_alike(
    meanmax_suite, demo_datasets, tiny_bb, tiny_backbone_path, tmp_path, texts
):
    from scoreplex.merging import MergePlan, MergeSettings, merge_suite
    from scoreplex.merging.surgery import SurgerySettings

    scorer = SuiteScorer(meanmax_suite, tiny_bb, decoding=False, lexical=False)
    ids = list(TASKS[:2])
    plan = MergePlan("p", [ids])
    data = {t: demo_datasets[t] for t in ids}
    surgery = SurgerySettings(rank=4, steps=50, lr=1e-2, rows=40)
    settings = MergeSettings(per_task="surgery", surgery_rank=4)
    merged = [
        merge_suite(scorer, plan, tmp_path / "surgery", settings, unlabelled=data, surgery=surgery, progress=False),
        merge_suite(scorer, plan, tmp_path / "refit", refit=(data, data), progress=False),
    ]
    for suite in merged:
        opened = Suite.open(suite.root)
        assert opened.long_inputs == MEANMAX
        engine = Engine(opened, tiny_bb)
        again = SuiteScorer(opened, tiny_bb)
        for t in ids:
            assert opened.task_info(t)["config"]["window_pool"] == "mean+max"
            _probs_close(engine.predict(t, texts[t]), again.predict(t, texts[t]), atol=1e-4)
    surgery_tensors = Suite.open(merged[0].root).module_tensors(ids[0])
    assert surgery_tensors["head.surgery.down.weight"].shape == (4, 2 * tiny_bb.hidden)  # surgery on the 2H features


def test_surgery_rank_is_checked_against_the_features_a_mean_max_head_reads(meanmax_suite, tiny_bb):
    from scoreplex.merging import MergeSettings
    from scoreplex.merging.merged_suite import check_surgery_rank

    scorer = SuiteScorer(meanmax_suite, tiny_bb, decoding=False, lexical=False)
    width = scorer.long_inputs.feature_width(tiny_bb.hidden)
    assert width == 2 * tiny_bb.hidden
    check_surgery_rank(MergeSettings(per_task="surgery", surgery_rank=tiny_bb.hidden + 1), width)  # H < r <= 2H fits
    with pytest.raises(ConfigError, match=f"feature size {2 * tiny_bb.hidden}"):
        check_surgery_rank(MergeSettings(per_task="surgery", surgery_rank=2 * tiny_bb.hidden + 1), width)
    assert LongInputs(mode="windows", pool="mean").feature_width(tiny_bb.hidden) == tiny_bb.hidden
    assert LongInputs(pool="mean+max").feature_width(tiny_bb.hidden) == tiny_bb.hidden  # truncate: one vector


def test_truncate_and_mean_runs_keep_the_checkpoint_key_they_had_before_window_pools(demo_datasets, tiny_bb):
    from dataclasses import asdict

    from scoreplex.training.suite import _run_key

    data = demo_datasets[TASKS[0]]
    settings = MethodSettings(lora_r=4)
    key = _run_key(tiny_bb, "lora", "mean", 16, settings, LongInputs(pool="mean+max"), data)
    assert key["settings"] == {k: v for k, v in asdict(settings).items() if k != "window_pool"}
    assert key["long_inputs"] == LongInputs().to_dict()  # truncate pools nothing: recorded as before
    key = _run_key(tiny_bb, "lora", "mean", 16, MethodSettings(window_pool="mean+max"), MEANMAX, data)
    assert key["settings"]["window_pool"] == "mean+max" and key["long_inputs"]["pool"] == "mean+max"


def test_train_task_gives_the_head_the_pooling_of_its_windows(demo_datasets, tiny_bb):
    from scoreplex.training.suite import train_task

    t = TASKS[0]
    model, _, _ = train_task(
        tiny_bb, demo_datasets[t], None, method="head", pooling="mean", max_length=MAX_LENGTH,
        config=ADAPTER_CONFIG, settings=MethodSettings(), progress=False, long_inputs=MEANMAX, stop_after=1,
    )  # fmt: skip
    assert model.head.window_pool == "mean+max"
    with pytest.raises(ConfigError, match="window_pool"):
        MethodSettings(window_pool="max")


def test_adding_to_a_mean_windows_suite_with_another_pooling_names_the_option(
    windows_suite, demo_datasets, tiny_bb, tiny_backbone_path, tmp_path
):
    root = Path(shutil.copytree(windows_suite, tmp_path / "s"))
    with pytest.raises(SuiteError, match="train with --window-pool mean"):
        _train({TASKS[0]: demo_datasets[TASKS[0]]}, root, tiny_bb, tiny_backbone_path, long_inputs=MEANMAX)


def test_a_merge_with_head_refit_encodes_the_refit_responses_as_the_suite_does(
    meanmax_suite, demo_datasets, tiny_bb, tmp_path, monkeypatch
):
    import scoreplex.merging.merged_suite as merged_suite
    from scoreplex.merging import MergePlan, merge_suite

    seen = []
    real = merged_suite.refit_head

    def spy(*args, **kwargs):
        seen.append(kwargs.get("long_inputs"))
        return real(*args, **kwargs)

    monkeypatch.setattr(merged_suite, "refit_head", spy)
    scorer = SuiteScorer(meanmax_suite, tiny_bb, decoding=False, lexical=False)
    data = {t: demo_datasets[t] for t in TASKS[:2]}
    merge_suite(scorer, MergePlan("p", [list(TASKS[:2])]), tmp_path / "m", refit=(data, data), progress=False)
    assert seen == [MEANMAX, MEANMAX]


def test_a_task_from_a_suite_with_other_long_inputs_is_refused_on_import_naming_them(
    meanmax_suite, windows_suite, tiny_bb
):
    engine = Engine(windows_suite, tiny_bb)
    with pytest.raises(SuiteError, match="long_inputs.*long-input mode"):
        engine.store.import_task(meanmax_suite, TASKS[0], replace=True)


def test_distilling_windowed_teachers_says_the_student_reads_truncated_answers(meanmax_suite, tiny_bb):
    from scoreplex.moe.runs import student_input_note

    scorer = SuiteScorer(meanmax_suite, tiny_bb, decoding=False, lexical=False)
    note = student_input_note(scorer.long_inputs, scorer.max_length)
    assert note is not None and f"first {scorer.max_length} tokens" in note and "mean+max" in note
    assert "distillation targets" in note
    assert "distillation targets" not in student_input_note(scorer.long_inputs, scorer.max_length, distilled=False)
    assert student_input_note(LongInputs(), 128) is None  # truncating teachers: nothing to say


def test_train_task_reads_a_first_text_before_every_response_as_a_pair(demo_datasets, tiny_bb, monkeypatch):
    import scoreplex.training.suite as pipeline

    t = TASKS[0]
    data = demo_datasets[t]
    seen = []
    real = pipeline.encode_pairs

    def spy(tokenizer, first, texts, max_length, labels=None, **kwargs):
        seen.append((first, len(texts)))
        enc = real(tokenizer, first, texts, max_length, labels, **kwargs)
        assert all(x[0] == tokenizer.cls_token_id and x.count(tokenizer.sep_token_id) == 2 for x in enc.input_ids)
        return enc

    monkeypatch.setattr(pipeline, "encode_pairs", spy)
    question = "What does the data show about the samples?"
    _, fit, metrics = pipeline.train_task(
        tiny_bb, data, data, method="lora", pooling="mean", max_length=32, config=ADAPTER_CONFIG,
        settings=MethodSettings(lora_r=4), progress=False, first_text=question, stop_after=1,
    )  # fmt: skip
    assert seen == [(question, len(data)), (question, len(data))]  # train and validation, both as pairs
    assert fit.epochs_run >= 1 and -1 <= metrics["qwk"] <= 1
    # a checkpoint of single texts never resumes as a pair run, and single-text keys are what they were
    key = pipeline._run_key(tiny_bb, "lora", "mean", 32, MethodSettings(lora_r=4), LongInputs(), data)
    paired = pipeline._run_key(tiny_bb, "lora", "mean", 32, MethodSettings(lora_r=4), LongInputs(), data, question)
    assert "first_text" not in key and paired == {**key, "first_text": paired["first_text"]}
    with pytest.raises(ConfigError, match="truncate mode"):
        pipeline.train_task(
            tiny_bb, data, None, method="lora", pooling="mean", max_length=32, config=ADAPTER_CONFIG,
            settings=MethodSettings(lora_r=4), progress=False, first_text=question, long_inputs=WINDOWS,
        )  # fmt: skip
