"""Links that choose their message kind (``kind="auto"``) on the tiny model, in process: the rule, the exchange of
descriptions, every choice, a refusing receiver and its one fallback, the main job's auto mode, the HTTP client."""
from __future__ import annotations

import http.server
import json
import threading

import pytest

from latentcomm.actors.agent import FALLBACK_KEY, LINK_KEY, Agent, Incoming, keep_latent
from latentcomm.actors.job.config import JobConfig
from latentcomm.actors.job.modes import MODES
from latentcomm.actors.job.run import Held, answer, build_chain
from latentcomm.actors.tasks import FACTS
from latentcomm.actors.trace import Trace
from latentcomm.engine.replica import Replica, ReplicaConfig
from latentcomm.http.client import Client
from latentcomm.integrations.local import LocalPool
from latentcomm.protocols import (Description, FingerprintMismatch, LatentMessage, Limits, MalformedMessage,
                                  UnsupportedKind, candidates, choose, fits, unpack)

NOTE = "Note: Mira Lund lives in Oslo and keeps bees.\n\nQuestion: Where does Mira live?"


def agents(replicas: dict[str, Replica], receiver: str, **options) -> tuple[Agent, Agent, Trace]:
    trace = Trace()
    alice = Agent("alice", LocalPool(replicas["same"]), trace=trace, wire_dtype="float32", **options)
    bob = Agent("bob", LocalPool(replicas[receiver]), trace=trace, wire_dtype="float32", **options)
    return alice, bob.on("latent", keep_latent), trace


async def kv_bytes(replicas: dict[str, Replica], routing: dict) -> int:
    """The packed size of a KV cache of NOTE with this routing (what auto measures)."""
    [data] = await replicas["same"].prefill([[NOTE]], dtype="float32", routing=[routing])
    return len(data)


# ---- the rule ---------------------------------------------------------------------------------------------------
A = Description("a", "backbone-1", "head-1")


def test_candidates_follow_backbone_head_and_what_the_receiver_takes():
    def kinds(receiver: Description, **kw) -> list[str]:
        return [c.kind for c in candidates(A, receiver, **kw)]

    assert kinds(Description("b", "backbone-1", "head-1")) == ["kv", "latent", "text"]
    assert kinds(Description("b", "backbone-1", "head-2")) == ["kv", "text"]
    assert kinds(Description("b", "backbone-2", "head-1")) == ["text"]
    assert kinds(Description("b", "backbone-1", "head-1", kinds=("latent", "text"))) == ["latent", "text"]
    assert kinds(Description("b", "backbone-1", "head-1"), makes=("kv", "text")) == ["kv", "text"]
    choice = choose(A, Description("b", "backbone-1", "head-1"), kv_bytes=5000, kv_elements=2500, byte_budget=4000)
    assert choice.kind == "latent" and "5000 bytes over the byte budget 4000" in choice.why
    assert choose(A, Description("b", "backbone-1", "head-2"), kv_bytes=5000, kv_elements=2500).kind == "kv"
    assert choose(A, Description("b", "backbone-1", "head-1")).kind == "latent"  # a cache of unknown size is not sent
    assert "another backbone" in choose(A, Description("b", "backbone-2", "head-1")).why
    small = Description.of("b", "backbone-1", "head-2", limits=Limits(max_payload_bytes=1000, max_elements=100))
    assert fits(small, 900, 450) == "450 values over the receiver's max_elements 100"
    assert "max_payload_bytes 1000" in fits(small, 2000, 10)
    with pytest.raises(UnsupportedKind, match="takes none of"):
        choose(A, Description("b", "backbone-1", "head-1", kinds=("embedding",)))


def test_a_description_read_from_another_side_is_checked_field_by_field():
    fields = A.to_dict()
    assert Description.from_dict(fields) == A
    assert Description.from_dict(fields | {"max_elements": 16777216.0}) == A  # JSON numbers may come as floats
    for bad in ({"kinds": ["latent", "telepathy"]}, {"kinds": "latent"}, {"max_payload_bytes": 0},
                {"max_elements": 1.5}, {"fingerprint": 3}, {"max_payload_bytes": True}):
        with pytest.raises(MalformedMessage):
            Description.from_dict(fields | bad)
    with pytest.raises(MalformedMessage, match="missing backbone_id"):
        Description.from_dict({k: v for k, v in fields.items() if k != "backbone_id"})
    with pytest.raises(MalformedMessage):
        Description.from_dict(["not", "a", "mapping"])


