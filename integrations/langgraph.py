"""LangGraph nodes and a state channel for latentcomm (extra ``latentcomm[langgraph]``): a graph whose nodes are
latentcomm agents passes KV caches, latents or text between them, the kind chosen per link.

* The channel: a state key annotated with ``messages`` (or ``channel(limits)``) holds packed, signed latentcomm
  messages as bytes (what a checkpointer stores); its reducer appends and checks each entry's type, size and
  framing before it is stored. The node that reads a message verifies and parses it once, with its agent.
* ``agent_node``: a node whose agent reads the newest message of the channel (``Agent.receive``, strict: what it
  cannot read is refused with the protocol's error before any model work), builds its input with ``prompt``, and
  either sends the next agent a message of ``kind`` (``"auto"``: the link chooses) into the channel or answers.
* ``route_by_embedding``: a conditional edge that routes the newest message (a latent of the agent's head, or an
  embedding) to the node whose description it is nearest to; the agent's replicas embed both.
* ``relay_graph``: a chain of agent nodes, first to last (the facts relay of ``examples/langgraph_relay.py``).

Graph execution, checkpointing and streaming are LangGraph's.

    class State(TypedDict):
        question: str
        messages: Annotated[list[bytes], messages]
        answer: str

    graph = StateGraph(State)
    graph.add_node("alice", agent_node(alice, to=bob, prompt=lambda state, _: state["question"]))
    graph.add_node("bob", agent_node(bob, kind=None, prompt=lambda state, got: ["A colleague says:", got,
                                                                                state["question"]]))
    graph.add_edge(START, "alice"); graph.add_edge("alice", "bob"); graph.add_edge("bob", END)
    state = await graph.compile().ainvoke({"question": "Where does Mira live?", "messages": []})
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from latentcomm.actors.agent import Agent, Incoming, Kind, Peer, Said
from latentcomm.engine.messaging import message_embedding
from latentcomm.protocols import (DEFAULT_LIMITS, FORMAT_VERSION, MAGIC, Description, LimitExceeded, Limits,
                                  MalformedMessage, MetaValue, UnsupportedKind, UnsupportedVersion, unpack)

Prompt = Callable[[Mapping[str, Any], Any], Said]
"""A node's input from the graph state and what its agent made of the newest message (None when there is none)."""
Reducer = Callable[[list[bytes], "bytes | Sequence[bytes]"], list[bytes]]


def channel(limits: Limits = DEFAULT_LIMITS) -> Reducer:
    """The reducer of a channel of latentcomm messages: appends a message (bytes) or several, each checked first —
    bytes, at most ``limits.max_message_bytes`` long, the protocol's magic and a major version it reads — so that
    nothing else is stored; the full check is the reading agent's."""

    def add(left: list[bytes], right: bytes | Sequence[bytes]) -> list[bytes]:
        new = [right] if isinstance(right, (bytes, bytearray, memoryview, str)) else list(right)
        for data in new:
            if not isinstance(data, bytes):
                raise MalformedMessage(f"the channel carries packed messages (bytes), got {type(data).__name__}")
            if len(data) > limits.max_message_bytes:
                raise LimitExceeded(f"message of {len(data)} bytes > {limits.max_message_bytes}, the largest the "
                                    "channel's limits allow")
            if len(data) < 6 or data[:4] != MAGIC:
                raise MalformedMessage("not a latentcomm message: bad magic or truncated prefix")
            if data[4] != FORMAT_VERSION[0]:
                raise UnsupportedVersion(f"message format major version {data[4]}; this channel reads "
                                         f"{FORMAT_VERSION[0]}")
        return [*left, *new]

    return add


messages: Reducer = channel()
"""The channel reducer with the protocol's default limits: ``Annotated[list[bytes], messages]``."""


class RelayState(TypedDict, total=False):
    """The state of ``relay_graph``: the caller's input, the channel, and the last agent's answer."""

    task: Any
    """The caller's input of this run (e.g. a question), read by the prompts."""
    conversation_id: str
    metadata: dict[str, MetaValue]
    """Tags every message of the run carries (they reach the agents' traces)."""
    messages: Annotated[list[bytes], messages]
    fresh: int
    """How many of ``messages`` the node before appended (a forwarding relay appends more than one)."""
    answer: str
    answer_s: float
    """Seconds the last agent took to answer."""


@dataclass
class _Outbox:
    """What a node's agent sends to: the channel. It keeps the signed bytes; the next agent, where known, describes
    itself (a link that chooses its kind asks it once)."""

    name: str
    peer: Peer | None
    sent: list[bytes] = field(default_factory=list)

    async def receive(self, data: bytes) -> None:
        self.sent.append(data)

    async def describe(self, peer: Description | None = None) -> Description:
        if self.peer is None:
            raise UnsupportedKind("kind='auto' needs the node's receiving agent (to=) to choose a kind")
        return await self.peer.describe(peer)


