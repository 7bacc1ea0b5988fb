"""Tests of scoreplex.methods (and heads): save -> load is exact, a fresh LoRA is the base model, what each stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoreplex.encoding import collate, encode_texts
from scoreplex.errors import SuiteError, UnknownNameError
from scoreplex.heads import ScoringHead, balanced_class_weights, probabilities, rubric_loss, split_logits
from scoreplex.methods import PER_TASK_METHODS, MethodSettings, TaskModel, get_method
from scoreplex.tasks import TaskSpec

SPEC = TaskSpec(
    id="mixed",
    dimensions=TaskSpec.ordinal("x", 3).dimensions + TaskSpec.multilabel("y", ["claim", "evidence"]).dimensions,
)
TEXTS = [
    "the plant uses energy from sunlight",
    "it takes in carbon dioxide from the air, water is absorbed by the roots, the plant makes glucose",
    "plants are green",
    "i think the mass stays the same because matter is conserved so no particles are lost",
]


@pytest.fixture(scope="module")
def batch(tiny_bb):
    return collate(encode_texts(tiny_bb.tokenizer, TEXTS, 64), range(len(TEXTS)))


def encoder_state(encoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def perturb_trainables(model: TaskModel, seed: int) -> None:
    """Stand in for training: move every trainable tensor (LoRA B included, so the adapter is no longer a no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def logits_of(model: TaskModel, batch, encoder) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        if model.encoder is None:  # head-only: features come from the shared encoder
            features = TaskModel(encoder, model.head, model.pooling).embed(batch["input_ids"], batch["attention_mask"])
            return model(features=features)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


@pytest.mark.parametrize("head_hidden", [0, 8])
@pytest.mark.parametrize("name", sorted(PER_TASK_METHODS))
def test_module_state_then_load_reproduces_the_trained_logits(tiny_bb, batch, name, head_hidden):
    method = get_method(name)
    settings = MethodSettings(head_hidden=head_hidden, lora_r=4)
    before = encoder_state(tiny_bb.encoder)
    torch.manual_seed(0)
    model = method.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, settings, "mean")
    perturb_trainables(model, seed=1)
    expected = logits_of(model, batch, tiny_bb.encoder)
    assert expected.shape == (len(TEXTS), SPEC.num_logits)

    state = {k: v.clone() for k, v in method.module_state(model).items()}
    config = method.module_config(model, settings)
    loaded = method.load(tiny_bb.encoder, tiny_bb.hidden, SPEC, config, state, "mean")
    assert not loaded.training
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # building and loading work on copies: the shared encoder is untouched
    for k, v in tiny_bb.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", sorted(PER_TASK_METHODS))
def test_the_shared_encoder_stays_frozen(tiny_bb, name):
    model = get_method(name).build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean")
    assert not any(p.requires_grad for p in tiny_bb.encoder.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"head.{n}" for n, _ in model.head.named_parameters()}
    assert head <= trainable
    if name == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    elif name == "lora":
        assert trainable - head and all("lora_" in n for n in trainable - head)
    else:
        assert trainable == head and model.encoder is None


