"""Replica actors, pools and agents on the tiny model: every kind, dedup, order, a killed replica, signing."""
from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest
import ray
import torch

from latentcomm.actors.agent import SEQ_KEY, Agent, Incoming, decode_latent, embed_latent, keep_latent, \
    read_embedding, read_text
from latentcomm.actors.agent_host import start_agent
from latentcomm.actors.trace import Trace
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.protocols import LatentMessage, SignatureError, pack, wire
from latentcomm.engine.replica import Replica, ReplicaConfig
from conftest import TINY_HEAD

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def replica_config(tiny_backbone_dir) -> ReplicaConfig:
    return ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32", num_threads=1,
                         max_new_tokens=8)


@pytest.fixture(scope="module")
def pool(ray_local, replica_config):
    pool = ReplicaPool(replica_config, PoolConfig(num_replicas=2, num_cpus=0, max_in_flight=2), name="tiny")
    yield pool
    pool.shutdown()


@pytest.fixture()
def pair(pool):
    trace = Trace()
    return Agent("solver", pool, trace=trace, wire_dtype="float32"), Agent("critic", pool, trace=trace, wire_dtype="float32")


@pytest.mark.slow
async def test_replicas_load_one_head_in_separate_processes(pool, tiny_model):
    infos = await pool.ready()
    assert len({i["pid"] for i in infos}) == 2
    assert {i["fingerprint"] for i in infos} == {tiny_model.fingerprint}


@pytest.mark.slow
async def test_latent_is_decoded_by_the_receiver(pair, tiny_model):
    solver, critic = pair
    said = await solver.send(critic, QUESTION, conversation_id="c1")
    assert said == tiny_model.decode(tiny_model.compress(QUESTION), max_new_tokens=8)[0]
    [hop] = solver.trace.hops
    assert (hop.sender, hop.receiver, hop.kind, hop.text) == ("solver", "critic", "latent", said)
    assert hop.bytes > TINY_HEAD.num_compression * 64 * 4 and hop.latency_s >= hop.handle_s > 0


@pytest.mark.slow
async def test_embedding_and_text_arrive(pair, tiny_model):
    solver, critic = pair
    vector = await solver.send(critic, QUESTION, kind="embedding")
    np.testing.assert_allclose(vector, tiny_model.encode(QUESTION), rtol=1e-4, atol=1e-5)
    assert await solver.send(critic, "plain words", kind="text") == "plain words"
    generated = await solver.send(critic, QUESTION, kind="text", generate=True)
    assert generated == tiny_model.respond(QUESTION, max_new_tokens=8)[0]
    assert [h.kind for h in solver.trace.hops] == ["embedding", "text", "text"]


@pytest.mark.slow
async def test_embed_handler_matches_local_embedding(pair, tiny_model):
    solver, critic = pair
    critic.on("latent", embed_latent)
    vector = await solver.send(critic, QUESTION)
    np.testing.assert_allclose(vector, tiny_model.encode(QUESTION), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sync_api_outside_an_event_loop(pair):
    solver, critic = pair
    assert solver.send_sync(critic, "sync hello", kind="text") == "sync hello"
    assert isinstance(solver.send_sync(critic, QUESTION), str)
    kept = solver.send_sync(critic, QUESTION, kind="kv")  # kept by default: a KV prefix needs the receiver's turn
    assert kept.kind == "kv" and kept.message.shape[2] > 1


@pytest.mark.slow
async def test_resent_message_id_runs_the_handler_once(pair):
    solver, critic = pair
    calls = []

    async def count(agent, incoming):
        calls.append(incoming.message.message_id)
        await asyncio.sleep(0.05)
        return incoming.message.text().upper()

    critic.on("text", count)
    data = pack(LatentMessage.from_text("once", sender="solver", recipient="critic"))
    results = await asyncio.gather(critic.receive(data), critic.receive(data))
    results.append(await critic.receive(data))
    assert results == ["ONCE"] * 3
    assert len(calls) == 1 and critic.duplicates == 2 and len(critic.trace) == 1


@pytest.mark.slow
async def test_each_conversation_is_handled_in_send_order(pair):
    solver, critic = pair
    seen = []

    async def record(agent, incoming):
        seen.append((incoming.message.conversation_id, incoming.message.metadata[SEQ_KEY]))
        return None

    critic.on("text", record)

    def message(conv: str, seq: int) -> bytes:
        return pack(LatentMessage.from_text(f"{conv}{seq}", sender="solver", recipient="critic",
                                            conversation_id=conv, metadata={SEQ_KEY: seq}))

    arrivals = [message("a", i) for i in reversed(range(5))] + [message("b", 1), message("b", 0)]
    await asyncio.gather(*(critic.receive(d) for d in arrivals))
    assert [s for c, s in seen if c == "a"] == [0, 1, 2, 3, 4]
    assert [s for c, s in seen if c == "b"] == [0, 1]


@pytest.mark.slow
async def test_sends_of_one_conversation_keep_their_order(pair):
    solver, critic = pair
    seen = []

    async def record(agent, incoming):
        seen.append(incoming.message.text())
        return None

    critic.on("text", record)
    texts = [f"step {i}" for i in range(6)]
    await asyncio.gather(*(solver.send(critic, t, kind="text", conversation_id="ordered") for t in texts))
    assert seen == texts


@pytest.mark.slow
async def test_pool_bounds_requests_in_flight(pool):
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, sum(pool.in_flight))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(pool.call("compress", [f"question {i}"]) for i in range(6)))
    watcher.cancel()
    assert len(results) == 6 and 1 <= peak <= pool.config.max_in_flight
    assert min(pool.calls) > 0  # both replicas got work


