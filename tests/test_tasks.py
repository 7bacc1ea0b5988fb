"""Tests of scoreplex.tasks: validation errors name the bad value, specs survive JSON, task files load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoreplex.errors import ConfigError, ScoreplexError
from scoreplex.tasks import Dimension, TaskSpec, check_id, load_task_specs


def rich_spec() -> TaskSpec:
    return TaskSpec(
        id="q-7.b_2",
        dimensions=(
            Dimension("score", "ordinal", 5, "holistic 0-4"),
            Dimension("claim", "binary", 2, "states the claim"),
        ),
        prompt="Why? — explain «this».",
        rubric="4: everything\n0: nothing",
        metadata={"subject": "physics", "grade": 8, "tags": ["a", "b"]},
    )


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"name": "has space"}, "'has space'"),
        ({"name": ""}, "''"),
        ({"name": "-leading"}, "'-leading'"),
        ({"name": "x" * 129}, "x" * 129),
        ({"name": "ok", "kind": "nominal"}, "'nominal'"),
        ({"name": "ok", "kind": "binary", "num_classes": 3}, "num_classes=3"),
        ({"name": "ok", "num_classes": 1}, "num_classes=1"),
        ({"name": "ok", "num_classes": 101}, "num_classes=101"),
        ({"name": "ok", "num_classes": 2.5}, "num_classes=2.5"),
    ],
)
def test_dimension_rejects_bad_values_naming_them(kwargs, bad):
    with pytest.raises(ConfigError) as exc:
        Dimension(**kwargs)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, ScoreplexError)
    assert bad in str(exc.value)


@pytest.mark.parametrize("value", ["a", "A9", "task-1.v2_x", "0" * 128])
def test_check_id_accepts_safe_ids(value):
    assert check_id(value, "task id") == value


@pytest.mark.parametrize("value", ["a/b", "../x", "a b", ".hidden", "", "é", 7, None])
def test_check_id_rejects_unsafe_ids(value):
    with pytest.raises(ConfigError, match="not a valid id"):
        check_id(value, "task id")


def test_taskspec_rejects_bad_id_no_dimensions_and_repeated_names():
    with pytest.raises(ConfigError, match="'bad id'"):
        TaskSpec.ordinal("bad id", 3)
    with pytest.raises(ConfigError, match="'q1' has no rubric dimensions"):
        TaskSpec(id="q1", dimensions=())
    with pytest.raises(ConfigError) as exc:
        TaskSpec.multilabel("q1", ["claim", "evidence", "claim"])
    assert "['claim']" in str(exc.value) and "'q1'" in str(exc.value)


@pytest.mark.parametrize("max_score", [1, 2, 3, 9])
def test_ordinal_constructor_has_max_score_plus_one_classes(max_score):
    spec = TaskSpec.ordinal("q", max_score)
    assert spec.class_counts == [max_score + 1]
    assert spec.dimensions[0].max_score == max_score
    assert spec.num_logits == max_score + 1 and not spec.is_multilabel


def test_multilabel_constructor_gives_binary_dimensions():
    spec = TaskSpec.multilabel("arg", ["claim", "evidence", "reasoning"])
    assert spec.dimension_names == ["claim", "evidence", "reasoning"]
    assert all(d.kind == "binary" and d.num_classes == 2 for d in spec.dimensions)
    assert spec.num_logits == 6 and spec.is_multilabel


def test_dimensions_given_as_a_list_are_stored_as_a_tuple():
    spec = TaskSpec(id="q", dimensions=[Dimension("score", "ordinal", 3)])
    assert isinstance(spec.dimensions, tuple)


@pytest.mark.parametrize(
    "spec", [rich_spec(), TaskSpec.ordinal("q1", 3), TaskSpec.multilabel("m", ["a", "b"], prompt="p")]
)
def test_json_round_trip_is_identity(spec):
    back = TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert back.to_dict() == spec.to_dict()


def test_from_dict_needs_id_and_dimensions():
    with pytest.raises(ConfigError, match="'dimensions'"):
        TaskSpec.from_dict({"id": "q1"})
    with pytest.raises(ConfigError, match="got keys"):
        TaskSpec.from_dict({"dimensions": []})


def test_from_dict_validates_dimensions():
    with pytest.raises(ConfigError, match="'ternary'"):
        TaskSpec.from_dict({"id": "q1", "dimensions": [{"name": "s", "kind": "ternary"}]})


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_task_specs_reads_list_or_tasks_object(tmp_path: Path, wrapped: bool):
    specs = [rich_spec(), TaskSpec.ordinal("q2", 2)]
    items = [s.to_dict() for s in specs]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": items} if wrapped else items), encoding="utf-8")
    assert load_task_specs(str(path)) == specs


def test_load_task_specs_rejects_duplicate_ids(tmp_path: Path):
    path = tmp_path / "tasks.json"
    items = [
        TaskSpec.ordinal("q1", 3).to_dict(),
        TaskSpec.ordinal("q2", 1).to_dict(),
        TaskSpec.ordinal("q1", 2).to_dict(),
    ]
    path.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_task_specs(str(path))
    assert "['q1']" in str(exc.value) and str(path) in str(exc.value)


def test_load_task_specs_rejects_bad_json_and_non_lists(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_task_specs(str(bad))
    scalar = tmp_path / "scalar.json"
    scalar.write_text('{"id": "q1"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="got dict"):
        load_task_specs(str(scalar))
