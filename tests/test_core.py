"""Core model on the tiny random backbone: shapes, frozen backbone, padding, persistence, decoding, bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_HEAD
from latentcomm import GenerativeEmbedder, HeadConfig, HeadMismatchError, Latent, LatentError
from latentcomm.testing import tiny_backbone

QUERIES = ["What is the capital of France?", "hi", "Explain transformers in simple terms, please.", ""]


def test_shapes(tiny_model: GenerativeEmbedder) -> None:
    latent = tiny_model.compress(QUERIES)
    assert latent.shape == (4, TINY_HEAD.num_compression, tiny_model.backbone.hidden_size)
    assert latent.fingerprint == tiny_model.fingerprint
    assert latent.backbone_id == tiny_model.backbone.backbone_id
    emb = tiny_model.encode(QUERIES)
    assert isinstance(emb, np.ndarray) and emb.shape == (4, TINY_HEAD.embed_dim)
    single = tiny_model.encode("hi")
    assert single.shape == (TINY_HEAD.embed_dim,)
    np.testing.assert_allclose(single, emb[1], atol=1e-5)
    tensor = tiny_model.encode(QUERIES, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(tensor, torch.Tensor)
    torch.testing.assert_close(tensor.norm(dim=-1), torch.ones(4))


def test_encode_equals_embedding_of_compressed_latent(tiny_model: GenerativeEmbedder) -> None:
    latent = tiny_model.compress(QUERIES, batch_size=3)
    np.testing.assert_allclose(tiny_model.embed_latent(latent), tiny_model.encode(QUERIES, batch_size=2), atol=1e-5)


def test_gradients_reach_only_the_head(tiny_model: GenerativeEmbedder) -> None:
    out = tiny_model(QUERIES[:2], ["Paris.", "Hello there!"], torch.randn(2, TINY_HEAD.embed_dim))
    out.loss.backward()
    assert out.recon > 0 and out.align > 0
    names = {name for name, _ in tiny_model.named_parameters()}
    assert names == {"head.special.weight", "head.recon.1.weight", "head.recon.1.bias", "head.align.1.weight",
                     "head.align.1.bias"}
    for name, param in tiny_model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in tiny_model.backbone.model.parameters())
    thought, compression = TINY_HEAD.num_thought, TINY_HEAD.num_compression
    assert tiny_model.head.special.weight.grad.shape == (thought + compression, tiny_model.backbone.hidden_size)


def test_loss_weights_select_terms(tiny_model: GenerativeEmbedder) -> None:
    targets = torch.randn(2, TINY_HEAD.embed_dim)
    only_align = tiny_model(QUERIES[:2], ["a", "b"], targets, recon_weight=0.0)
    assert only_align.recon == 0.0 and only_align.loss.item() == pytest.approx(only_align.align, rel=1e-5)
    cosine = tiny_model(QUERIES[:2], ["a", "b"], targets, recon_weight=0.0, align_loss="cosine")
    assert 0.0 <= cosine.align <= 2.0
    with pytest.raises(ValueError, match="batch sizes differ"):
        tiny_model(QUERIES[:2], ["a"], targets)


def test_padding_side_and_batching_do_not_change_results(tiny_model: GenerativeEmbedder, tiny) -> None:
    left = tiny_model.compress(QUERIES, batch_size=4).vectors
    right_padded = GenerativeEmbedder(tiny, TINY_HEAD, seed=0, padding_side="right")
    right = right_padded.compress(QUERIES, batch_size=4).vectors
    one_by_one = torch.cat([right_padded.compress(q).vectors for q in QUERIES])
    with pytest.raises(AttributeError):
        right_padded.padding_side = "left"  # a constructor argument, not a switch
    with pytest.raises(ValueError, match="padding_side"):
        GenerativeEmbedder(tiny, TINY_HEAD, padding_side="middle")  # type: ignore[arg-type]
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, one_by_one, atol=1e-5, rtol=1e-4)


def test_head_of_another_format_is_refused(tiny_model: GenerativeEmbedder, tiny, tmp_path) -> None:
    import json

    folder = tiny_model.save_pretrained(tmp_path / "head")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(HeadMismatchError, match="head format 1"):
        GenerativeEmbedder.from_pretrained(folder, backbone=tiny)


def test_save_load_round_trip(tiny_model: GenerativeEmbedder, tiny, tmp_path) -> None:
    with torch.no_grad():
        tiny_model.head.align[1].weight.add_(0.5)
    tiny_model.save_pretrained(tmp_path / "head")
    loaded = GenerativeEmbedder.from_pretrained(tmp_path / "head", backbone=tiny)
    assert loaded.fingerprint == tiny_model.fingerprint
    assert loaded.config == tiny_model.config
    torch.testing.assert_close(loaded.compress(QUERIES).vectors, tiny_model.compress(QUERIES).vectors)
    np.testing.assert_allclose(loaded.encode(QUERIES), tiny_model.encode(QUERIES), atol=1e-6)


def test_head_on_wrong_backbone_fails(tiny_model: GenerativeEmbedder, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path / "head")
    other = tiny_backbone(seed=1)
    with pytest.raises(HeadMismatchError, match="trained on backbone"):
        GenerativeEmbedder.from_pretrained(tmp_path / "head", backbone=other)


def test_corrupted_head_file_is_detected(tiny_model: GenerativeEmbedder, tiny, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    tiny_model.save_pretrained(tmp_path / "head")
    state = load_file(tmp_path / "head" / "head.safetensors")
    state["align.1.bias"] += 1.0
    save_file(state, tmp_path / "head" / "head.safetensors")
    with pytest.raises(HeadMismatchError, match="fingerprint"):
        GenerativeEmbedder.from_pretrained(tmp_path / "head", backbone=tiny)


def test_fingerprint_follows_the_weights(tiny_model: GenerativeEmbedder) -> None:
    before = tiny_model.fingerprint
    assert tiny_model.fingerprint == before
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    tiny_model(QUERIES[:2], ["a", "b"], torch.randn(2, TINY_HEAD.embed_dim)).loss.backward()
    optimizer.step()
    assert tiny_model.fingerprint != before


def test_decode_with_and_without_cache_agree(tiny_model: GenerativeEmbedder) -> None:
    latent = tiny_model.compress(QUERIES)
    cached = tiny_model.decode(latent, max_new_tokens=12)
    uncached = tiny_model.decode(latent, max_new_tokens=12, use_cache=False)
    assert cached == uncached
    assert len(cached) == 4 and all(isinstance(t, str) for t in cached)
    assert tiny_model.decode(latent, max_new_tokens=12, batch_size=1) == cached


def test_respond_with_and_without_cache_agree(tiny_model: GenerativeEmbedder) -> None:
    cached = tiny_model.respond(QUERIES, max_new_tokens=10)
    assert cached == tiny_model.respond(QUERIES, max_new_tokens=10, use_cache=False)
    assert cached == [tiny_model.respond(q, max_new_tokens=10)[0] for q in QUERIES]


def test_repetition_controls() -> None:
    from latentcomm.model.generation import Sampling, has_loop, penalize_repeats

    generated = torch.tensor([[5, 6, 7, 5, 6]])
    logits = torch.zeros(1, 10)
    logits[0, 7], logits[0, 5], logits[0, 9] = 4.0, -2.0, 1.0
    banned = penalize_repeats(logits, generated, Sampling(no_repeat_ngram_size=3))
    assert banned[0, 7] == float("-inf") and torch.isfinite(banned[0, [0, 5, 6, 8, 9]]).all()
    penalized = penalize_repeats(logits, generated, Sampling(repetition_penalty=2.0))
    assert penalized[0, 7] == 2.0 and penalized[0, 5] == -4.0 and penalized[0, 9] == 1.0
    assert penalize_repeats(logits, generated, Sampling(no_repeat_ngram_size=1))[0, 6] == float("-inf")
    assert has_loop("a recipe of a simple recipe of a simple recipe") and not has_loop("one two three four five")
    for bad in ({"temperature": float("nan")}, {"top_p": 0}, {"top_p": -1}, {"repetition_penalty": 0},
                {"no_repeat_ngram_size": -1}):
        with pytest.raises(ValueError):
            Sampling(**bad)


def test_greedy_generation_never_repeats_an_ngram_when_told(tiny_model: GenerativeEmbedder) -> None:
    from latentcomm.model.generation import Sampling, generate

    vectors = tiny_model.compress(QUERIES).vectors
    mask = torch.ones(vectors.shape[:2], dtype=torch.long)
    model, tokenizer = tiny_model.backbone.model, tiny_model.backbone.tokenizer
    rows = generate(model, vectors, mask, max_new_tokens=40, eos_token_ids={tokenizer.eos_token_id},
                    pad_token_id=tokenizer.pad_token_id, sampling=Sampling(no_repeat_ngram_size=2))
    plain = generate(model, vectors, mask, max_new_tokens=40, eos_token_ids={tokenizer.eos_token_id},
                     pad_token_id=tokenizer.pad_token_id)
    assert any(len(set(zip(r, r[1:]))) < len(r) - 1 for r in plain)  # the random model does loop
    for ids in rows:
        pairs = list(zip(ids, ids[1:]))
        assert len(set(pairs)) == len(pairs)
    with pytest.raises(ValueError, match="positions"):
        tiny_model.decode(tiny_model.compress(QUERIES[:1]), max_new_tokens=10**8)


def test_sampling_is_reproducible_with_a_seed(tiny_model: GenerativeEmbedder) -> None:
    latent = tiny_model.compress(QUERIES[:2])
    first = tiny_model.decode(latent, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert first == tiny_model.decode(latent, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)


def test_decoding_needs_the_backbone_embedding_needs_the_head(tiny_model: GenerativeEmbedder, tiny) -> None:
    other_head = GenerativeEmbedder(tiny, TINY_HEAD, seed=1)
    latent = other_head.compress(QUERIES[:2])
    assert len(tiny_model.decode(latent, max_new_tokens=4)) == 2
    with pytest.raises(HeadMismatchError, match="embedding needs the producing head"):
        tiny_model.embed_latent(latent)
    foreign = Latent(latent.vectors, latent.fingerprint, "llama-other")
    with pytest.raises(HeadMismatchError, match="backbone"):
        tiny_model.decode(foreign)


@pytest.mark.parametrize("vectors, message", [
    (torch.zeros(2, 3), "batch, n, hidden"),
    (torch.zeros(1, 3, 64, dtype=torch.int64), "floating point"),
    (torch.full((1, 3, 64), float("nan")), "NaN"),
    (torch.zeros(1, 3, 65), "hidden size"),
])
def test_bad_latents_are_rejected(tiny_model: GenerativeEmbedder, vectors, message) -> None:
    with pytest.raises(LatentError, match=message):
        tiny_model.decode(_unchecked(vectors, tiny_model))


def _unchecked(vectors: torch.Tensor, model: GenerativeEmbedder) -> Latent:
    """A Latent built around its own validation, as a buggy or hostile producer might."""
    latent = object.__new__(Latent)
    object.__setattr__(latent, "vectors", vectors)
    object.__setattr__(latent, "fingerprint", model.fingerprint)
    object.__setattr__(latent, "backbone_id", model.backbone.backbone_id)
    return latent


def test_latent_constructor_validates_and_slices(tiny_model: GenerativeEmbedder) -> None:
    with pytest.raises(LatentError, match="NaN"):
        Latent(torch.full((1, 3, 64), float("inf")), "f", "b")
    with pytest.raises(LatentError, match="floats"):
        Latent.from_numpy(np.zeros((3, 64), dtype=np.int32), "f", "b")
    latent = tiny_model.compress(QUERIES)
    assert latent[-1].shape == (1, 3, 64) and latent[1:3].shape == (2, 3, 64)
    torch.testing.assert_close(Latent.concat([latent[:2], latent[2:]]).vectors, latent.vectors)
    assert Latent.from_numpy(latent.numpy()[0], latent.fingerprint, latent.backbone_id).shape == (1, 3, 64)
    with pytest.raises(TypeError):
        tiny_model.decode(latent.vectors)  # type: ignore[arg-type]


def test_bad_text_input(tiny_model: GenerativeEmbedder) -> None:
    with pytest.raises(ValueError, match="empty"):
        tiny_model.compress([])
    with pytest.raises(ValueError, match="empty"):
        tiny_model.respond([])
    with pytest.raises(TypeError, match="strings"):
        tiny_model.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        tiny_model.encode(["ok"], batch_size=0)


def test_overlong_query_is_truncated_but_special_tokens_kept(tiny_model: GenerativeEmbedder) -> None:
    long_text = "word " * 500
    ids = tiny_model.query_token_ids([long_text])[0]
    assert len(ids) == TINY_HEAD.max_query_tokens
    assert ids[-3:] == tiny_model.backbone.tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids[-3:]
    longer = tiny_model.compress([long_text, long_text + " and more"]).vectors
    torch.testing.assert_close(longer[0], longer[1])


def test_same_seed_same_head(tiny) -> None:
    torch.manual_seed(123)
    a = GenerativeEmbedder(tiny, TINY_HEAD, seed=4)
    torch.manual_seed(456)
    b = GenerativeEmbedder(tiny, TINY_HEAD, seed=4)
    assert a.fingerprint == b.fingerprint != GenerativeEmbedder(tiny, TINY_HEAD, seed=5).fingerprint


def test_head_variants(tiny) -> None:
    for config in (HeadConfig(num_thought=0, num_compression=2, recon_head="mlp", align_head="mlp", embed_dim=8),
                   HeadConfig(num_thought=1, num_compression=1, chat_template=False)):
        model = GenerativeEmbedder(tiny, config)
        latent = model.compress(QUERIES)
        assert latent.shape == (4, config.num_compression, 64)
        assert model.encode(QUERIES).shape == (4, config.embed_dim or 64)


@pytest.mark.parametrize("kwargs", [dict(num_compression=0), dict(num_thought=-1), dict(recon_head="conv"),
                                    dict(embed_dim=0), dict(max_query_tokens=0)])
def test_head_config_validation(kwargs) -> None:
    with pytest.raises(ValueError):
        HeadConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown"):
        HeadConfig.from_dict({"num_tokens": 3})


def test_self_teacher_and_mean_pooling(tiny) -> None:
    from latentcomm.model.teachers import load_teacher

    teacher = load_teacher("self", backbone=tiny)
    emb = teacher.embed(["a response", "another, longer response text"])
    assert emb.shape == (2, tiny.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown teacher"):
        load_teacher("nope")


def test_minilm_teacher_from_its_package() -> None:
    from latentcomm.model.teachers import load_teacher

    teacher = load_teacher("minilm")
    emb = teacher.embed(["Paris is the capital of France.", "The capital of France is Paris.", "I like turtles."])
    assert emb.shape == (3, 384) and teacher.dim == 384
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_core_imports_neither_ray_nor_deepspeed() -> None:
    code = ("import sys, latentcomm, latentcomm.model.embedder, latentcomm.model.teachers, latentcomm.cli, latentcomm.cli.demo;"
            "import latentcomm.protocols, latentcomm.runtime.cluster, latentcomm.runtime.pool, latentcomm.engine.replica, latentcomm.tasks.gsm8k;"
            "import latentcomm.engine.batching, latentcomm.engine.continuous, latentcomm.http.client, latentcomm.http.api;"
            "bad = [m for m in ('ray', 'deepspeed') if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cli_help_lists_commands(capsys) -> None:
    from latentcomm.cli.main import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "run" in out and "train" in out and "bench" in out
    assert main(["no-such-command"]) == 2


def test_alignment_loss_is_the_papers_squared_distance() -> None:
    from latentcomm.model.losses import alignment_loss

    predicted = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert alignment_loss(predicted, target).item() == pytest.approx((2.0 + 1.0) / 2)
    assert alignment_loss(predicted[:1], target[:1], "cosine").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        alignment_loss(predicted, target[:, :2])


def test_standardisation_uses_running_statistics_at_inference(tiny_model: GenerativeEmbedder) -> None:
    assert not tiny_model.training
    targets = torch.randn(4, TINY_HEAD.embed_dim)
    tiny_model.train()
    tiny_model(QUERIES, ["a", "b", "c", "d"], targets).loss.backward()
    tiny_model.eval()
    for standardize in (tiny_model.head.recon[0], tiny_model.head.align[0]):
        assert int(standardize.num_batches_tracked) == 1 and standardize.running_var.mean() != 1.0
    one_by_one = np.stack([tiny_model.encode(q) for q in QUERIES])
    np.testing.assert_allclose(tiny_model.encode(QUERIES), one_by_one, atol=1e-5)
    one_by_one = torch.cat([tiny_model.compress(q).vectors for q in QUERIES])
    torch.testing.assert_close(tiny_model.compress(QUERIES).vectors, one_by_one, atol=1e-5, rtol=1e-4)


def test_calibrated_untrained_latent_has_token_embedding_scale(tiny_model: GenerativeEmbedder) -> None:
    """A soft prompt far larger than token embeddings swamps the residual stream (the format-1 bug)."""
    vocab = tiny_model.backbone.model.get_input_embeddings().weight.float()
    mean = vocab.mean(dim=0)
    spread = (vocab - mean).pow(2).mean().sqrt()
    before = {k: v.clone() for k, v in tiny_model.named_parameters()}
    assert tiny_model.fit_standardization(QUERIES, batch_size=2) is tiny_model
    assert not tiny_model.training
    for name, value in tiny_model.named_parameters():
        assert torch.equal(value, before[name]), name
    for standardize in (tiny_model.head.recon[0], tiny_model.head.align[0]):
        assert standardize.momentum == 0.1 and int(standardize.num_batches_tracked) == 2
    latent = tiny_model.compress(QUERIES).vectors
    torch.testing.assert_close(latent.mean(dim=(0, 1)), mean, atol=1e-4, rtol=1e-4)
    assert 0.5 * spread < (latent - mean).pow(2).mean().sqrt() < 2 * spread
    with pytest.raises(ValueError, match="calibration texts is empty"):
        tiny_model.fit_standardization([])


def test_backbone_id_does_not_depend_on_the_storage_dtype() -> None:
    from latentcomm.model.backbone import backbone_fingerprint

    model = tiny_backbone().model
    ids = {backbone_fingerprint(model.to(dtype)) for dtype in (torch.float32, torch.bfloat16, torch.float32)}
    assert len(ids) == 1
    assert backbone_fingerprint(tiny_backbone(seed=1).model) not in ids


# ---- inputs made of text and latents -------------------------------------------------------------------------
def _mixed_items(model: GenerativeEmbedder) -> list:
    latent = model.compress(["What is the capital of France?", "Two plus two?"])
    return [["Problem: two plus two.", latent[1], "Is this right? Give the final number."],
            "a plain string",
            [latent[0]],
            ["", latent[0], "short", latent[1]],
            latent[1]]


def test_parts_compress_shapes_and_padding_side_invariance(tiny_model: GenerativeEmbedder, tiny) -> None:
    items = _mixed_items(tiny_model)
    left = tiny_model.compress(items, batch_size=5).vectors
    assert left.shape == (5, TINY_HEAD.num_compression, 64)
    right_padded = GenerativeEmbedder(tiny, TINY_HEAD, seed=0, padding_side="right")
    right = right_padded.compress(items, batch_size=5).vectors
    one_by_one = torch.cat([right_padded.compress([item]).vectors for item in items])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, one_by_one, atol=1e-5, rtol=1e-4)
    assert right_padded.encode(items).shape == (5, TINY_HEAD.embed_dim)
    torch.testing.assert_close(right_padded.compress([["a plain string"]]).vectors, left[1:2], atol=1e-5, rtol=1e-4)


def test_latent_parts_change_the_latent(tiny_model: GenerativeEmbedder) -> None:
    a, b = tiny_model.compress(["the sea at night", "forty-two"])
    one = tiny_model.compress([["Read:", a, "Answer."], ["Read:", b, "Answer."]]).vectors
    assert (one[0] - one[1]).abs().max() > 1e-3


def test_kv_cached_split_equals_one_pass(tiny_model: GenerativeEmbedder, tiny) -> None:
    from latentcomm.model.reading import TRAINING_INSTRUCTIONS

    items = _mixed_items(tiny_model)
    padded = {side: GenerativeEmbedder(tiny, TINY_HEAD, seed=0, padding_side=side) for side in ("left", "right")}
    for model in padded.values():
        split = model.latent_vectors(items)  # under autograd: the split
        torch.testing.assert_close(split, model.latent_vectors(items, reference=True), atol=1e-5, rtol=1e-4)
    model = padded["right"]
    latent = model.latent_vectors(items)
    responses = ["Four.", "A string indeed, a plain one.", "Paris", "", "4"]
    instructions = [None, TRAINING_INSTRUCTIONS[2], TRAINING_INSTRUCTIONS[0], None, TRAINING_INSTRUCTIONS[6]]
    for ins in (None, instructions):
        logits, labels = model.reconstruction_logits(latent, responses, ins)
        ref_logits, ref_labels = model.reconstruction_logits(latent, responses, ins, reference=True)
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    rows = model.layout.query_rows([[p] if isinstance(p, str) else p for p in items], "Summarize this:")
    suffix = [[torch.ones(2, 64)]] * len(rows)
    for model in padded.values():
        reference, _ = model._one_pass(rows, suffix, template_cache=False)
        with torch.no_grad():
            one_cached_pass, _ = model._one_pass(rows, suffix)
        split, _ = model._split_pass(rows, suffix)
        torch.testing.assert_close(one_cached_pass, reference, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(split, reference, atol=1e-5, rtol=1e-4)
    assert model._template_kv  # the chat template + prompt run came from the cache
    targets = torch.randn(5, TINY_HEAD.embed_dim)
    split = model(items, responses, targets, instructions=instructions)
    reference = model(items, responses, targets, instructions=instructions, reference=True)
    assert split.loss.item() == pytest.approx(reference.loss.item(), rel=1e-4)


@pytest.mark.parametrize("prompt", [None, "Summarize this text:"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_prefix_cached_compress_equals_uncached(tiny, prompt, side) -> None:
    """compress takes the chat template + prompt run from a KV cache made once; the plain one pass agrees."""
    model = GenerativeEmbedder(tiny, TINY_HEAD, seed=0, padding_side=side)
    cached = model.compress(QUERIES, prompt=prompt, batch_size=3).vectors
    before, _ = model.layout.template(prompt)
    assert [key for key in model._template_kv if list(key) == before]  # that run came from the cache
    with torch.no_grad():
        uncached = model.latent_vectors(QUERIES, prompt, reference=True).float()
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-4)


def test_in_context_layout_is_the_one_respond_reads(tiny_model: GenerativeEmbedder) -> None:
    """The first response token predicted in training is the token respond([[before, latent, after]]) writes."""
    from latentcomm.model.reading import EVALUATION_INSTRUCTION

    latent = tiny_model.compress(["What is the capital of France?", "hi"])
    before, after = EVALUATION_INSTRUCTION
    logits, _ = tiny_model.reconstruction_logits(latent.vectors, ["x", "y"], [EVALUATION_INSTRUCTION] * 2)
    first = logits.view(2, 2, -1)[:, 0].argmax(-1)  # 2 labels per row: "x"/"y" and EOS
    tok = tiny_model.backbone.tokenizer
    written = tiny_model.respond([[before, latent[i], after] for i in range(2)], max_new_tokens=1,
                                 repetition_penalty=1.0, no_repeat_ngram_size=0)
    assert [tok.decode([t]).strip() for t in first.tolist()] == written


def test_gradients_reach_only_the_head_with_parts_and_instructions(tiny_model: GenerativeEmbedder) -> None:
    from latentcomm.model.reading import TRAINING_INSTRUCTIONS

    items = _mixed_items(tiny_model)
    out = tiny_model(items, ["a", "b", "c", "d", "e"], torch.randn(5, TINY_HEAD.embed_dim),
                     instructions=[TRAINING_INSTRUCTIONS[1]] * 5)
    out.loss.backward()
    for name, param in tiny_model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_model.backbone.model.parameters())


def test_latent_parts_are_checked(tiny_model: GenerativeEmbedder) -> None:
    other = GenerativeEmbedder(tiny_backbone(seed=1), TINY_HEAD)
    foreign = other.compress(["made on another backbone"])
    with pytest.raises(HeadMismatchError, match="backbone"):
        tiny_model.compress([["Read this:", foreign]])
    with pytest.raises(HeadMismatchError, match="backbone"):
        tiny_model.respond([[foreign]])
    two = tiny_model.compress(["a", "b"])
    with pytest.raises(LatentError, match="one row"):
        tiny_model.compress([["both:", two]])
    with pytest.raises(TypeError, match="strings"):
        tiny_model.compress([["ok", 3]])  # type: ignore[list-item]
    assert tiny_model.respond([["hi"]], max_new_tokens=5) == tiny_model.respond(["hi"], max_new_tokens=5)


def test_state_layer_and_old_fingerprints(tiny) -> None:
    last = GenerativeEmbedder(tiny, TINY_HEAD)
    middle = GenerativeEmbedder(tiny, HeadConfig(**{**TINY_HEAD.to_dict(), "state_layer": 1}))
    items = ["What is the capital of France?", "hi"]
    assert middle.compress(items).shape == last.compress(items).shape
    torch.testing.assert_close(middle.latent_vectors(items), middle.latent_vectors(items, reference=True),
                               atol=1e-5, rtol=1e-4)
    assert "state_layer" not in TINY_HEAD.to_json() and '"state_layer": 1' in middle.config.to_json()
    with pytest.raises(ValueError, match="layers"):
        GenerativeEmbedder(tiny, HeadConfig(state_layer=9))


def test_fit_alignment_solves_the_align_head(tiny) -> None:
    model = GenerativeEmbedder(tiny, TINY_HEAD, seed=0)
    texts = [f"question {i}: what is {i} plus {3 * i} and why?" for i in range(60)]
    latents = model.compress(texts).vectors
    truth = torch.randn(64, TINY_HEAD.embed_dim) / 8
    targets = model.head.align[0](latents).mean(1) @ truth  # exactly linear in the standardised latent
    before = ((model.encode(texts, convert_to_tensor=True) - targets) ** 2).sum(-1).mean()
    stats = model.fit_alignment(texts, targets.numpy())
    after = ((model.encode(texts, convert_to_tensor=True) - targets) ** 2).sum(-1).mean()
    assert after < 0.05 * before and stats["rows"] == 60
    with pytest.raises(ValueError, match="targets must be"):
        model.fit_alignment(texts, targets[:5].numpy())
    with pytest.raises(ValueError, match="linear"):
        GenerativeEmbedder(tiny, HeadConfig(**{**TINY_HEAD.to_dict(), "align_head": "mlp"})).fit_alignment(
            texts, targets.numpy())


def test_padding_groups_split_a_batch_where_the_padding_saved_outweighs_a_pass() -> None:
    from latentcomm.model.embedder import padding_groups

    assert padding_groups([40] * 4 + [10] * 4, 32) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 264 positions, not 352
    assert padding_groups([40, 39, 38], 32) == [[0, 1, 2]]
    assert padding_groups([40, 10], None) == [[0, 1]] and padding_groups([7], 32) == [[0]]
    assert padding_groups([50, 50, 30, 30, 30, 5], 16) == [[0, 1], [2, 3, 4], [5]]


def test_compress_runs_rows_of_different_widths_in_separate_passes(tiny_model: GenerativeEmbedder) -> None:
    texts = ["short"] * 3 + [" ".join(["a much longer query"] * 12)] * 3 + ["mid length query text"]
    passes = []
    hook = tiny_model.backbone.model.base_model.register_forward_hook(lambda *_: passes.append(1))
    try:
        tiny_model.compress(texts[:1])  # fills the template cache
        passes.clear()
        latent = tiny_model.compress(texts, batch_size=8)
    finally:
        hook.remove()
    assert len(passes) == 2  # the long rows, then the short ones with the middle one
    with torch.no_grad():
        reference = tiny_model.latent_vectors(texts, reference=True).float()
    torch.testing.assert_close(latent.vectors, reference, atol=1e-5, rtol=1e-4)


def test_reconstruction_runs_responses_of_different_widths_in_separate_passes(tiny) -> None:
    """Rows of very different widths go in separate passes; logits and labels keep the batch's order."""
    from dataclasses import replace

    from latentcomm.model.reading import TRAINING_INSTRUCTIONS

    tiny_model = GenerativeEmbedder(tiny, replace(TINY_HEAD, max_response_tokens=128))
    queries = ["What is the capital of France?", "hi", "Tell me a long story.", "Count."]
    responses = ["Paris.", " ".join(["and then the story went on"] * 20), "4", " ".join(["one two three"] * 30)]
    instructions = [TRAINING_INSTRUCTIONS[1], None, TRAINING_INSTRUCTIONS[3], None]
    passes = []
    hook = tiny_model.backbone.model.base_model.register_forward_hook(lambda *_: passes.append(1))
    try:
        latent = tiny_model.latent_vectors(queries)
        passes.clear()
        logits, labels = tiny_model.reconstruction_logits(latent, responses, instructions)
        grouped = len(passes)
    finally:
        hook.remove()
    ref_logits, ref_labels = tiny_model.reconstruction_logits(latent, responses, instructions, reference=True)
    assert grouped >= 3  # the instruction prefixes, then the long responses and the short ones apart
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_a_cut_response_is_reconstructed_without_an_end_token(tiny_model) -> None:
    """A response that fits keeps its end token; one longer than max_response_tokens is cut there with none (it does
    not end at the cut: an end token would teach the head to stop)."""
    tok, limit = tiny_model.backbone.tokenizer, tiny_model.config.max_response_tokens
    short, long = "A small animal.", " ".join(["word"] * (3 * limit))
    ids = [tok(text, add_special_tokens=False).input_ids for text in (short, long)]
    got = tiny_model.response_ids([short, long])
    assert got[0] == ids[0] + [tok.eos_token_id]
    assert got[1] == ids[1][:limit] and tok.eos_token_id not in got[1]
    exact = tok.decode(ids[1][:limit - 1])  # one token short of the limit: it still fits with its end token
    fitted = tiny_model.response_ids([exact])[0]
    assert len(fitted) <= limit and fitted[-1] == tok.eos_token_id
