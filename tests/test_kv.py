"""KV hand-off on the tiny model: a received cache reads exactly like the text it came from, it travels as a
"kv" message, and what does not fit the backbone is refused."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from latentcomm.model import kv
from latentcomm.engine.batching import BatchConfig
from latentcomm.errors import LatentError
from latentcomm.model.generation import generate
from latentcomm.engine.messaging import kv_message, message_kv
from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.protocols import LatentMessage, MalformedMessage, pack, unpack
from latentcomm.engine.replica import Replica, ReplicaConfig
from latentcomm.testing import tiny_backbone
from conftest import TINY_HEAD

NOTE, ASK = "Mira Varga is a pilot who lives in Oslo.", "Where does Mira live?"


@pytest.fixture(scope="module")
def model() -> GenerativeEmbedder:
    return GenerativeEmbedder(tiny_backbone(), TINY_HEAD)


def turns(model: GenerativeEmbedder) -> tuple[torch.Tensor, torch.Tensor]:
    """The note as the conversation's first (closed) user turn, the question as the next one, answered."""
    first, _ = model.respond_prompts([NOTE], model.turn_template(opens=True, answers=False))
    second, _ = model.respond_prompts([ASK], model.turn_template(opens=False, answers=True))
    return first, second


def test_a_received_prefix_reads_like_the_turns_run_in_one_pass(model):
    bb = model.backbone
    prefix = kv.prefill(model, [NOTE])
    first, second = turns(model)
    assert prefix.length == first.shape[1] and tuple(prefix.tensor.shape[i] for i in (0, 1, 3)) == kv.kv_shape(model)
    whole = torch.cat([first, second], 1)
    ones = torch.ones(whole.shape[:2], dtype=torch.long)
    reference, _ = bb.hidden_states(whole, ones, torch.arange(whole.shape[1])[None])
    after, _ = bb.hidden_states(second, ones, torch.arange(first.shape[1], whole.shape[1])[None],
                                cache=prefix.to_cache(bb.device, bb.dtype))
    torch.testing.assert_close(after, reference[:, first.shape[1]:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(kv.prefill(model, NOTE).tensor, prefix.tensor)  # a string is one part
    relay = kv.prefill(model, [ASK, prefix])  # wherever it stands, the prefix comes first
    torch.testing.assert_close(relay.tensor[:, :, :prefix.length], prefix.tensor)
    closed, _ = model.respond_prompts([ASK], model.turn_template(opens=False, answers=False))
    assert relay.length == prefix.length + closed.shape[1] < prefix.length + second.shape[1]


def test_respond_after_a_prefix_is_generation_after_both_turns(model):
    prefix = kv.prefill(model, [NOTE])
    first, second = turns(model)
    whole = torch.cat([first, second], 1)
    [ids] = generate(model.backbone.model, whole, torch.ones(whole.shape[:2], dtype=torch.long),
                        max_new_tokens=6, eos_token_ids=model.stop_token_ids(),
                        pad_token_id=model.backbone.tokenizer.pad_token_id)
    assert kv.respond_after(model, [ASK, prefix], max_new_tokens=6) == model.detokenize([ids])[0]
    with pytest.raises(ValueError, match="use_cache"):
        generate(model.backbone.model, second, torch.ones(second.shape[:2], dtype=torch.long), max_new_tokens=1,
                    eos_token_ids={0}, pad_token_id=0, use_cache=False, prefix=prefix.to_cache("cpu", torch.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_kv_messages_round_trip_and_keep_their_backbone(model, dtype):
    prefix = kv.prefill(model, [NOTE])
    message = unpack(pack(kv_message(prefix, dtype=dtype, sender="a", recipient="b", metadata={"q": "1"})))
    assert message.kind == "kv" and message.shape == tuple(prefix.tensor.shape) and message.metadata["q"] == "1"
    back = message_kv(message)
    assert back.backbone_id == model.backbone.backbone_id
    tolerance = {"float32": 0, "float16": 1e-2, "int8": 5e-2}[dtype]
    assert float((back.tensor - prefix.tensor).abs().max()) <= tolerance * float(prefix.tensor.abs().max()) + 1e-6


def test_bad_prefixes_are_refused(model):
    prefix = kv.prefill(model, [NOTE])
    with pytest.raises(LatentError, match="specific to their backbone"):
        kv.take_prefix(model, [dataclasses.replace(prefix, backbone_id="other")])
    with pytest.raises(LatentError, match="does not fit"):
        kv.take_prefix(model, [kv.KVPrefix(prefix.tensor[:2], prefix.backbone_id)])
    with pytest.raises(LatentError, match="at most one"):
        kv.take_prefix(model, [prefix, ASK, prefix])
    with pytest.raises(LatentError, match=r"\(2 x layers"):
        kv.KVPrefix(torch.zeros(3, 2, 4, 8), "b")
    with pytest.raises(LatentError, match="NaN"):
        kv.KVPrefix(torch.full((2, 2, 4, 8), float("nan")), "b")
    with pytest.raises(MalformedMessage, match="4-D"):
        LatentMessage(kind="kv", shape=(4, 8), dtype="float32", payload=np.zeros(32, np.float32).tobytes())


async def test_a_replica_prefills_and_answers_after_a_kv_message(tiny_backbone_dir):
    replica = Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32",
                                    max_new_tokens=4))
    [data] = await replica.prefill([[NOTE]], dtype="float32", routing=[{"sender": "holder", "recipient": "r"}])
    message = unpack(data)
    assert message.kind == "kv" and message.sender == "holder"
    [relayed] = await replica.prefill([["Pass it on.", data]], dtype="float32")
    assert unpack(relayed).shape[2] > message.shape[2]
    [answer] = await replica.respond([[ASK, relayed]])
    assert isinstance(answer, str) and replica.counters()["kv_generations"] == 1
    with pytest.raises(MalformedMessage, match="expected a 'latent' message"):
        await replica.compress([[ASK, data]])


async def test_answers_after_prefixes_share_the_continuous_batch(tiny_backbone_dir, model):
    replica = Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32",
                                    max_new_tokens=6))
    [short] = await replica.prefill([[NOTE]], dtype="float32")
    [long] = await replica.prefill([["Pass it on.", short]], dtype="float32")
    inputs = [[ASK, long], [ASK], ["Who is Mira?", short]]
    answers = await replica.respond(inputs)
    steps = replica.counters()["generation_steps"]
    alone = [kv.respond_after(replica.model, [p if isinstance(p, str) else message_kv(unpack(p)) for p in item],
                              max_new_tokens=6) for item in inputs]
    assert answers == alone  # the same greedy answers as each row run alone, plain or after its own cache
    assert replica._generator.peak_rows == 3 and steps <= 6
    assert replica.counters()["kv_generations"] == 3
    unbatched = Replica(dataclasses.replace(replica.config, batching=BatchConfig(batching=False)))
    assert await unbatched.respond(inputs) == answers  # without batching: one row at a time


async def test_limits_bound_what_replicas_and_agents_unpack(tiny_backbone_dir):
    from latentcomm.actors.agent import Agent
    from latentcomm.protocols import LimitExceeded, Limits

    small = Limits(max_elements=1_000)
    replica = Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32",
                                    max_new_tokens=4, limits=small))
    [data] = await replica.prefill([[NOTE]], dtype="float32", routing=[{"sender": "a", "recipient": "r"}])
    assert unpack(data).array().size > 1_000  # what a replica packs is not bounded by what it reads
    with pytest.raises(LimitExceeded, match="max_elements"):
        await replica.respond([[ASK, data]])
    with pytest.raises(LimitExceeded, match="max_elements"):
        await Agent("r", replica, limits=small).receive(data)
    assert (await Agent("r", replica).receive(data)).kind == "kv"