def test_fresh_lora_has_zero_b_and_embeds_like_the_base_encoder(tiny_bb, batch):
    model = get_method("lora").build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean").eval()
    b_weights = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert b_weights and all((p == 0).all() for p in b_weights)
    base = TaskModel(tiny_bb.encoder, model.head, "mean")
    with torch.no_grad():
        z_lora = model.embed(batch["input_ids"], batch["attention_mask"])
        z_base = base.embed(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(z_lora, z_base, atol=1e-6, rtol=1e-6)


def test_lora_with_nonzero_b_changes_the_embedding(tiny_bb, batch):
    # the converse of the zero-B invariant: otherwise the test above would pass for an adapter that does nothing
    model = get_method("lora").build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean").eval()
    perturb_trainables(model, seed=2)
    base = TaskModel(tiny_bb.encoder, model.head, "mean")
    with torch.no_grad():
        diff = model.embed(batch["input_ids"], batch["attention_mask"]) - base.embed(
            batch["input_ids"], batch["attention_mask"]
        )
    assert diff.abs().max() > 1e-4


def test_lora_stores_only_adapters_and_head_while_full_stores_the_encoder(tiny_bb):
    lora_m, full_m = get_method("lora"), get_method("full")
    lora_state = lora_m.module_state(lora_m.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean"))
    full_state = full_m.module_state(full_m.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean"))
    assert all(k.startswith("head.") or (k.startswith("lora.") and "lora_" in k) for k in lora_state)
    assert any(k.startswith("lora.") for k in lora_state)
    encoder_keys = {f"encoder.{k}" for k in tiny_bb.encoder.state_dict()}
    assert encoder_keys <= set(full_state)

    def numel(state):
        return sum(v.numel() for v in state.values())

    assert numel(lora_state) < numel(full_state) / 5
    head_state = get_method("head").module_state(
        get_method("head").build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean")
    )
    assert all(k.startswith("head.") for k in head_state)
    assert numel(head_state) < numel(lora_state)


def test_lora_module_config_records_what_load_needs(tiny_bb):
    method = get_method("lora")
    settings = MethodSettings(lora_r=4, lora_alpha=8, lora_targets="query,key")
    cfg = method.module_config(method.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, settings, "mean"), settings)
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_targets"]) == (4, 8, ["key", "query"])


def test_head_only_features_path_equals_token_path(tiny_bb, batch):
    torch.manual_seed(0)
    head = ScoringHead(tiny_bb.hidden, SPEC.class_counts, hidden=8).eval()
    with_encoder = TaskModel(tiny_bb.encoder, head, "mean").eval()
    without = TaskModel(None, head, "mean").eval()
    with torch.no_grad():
        features = with_encoder.embed(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(
            without(features=features),
            with_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]),
        )


@pytest.mark.parametrize("name", sorted(PER_TASK_METHODS))
def test_loading_a_wrong_shaped_head_raises_suite_error(tiny_bb, name):
    method = get_method(name)
    model = method.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean")
    state, config = method.module_state(model), method.module_config(model, MethodSettings())
    other = TaskSpec.ordinal("mixed", 5)  # 6 logits, not 7
    with pytest.raises(SuiteError, match="head weights"):
        method.load(tiny_bb.encoder, tiny_bb.hidden, other, config, state, "mean")


@pytest.mark.parametrize("name", sorted(PER_TASK_METHODS))
def test_loading_with_a_missing_head_tensor_raises_suite_error(tiny_bb, name):
    method = get_method(name)
    model = method.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(), "mean")
    state, config = method.module_state(model), method.module_config(model, MethodSettings())
    state.pop(next(k for k in state if k.startswith("head.")))
    with pytest.raises(SuiteError, match="missing"):
        method.load(tiny_bb.encoder, tiny_bb.hidden, SPEC, config, state, "mean")


def test_loading_lora_with_another_rank_raises_suite_error(tiny_bb):
    method = get_method("lora")
    model = method.build(tiny_bb.encoder, tiny_bb.hidden, SPEC, MethodSettings(lora_r=4), "mean")
    state, config = method.module_state(model), method.module_config(model, MethodSettings())
    config["lora_r"] = 8
    with pytest.raises(SuiteError, match="LoRA weights"):
        method.load(tiny_bb.encoder, tiny_bb.hidden, SPEC, config, state, "mean")


def test_unknown_method_lists_the_registry():
    with pytest.raises(UnknownNameError) as exc:
        get_method("qlora")
    assert isinstance(exc.value, KeyError)
    assert all(name in str(exc.value) for name in PER_TASK_METHODS)


# -- heads -----------------------------------------------------------------------------------------------------------


def test_split_and_probabilities_follow_the_class_counts():
    logits = torch.randn(5, SPEC.num_logits)
    blocks = split_logits(logits, SPEC.class_counts)
    assert [b.shape for b in blocks] == [(5, k) for k in SPEC.class_counts]
    for p in probabilities(logits, SPEC.class_counts):
        torch.testing.assert_close(p.sum(-1), torch.ones(5))


def test_rubric_loss_is_the_sum_of_per_dimension_cross_entropies_ignoring_unscored():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, SPEC.num_logits, generator=g)
    labels = torch.tensor([[0, 1, 0], [3, 0, -1], [2, 1, 1], [-1, 0, 1], [1, 1, 0], [0, 0, -1]])
    expected = sum(
        torch.nn.functional.cross_entropy(block[labels[:, d] >= 0], labels[labels[:, d] >= 0, d])
        for d, block in enumerate(split_logits(logits, SPEC.class_counts))
    )
    torch.testing.assert_close(rubric_loss(logits, labels, SPEC.class_counts), expected)
    all_missing = labels.clone()
    all_missing[:, 2] = -1
    assert torch.isfinite(rubric_loss(logits, all_missing, SPEC.class_counts))


def test_balanced_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([[0, 1], [0, 1], [1, 1], [3, 0], [0, -1], [1, 1]])
    weights = balanced_class_weights(labels, [4, 2])
    # every class seen, unscored rows dropped: sklearn's 'balanced' exactly
    y1 = labels[labels[:, 1] >= 0, 1]
    np.testing.assert_allclose(weights[1].numpy(), compute_class_weight("balanced", classes=np.array([0, 1]), y=y1))
    # class 2 unseen: n / (K * count) with K the declared classes, i.e. sklearn's weights up to a constant factor
    # (which the weighted-mean cross-entropy cancels), and weight 1 for the unseen class
    seen = np.array([0, 1, 3])
    ref = compute_class_weight("balanced", classes=seen, y=labels[:, 0])
    np.testing.assert_allclose(weights[0].numpy()[seen], ref * len(seen) / 4, rtol=1e-6)
    assert weights[0][2] == 1.0
