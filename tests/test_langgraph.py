"""The LangGraph integration on real graphs and the tiny model: the facts relay in every mode (the same answers as
the main job's chain), a checkpointed channel, routing on a message's embedding, and hostile parts in the channel."""
from __future__ import annotations

import asyncio
from typing import Annotated, Any, TypedDict

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from latentcomm.actors.agent import FORWARDED_KEY, Agent, keep_latent
from latentcomm.actors.job.config import JobConfig
from latentcomm.actors.job.modes import MODES
from latentcomm.actors.job.run import Held, answer, build_chain
from latentcomm.actors.tasks import FACTS
from latentcomm.actors.trace import Trace
from latentcomm.engine.messaging import message_embedding
from latentcomm.engine.replica import ReplicaConfig
from latentcomm.integrations.langgraph import agent_node, messages, relay_graph, route_by_embedding
from latentcomm.integrations.local import LocalPool
from latentcomm.protocols import Limits, ProtocolError, unpack
from hostile import KEY, hostile

MODEL_WORK = {"compress", "prefill", "embed", "embed_texts", "decode", "respond"}
CONFIG = JobConfig(wire_dtype="float32", replica=ReplicaConfig(max_new_tokens=4), modes=tuple(MODES))
KINDS = {"latent": ["latent"] * 2, "latent-decode": ["latent"] * 2, "kv": ["kv"] * 2, "text": ["text"] * 2,
         "auto": ["kv"] * 2, "latent-forward": ["latent"] * 3, "refine": ["latent"] * 3, "optimised": ["latent"] * 3}


def facts_prompt(i: int, state: dict[str, Any], received: Any) -> Any:
    item = state["task"]
    return FACTS.first_input(item) if i == 0 else FACTS.later_input(item, received, last=i == 2)


@pytest.mark.parametrize("mode", list(MODES))
async def test_the_facts_relay_as_a_graph_answers_as_the_main_jobs_chain(replicas, mode):
    [item] = FACTS.load(1, 0)
    pool, trace = LocalPool(replicas["same"]), Trace()
    chain = build_chain(MODES[mode], 3, FACTS, pool, trace, CONFIG, KEY)
    graph = relay_graph(chain, facts_prompt, kind=MODES[mode].kind, generate=MODES[mode].generate,
                        forward=MODES[mode].relay == "forward")
    state = await graph.ainvoke({"task": item, "messages": [], "conversation_id": f"{mode}:{item.id}",
                                 "metadata": {"mode": mode, "question": item.id}})
    assert [h.kind for h in trace.hops] == KINDS[mode] == [unpack(d, key=KEY).kind for d in state["messages"]]
    assert all(h.metadata == {"mode": mode, "question": item.id} for h in trace.hops if FORWARDED_KEY not in h.metadata)
    assert [h.metadata.get(FORWARDED_KEY) for h in trace.hops] == (
        [None, "holder", None] if MODES[mode].relay == "forward" else [None, None])
    job = await answer(item, MODES[mode], build_chain(MODES[mode], 3, FACTS, pool, Trace(), CONFIG, KEY), FACTS,
                       Held())
    assert state["answer"] == job.final and state["answer_s"] > 0


