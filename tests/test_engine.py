"""The inference engine: per-row LoRA math, the adapter store, and the mixed-batch == per-task invariant.

Suites are trained on the tiny BERT: two demo tasks with LoRA r=4 on query/value, two (the multi-label ones among
them) with r=2 on query/key and a hidden-layer head, so ranks, targeted layers and head sizes all differ.
"""

from __future__ import annotations

import copy
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_suites import QK_TASKS, QV_TASKS
from lora_suites import train_tiny_suite as _train
from scoreplex.engine import (
    LORA_IMPLS,
    AdapterStore,
    Engine,
    MultiLoRA,
    gathered_lora,
    grouped_lora,
    lora_weights_from_peft,
    matches_peft_target,
    peft_key_to_module,
    target_module_names,
)
from scoreplex.errors import ConfigError, DataError, SuiteError, UnknownNameError, UnknownTaskError
from scoreplex.methods import MethodSettings
from scoreplex.scorer import SuiteScorer
from scoreplex.suite import MODULE_FILE, Suite


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("engine") / "lora"
    qv = {t: demo_datasets[t] for t in QV_TASKS}
    qk = {t: demo_datasets[t] for t in QK_TASKS}
    _train(qv, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(lora_r=4, lora_alpha=8), max_length=64)
    settings = MethodSettings(lora_r=2, lora_alpha=8, lora_targets="query,key", head_hidden=8)
    _train(qk, root, tiny_bb, tiny_backbone_path, "lora", settings)
    return root


@pytest.fixture(scope="module")
def head_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    root = tmp_path_factory.mktemp("engine") / "head"
    _train(demo_datasets, root, tiny_bb, tiny_backbone_path, "head", MethodSettings(), max_length=64)
    return root


@pytest.fixture(scope="module")
def reference(lora_suite, tiny_backbone_path):
    """SuiteScorer (the PEFT path): scores one task at a time."""
    return SuiteScorer(lora_suite, str(tiny_backbone_path), cache_size=4)


@pytest.fixture(scope="module")
def mixed_pairs(demo_datasets) -> list[tuple[str, str]]:
    """12 responses of each demo task, shuffled together."""
    pairs = [(t, x) for t in (*QV_TASKS, *QK_TASKS) for x in demo_datasets[t].texts[:12]]
    order = np.random.default_rng(0).permutation(len(pairs))
    return [pairs[i] for i in order]


def _alone(scorer, pairs) -> list[list[np.ndarray]]:
    """Each row's per-dimension probabilities, scored alone with its task's own model."""
    return [[p[0] for p in scorer.predict(task, [text]).probs] for task, text in pairs]


def _assert_rows_match(rows, expected, pairs, atol=1e-5):
    for row, probs, (task, _) in zip(rows, expected, pairs, strict=True):
        assert row["task"] == task
        got = list(row["probs"].values())
        assert len(got) == len(probs)
        for g, e in zip(got, probs, strict=True):
            np.testing.assert_allclose(g, e, atol=atol, rtol=0)
        assert list(row["labels"].values()) == [int(np.argmax(e)) for e in probs]
        assert row["confidence"] == pytest.approx(min(float(np.max(e)) for e in probs), abs=atol)


# -- per-row LoRA math -----------------------------------------------------------------------------------------------
def _naive(y, x, slots, a_all, b_all, scaling):
    out = y.clone()
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            out[i] += scaling[s] * (x[i] @ a_all[s].T @ b_all[s].T)
    return out


@pytest.mark.parametrize("impl", sorted(LORA_IMPLS))
def test_per_row_lora_matches_a_row_by_row_loop(impl):
    torch.manual_seed(0)
    x = torch.randn(6, 5, 8)  # (B, T, in)
    y = torch.randn(6, 5, 3)  # (B, T, out)
    a_all, b_all = torch.randn(4, 2, 8), torch.randn(4, 3, 2)  # (S, r, in), (S, out, r)
    scaling = torch.tensor([0.5, 2.0, 1.0, 4.0])
    slots = torch.tensor([2, -1, 0, 2, 3, -1])
    got = LORA_IMPLS[impl](y.clone(), x, slots, a_all, b_all, scaling)
    torch.testing.assert_close(got, _naive(y, x, slots, a_all, b_all, scaling), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[[1, 5]], y[[1, 5]])  # slot -1: untouched


