"""Stacked lexical evidence: stored in the task module, applied identically by every scorer, kept only on evidence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scoreplex.errors import SuiteError
from scoreplex.lexical import LexicalModel
from scoreplex.stacking import LexicalStack, fit_stack


@pytest.fixture(scope="module")
def lora_suite(tmp_path_factory, tiny_bb, small_options, demo_datasets):
    from scoreplex.training.suite import train_suite

    tasks = dict(list(demo_datasets.items())[:2])
    root = tmp_path_factory.mktemp("stack") / "suite"
    return train_suite(tasks, root, small_options("lora"), backbone=tiny_bb)


def test_training_records_the_keep_or_drop_decision(lora_suite):
    for task in lora_suite.task_ids:
        info = lora_suite.task_info(task)
        report = info["summary"]["lexical"]
        assert set(report) >= {"neural_qwk", "lexical_qwk", "kept", "weight"}
        stored = info.get("lexical") is not None
        assert stored == bool(report["kept"]) == (report["weight"] > 0)
        has_tensors = any(k.startswith("lexical.") for k in lora_suite.module_tensors(task, lexical=True))
        assert has_tensors == stored
        assert not any(k.startswith("lexical.") for k in lora_suite.module_tensors(task))


def test_a_stored_stack_changes_scores_the_same_way_in_every_scorer(lora_suite, demo_datasets, tiny_bb):
    from scoreplex.engine import Engine
    from scoreplex.scorer import SuiteScorer

    task = lora_suite.task_ids[0]
    data = demo_datasets[task]
    stack = LexicalStack(LexicalModel.fit(data.spec, data.texts, data.labels), 1.0)
    lora_suite.set_lexical(task, stack)
    lora_suite.set_decoding(task, None)
    texts, ids = data.texts[:25], data.ids[:25]
    neural = SuiteScorer(lora_suite, backbone=tiny_bb, lexical=False).predict(task, texts, ids)
    stacked = SuiteScorer(lora_suite, backbone=tiny_bb).predict(task, texts, ids)
    expected = stack.apply(neural.probs, texts)
    for got, want in zip(stacked.probs, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert any(not np.allclose(a, b, atol=1e-3) for a, b in zip(stacked.probs, neural.probs, strict=True))
    engine = Engine(lora_suite, tiny_bb)
    from_engine = engine.predict(task, texts, ids)
    for got, want in zip(from_engine.probs, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    rows = engine.score([(task, t) for t in texts[:3]])
    for i, row in enumerate(rows):
        for d, name in enumerate(data.spec.dimension_names):
            np.testing.assert_allclose(row["probs"][name], expected[d][i], atol=1e-4)
    lora_suite.set_lexical(task, None)
    assert lora_suite.lexical(task) is None
    again = SuiteScorer(lora_suite, backbone=tiny_bb).predict(task, texts, ids)
    for got, want in zip(again.probs, neural.probs, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_an_edited_lexical_record_is_refused_naming_the_task(lora_suite, demo_datasets, tiny_bb):
    from scoreplex.scorer import SuiteScorer
    from scoreplex.suite import Suite, sha256_file

    task = lora_suite.task_ids[1]
    data = demo_datasets[task]
    lora_suite.set_lexical(task, LexicalStack(LexicalModel.fit(data.spec, data.texts, data.labels), 0.5))
    path = lora_suite.root / "tasks" / task / "task.json"
    info = json.loads(path.read_text())
    info["lexical"]["weight"] = -3
    path.write_text(json.dumps(info))
    with lora_suite.edit() as m:  # re-hash, as someone editing the suite by hand would have to
        m["tasks"][task]["files"]["task.json"] = sha256_file(path)
    edited = Suite.open(lora_suite.root)
    with pytest.raises(SuiteError, match=f"{task}.*lexical weight"):
        SuiteScorer(edited, backbone=tiny_bb).predict(task, data.texts[:2], data.ids[:2])
    edited.set_lexical(task, None)


def test_fit_stack_drops_a_lexical_model_that_does_not_help():
    from scoreplex.tasks import TaskSpec

    rng = np.random.default_rng(0)
    spec = TaskSpec.ordinal("t", 2)
    y = rng.integers(0, 3, 300)
    words = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma"])
    texts = [" ".join(rng.choice(words, 6)) for _ in y]  # text unrelated to the score
    perfect = np.eye(3)[y] * 0.9 + 0.1 / 3  # the neural head is already right
    stack, report = fit_stack(spec, texts[:200], y[:200], texts[200:], y[200:], [perfect[200:]])
    assert stack is None and report["weight"] == 0 and report["kept"] is False
