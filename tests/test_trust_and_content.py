"""A suite from a stranger, texts without content, huge answers: the trust boundary and the one content rule.

Each test is a KIND of bad input (project issue: every bad input gets a clear error, nothing leaks): ids and paths in
a manifest stay inside the suite, a recorded backbone path is not trusted by default, the suite's own files are
validated on open, a text with no visible character is refused the same way everywhere, and one huge answer costs
what a max_length answer costs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scoreplex.content import EMPTY_TEXT, has_content
from scoreplex.errors import BackboneError, ConfigError, DataError, SuiteError
from scoreplex.suite import MODULE_FILE, Suite

ORDINAL = "demo-photosynthesis"
INVISIBLE = ["", "   ", "\u200b\u200b", "\ufeff", "\u200d \u2060\t\n", "\x00\x01"]


@pytest.fixture(scope="module")
def head_suite(tmp_path_factory, demo_datasets, tiny_bb, small_options):
    from scoreplex.training.suite import train_suite

    data = {t: demo_datasets[t] for t in (ORDINAL, "demo-circuit")}
    return train_suite(data, tmp_path_factory.mktemp("trust") / "suite", small_options("head"), backbone=tiny_bb)


@pytest.fixture
def copy(head_suite, tmp_path) -> Path:
    return Path(shutil.copytree(head_suite.root, tmp_path / "suite"))


def _edit_manifest(root: Path, change) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# -- the content rule -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", INVISIBLE)
def test_texts_without_visible_characters_have_no_content(text):
    assert not has_content(text)


@pytest.mark.parametrize("text", ["a", " . ", "\u200bx", "日本", "0"])
def test_texts_with_a_visible_character_have_content(text):
    assert has_content(text)


@pytest.mark.parametrize("text", INVISIBLE)
def test_every_scorer_refuses_a_text_without_content(head_suite, tiny_bb, text):
    from scoreplex.engine import Engine
    from scoreplex.scorer import SuiteScorer

    with pytest.raises(DataError, match="no visible characters"):
        SuiteScorer(head_suite, tiny_bb).predict(ORDINAL, ["a fine answer", text])
    engine = Engine(head_suite, tiny_bb)
    with pytest.raises(DataError, match="row 1"):
        engine.score([(ORDINAL, "a fine answer"), (ORDINAL, text)])
    rows = engine.score([(ORDINAL, "a fine answer"), (ORDINAL, text), ("demo-circuit", "the bulb")], on_error="row")
    assert "labels" in rows[0] and "labels" in rows[2]
    assert EMPTY_TEXT in rows[1]["error"]


def test_a_data_file_row_without_content_names_file_row_and_column(tmp_path):
    from scoreplex.data.readers import ColumnMap, read_responses
    from scoreplex.tasks import TaskSpec

    path = tmp_path / "x.csv"
    path.write_text("id,task,text,score\na,t,fine,1\nb,t,\u200b\u200b,0\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        read_responses(path, ColumnMap(), {"t": TaskSpec.ordinal("t", 2)})
    msg = str(exc.value)
    assert "row 3" in msg and "'text'" in msg and "x.csv" in msg and "Fix:" in msg


# -- input size never decides memory -----------------------------------------------------------------------------------
def test_a_huge_answer_is_cut_before_tokenising_with_the_same_tokens(tiny_bb):
    from scoreplex.encoding import CHARS_PER_TOKEN, encode_texts

    calls = []
    tok = tiny_bb.tokenizer

    def spy(texts, **kw):
        calls.extend(len(t) for t in texts)
        return tok(texts, **kw)

    spy.pad_token_id = tok.pad_token_id
    spy.num_special_tokens_to_add = tok.num_special_tokens_to_add
    huge = "the plant makes sugar " * 200_000  # 4.4 MB
    enc = encode_texts(spy, ["short answer", huge], max_length=32)
    assert max(calls) <= CHARS_PER_TOKEN * 32
    full = tok([huge[:5000]], add_special_tokens=True)["input_ids"][0]
    assert enc.input_ids[1] == full[:31] + [full[-1]] and enc.truncated == 1


def test_max_length_beyond_the_backbone_is_refused_at_train(demo_datasets, tiny_bb, small_options, tmp_path):
    from scoreplex.training.suite import train_suite

    with pytest.raises(ConfigError, match="beyond the backbone's 256 positions"):
        train_suite(
            {ORDINAL: demo_datasets[ORDINAL]}, tmp_path / "s", small_options("head", max_length=512), backbone=tiny_bb
        )
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_a_manifest_max_length_beyond_the_backbone_is_refused_on_load(copy, tiny_bb):
    from scoreplex.scorer import SuiteScorer

    _edit_manifest(copy, lambda m: m.update(max_length=4096))
    with pytest.raises(SuiteError, match="'max_length'.*beyond"):
        SuiteScorer(copy, tiny_bb)


# -- the suite folder is a trust boundary ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", ["../../x", "/etc", "a/b", "..", ".hidden", ""])
def test_task_ids_from_a_manifest_are_checked_like_command_line_ids(copy, bad_id):
    def change(m):
        m["tasks"][bad_id] = m["tasks"].pop(ORDINAL)

    _edit_manifest(copy, change)
    with pytest.raises(SuiteError, match="not a valid id|not trusted"):
        Suite.open(copy, verify=False)


def test_remove_never_reaches_outside_the_suite(copy, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    suite = Suite.open(copy, verify=False)
    for bad in ("../../victim", str(victim)):
        suite.manifest["tasks"][bad] = suite.manifest["tasks"][ORDINAL]  # a manifest edited in memory
        with pytest.raises(SuiteError, match="not a valid id"):
            suite.remove_task(bad)
        with pytest.raises(SuiteError, match="outside the suite"):
            suite.path("tasks", bad)
    assert (victim / "keep.txt").read_text() == "precious"


def test_a_shared_module_path_outside_the_suite_is_refused(copy):
    def change(m):
        m["shared"] = {"group-0": {"file": "../../../etc/passwd", "sha256": "0" * 64}}
        m["tasks"][ORDINAL]["shared"] = "group-0"

    _edit_manifest(copy, change)
    with pytest.raises(SuiteError, match="shared"):
        Suite.open(copy, verify=False)


def test_a_recorded_backbone_outside_trusted_roots_needs_backbone(copy, tiny_backbone_path, monkeypatch, tmp_path):
    from scoreplex.backbone import ROOTS_ENV
    from scoreplex.scorer import SuiteScorer

    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(BackboneError, match="--backbone"):
        SuiteScorer(copy)
    assert SuiteScorer(copy, str(tiny_backbone_path)).predict(ORDINAL, ["sugar"]).labels.shape == (1, 1)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m.pop("tasks"), "tasks"),
        (lambda m: m.update(tasks=[1, 2]), "tasks"),
        (lambda m: m.update(max_length="long"), "max_length"),
        (lambda m: m.update(max_length=-3), "max_length"),
        (lambda m: m.update(backbone="minilm"), "backbone"),
        (lambda m: m["tasks"][ORDINAL].pop("files"), ORDINAL),
    ],
)
def test_a_damaged_manifest_is_one_suite_error_naming_the_field(copy, change, field):
    _edit_manifest(copy, change)
    with pytest.raises(SuiteError) as exc:
        Suite.open(copy, verify=False)
    assert field in str(exc.value) and "manifest.json" in str(exc.value)


def test_a_module_that_is_not_safetensors_is_refused_naming_the_task(copy):
    import hashlib

    module = copy / "tasks" / ORDINAL / MODULE_FILE
    module.write_bytes(b"not a safetensors file at all")
    _edit_manifest(
        copy,
        lambda m: m["tasks"][ORDINAL]["files"].update({MODULE_FILE: hashlib.sha256(module.read_bytes()).hexdigest()}),
    )
    with pytest.raises(SuiteError, match=f"task '{ORDINAL}'.*safetensors"):
        Suite.open(copy)


def test_a_deleted_task_folder_fails_only_its_own_rows(copy, tiny_bb):
    from scoreplex.engine import Engine

    shutil.rmtree(copy / "tasks" / ORDINAL)
    rows = Engine(copy, tiny_bb).score([(ORDINAL, "sugar"), ("demo-circuit", "the bulb")], on_error="row")
    assert "missing" in rows[0]["error"] and "labels" in rows[1]


# -- the adapter store checks before it writes -------------------------------------------------------------------------
def test_store_add_refuses_a_module_of_the_wrong_width_before_writing(copy, tiny_bb):
    from scoreplex.engine import Engine

    engine = Engine(copy, tiny_bb)
    info, tensors = engine.suite.load_module(ORDINAL)
    spec = engine.suite.spec(ORDINAL).__class__.ordinal("new-task", 3)
    wide = {k: torch.zeros(v.shape[0], v.shape[-1] * 2) if v.ndim == 2 else v for k, v in tensors.items()}
    with pytest.raises(SuiteError, match="new-task"):
        engine.store.add(spec, wide, info["config"])
    assert "new-task" not in Suite.open(copy, verify=False).task_ids
    assert not (copy / "tasks" / "new-task").exists()
    np.testing.assert_array_equal(engine.predict(ORDINAL, ["sugar"]).labels.shape, (1, 1))


def test_every_row_empty_or_invalid_fails_alone_and_a_lone_surrogate_is_one_error(head_suite, tiny_bb, tmp_path):
    from scoreplex.data.readers import ColumnMap, read_responses
    from scoreplex.engine import Engine
    from scoreplex.tasks import TaskSpec

    engine = Engine(head_suite, tiny_bb)
    rows = engine.score([(ORDINAL, "\u200b"), (ORDINAL, "sugar \ud800")], on_error="row")
    assert EMPTY_TEXT in rows[0]["error"] and "surrogate" in rows[1]["error"]
    with pytest.raises(DataError, match="row 1.*surrogate"):
        engine.score([(ORDINAL, "sugar"), (ORDINAL, "sugar \ud800")])
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"id": "a", "task": "t", "text": "fine", "score": 1}\n'
        '{"id": "b", "task": "t", "text": "bad \\ud800", "score": 0}\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="row 2.*surrogate"):
        read_responses(path, ColumnMap(), {"t": TaskSpec.ordinal("t", 2)})
