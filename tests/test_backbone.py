"""Tests of scoreplex.backbone: offline resolution, LoRA targets per architecture, pooling, the content hash."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from scoreplex.backbone import (
    POOLINGS,
    backbone_fingerprint,
    describe_backbone,
    load_encoder,
    lora_target_modules,
    pool,
    resolve_backbone,
)
from scoreplex.data.demo import generate_demo
from scoreplex.errors import BackboneError, UnknownNameError


@pytest.fixture(scope="module")
def bert(tiny_backbone_path):
    return load_encoder(tiny_backbone_path)


@pytest.fixture(scope="module")
def mpnet():
    from transformers import MPNetConfig, MPNetModel

    cfg = MPNetConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
    )
    return MPNetModel(cfg)


def linear_suffixes(model: nn.Module) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and "pooler" not in n}


# -- resolving ---------------------------------------------------------------------------------------------------


def test_resolve_missing_folder_raises_backbone_error(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(BackboneError) as exc:
        resolve_backbone(missing)
    assert isinstance(exc.value, OSError)
    assert str(missing) in str(exc.value) and "never downloads" in str(exc.value)


def test_resolve_folder_without_config_raises_backbone_error(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackboneError, match="no config.json"):
        resolve_backbone(tmp_path)


def test_resolve_existing_folder_returns_it(tiny_backbone_path: Path):
    assert resolve_backbone(str(tiny_backbone_path)) == tiny_backbone_path


def test_load_encoder_without_weights_raises_backbone_error(tmp_path: Path, tiny_backbone_path: Path):
    for f in tiny_backbone_path.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(BackboneError, match="could not load"):
        load_encoder(tmp_path)


# -- loading and describing ----------------------------------------------------------------------------------------


def test_tiny_bert_loads_in_eval_mode_and_tokenises_demo_text_without_unknowns(bert):
    encoder, tokenizer = bert
    assert not encoder.training
    assert encoder.config.model_type == "bert" and encoder.config.hidden_size == 32
    texts = [r["text"] for r in generate_demo(5, seed=3)]
    ids = tokenizer(texts)["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert all(row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id for row in ids)


def test_describe_backbone_reports_the_config(tiny_backbone_path: Path):
    info = describe_backbone(tiny_backbone_path)
    assert (info.model_type, info.hidden_size, info.num_layers) == ("bert", 32, 2)
    assert info.sha256 == backbone_fingerprint(tiny_backbone_path)
    assert info.to_dict()["path"] == str(tiny_backbone_path)


# -- fingerprint ---------------------------------------------------------------------------------------------------


def test_fingerprint_depends_on_content_not_location(tmp_path: Path, tiny_backbone_path: Path):
    copy = shutil.copytree(tiny_backbone_path, tmp_path / "copy")
    assert backbone_fingerprint(copy) == backbone_fingerprint(tiny_backbone_path)


def test_fingerprint_changes_when_weights_change(tmp_path: Path, tiny_backbone_path: Path):
    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(tiny_backbone_path, tmp_path / "copy"))
    before = backbone_fingerprint(copy)
    weights = copy / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a rewrite always moves mtime
    assert backbone_fingerprint(copy) != before


def test_fingerprint_changes_when_config_changes(tmp_path: Path, tiny_backbone_path: Path):
    copy = Path(shutil.copytree(tiny_backbone_path, tmp_path / "copy"))
    before = backbone_fingerprint(copy)
    cfg = copy / "config.json"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("{", '{"note": "edited",', 1), encoding="utf-8")
    assert backbone_fingerprint(copy) != before


def test_differently_seeded_tiny_berts_have_different_fingerprints(tmp_path: Path, tiny_backbone_path: Path):
    from scoreplex.backbone import tiny_bert

    other = tiny_bert(tmp_path / "other", seed=1)
    assert backbone_fingerprint(other) != backbone_fingerprint(tiny_backbone_path)


# -- LoRA targets --------------------------------------------------------------------------------------------------


def test_qv_targets_for_bert(bert):
    assert sorted(lora_target_modules(bert[0], "qv")) == ["query", "value"]


def test_qv_targets_for_mpnet(mpnet):
    targets = lora_target_modules(mpnet, "qv")
    assert sorted(targets) == ["q", "v"]
    assert set(targets) <= linear_suffixes(mpnet)


def _linear_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("model_name", ["bert", "mpnet"])
def test_all_linear_covers_every_linear_layer_outside_the_pooler(model_name, bert, mpnet):
    model = bert[0] if model_name == "bert" else mpnet
    targets = set(lora_target_modules(model, "all-linear"))
    assert targets == {n for n in _linear_names(model) if not n.startswith("pooler")}


def test_attention_preset_names_only_attention_layers(bert):
    from peft import LoraConfig, get_peft_model

    model = bert[0]
    targets = lora_target_modules(model, "attention")
    assert all("attention" in t for t in targets)
    suffixes = {t.rsplit(".", 1)[-1] for t in targets}
    assert {"query", "key", "value"} <= suffixes
    # PEFT must adapt exactly these modules: not the feed-forward or pooler layers that also end in "dense"
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=targets))
    adapted = {n.removeprefix("base_model.model.") for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(targets)


def test_explicit_targets_are_used_as_given(bert):
    assert lora_target_modules(bert[0], "query, key") == ["query", "key"]


def test_bad_explicit_targets_list_the_available_suffixes(bert):
    with pytest.raises(BackboneError) as exc:
        lora_target_modules(bert[0], "query,q_proj")
    msg = str(exc.value)
    assert "['q_proj']" in msg
    for suffix in linear_suffixes(bert[0]):
        assert suffix in msg


def test_unknown_architecture_falls_back_to_name_heuristic():
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.out = (nn.Linear(4, 4) for _ in range(4))

    model = nn.Sequential(Attn(), Attn())
    assert sorted(lora_target_modules(model, "qv")) == ["q_proj", "v_proj"]


def test_no_target_found_raises_backbone_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(BackboneError, match="could not find LoRA targets"):
        lora_target_modules(model, "qv")


# -- pooling -------------------------------------------------------------------------------------------------------


def test_mean_pool_ignores_padding_positions():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 5, generator=g)  # (B, T, H)
    lengths = [6, 3, 1]
    mask = torch.zeros(3, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    pooled = pool(hidden, mask, "mean")
    for i, n in enumerate(lengths):
        torch.testing.assert_close(pooled[i], hidden[i, :n].mean(0))
    noisy = hidden.clone()
    noisy[mask == 0] = 1e6  # whatever sits under padding must not matter
    torch.testing.assert_close(pool(noisy, mask, "mean"), pooled)


def test_mean_pool_of_a_padded_row_equals_the_unpadded_row(bert):
    encoder, tokenizer = bert
    short, long = "the plant makes glucose", "water is absorbed by the roots and sugar is produced as food"
    alone = tokenizer([short], return_tensors="pt")
    both = tokenizer([short, long], return_tensors="pt", padding=True)
    assert both["attention_mask"][0].sum() < both["attention_mask"].shape[1]  # the short row is padded
    with torch.no_grad():
        h1 = encoder(**alone).last_hidden_state
        h2 = encoder(**both).last_hidden_state
    torch.testing.assert_close(
        pool(h2, both["attention_mask"], "mean")[0], pool(h1, alone["attention_mask"], "mean")[0], atol=1e-5, rtol=1e-5
    )


def test_cls_pool_takes_the_first_token():
    hidden = torch.randn(2, 4, 3)
    assert torch.equal(pool(hidden, torch.ones(2, 4), "cls"), hidden[:, 0])


def test_pooler_pool_needs_a_pooler_output():
    hidden = torch.randn(2, 4, 3)
    out = torch.randn(2, 3)
    assert torch.equal(pool(hidden, torch.ones(2, 4), "pooler", out), out)
    with pytest.raises(BackboneError, match="no pooler output"):
        pool(hidden, torch.ones(2, 4), "pooler")


def test_unknown_pooling_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as exc:
        pool(torch.randn(1, 2, 3), torch.ones(1, 2), "max")
    assert isinstance(exc.value, KeyError)
    assert all(p in str(exc.value) for p in POOLINGS)