def test_gathered_and_grouped_agree_and_zero_padding_changes_nothing():
    torch.manual_seed(1)
    x, y = torch.randn(5, 7, 8), torch.randn(5, 7, 6)
    a_all, b_all = torch.randn(3, 4, 8), torch.randn(3, 6, 4)
    a_all[1, 2:] = 0  # slot 1 is a rank-2 task padded to rank 4
    b_all[1, :, 2:] = 0
    scaling, slots = torch.tensor([1.0, 3.0, 0.5]), torch.tensor([1, 0, 1, -1, 2])
    g = gathered_lora(y.clone(), x, slots, a_all, b_all, scaling)
    torch.testing.assert_close(g, grouped_lora(y.clone(), x, slots, a_all, b_all, scaling), atol=1e-5, rtol=1e-5)
    rank2 = y[0] + 3.0 * (x[0] @ a_all[1, :2].T @ b_all[1, :, :2].T)
    torch.testing.assert_close(g[0], rank2, atol=1e-5, rtol=1e-5)


def test_unknown_impl_lists_the_valid_ones(tiny_bb):
    with pytest.raises(UnknownNameError, match="gathered"):
        MultiLoRA(copy.deepcopy(tiny_bb.encoder), impl="fancy")


def test_peft_keys_map_onto_encoder_module_names():
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
    assert peft_key_to_module(key) == ("encoder.layer.0.attention.self.query", "A")
    assert peft_key_to_module("base_model.model.x.value.lora_B.default.weight") == ("x.value", "B")
    with pytest.raises(SuiteError, match="DoRA"):
        peft_key_to_module("base_model.model.x.value.lora_magnitude_vector")
    with pytest.raises(SuiteError, match="only lora_A"):
        lora_weights_from_peft({key: torch.zeros(2, 4)})


@pytest.mark.parametrize(
    "targets", [["query", "value"], ["encoder.layer.1.attention.self.key"], ["dense"], r".*layer\.0.*\.value"]
)
def test_target_matching_wraps_what_peft_wraps(tiny_bb, targets):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    peft_model = get_peft_model(copy.deepcopy(tiny_bb.encoder), LoraConfig(r=2, target_modules=targets))
    prefix = "base_model.model."
    wrapped = sorted(n[len(prefix) :] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))
    assert target_module_names(tiny_bb.encoder, targets) == wrapped
    assert not matches_peft_target("encoder.layer.0.attention.self.query_x", ["query"])