def test_a_receiver_refuses_what_its_description_cannot_read():
    latent = LatentMessage.from_array([[0.5, 1.0]], fingerprint="head-2", backbone_id="backbone-1")
    kv = LatentMessage.from_array([[[[1.0]]]], backbone_id="backbone-2")
    assert isinstance(A.refusal(latent), FingerprintMismatch) and isinstance(A.refusal(kv), FingerprintMismatch)
    assert A.refusal(LatentMessage.from_text("hi")) is None
    assert isinstance(Description("a", "backbone-1", "head-1", kinds=("text",)).refusal(latent), UnsupportedKind)


# ---- agents on the tiny model ------------------------------------------------------------------------------------
async def test_same_backbone_and_head_sends_kv_or_a_latent_by_budget(replicas):
    alice, bob, trace = agents(replicas, "same")
    received = await alice.send(bob, NOTE, kind="auto")
    assert isinstance(received, Incoming) and received.kind == "kv"
    size = trace.hops[0].bytes
    received = await alice.send(bob, NOTE, kind="auto", byte_budget=size - 1)
    assert received.kind == "latent"
    kv_hop, latent_hop = trace.hops
    assert kv_hop.choice.startswith("same backbone") and kv_hop.fallback == ""
    assert f"kv of {size} bytes over the byte budget {size - 1}" in latent_hop.choice and "same head" in latent_hop.choice
    assert LINK_KEY not in latent_hop.metadata and FALLBACK_KEY not in latent_hop.metadata
    routing = {"sender": "alice", "recipient": "bob", "conversation_id": "default",
               "metadata": {"seq": 1, "acked": 1, "started_ns": 10**18, LINK_KEY: kv_hop.choice}}
    assert abs(await kv_bytes(replicas, routing) - size) < 64  # the cache alice measured is the one she sends
    assert await bob.respond(["Where does Mira live?", received]) is not None


async def test_another_head_sends_kv_or_text(replicas):
    alice, bob, trace = agents(replicas, "head")
    assert (await alice.send(bob, NOTE, kind="auto")).kind == "kv"
    text = await alice.send(bob, NOTE, kind="auto", byte_budget=100)
    assert isinstance(text, str)
    hop = trace.hops[-1]
    assert hop.kind == "text" and hop.text == text and "another head" in hop.choice and "kv of" in hop.choice


async def test_another_backbone_sends_text(replicas):
    alice, bob, trace = agents(replicas, "backbone")
    assert isinstance(await alice.send(bob, NOTE, kind="auto"), str)
    [hop] = trace.hops
    assert hop.kind == "text" and hop.choice.startswith("another backbone")


async def test_descriptions_are_exchanged_once_per_link(replicas):
    alice, bob, _ = agents(replicas, "same")
    for budget in (None, 1, None):
        await alice.send(bob, NOTE, kind="auto", byte_budget=budget)
    assert alice.pool.method_calls["info"] == 1 and bob.pool.method_calls["info"] == 1
    assert bob._links["alice"] == await alice.describe()  # bob learnt alice's description from her asking
    assert alice.pool.method_calls["prefill"] == 3 and alice.pool.method_calls["compress"] == 1


async def test_a_refusing_receiver_gets_one_fallback_recorded(replicas):
    """alice holds bob's description from before bob came back with another head: her latent is refused with the
    protocol's error, she asks bob again and sends text (the kv over the budget), once; bob never read the latent."""
    alice, bob_before, trace = agents(replicas, "same")
    await alice.link(bob_before)
    bob = Agent("bob", LocalPool(replicas["head"]), trace=trace).on("latent", keep_latent)
    text = await alice.send(bob, NOTE, kind="auto", byte_budget=100)
    assert isinstance(text, str) and bob.rejected == 1 and bob.pool.method_calls["respond"] == 0
    [hop] = trace.hops
    assert hop.kind == "text" and hop.fallback == "latent refused: FingerprintMismatch"
    assert "another head" in hop.choice and alice.pool.method_calls["compress"] == 1
    assert alice._links["bob"] == await bob.describe()
    # a fixed kind is the caller's choice: the same latent is not checked (bob's replica would read it)
    assert (await alice.send(bob, NOTE, kind="latent")).kind == "latent" and bob.rejected == 1