def agent_node(agent: Agent, *, prompt: Prompt, to: Peer | None = None, kind: Kind | None = "auto",
               generate: bool = False, byte_budget: int | None = None, forward: bool = False,
               channel_key: str = "messages") -> Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]:
    """A graph node run by ``agent``.

    It reads what the node before it appended to the channel (the newest message, or the state's ``fresh``
    newest ones; ``agent.receive(strict=True)``: verified, parsed once, refused with the protocol's error when the
    agent cannot read it, then the agent's handler — ``keep_latent`` keeps a latent to read in context), calls
    ``prompt(state, what the handler returned)`` (a list when several came) for its input, and then sends a message
    of ``kind`` (``Agent.send``; to ``to``'s agent, or to whoever reads it next when ``to`` is None) into the
    channel — with ``forward``, after what it received, unchanged (``Agent.forward``) — or with ``kind=None``
    answers (``agent.respond``) into ``answer`` and ``answer_s``. The state's ``conversation_id`` and ``metadata``
    (if given) go with every message.
    """
    if kind == "auto" and to is None:
        raise ValueError("kind='auto' chooses per link: name the receiving agent (to=)")

    async def node(state: Mapping[str, Any]) -> dict[str, Any]:
        stored = state.get(channel_key) or []
        fresh = stored[-state.get("fresh", 1):] if stored else []
        received = [await agent.receive(data, strict=True) for data in fresh]
        said = prompt(state, received[0] if len(received) == 1 else received or None)
        if kind is None:
            start = time.perf_counter()
            answer = await agent.respond(said)
            return {"answer": answer, "answer_s": time.perf_counter() - start}
        outbox = _Outbox(to.name if to is not None else "", to)
        conversation = state.get("conversation_id", "default")
        for message in received if forward else []:
            await agent.forward(outbox, message, conversation_id=conversation)
        await agent.send(outbox, said, kind=kind, generate=generate, byte_budget=byte_budget,
                         conversation_id=conversation, metadata=state.get("metadata"))
        return {channel_key: outbox.sent, "fresh": len(outbox.sent)}

    node.__name__ = agent.name
    return node


def route_by_embedding(agent: Agent, routes: Mapping[str, str], *, channel_key: str = "messages",
                       ) -> Callable[[Mapping[str, Any]], Awaitable[str]]:
    """A conditional edge: the name of the route whose description (``routes``: node -> text) is nearest (cosine)
    to the newest message of the channel — a latent of ``agent``'s head (embedded by its replicas) or an embedding
    message. The message is verified first (``agent``'s key and limits, ``Description.refusal``); the descriptions
    are embedded once."""
    names = list(routes)
    table: list[np.ndarray] = []

    async def route(state: Mapping[str, Any]) -> str:
        data = state[channel_key][-1]
        message = unpack(data, key=agent.key, limits=agent.limits)
        refusal = (await agent.describe()).refusal(message)
        if refusal is not None:
            raise refusal
        if message.kind == "latent":
            vector = await agent.embed(Incoming(message, data))
        elif message.kind == "embedding":
            vector = message_embedding(message)
        else:
            raise UnsupportedKind(f"routing by embedding reads a latent or an embedding, not a {message.kind!r}")
        if not table:
            packed = await agent.pool.call("embed_texts", [routes[n] for n in names])
            table.extend(_unit(message_embedding(unpack(p))) for p in packed)
        return names[int(np.argmax(np.stack(table) @ _unit(vector)))]

    return route


def relay_graph(agents: Sequence[Agent], prompt: Callable[[int, Mapping[str, Any], Any], Said], *,
                kind: Kind = "auto", generate: bool = False, byte_budget: int | None = None, forward: bool = False,
                state: type = RelayState, checkpointer: Any = None) -> CompiledStateGraph:
    """A chain of ``agent_node``s, ``agents[0]`` to ``agents[-1]``: each sends the next one a message of ``kind``
    through the channel (with ``forward``, after what it received), the last one answers; ``prompt(i, state,
    received)`` is agent ``i``'s input. Compiled with ``checkpointer`` (LangGraph's; None: none)."""
    if len(agents) < 2 or len({a.name for a in agents}) != len(agents):
        raise ValueError("a relay needs at least two agents with distinct names")
    graph = StateGraph(state)
    for i, agent in enumerate(agents):
        last = i == len(agents) - 1
        graph.add_node(agent.name, agent_node(agent, prompt=_nth(prompt, i), to=None if last else agents[i + 1],
                                              kind=None if last else kind, generate=generate,
                                              byte_budget=byte_budget, forward=forward))
    names = [START, *(a.name for a in agents), END]
    for source, target in zip(names, names[1:]):
        graph.add_edge(source, target)
    return graph.compile(checkpointer=checkpointer)


def _nth(prompt: Callable[[int, Mapping[str, Any], Any], Said], i: int) -> Prompt:
    return lambda state, received: prompt(i, state, received)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


__all__ = ["Prompt", "RelayState", "agent_node", "channel", "messages", "relay_graph", "route_by_embedding"]
