"""Batching in the replica, in-process on the tiny model: batched results equal unbatched ones, a bad request
fails alone, rows that join a running generation get the text they get alone, and unbatched generation is a
batch of one."""
from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from latentcomm.engine.batching import BatchConfig, Batcher
from latentcomm.errors import HeadMismatchError
from latentcomm.engine.messaging import latent_message
from latentcomm.protocols import FingerprintMismatch, LatentMessage, MalformedMessage, ProtocolError, pack, unpack
from latentcomm.engine.replica import Replica, ReplicaConfig
from conftest import TINY_HEAD

TEXTS = ["What is the capital of France?", "hi", "Explain how a transformer language model works in simple terms.",
         "Two plus two equals four.", "Write a short poem about the sea.", "", "The quick brown fox.", "forty-two"]


def _config(tiny_backbone_dir, **batching) -> ReplicaConfig:
    return ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32", max_new_tokens=12,
                         batching=BatchConfig(**batching))


@pytest.fixture(scope="module")
def replicas(tiny_backbone_dir) -> dict[str, Replica]:
    """The same model batched and unbatched."""
    return {"continuous": Replica(_config(tiny_backbone_dir)),
            "off": Replica(_config(tiny_backbone_dir, batching=False))}


def _arrays(messages: list[bytes]) -> np.ndarray:
    return np.stack([unpack(m).array() for m in messages])


async def test_batched_compress_and_embed_equal_unbatched(replicas):
    on, off = replicas["continuous"], replicas["off"]
    before = on.counters()
    calls = [([t], None) for t in TEXTS] + [(TEXTS[:3], "Summarize:"), (TEXTS[3:5], None)]
    batched = await asyncio.gather(*(on.compress(texts, dtype="float32", prompt=p) for texts, p in calls))
    after = on.counters()
    assert after["text_batches"] - before["text_batches"] < len(calls)  # they shared forward passes
    assert after["text_rows"] - before["text_rows"] == sum(len(texts) for texts, _ in calls)
    assert after["text_busy_ms"] >= before["text_busy_ms"]
    for (texts, prompt), got in zip(calls, batched):
        alone = await off.compress(texts, dtype="float32", prompt=prompt)
        np.testing.assert_allclose(_arrays(got), _arrays(alone), rtol=1e-4, atol=1e-5)
        assert [unpack(m).fingerprint for m in got] == [on.model.fingerprint] * len(texts)
    vectors = await asyncio.gather(*(on.embed_texts([t]) for t in TEXTS))
    np.testing.assert_allclose(np.concatenate([_arrays(v) for v in vectors]), on.model.encode(TEXTS),
                               rtol=1e-4, atol=1e-5)
    latents = [m for got in batched[:len(TEXTS)] for m in got]
    embedded = await asyncio.gather(*(on.embed([m]) for m in latents))
    np.testing.assert_allclose(np.concatenate([_arrays(e) for e in embedded]), on.model.encode(TEXTS),
                               rtol=1e-4, atol=1e-5)


async def test_a_bad_request_fails_alone_with_its_error(replicas, tiny):
    on = replicas["continuous"]
    [good] = await on.compress(["good"])
    foreign = dataclasses.replace(unpack(good), fingerprint="0" * 16, signature=None)
    other_backbone = dataclasses.replace(unpack(good), backbone_id="llama-64x2-000000000000", signature=None)
    results = await asyncio.gather(
        on.compress(["fine"]), on.compress(["ok", 3]), on.compress(["fine"], prompt="x " * 200),
        on.embed([b"not a message"]), on.embed([pack(foreign)]), on.embed([good]),
        on.decode([good]), on.decode([pack(other_backbone)]), on.decode([pack(LatentMessage.from_text("hi"))]),
        on.respond(["fine"]), on.respond([None]), return_exceptions=True)
    errors = [type(r) if isinstance(r, BaseException) else None for r in results]
    assert errors == [None, TypeError, ValueError, MalformedMessage, FingerprintMismatch, None,
                      None, HeadMismatchError, MalformedMessage, None, TypeError]
    assert "max_query_tokens" in str(results[2]) and isinstance(results[3], ProtocolError)
    off = replicas["off"]
    np.testing.assert_allclose(_arrays(results[0]), _arrays(await off.compress(["fine"])), rtol=1e-4, atol=1e-5)
    assert results[6] == await off.decode([good]) and results[9] == await off.respond(["fine"])