@pytest.mark.slow
async def test_killed_replica_loses_no_message(ray_local, replica_config):
    pool = ReplicaPool(replica_config, PoolConfig(num_replicas=1, num_cpus=0, max_restarts=2, retry_backoff_s=0.1),
                       name="fragile")
    try:
        [before] = await pool.ready()
        trace = Trace()
        solver, critic = Agent("solver", pool, trace=trace), Agent("critic", pool, trace=trace, max_new_tokens=64)
        texts = [f"message number {i}" for i in range(4)]
        sends = [asyncio.create_task(solver.send(critic, t, conversation_id="k")) for t in texts]
        while sum(pool.calls) < 2 or not any(pool.in_flight):  # a call is on the replica: kill it there
            await asyncio.sleep(0.001)
        ray_local.kill(pool.actors[0], no_restart=False)
        results = await asyncio.gather(*sends)
        [after] = await pool.ready()
    finally:
        pool.shutdown()
    assert after["pid"] != before["pid"] and pool.retries >= 1
    assert all(isinstance(r, str) for r in results)
    assert [h.message_id for h in trace.hops] == list(dict.fromkeys(h.message_id for h in trace.hops))
    assert len(trace.hops) == len(texts) and [h.conversation_id for h in trace.hops] == ["k"] * 4


@pytest.mark.slow
async def test_forged_or_unsigned_messages_are_rejected_with_a_key(pool):
    key = b"s" * 32
    solver, critic = Agent("solver", pool, key=key), Agent("critic", pool, key=key)
    assert await solver.send(critic, "signed", kind="text") == "signed"
    forger = Agent("solver", pool, key=b"x" * 32)
    with pytest.raises(SignatureError):
        await forger.send(critic, "forged", kind="text")
    with pytest.raises(SignatureError):
        await critic.receive(pack(LatentMessage.from_text("unsigned", sender="solver", recipient="critic")))
    tampered = bytearray(pack(LatentMessage.from_text("pay 10", sender="solver", recipient="critic"), key=key))
    tampered[-40] ^= 1
    with pytest.raises(SignatureError):
        await critic.receive(bytes(tampered))
    assert critic.rejected == 3 and len(critic.trace) == 1


@pytest.mark.slow
def test_trace_exports_jsonl_and_a_table(pair, tmp_path):
    solver, critic = pair
    solver.send_sync(critic, "for the record", kind="text", conversation_id="t")
    path = solver.trace.to_jsonl(tmp_path / "trace.jsonl")
    again = Trace.from_jsonl(path)
    assert again.hops == solver.trace.hops
    table = again.table()
    assert "for the record" in table and "solver" in table and "critic" in table
    assert again.summary()["solver->critic text"]["count"] == 1


async def test_send_refuses_unknown_kinds_and_generation_outside_text():
    alice, bob = Agent("alice", pool=None), Agent("bob", pool=None)  # refused before any model work
    with pytest.raises(ValueError, match="kind='text'"):
        await alice.send(bob, QUESTION, kind="latent", generate=True)
    with pytest.raises(ValueError, match="unknown kind 'vector'"):
        await alice.send(bob, QUESTION, kind="vector")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one string"):
        await alice.send(bob, [QUESTION], kind="text")
    assert await alice.send(bob, "as is", kind="text") == "as is" and len(bob.trace) == 1