def test_rows_without_adapter_equal_the_base_encoder(tiny_bb):
    torch.manual_seed(2)
    encoder = copy.deepcopy(tiny_bb.encoder)
    multi = MultiLoRA(encoder)
    names = multi.inject(["query", "value"])
    h = tiny_bb.hidden
    for key, r in (("t0", 4), ("t1", 2)):
        multi.install(key, {n: (torch.randn(r, h), torch.randn(h, r)) for n in names}, scaling=2.0)
    ids = torch.randint(5, 40, (4, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base = tiny_bb.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        for impl in LORA_IMPLS:
            multi.impl = impl
            with multi.use(torch.tensor([-1, multi.slot_of("t0"), -1, multi.slot_of("t1")])):
                mixed = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            torch.testing.assert_close(mixed[[0, 2]], base[[0, 2]], atol=1e-6, rtol=1e-6)
            assert (mixed[[1, 3]] - base[[1, 3]]).abs().max() > 1e-3
        plain = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # no slots set: the base model
    torch.testing.assert_close(plain, base, atol=1e-6, rtol=1e-6)


def test_released_slots_are_zeroed_and_reused(tiny_bb):
    multi = MultiLoRA(copy.deepcopy(tiny_bb.encoder))
    names = multi.inject(["query"])
    w = {n: (torch.ones(2, tiny_bb.hidden), torch.ones(tiny_bb.hidden, 2)) for n in names}
    s0 = multi.install("a", w, 1.0)
    multi.release("a")
    layer = multi.layers[names[0]]
    assert layer.a_all[s0].abs().sum() == 0 and layer.scaling[s0] == 0
    assert multi.install("b", w, 1.0) == s0


# -- the engine on trained suites ------------------------------------------------------------------------------------
def test_trained_lora_b_is_nonzero(lora_suite):
    suite = Suite.open(lora_suite)
    assert sorted(suite.task_ids) == sorted((*QV_TASKS, *QK_TASKS))
    for task_id in suite.task_ids:
        _, tensors = suite.load_module(task_id)
        b = [v for k, v in tensors.items() if "lora_B" in k]
        assert b and all(float(t.abs().max()) > 1e-3 for t in b), task_id


@pytest.mark.parametrize("impl", sorted(LORA_IMPLS))
def test_mixed_batch_equals_each_row_scored_alone(lora_suite, tiny_bb, reference, mixed_pairs, impl):
    engine = Engine(lora_suite, tiny_bb, batch_size=8, lora_impl=impl)
    rows = engine.score(mixed_pairs)
    _assert_rows_match(rows, _alone(reference, mixed_pairs), mixed_pairs)
    # ranks 4 and 2 side by side; single-score and multi-label heads (with and without a hidden layer) side by side
    assert engine.lora.rank == 4 and len(engine.lora.layers) == 2 * 3  # query, key, value in both layers
    assert len({len(r["probs"]) for r in rows}) > 1


def test_engine_predict_matches_suite_scorer(lora_suite, tiny_bb, reference, demo_datasets):
    engine = Engine(lora_suite, tiny_bb)
    texts = demo_datasets["demo-circuit"].texts[:10]
    got, want = engine.predict("demo-circuit", texts), reference.predict("demo-circuit", texts)
    np.testing.assert_array_equal(got.labels, want.labels)
    for g, w in zip(got.probs, want.probs, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)


def test_head_suite_mixed_batch_equals_suite_scorer(head_suite, tiny_bb, mixed_pairs, tiny_backbone_path):
    engine = Engine(head_suite, tiny_bb, batch_size=8)
    assert engine.lora is None and engine.encoder is tiny_bb.encoder  # shared as is: nothing is wrapped
    reference = SuiteScorer(head_suite, str(tiny_backbone_path), cache_size=4)
    _assert_rows_match(engine.score(mixed_pairs), _alone(reference, mixed_pairs), mixed_pairs)


def test_full_suite_is_refused_with_a_pointer_to_suite_scorer(tmp_path, tiny_bb):
    Suite.create(tmp_path / "full", method="full", backbone=tiny_bb.info.to_dict(), pooling="mean", max_length=32)
    with pytest.raises(ConfigError, match="cannot share a backbone pass.*SuiteScorer"):
        Engine(tmp_path / "full", tiny_bb)


def test_unknown_task_raises(lora_suite, tiny_bb):
    engine = Engine(lora_suite, tiny_bb)
    with pytest.raises(UnknownTaskError, match="no-such-task"):
        engine.score([("demo-argument", "plants need light"), ("no-such-task", "text")])
    rows = engine.score([("no-such-task", "text"), ("demo-argument", "plants need light")], on_error="row")
    assert "error" in rows[0] and "labels" in rows[1]
    only_unknown = engine.score([("no-such-task", "text"), ("other-missing", "more text")], on_error="row")
    assert [("no-such-task" in r["error"], "other-missing" in r["error"]) for r in only_unknown] == [
        (True, False),
        (False, True),
    ]


def test_malformed_pairs_and_options_are_refused(lora_suite, tiny_bb):
    engine = Engine(lora_suite, tiny_bb)
    assert engine.score([]) == []
    with pytest.raises(DataError, match="row 1"):
        engine.score([("demo-argument", "text"), ("demo-argument", 3)])
    with pytest.raises(ConfigError, match="on_error"):
        engine.score([("demo-argument", "text")], on_error="skip")
    with pytest.raises(ConfigError, match="batch_size"):
        Engine(lora_suite, tiny_bb, batch_size=0)


def test_lru_eviction_respects_the_count_budget(lora_suite, tiny_bb, reference, mixed_pairs):
    engine = Engine(lora_suite, tiny_bb, max_tasks=2, batch_size=8)
    rows = engine.score(mixed_pairs)  # batches need up to 4 tasks: pinned for the batch, evicted after it
    assert len(engine.store.resident) <= 2
    assert len(engine.lora.installed) == len(engine.store.resident)
    _assert_rows_match(rows, _alone(reference, mixed_pairs), mixed_pairs)  # slots reused correctly
    for task_id in (*QV_TASKS, *QK_TASKS):
        engine.score([(task_id, "the plant uses light")])
        assert engine.store.resident[-1] == task_id and len(engine.store.resident) <= 2
    stats = engine.store.stats()
    assert stats["evictions"] > 0 and set(stats["load_ms"]) == {*QV_TASKS, *QK_TASKS}
    assert all(ms > 0 for v in stats["load_ms"].values() for ms in v)


def test_lru_eviction_respects_the_byte_budget(lora_suite, tiny_bb):
    engine = Engine(lora_suite, tiny_bb)
    sizes = {t: engine.store.get(t).nbytes for t in engine.task_ids}
    budget = max(sizes.values()) + min(sizes.values())
    engine = Engine(lora_suite, tiny_bb, max_bytes=budget)
    for task_id in [*engine.task_ids, *engine.task_ids]:
        engine.score([(task_id, "energy flows in the food web")])
        assert engine.store.resident_bytes <= budget
        assert engine.store.resident[-1] == task_id
    with pytest.raises(ConfigError, match="max_tasks"):
        AdapterStore(lora_suite, hidden=tiny_bb.hidden, max_tasks=0)


@pytest.fixture
def suite_copy(lora_suite, tmp_path) -> Path:
    return Path(shutil.copytree(lora_suite, tmp_path / "suite"))


def test_corrupt_module_fails_only_its_task(suite_copy, tiny_bb, reference, mixed_pairs):
    bad = "demo-food-web"
    path = suite_copy / "tasks" / bad / MODULE_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    engine = Engine(suite_copy, tiny_bb, batch_size=8)
    with pytest.raises(SuiteError, match=f"task '{bad}'.*SHA-256"):
        engine.score([(bad, "energy flows")])
    good = [p for p in mixed_pairs if p[0] != bad]
    _assert_rows_match(engine.score(good), _alone(reference, good), good)
    rows = engine.score(mixed_pairs, on_error="row")
    assert all(("error" in r) == (t == bad) for r, (t, _) in zip(rows, mixed_pairs, strict=True))
    assert bad in rows[[t for t, _ in mixed_pairs].index(bad)]["error"]
    path.unlink()  # missing: also only this task
    with pytest.raises(SuiteError, match=f"task '{bad}'.*missing"):
        engine.score([(bad, "energy flows")])
    assert "labels" in engine.score([("demo-circuit", "the loop is closed")])[0]


def test_add_replace_remove_while_serving(suite_copy, lora_suite, tiny_bb, tiny_backbone_path, mixed_pairs):
    engine = Engine(suite_copy, tiny_bb, batch_size=8)
    keep = [p for p in mixed_pairs if p[0] == "demo-circuit"]
    before = engine.score(keep)
    failures: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:  # another thread keeps scoring an untouched task throughout
        while not stop.is_set():
            try:
                _assert_rows_match(engine.score(keep), [list(map(np.array, r["probs"].values())) for r in before], keep)
            except BaseException as exc:  # noqa: BLE001 (reported below)
                failures.append(exc)
                return

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        gone = "demo-argument"
        engine.score([(gone, "a claim with evidence")])
        engine.store.remove(gone)
        assert gone not in engine.task_ids and not (suite_copy / "tasks" / gone).exists()
        with pytest.raises(UnknownTaskError):
            engine.score([(gone, "a claim with evidence")])
        engine.store.import_task(lora_suite, gone)  # added back from the original suite
        pairs = [p for p in mixed_pairs if p[0] == gone]
        reference = SuiteScorer(lora_suite, str(tiny_backbone_path))
        _assert_rows_match(engine.score(pairs), _alone(reference, pairs), pairs)

        task = "demo-photosynthesis"
        old = engine.score([(task, "the plant uses light")])[0]
        info, tensors = Suite.open(suite_copy).load_module(task)
        spec = engine.suite.spec(task)
        bias = next(k for k, v in tensors.items() if k.endswith("bias") and v.numel() == spec.num_logits)
        tensors[bias] = tensors[bias] + torch.arange(tensors[bias].numel(), dtype=torch.float32)
        with pytest.raises(ConfigError, match="replace=True"):
            engine.store.add(spec, tensors, info["config"])
        engine.store.replace(spec, tensors, info["config"])
        new = engine.score([(task, "the plant uses light")])[0]
        assert not np.allclose(new["probs"]["score"], old["probs"]["score"], atol=1e-3)
        fresh = SuiteScorer(suite_copy, str(tiny_backbone_path)).predict(task, ["the plant uses light"])
        np.testing.assert_allclose(new["probs"]["score"], fresh.probs[0][0], atol=1e-5, rtol=0)
        assert len(Suite.open(suite_copy, verify=True).task_ids) == 4  # every hash still checks out
    finally:
        stop.set()
        worker.join()
    assert not failures, failures[0]


def test_refresh_picks_up_changes_made_by_another_process(suite_copy, tiny_bb):
    engine = Engine(suite_copy, tiny_bb)
    engine.score([("demo-circuit", "the loop is closed"), ("demo-food-web", "energy flows")])
    other = AdapterStore(suite_copy, hidden=tiny_bb.hidden)  # e.g. a training job on the same folder
    other.remove("demo-food-web")
    assert engine.store.refresh() == ["demo-food-web"]
    assert "demo-food-web" not in engine.task_ids and engine.store.resident == ["demo-circuit"]