async def test_a_message_parsed_by_its_receiver_reads_like_its_bytes(replicas):
    on = replicas["continuous"]
    [good] = await on.compress(["good"], dtype="float32")
    parsed = unpack(good)
    assert await on.decode([parsed]) == await on.decode([good])
    np.testing.assert_array_equal(_arrays(await on.embed([parsed])), _arrays(await on.embed([good])))
    read = await asyncio.gather(*(on.compress([["Read this:", part]], dtype="float32") for part in (parsed, good)))
    np.testing.assert_allclose(_arrays(read[0]), _arrays(read[1]), rtol=1e-5, atol=1e-6)
    with pytest.raises(FingerprintMismatch):
        await on.embed([dataclasses.replace(parsed, fingerprint="0" * 16, signature=None)])


async def test_a_failing_joint_pass_is_rerun_request_by_request(replicas, monkeypatch):
    """The joint forward pass raises (a non-finite latent in one request): that request fails, the others not."""
    on = replicas["continuous"]
    compress = on.model.compress

    def poisoned(texts, **kwargs):
        if "poison" in texts:
            raise ValueError("poisoned text")
        return compress(texts, **kwargs)

    monkeypatch.setattr(on.model, "compress", poisoned)
    results = await asyncio.gather(on.compress(["a"]), on.compress(["poison"]), on.compress(["b", "c"]),
                                   return_exceptions=True)
    assert isinstance(results[1], ValueError) and str(results[1]) == "poisoned text"
    assert [len(r) for r in (results[0], results[2])] == [1, 2]


async def test_generations_joining_a_running_one_get_the_text_they_get_alone(replicas):
    on, off = replicas["continuous"], replicas["off"]
    latents = [m for t in TEXTS for m in await on.compress([t])]
    alone = [await off.decode([m], max_new_tokens=16) for m in latents]
    reference = on.model.decode(on.model.compress(TEXTS), max_new_tokens=16)
    assert [a[0] for a in alone] == reference

    async def late(i: int) -> list[str]:
        await asyncio.sleep(0.02 * i)  # arrives while earlier rows are generating
        return await on.decode([latents[i]], max_new_tokens=16 if i % 2 else 5 + i)

    steps = on.counters()["generation_steps"]
    joined = await asyncio.gather(*(late(i) for i in range(len(latents))))
    assert [j[0] for j in joined[1::2]] == reference[1::2]
    for i in range(0, len(latents), 2):  # a shorter budget: the first tokens of the same text
        assert joined[i] == await off.decode([latents[i]], max_new_tokens=5 + i)
    assert on._generator.peak_rows > 1 and on.counters()["generation_steps"] - steps < 16 * len(latents)
    answers = await asyncio.gather(*(on.respond([t], max_new_tokens=10) for t in TEXTS), on.respond(TEXTS, max_new_tokens=10))
    assert [a[0] for a in answers[:-1]] == answers[-1] == on.model.respond(TEXTS, max_new_tokens=10)


async def test_unbatched_generation_is_a_batch_of_one(replicas):
    off = replicas["off"]
    latents = [m for t in TEXTS[:4] for m in await off.compress([t])]
    got = await asyncio.gather(*(off.decode([m], max_new_tokens=10) for m in latents), off.respond(TEXTS[:3]))
    assert [g[0] for g in got[:-1]] == off.model.decode(off.model.compress(TEXTS[:4]), max_new_tokens=10)
    assert got[-1] == off.model.respond(TEXTS[:3], max_new_tokens=12) and off._generator.peak_rows == 1