async def test_a_checkpointed_graph_keeps_the_messages_as_bytes(replicas):
    pool = LocalPool(replicas["same"])
    alice, bob = Agent("alice", pool, key=KEY), Agent("bob", pool, key=KEY).on("latent", keep_latent)
    graph = relay_graph([alice, bob], lambda i, state, got: state["task"] if i == 0 else ["Sum up:", got],
                        kind="latent", checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    state = await graph.ainvoke({"task": "Mira lives in Oslo.", "messages": []}, config)
    stored = (await graph.aget_state(config)).values
    assert stored["messages"] == state["messages"] and isinstance(stored["messages"][0], bytes)
    assert unpack(stored["messages"][0], key=KEY).kind == "latent" and isinstance(stored["answer"], str)


class Routed(TypedDict, total=False):
    task: str
    messages: Annotated[list[bytes], messages]
    answer: str
    answer_s: float


async def test_a_conditional_edge_routes_on_the_messages_embedding(replicas):
    replica = replicas["same"]
    pool, trace = LocalPool(replica), Trace()
    writer = Agent("writer", pool, key=KEY)
    experts = {name: Agent(name, pool, key=KEY, trace=trace).on("latent", keep_latent) for name in ("cook", "gardener")}
    routes = {"cook": "recipes, ovens and spices", "gardener": "soil, seeds and pruning roses"}
    graph = StateGraph(Routed)
    graph.add_node("writer", agent_node(writer, kind="latent", prompt=lambda state, _: state["task"]))
    for name, expert in experts.items():
        graph.add_node(name, agent_node(expert, kind=None, prompt=lambda state, got: ["Answer:", got]))
        graph.add_edge(name, END)
    graph.add_edge(START, "writer")
    graph.add_conditional_edges("writer", route_by_embedding(writer, routes), list(routes))
    state = await graph.compile().ainvoke({"task": "How long do I bake bread?", "messages": []})
    # the route nearest to the latent's embedding, computed here from the replica directly
    latent = unpack(state["messages"][0], key=KEY)
    [vector] = [message_embedding(unpack(d)) for d in await replica.embed([latent])]
    table = [message_embedding(unpack(d)) for d in await replica.embed_texts(list(routes.values()))]
    cosines = [float(v @ vector / np.linalg.norm(v) / np.linalg.norm(vector)) for v in table]
    expected = list(routes)[int(np.argmax(cosines))]
    assert [h.receiver for h in trace.hops] == [expected] and isinstance(state["answer"], str)


def test_auto_nodes_need_their_receiver():
    with pytest.raises(ValueError, match="to="):
        agent_node(Agent("a", LocalPool.__new__(LocalPool)), prompt=lambda s, r: "x", kind="auto")


# ---- hostile parts in the channel --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_parts(replicas) -> list[tuple[str, bytes, type[ProtocolError]]]:
    to_bob = [{"recipient": "bob", "sender": "mallory"}]

    async def make() -> list[bytes]:
        return [*(await replicas["same"].compress(["a note"], dtype="float32", routing=to_bob)),
                *(await replicas["head"].compress(["a note"], dtype="float32", routing=to_bob)),
                *(await replicas["backbone"].prefill(["a note"], dtype="float32", routing=to_bob)),
                *(await replicas["backbone"].compress(["a note"], dtype="float32", routing=to_bob))]

    return hostile(*asyncio.run(make()), max_payload_bytes=100_000)


def test_hostile_parts_in_the_channel_end_in_the_protocols_error_with_nothing_run(replicas, hostile_parts):
    """Each hostile message, given to a graph as input and returned by a compromised node, ends in its protocol
    error before the reading agent's model does anything."""
    assert len(hostile_parts) >= 20
    failures = []
    for name, data, error in hostile_parts:
        for injected in (True, False):
            pool, trace = LocalPool(replicas["same"]), Trace()
            bob = Agent("bob", pool, key=KEY, trace=trace, limits=Limits(max_payload_bytes=100_000))
            graph = StateGraph(Routed)
            graph.add_node("bob", agent_node(bob, kind=None, prompt=lambda state, got: ["Answer:", got]))
            if injected:
                graph.add_node("mallory", lambda state, data=data: {"messages": [data]})
                graph.add_edge(START, "mallory")
                graph.add_edge("mallory", "bob")
            else:
                graph.add_edge(START, "bob")
            graph.add_edge("bob", END)
            try:
                asyncio.run(graph.compile().ainvoke({"messages": [] if injected else [data]}))
            except ProtocolError as err:
                if type(err) is not error:
                    failures.append(f"{name}: {type(err).__name__} ({err}), expected {error.__name__}")
            else:
                failures.append(f"{name}: accepted")
            if set(pool.method_calls) - {"info"} or trace.hops:
                failures.append(f"{name}: model work {dict(pool.method_calls)}")
    assert not failures, failures


def test_the_channel_refuses_what_is_not_a_message_before_storing_it():
    from latentcomm.protocols import LimitExceeded, MalformedMessage
    from latentcomm.integrations.langgraph import channel

    add = channel(Limits(max_payload_bytes=10, max_header_bytes=100))
    with pytest.raises(MalformedMessage, match="bytes"):
        messages([], ["a string"])
    with pytest.raises(MalformedMessage, match="bytes"):
        messages([], [bytearray(b"\x89LCM\x01\x00")])
    with pytest.raises(LimitExceeded):
        add([], b"\x89LCM\x01" + b"\x00" * 400)
    assert messages([b"\x89LCM\x01\x00"], b"\x89LCM\x01\x00") == [b"\x89LCM\x01\x00"] * 2
