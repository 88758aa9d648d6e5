"""Encoder-side LoRA on the tiny backbone: on only while compressing, saved and checked with the head."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_HEAD
from latentcomm import GenerativeEmbedder, HeadConfig, HeadMismatchError
from latentcomm.model.head_file import expected_tensors
from latentcomm.model.lora import lora_targets
from latentcomm.testing import tiny_backbone

LORA_HEAD = dataclasses.replace(TINY_HEAD, encoder_lora_rank=4)
QUERIES = ["What is the capital of France?", "Explain transformers in simple terms, please."]


def _nonzero(model: GenerativeEmbedder) -> GenerativeEmbedder:
    """Give every adapter a non-zero up-projection (a trained adapter); returns the model."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for adapter in model.head.encoder_lora.adapters:
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=generator) * 0.5)
    return model


@pytest.fixture()
def lora_model(tiny) -> GenerativeEmbedder:
    return GenerativeEmbedder(tiny, LORA_HEAD, seed=0)


def test_adapters_sit_on_every_query_and_value_projection(lora_model, tiny) -> None:
    targets = lora_targets(tiny.model)
    assert sorted(targets) == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    names = {n for n, _ in lora_model.named_parameters() if "encoder_lora" in n}
    assert len(names) == 2 * len(targets)
    shapes = expected_tensors(LORA_HEAD, tiny.hidden_size, targets)
    assert {k: tuple(v.shape) for k, v in lora_model.head.state_dict().items()} == shapes
    with pytest.raises(ValueError, match="lora_targets"):
        from latentcomm.model.heads import CompressionHead

        CompressionHead(LORA_HEAD, tiny.hidden_size)
    assert '"encoder_lora_rank": 4' in LORA_HEAD.to_json() and "encoder_lora" not in TINY_HEAD.to_json()
    with pytest.raises(ValueError, match="encoder_lora_rank"):
        HeadConfig(encoder_lora_rank=-1)


def test_fresh_adapters_change_nothing(lora_model, tiny) -> None:
    plain = GenerativeEmbedder(tiny, TINY_HEAD, seed=0)
    plain.head.load_state_dict({k: v for k, v in lora_model.head.state_dict().items() if "encoder_lora" not in k})
    torch.testing.assert_close(lora_model.compress(QUERIES).vectors, plain.compress(QUERIES).vectors,
                               atol=1e-5, rtol=1e-4)


def test_decode_and_respond_are_the_frozen_backbones(lora_model, tiny) -> None:
    plain = GenerativeEmbedder(tiny, TINY_HEAD, seed=0)
    before_latent = lora_model.compress(QUERIES)
    _nonzero(lora_model)
    latent = lora_model.compress(QUERIES)
    assert (latent.vectors - before_latent.vectors).abs().max() > 1e-3  # the adapters act on compress
    assert lora_model.decode(latent, max_new_tokens=8) == plain.decode(latent, max_new_tokens=8)
    assert lora_model.respond(QUERIES, max_new_tokens=8) == plain.respond(QUERIES, max_new_tokens=8)
    in_context = [["Read this:", latent[0], "What does it say?"]]
    assert lora_model.respond(in_context, max_new_tokens=8) == plain.respond(in_context, max_new_tokens=8)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(tiny.model(ids).logits, tiny_backbone().model(ids).logits)  # no hook left behind


def test_gradients_reach_the_adapters_and_not_the_backbone(lora_model) -> None:
    _nonzero(lora_model)
    out = lora_model(QUERIES, ["Paris.", "Attention."], torch.randn(2, TINY_HEAD.embed_dim))
    out.loss.backward()
    grads = {n: p.grad for n, p in lora_model.named_parameters() if "encoder_lora" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None and not p.requires_grad for p in lora_model.backbone.model.parameters())


def test_lora_head_saves_loads_and_is_checked(lora_model, tiny, tmp_path) -> None:
    _nonzero(lora_model)
    lora_model.save_pretrained(tmp_path / "head")
    loaded = GenerativeEmbedder.from_pretrained(tmp_path / "head", backbone=tiny)
    assert loaded.fingerprint == lora_model.fingerprint
    torch.testing.assert_close(loaded.compress(QUERIES).vectors, lora_model.compress(QUERIES).vectors)
    assert any("encoder_lora" in k for k in load_file(tmp_path / "head" / "head.safetensors"))
    meta = json.loads((tmp_path / "head" / "config.json").read_text())
    meta["head"]["encoder_lora_rank"] = 2
    (tmp_path / "head" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(HeadMismatchError, match="encoder_lora"):
        GenerativeEmbedder.from_pretrained(tmp_path / "head", backbone=tiny)


def test_lora_head_folder_is_checked_without_a_backbone(lora_model, tmp_path) -> None:
    """The CLI's ``--head`` check (no backbone loaded) takes a LoRA head and refuses one whose adapters are gone."""
    from safetensors.torch import save_file

    from latentcomm.model.head_file import check_folder

    lora_model.save_pretrained(tmp_path / "head")
    assert check_folder(tmp_path / "head").encoder_lora_rank == 4
    state = load_file(tmp_path / "head" / "head.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("encoder_lora.")},
              tmp_path / "head" / "head.safetensors")
    with pytest.raises(HeadMismatchError, match="no adapters"):
        check_folder(tmp_path / "head")