def test_a_backbone_whose_cache_cannot_merge_generates_one_row_at_a_time():
    """Sliding-window layers (Mistral here) cannot take rows joining or leaving: rows run alone, as ``generate``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from latentcomm.engine.continuous import ContinuousGenerator
    from latentcomm.model.generation import generate

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4)).eval()
    engine = ContinuousGenerator(model, ThreadPoolExecutor(1), max_batch_size=8, eos_token_ids={0})
    assert not engine.merges and engine.max_batch_size == 1
    prompts = [model.get_input_embeddings()(torch.tensor([3, 5, 7, 9, 11][:n])).detach() for n in (5, 2, 3)]

    async def run() -> list[list[list[int]]]:
        return await asyncio.gather(*(engine.generate([p], max_new_tokens=8) for p in prompts))

    alone = [generate(model, p[None], torch.ones(1, len(p), dtype=torch.long), max_new_tokens=8, eos_token_ids={0},
                      pad_token_id=0)[0] for p in prompts]
    assert [got[0] for got in asyncio.run(run())] == alone and engine.peak_rows == 1


async def test_seeded_sampling_does_not_depend_on_the_batch(replicas):
    on = replicas["continuous"]
    settings = {"max_new_tokens": 10, "temperature": 1.0, "seed": 7}
    alone = await on.respond(TEXTS[:3], **settings)
    crowded = await asyncio.gather(on.respond(TEXTS[:3], **settings), on.respond(TEXTS[3:], **settings),
                                   on.decode([(await on.compress(["x"]))[0]]))
    assert crowded[0] == alone
    assert await on.respond(TEXTS[:3], **(settings | {"seed": 8})) != alone


async def test_batcher_keeps_order_and_isolates_errors():
    calls: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        if -1 in batch:
            raise ValueError("negative")
        return [x * 10 for x in batch]

    batcher = Batcher(run, ThreadPoolExecutor(1), BatchConfig(max_batch_size=4, max_wait_s=0.05))
    results = await asyncio.gather(*(batcher.submit(x) for x in [1, 2, -1, 3, 4, 5]), return_exceptions=True)
    assert results[:2] + results[3:] == [10, 20, 30, 40, 50] and isinstance(results[2], ValueError)
    assert max(len(c) for c in calls) == 4 and [1, 2, -1, 3] in calls  # one window of four, then re-run alone
    unbatched = Batcher(run, ThreadPoolExecutor(1), BatchConfig(batching=False))
    assert await asyncio.gather(*(unbatched.submit(x) for x in [7, 8])) == [70, 80]
    assert calls[-2:] == [[7], [8]]


async def test_callers_on_a_slower_hop_rejoin_one_pass_instead_of_alternating_cohorts():
    """Closed-loop callers whose next requests come back 0-21 ms after their replies (a proxy hop): without
    regrouping, the first to return starts a short pass and the rest queue behind it, so passes alternate between
    cohorts; with it, the next pass waits (up to a quarter of a 0.2 s pass) for the callers of the last one."""
    def run(batch: list[int]) -> list[int]:
        import time

        time.sleep(0.2)
        return batch

    async def loop(batcher: Batcher, agent: int) -> None:
        for _ in range(4):
            await batcher.submit(agent)
            await asyncio.sleep(agent * 0.003)

    passes = {}
    for share in (0.0, 0.25):
        batcher = Batcher(run, ThreadPoolExecutor(1), BatchConfig(max_batch_size=8, regroup_share=share))
        await asyncio.gather(*(loop(batcher, agent) for agent in range(8)))
        passes[share] = batcher.batches
        assert batcher.rows == 32
    assert passes[0.25] <= 5 < passes[0.0]  # 4 full passes, against cohorts of a few


def test_batch_config_is_validated():
    for bad in ({"max_batch_size": 0}, {"max_wait_s": -1.0}, {"regroup_share": 1.5}):
        with pytest.raises(ValueError):
            BatchConfig(**bad)


async def test_cancelled_generation_leaves_the_batch(replicas):
    on = replicas["continuous"]
    [latent] = await on.compress(["a long one"])
    steps = on.counters()["generation_steps"]
    task = asyncio.ensure_future(on.decode([latent], max_new_tokens=500))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await on.decode([latent], max_new_tokens=3)) == await replicas["off"].decode([latent], max_new_tokens=3)
    assert on._generator._rows == [] and on.counters()["generation_steps"] - steps < 250
