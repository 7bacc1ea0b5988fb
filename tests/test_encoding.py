"""Tests of scoreplex.encoding (and the scatter-back in scoreplex.predictions): truncation, padding, batch coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoreplex.data.demo import generate_demo
from scoreplex.encoding import (
    Encoded,
    choose_max_length,
    collate,
    encode_texts,
    eval_batches,
    token_lengths,
    train_batches,
)
from scoreplex.heads import ScoringHead
from scoreplex.methods import TaskModel
from scoreplex.predictions import embed_all, predict_logits


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [r["text"] for r in generate_demo(12, seed=5)]  # 48 texts of mixed lengths


@pytest.fixture(scope="module")
def tokenizer(tiny_bb):
    return tiny_bb.tokenizer


@pytest.mark.parametrize("max_length", [4, 8, 16, 512])
def test_truncation_keeps_cls_and_sep_and_counts_truncated_rows(tokenizer, texts, max_length):
    labels = np.arange(len(texts))[:, None]
    full = tokenizer(texts)["input_ids"]
    enc = encode_texts(tokenizer, texts, max_length, labels)
    assert len(enc) == len(texts) and enc.labels is labels
    assert enc.truncated == sum(len(x) > max_length for x in full)
    assert enc.pad_id == tokenizer.pad_token_id
    for row, ref in zip(enc.input_ids, full, strict=True):
        assert len(row) == min(len(ref), max_length)
        assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
        if len(ref) <= max_length:
            assert row == ref
        else:
            assert row[:-1] == ref[: max_length - 1]  # a prefix of the text, then [SEP]
    np.testing.assert_array_equal(enc.lengths, [len(r) for r in enc.input_ids])


def test_some_demo_rows_really_are_truncated_at_8(tokenizer, texts):
    # guards the test above against a vacuous pass
    assert 0 < encode_texts(tokenizer, texts, 8).truncated < len(texts)


def test_token_lengths_count_special_tokens(tokenizer, texts):
    np.testing.assert_array_equal(token_lengths(tokenizer, texts), [len(x) for x in tokenizer(texts)["input_ids"]])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("quantile, multiple, cap", [(0.99, 8, 512), (0.5, 16, 512), (1.0, 8, 40), (0.9, 1, 512)])
def test_choose_max_length_is_the_smallest_covering_multiple(seed, quantile, multiple, cap):
    lengths = np.random.default_rng(seed).integers(3, 80, size=200)
    got = choose_max_length(lengths, quantile=quantile, multiple=multiple, cap=cap)
    if got == cap:
        assert np.mean(lengths <= cap - multiple) < quantile  # a smaller multiple would not have covered enough
    else:
        assert got % multiple == 0 and np.mean(lengths > got) <= 1 - quantile + 1e-12
        assert got == multiple or np.mean(lengths <= got - multiple) < quantile  # the smallest such multiple


def test_choose_max_length_of_no_lengths_is_a_small_default():
    assert choose_max_length(np.array([], dtype=np.int64)) == 16


def test_collate_pads_to_the_batch_maximum_with_correct_masks():
    rows = [[2, 5, 3], [2, 7, 8, 9, 10, 3], [2, 3], [2, 6, 6, 3]]
    labels = np.array([[0, 1], [1, 0], [2, 1], [3, 0]])
    enc = Encoded(rows, labels, pad_id=0)
    for index in ([0, 2], [3, 1, 0], [2], [1, 1]):
        batch = collate(enc, index)
        width = max(len(rows[i]) for i in index)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(index), width)
        for j, i in enumerate(index):
            n = len(rows[i])
            assert batch["attention_mask"][j].tolist() == [1] * n + [0] * (width - n)
            assert batch["input_ids"][j, :n].tolist() == rows[i]
            assert (batch["input_ids"][j, n:] == 0).all()
        assert batch["labels"].dtype == torch.long
        np.testing.assert_array_equal(batch["labels"].numpy(), labels[index])


def test_collate_without_labels_has_no_labels_key():
    assert "labels" not in collate(Encoded([[1, 2]], None, pad_id=0), [0])


@pytest.mark.parametrize("n, batch_size, pool", [(1, 4, 50), (37, 8, 50), (200, 7, 3), (64, 64, 1)])
def test_train_batches_cover_every_index_exactly_once(n, batch_size, pool):
    lengths = np.random.default_rng(n).integers(2, 60, size=n)
    batches = train_batches(lengths, batch_size, np.random.default_rng(0), pool=pool)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_train_batches_are_seed_deterministic_and_seed_dependent():
    lengths = np.random.default_rng(1).integers(2, 60, size=300)

    def run(seed):
        return [b.tolist() for b in train_batches(lengths, 16, np.random.default_rng(seed), pool=4)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_train_batches_group_similar_lengths():
    # within a pool the rows are sorted by length, so batches are far tighter than random ones
    rng = np.random.default_rng(2)
    lengths = rng.integers(2, 200, size=400)
    batches = train_batches(lengths, 16, np.random.default_rng(0), pool=50)
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in np.array_split(rng.permutation(400), 25)])
    assert spread < random_spread / 4


def test_eval_batches_cover_every_index_in_length_order():
    lengths = np.random.default_rng(0).integers(2, 60, size=101)
    batches = list(eval_batches(lengths, 10))
    order = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(order), np.arange(101))
    assert (np.diff(lengths[order]) >= 0).all()
    assert [len(b) for b in batches] == [10] * 10 + [1]


@pytest.fixture(scope="module")
def scorer_model(tiny_bb):
    torch.manual_seed(0)
    head = ScoringHead(tiny_bb.hidden, [3, 2], dropout=0.5)  # dropout must be off in predict_logits
    return TaskModel(tiny_bb.encoder, head, "mean")


def test_predict_logits_scatters_back_to_input_order(tiny_bb, scorer_model, texts):
    enc = encode_texts(tiny_bb.tokenizer, texts, 32)
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = Encoded([enc.input_ids[i] for i in perm], None, enc.pad_id)
    base = predict_logits(scorer_model, enc, batch_size=5)
    assert base.shape == (len(texts), 5)
    torch.testing.assert_close(predict_logits(scorer_model, shuffled, batch_size=7), base[torch.as_tensor(perm)])


def test_predict_logits_equal_one_row_at_a_time(tiny_bb, scorer_model, texts):
    enc = encode_texts(tiny_bb.tokenizer, texts[:10], 32)
    batched = predict_logits(scorer_model, enc, batch_size=4)
    with torch.no_grad():
        for i in range(10):
            one = collate(enc, [i])
            row = scorer_model(input_ids=one["input_ids"], attention_mask=one["attention_mask"])[0]
            torch.testing.assert_close(batched[i], row, atol=1e-5, rtol=1e-5)


def test_embed_all_matches_predict_logits_through_the_head(tiny_bb, scorer_model, texts):
    enc = encode_texts(tiny_bb.tokenizer, texts, 32)
    features = embed_all(scorer_model, enc, batch_size=6)
    assert features.shape == (len(texts), tiny_bb.hidden)
    with torch.no_grad():
        via_features = scorer_model(features=features)
    torch.testing.assert_close(via_features, predict_logits(scorer_model, enc, batch_size=9), atol=1e-5, rtol=1e-5)


def test_predict_on_nothing_is_empty(scorer_model):
    assert predict_logits(scorer_model, Encoded([], None, 0)).numel() == 0


@pytest.mark.parametrize("max_tokens", [None, 1, 40, 100, 10_000])
def test_token_batches_cover_every_row_once_within_the_budget(max_tokens):
    from scoreplex.encoding import token_batches

    lengths = np.random.default_rng(3).integers(3, 60, size=97)
    batches = list(token_batches(lengths, max_rows=16, max_tokens=max_tokens))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(97))
    for b in batches:
        assert 1 <= len(b) <= 16
        if max_tokens is not None and len(b) > 1:  # a single over-long row may exceed the budget alone
            assert len(b) * lengths[b].max() <= max_tokens
    # length order, so each batch pads little
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(batches, batches[1:], strict=False))