async def test_a_receiver_that_refuses_again_fails_the_send(replicas):
    alice, bob, _ = agents(replicas, "same")

    class Stale:
        """Describes bob's head but is a receiver of another head: every description it gives is wrong."""

        name = "bob"

        async def describe(self, peer=None):
            return await bob.describe(peer)

        async def receive(self, data: bytes):
            other = Agent("bob", LocalPool(replicas["backbone"]))
            return await other.receive(data)

    with pytest.raises(FingerprintMismatch):
        await alice.send(Stale(), NOTE, kind="auto")


async def test_auto_after_a_kv_cache_sends_kv_or_text_never_a_latent(replicas):
    alice, bob, trace = agents(replicas, "same")
    carol = Agent("carol", LocalPool(replicas["same"]), trace=trace).on("latent", keep_latent)
    cache = await alice.send(bob, NOTE, kind="auto")
    assert cache.kind == "kv"
    assert (await bob.send(carol, ["Pass it on:", cache], kind="auto")).kind == "kv"
    assert isinstance(await bob.send(carol, ["Pass it on:", cache], kind="auto", byte_budget=10), str)
    assert "no kv that fits and no latent" in trace.hops[-1].choice


async def test_send_checks_its_auto_arguments(replicas):
    alice, bob, _ = agents(replicas, "same")
    for kwargs in ({"kind": "latent", "byte_budget": 10}, {"kind": "auto", "byte_budget": 0},
                   {"kind": "auto", "generate": True}, {"kind": "telepathy"}):
        with pytest.raises(ValueError):
            await alice.send(bob, NOTE, **kwargs)

    class Silent:
        name = "bob"

        async def receive(self, data: bytes):
            return await bob.receive(data)

    with pytest.raises(TypeError, match="describe"):
        await alice.send(Silent(), NOTE, kind="auto")


async def test_the_main_jobs_auto_mode_picks_per_hop(replicas):
    [item] = FACTS.load(1, 0)
    pool = LocalPool(replicas["same"])
    trace = Trace()
    config = JobConfig(wire_dtype="float32", replica=ReplicaConfig(max_new_tokens=4))
    held = Held()
    chain = build_chain(MODES["auto"], 3, FACTS, pool, trace, config, None)
    result = await answer(item, MODES["auto"], chain, FACTS, held)
    assert result.mode == "auto" and [h.kind for h in trace.hops] == ["kv", "kv"] and len(held.kv) == 2
    small = JobConfig(wire_dtype="float32", replica=ReplicaConfig(max_new_tokens=4,
                                                                  limits=Limits(max_payload_bytes=20_000)))
    trace, held = Trace(), Held()
    chain = build_chain(MODES["auto"], 3, FACTS, pool, trace, small, None)
    await answer(item, MODES["auto"], chain, FACTS, held)
    assert [h.kind for h in trace.hops] == ["latent", "latent"] and len(held.latents) == 2
    assert all("max_payload_bytes 20000" in h.choice for h in trace.hops)
    assert MODES["auto"].handled_kind == "latent" and not MODES["auto"].default


# ---- the HTTP client --------------------------------------------------------------------------------------------
class InfoHandler(http.server.BaseHTTPRequestHandler):
    info: dict = {}
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        body = json.dumps(self.info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_the_http_client_makes_the_same_choice_from_get_info():
    InfoHandler.info = {"pid": 1, "backbone_id": "backbone-1", "fingerprint": "head-1", "kinds": ["latent", "text"],
                        "max_payload_bytes": 1000, "max_elements": 500}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), InfoHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}") as client:
            assert client.choose(A).kind == "latent"
            assert client.choose(Description("x", "backbone-1", "head-9")).kind == "text"
            assert client.describe().kinds == ("latent", "text") and InfoHandler.calls == 1  # asked once
            InfoHandler.info = {"backbone_id": "b"}
            assert client.describe().fingerprint == "head-1"
            with pytest.raises(MalformedMessage, match="missing"):
                client.describe(refresh=True)
    finally:
        server.shutdown()
        server.server_close()


async def test_a_latent_message_made_for_auto_carries_why(replicas):
    alice, bob, _ = agents(replicas, "same")
    seen = []

    class Spy:
        name = "bob"

        async def describe(self, peer=None):
            return await bob.describe(peer)

        async def receive(self, data: bytes):
            seen.append(unpack(data))
            return await bob.receive(data)

    await alice.send(Spy(), NOTE, kind="auto", byte_budget=10)
    [message] = seen
    assert message.kind == "latent" and message.metadata[LINK_KEY].startswith("kv of")
