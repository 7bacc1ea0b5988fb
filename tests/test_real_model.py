"""The packaged all-MiniLM-L6-v2 loads offline and its mean-pooled embeddings behave like a sentence encoder."""

from __future__ import annotations

import pytest
import torch

from scoreplex.backbone import describe_backbone, pool
from scoreplex.encoding import collate, encode_texts

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def minilm():
    from scoreplex.backbone import Backbone

    return Backbone.load("minilm")


def test_describe_backbone_of_minilm():
    info = describe_backbone("minilm")
    assert (info.model_type, info.hidden_size, info.num_layers) == ("bert", 384, 6)
    assert len(info.sha256) == 64


def test_paraphrases_are_closer_than_an_unrelated_sentence(minilm):
    texts = [
        "The plant uses sunlight to make its own food.",
        "Plants make their food using energy from light.",
        "The rabbits will turn into foxes next winter.",
    ]
    enc = encode_texts(minilm.tokenizer, texts, 128)
    batch = collate(enc, range(len(texts)))
    with torch.no_grad():
        hidden = minilm.encoder(**batch).last_hidden_state  # (B, T, 384)
    z = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)
    sim = z @ z.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert not any(p.requires_grad for p in minilm.encoder.parameters())
