"""Tests of scoreplex.data.demo: deterministic synthetic data whose scores follow each item's rubric rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scoreplex.data import demo
from scoreplex.data.demo import demo_column_labels, demo_specs, generate_demo, vocabulary_words, write_demo
from scoreplex.data.readers import read_table
from scoreplex.tasks import load_task_specs

SPECS = {s.id: s for s in demo_specs()}
ITEMS = {item.spec.id: item for item in demo._ITEMS}  # the phrase lists (data); the rule is re-derived below


def rubric_scores(task: str, text: str) -> list[int]:
    """Score a demo text by its item's rubric, written from the rubric text rather than the generator."""
    item = ITEMS[task]
    low = text.lower()
    present = {c for c, phrases in item.ideas.items() if any(p in low for p in phrases)}
    wrong = any(m in low for m in item.misconceptions)
    if task == "demo-photosynthesis":  # 3: four or more ideas, 2: two or three, 1: one, 0: none; -1 if misconception
        n = len(present)
        score = 3 if n >= 4 else 2 if n >= 2 else n
        return [max(0, score - 1) if wrong else score]
    if task == "demo-food-web":  # 2: prediction + predation + limit, 1: some of it, 0: none; a misconception -> 0
        score = 2 if present == {"predict", "predation", "limit"} else 1 if present else 0
        return [0 if wrong and score < 2 else score]
    return [int(d in present) for d in SPECS[task].dimension_names]  # multi-label: one binary per criterion


def scores_of(row: dict[str, str]) -> list[int]:
    return [int(row[d]) for d in SPECS[row["task"]].dimension_names]


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_demo(30, seed=4) == generate_demo(30, seed=4)
    assert generate_demo(30, seed=4) != generate_demo(30, seed=5)


def test_every_task_present_with_unique_ids_and_labels_in_range():
    rows = generate_demo(50, seed=1)
    assert [r["task"] for r in rows] == [t for t in SPECS for _ in range(50)]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        spec = SPECS[r["task"]]
        assert r["text"].strip() and r["text"].endswith(".")
        for dim in spec.dimensions:
            assert 0 <= int(r[dim.name]) <= dim.max_score
            second = r[f"{dim.name}_rater2"]
            assert second == "" or 0 <= int(second) <= dim.max_score


def test_every_class_of_every_dimension_occurs():
    rows = generate_demo(200, seed=0)
    for spec in SPECS.values():
        for dim in spec.dimensions:
            seen = {int(r[dim.name]) for r in rows if r["task"] == spec.id}
            assert seen == set(range(dim.num_classes)), (spec.id, dim.name)


def test_second_rater_scores_every_fifth_response():
    for r in generate_demo(20, seed=2):
        index = int(r["id"].rsplit("-", 1)[1])
        for d in SPECS[r["task"]].dimension_names:
            assert (r[f"{d}_rater2"] != "") == (index % 5 == 0)


def test_the_item_mix_is_two_ordinal_and_two_multilabel():
    assert SPECS["demo-photosynthesis"].class_counts == [4]
    assert SPECS["demo-food-web"].class_counts == [3]
    arg = SPECS["demo-argument"]
    assert arg.dimension_names == ["claim", "evidence", "reasoning"]
    assert all(d.kind == "binary" for d in arg.dimensions)
    assert [d.kind for d in SPECS["demo-circuit"].dimensions] == ["binary", "binary"]


def test_without_noise_every_score_follows_the_rubric_rule():
    rows = generate_demo(150, seed=3, noise=0.0)
    mismatches = [r for r in rows if scores_of(r) != rubric_scores(r["task"], r["text"])]
    assert mismatches == []
    for r in rows:  # without noise both raters agree
        for d in SPECS[r["task"]].dimension_names:
            assert r[f"{d}_rater2"] in ("", r[d])


def test_with_default_noise_most_scores_follow_the_rule():
    rows = generate_demo(150, seed=7)
    for task in SPECS:
        mine = [r for r in rows if r["task"] == task]
        agree = sum(scores_of(r) == rubric_scores(task, r["text"]) for r in mine) / len(mine)
        assert 0.85 <= agree < 1.0, (task, agree)  # noise flips some, not most


def test_vocabulary_covers_every_word_of_the_texts():
    vocab = set(vocabulary_words())
    for r in generate_demo(100, seed=8):
        assert set(re.findall(r"[a-z0-9]+", r["text"].lower())) <= vocab


def test_write_demo_files(tmp_path: Path):
    paths = write_demo(tmp_path, n_train=10, n_test=5, seed=2)
    assert load_task_specs(str(paths["tasks"])) == demo_specs()
    train, test = read_table(paths["train"]), read_table(paths["test"])
    assert len(train) == 40 and len(test) == 20
    dims = list(demo_column_labels(demo_specs()))
    assert train.columns == ["id", "task", "text", *dims, *(f"{d}_rater2" for d in dims)]
    # train is generate_demo(seed), test generate_demo(seed + 1) with ids prefixed so they never collide with train's
    assert [(r["id"], r["text"]) for r in train] == [(r["id"], r["text"]) for r in generate_demo(10, seed=2)]
    assert [(r["id"], r["text"]) for r in test] == [("test-" + r["id"], r["text"]) for r in generate_demo(5, seed=3)]
    for r in train:  # other tasks' dimension columns stay empty
        own = set(SPECS[r["task"]].dimension_names)
        assert all((r[d] != "") == (d in own) for d in dims)


@pytest.mark.parametrize("spec", demo_specs(), ids=lambda s: s.id)
def test_column_labels_map_each_dimension_to_its_own_column(spec):
    labels = demo_column_labels([spec])
    assert labels == {d: d for d in spec.dimension_names}


def test_generate_demo_is_the_same_under_any_hash_seed():
    """The demo is seeded: string hashing (PYTHONHASHSEED) must not change the order of random draws."""
    import hashlib
    import json
    import os
    import subprocess
    import sys

    code = (
        "import hashlib,json; from scoreplex.data.demo import generate_demo; "
        "print(hashlib.sha256(json.dumps(generate_demo(30)).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": h},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for h in ("1", "2", "3")
    }
    assert len(digests) == 1
    assert digests.pop().strip() == hashlib.sha256(json.dumps(generate_demo(30)).encode()).hexdigest()