def test_bad_pool_and_replica_configs_are_refused():
    with pytest.raises(ValueError, match="num_replicas"):
        PoolConfig(num_replicas=0)
    with pytest.raises(ValueError, match="strategy"):
        PoolConfig(strategy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        ReplicaConfig(weights_dtype="float33")  # type: ignore[arg-type]
    assert torch.float32 is getattr(torch, ReplicaConfig(weights_dtype="float32").weights_dtype)


@pytest.mark.slow
async def test_agents_in_their_own_processes_exchange_bytes(pool, tiny_model):
    critic, answerer = start_agent("critic", pool), start_agent("answerer", pool)
    solver = Agent("solver", pool, wire_dtype="float32")
    draft = await solver.send(critic, QUESTION, conversation_id="r")
    assert draft == tiny_model.decode(tiny_model.compress(QUESTION), max_new_tokens=8)[0]
    assert await critic.send(answerer, "relayed", kind="text", conversation_id="r") == "relayed"
    [hop] = await critic.hops()
    assert (hop.sender, hop.receiver, hop.kind, hop.text) == ("solver", "critic", "latent", draft)
    vector = await critic.send(answerer, QUESTION, kind="embedding", conversation_id="r", metadata={"question": "q1"})
    assert vector.shape == tiny_model.encode(QUESTION).shape
    embedded = (await answerer.hops())[-1]
    assert (embedded.sender, embedded.kind, embedded.metadata) == ("critic", "embedding", {"question": "q1"})
    assert (await answerer.counters())["handled"] == 2
    cache = await critic.send(answerer, QUESTION, kind="kv", conversation_id="r")  # a KV hand-off between hosts
    assert cache.kind == "kv" and cache.message.sender == "critic" and (await answerer.hops())[-1].kind == "kv"


@pytest.mark.slow
async def test_killed_agent_process_gets_the_message_again(ray_local, pool):
    critic = start_agent("critic", pool, max_new_tokens=300)  # a long decode: the kill lands while it runs
    solver = Agent("solver", pool)
    assert await solver.send(critic, "warm up", kind="text", conversation_id="k") == "warm up"
    pid_before = await _pid(critic)
    calls = sum(pool.calls)
    sending = asyncio.create_task(solver.send(critic, QUESTION, conversation_id="k"))
    while sum(pool.calls) == calls or any(pool.in_flight):  # wait until the solver's compress is done
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)
    ray_local.kill(critic.handle, no_restart=False)
    said = await sending
    assert isinstance(said, str) and await _pid(critic) != pid_before
    hops = await critic.hops()
    assert [h.kind for h in hops] == ["latent"]  # the restarted host handled the re-sent latent once


async def _pid(remote) -> int:
    """The host's process id, waiting out a restart."""
    for _ in range(100):
        try:
            return await remote.handle.__ray_call__.remote(lambda self: __import__("os").getpid())
        except ray.exceptions.ActorUnavailableError:
            await asyncio.sleep(0.2)
    raise TimeoutError("the agent host did not come back")


class InProcess:
    """One in-process replica behind ``ReplicaPool.call`` (no Ray, so that every parse can be counted)."""

    name = "in-process"

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def call(self, method: str, *args, **kwargs):
        return await getattr(self.replica, method)(*args, **kwargs)


def count_parses(monkeypatch) -> list[str]:
    """Count ``protocols.unpack`` calls in every module that imported it; the list grows by one per call."""
    calls: list[str] = []
    unpack = wire.unpack

    def counted(*args, **kwargs):
        calls.append(sys._getframe(1).f_code.co_name)
        return unpack(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "unpack", None) is unpack:
            monkeypatch.setattr(module, "unpack", counted)
    return calls


HOPS = {"latent": ("latent", False, keep_latent), "latent-decode": ("latent", False, decode_latent),
        "kv": ("kv", False, keep_latent), "text": ("text", True, read_text),
        "embedding": ("embedding", False, read_embedding), "latent-embed": ("latent", False, embed_latent)}
"""The main job's modes and the other handlers: the kind sent, whether the sender generates, the receiver's handler."""


@pytest.mark.parametrize("mode", HOPS)
async def test_one_parse_per_hop(replica_config, monkeypatch, mode):
    """A signed hop, until the receiver's model has read it: a kept latent or KV cache in the receiver's own turn.
    The receiver parses the bytes once, and its replica reads that parse."""
    kind, generate, handler = HOPS[mode]
    pool, key = InProcess(Replica(replica_config)), b"k" * 32
    sender, receiver = Agent("sender", pool, key=key), Agent("receiver", pool, key=key).on(kind, handler)
    parses = count_parses(monkeypatch)
    received = await sender.send(receiver, QUESTION, kind=kind, generate=generate)
    if isinstance(received, Incoming):
        assert isinstance(await receiver.respond(["Answer this:", received]), str)
    replies = ["embed"] if handler is embed_latent else []  # the replica's embedding: a new message, parsed once
    assert parses == ["receive", *replies], f"{mode}: {len(parses)} parses ({parses})"
