"""Agents that talk in latents: send a latent, a KV cache, an embedding or text to another agent; handlers read it.

An ``Agent`` has a name, a role prompt and a ``ReplicaPool`` that does its model work. ``send(to, said, kind=...)``
sends one protocol ``LatentMessage``: the replica method of ``SENDS[kind]`` makes and packs it, already addressed
(a text is packed here), and the sender only appends the HMAC trailer (``protocols.sign``, when it has a key). The
receiver verifies and parses the bytes once (``Incoming``), drops re-sent message ids (the first result is returned
again; an id reused with other bytes is refused with ``ConflictingMessageError``, which the sender hears), runs each
conversation's messages from one sender in the order they were sent, and calls the handler for the message's kind.
The default handlers decode a latent to text (soft prompt to the receiver's frozen LLM), and return an embedding's
vector or a text as is; ``keep_latent`` instead keeps a latent to read in context (no model work on receipt). A
replica killed mid-call is retried on its restarted actor by the pool, and a failed delivery is re-sent with the
same message id. Agents here live in the caller's process; ``agent_host.start_agent`` puts one in its own actor
process.

What an agent says is made of parts: strings and received messages (``Incoming``); a received latent enters
the model's input as soft tokens. The replica reads a received message as the receiver parsed it (Ray ships the
parsed ``LatentMessage``, fields and payload, without parsing it again): one parse per hop.

``kind="auto"`` lets the link choose (``latentcomm.protocols.link``): on the first message to a recipient the two
agents exchange descriptions (``describe``: backbone, head fingerprint, the kinds they read, their limits) and cache
them; then a KV cache goes where the backbone is the same and the cache fits the receiver's limits and the send's
``byte_budget`` (measured: the cache is made, and dropped for the next kind when it does not fit), a latent where
the receiver has the same head, the agent's own answer as text otherwise. Why is in the message's metadata and the
receiver's trace. The receiver checks such a message against its own description and refuses what it cannot read
with the protocol's error; the sender then asks for its description again and falls back once, recorded.

    solver, critic = Agent("solver", pool), Agent("critic", pool).on("latent", keep_latent)
    draft = await solver.send(critic, "What is 7 * 6?")            # the critic keeps the solver's latent
    answer = await critic.respond(["Check this answer:", draft])   # and reads it in its own prompt
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Union

import numpy as np
from ray.exceptions import RayActorError

from latentcomm.actors.trace import Hop, Trace
from latentcomm.errors import OrderingError, ConflictingMessageError
from latentcomm.engine.messaging import address, message_embedding
from latentcomm.model.optimise import OptimiseConfig
from latentcomm.runtime.pool import NoReplicaError, ReplicaPool, retry_delays, run_sync
from latentcomm.protocols import (DEFAULT_LIMITS, KINDS, Choice, Description, FingerprintMismatch, LatentMessage,
                                  LimitExceeded, Limits, MetaValue, ProtocolError, UnsupportedKind, candidates, fits,
                                  pack, sign, unpack)
from latentcomm.protocols.link import SENT_KINDS

log = logging.getLogger(__name__)

SEQ_KEY = "seq"
"""Metadata key: the message's position in its (conversation, sender -> recipient) stream."""
ACKED_KEY = "acked"
"""Metadata key: every message of the stream before this position was acknowledged (lets a restarted
receiver, which lost its inbox state, resume the order instead of waiting for messages it already handled)."""
STARTED_KEY = "started_ns"
"""Metadata key: when the sender started producing the message (Unix ns; it was packed at ``created_ns``)."""
FORWARDED_KEY = "forwarded_from"
"""Metadata key of a forwarded message (``Agent.forward``): the agent that made it."""
LINK_KEY = "link"
"""Metadata key: why a link that chooses its kind (``kind="auto"``) sent this one; its receiver checks that it can
read it."""
FALLBACK_KEY = "fallback"
"""Metadata key: the kind the receiver refused before this message on the same send, and the error."""
AGENT_KEYS = frozenset({SEQ_KEY, ACKED_KEY, STARTED_KEY, LINK_KEY, FALLBACK_KEY})
"""Metadata the agents manage; the rest (e.g. a job's mode and question id) is the caller's and reaches the trace."""


@dataclass(frozen=True)
class Incoming:
    """A verified message as a handler sees it: parsed once on receipt (what a replica reads when the agent passes
    it on) and the exact bytes that arrived (de-duplication, the trace)."""

    message: LatentMessage
    data: bytes

    @property
    def kind(self) -> str:
        return self.message.kind


Handler = Callable[["Agent", Incoming], Awaitable[Any]]
Said = Union[str, Incoming, Sequence[Union[str, Incoming]]]
"""What an agent reads or answers on: a text, a received message, or parts of both (its role prompt goes first)."""
Kind = Literal["latent", "kv", "embedding", "text", "auto"]
SENDS: dict[str, str | None] = {"latent": "compress", "kv": "prefill", "embedding": "embed_texts", "text": None}
"""The replica method that makes a message of each kind from what an agent says (a text needs none)."""
REFUSALS = (FingerprintMismatch, UnsupportedKind, LimitExceeded)
"""A receiver's errors for a message it cannot read (not for bad bytes): an auto link falls back once on them."""
VALUE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
"""Bytes per value of each wire dtype: a measured KV message's values are at most its bytes over this."""


class Recipient(Protocol):
    """Anything messages can be sent to: an ``Agent`` here, or a ``RemoteAgent`` in another process."""

    name: str

    async def receive(self, data: bytes) -> Any:
        ...


class Peer(Recipient, Protocol):
    """A recipient that describes itself: what a link that chooses its kind (``kind="auto"``) sends to."""

    async def describe(self, peer: Description | None = None) -> Description:
        ...


async def decode_latent(agent: "Agent", incoming: Incoming) -> str:
    """Default for latents: the receiver's frozen LLM continues from the latent; returns the text."""
    return await agent.decode(incoming)


async def keep_latent(agent: "Agent", incoming: Incoming) -> Incoming:
    """For latents read in context (and the default for KV prefixes): no model work on receipt; the receiver passes
    the message on as a part."""
    return incoming


async def embed_latent(agent: "Agent", incoming: Incoming) -> np.ndarray:
    """Handler for latents used for routing/retrieval: MLP_align + mean pooling -> (D,) vector."""
    return await agent.embed(incoming)


async def read_embedding(agent: "Agent", incoming: Incoming) -> np.ndarray:
    """Default for embeddings: the (D,) float32 vector."""
    return message_embedding(incoming.message)


async def read_text(agent: "Agent", incoming: Incoming) -> str:
    """Default for text: the text."""
    return incoming.message.text()


DEFAULT_HANDLERS: dict[str, Handler] = {"latent": decode_latent, "embedding": read_embedding, "text": read_text,
                                        "kv": keep_latent}


class Agent:
    """A named participant with a role prompt, a replica pool, handlers per message kind and an inbox state.

    ``key`` (bytes) signs every message it sends and makes it reject unsigned or forged messages.
    ``wire_dtype`` is the dtype of latents and embeddings it sends (``float16`` halves the bytes with
    a cosine above 0.9999). ``limits`` bound what it unpacks (raise them for KV caches of big backbones). ``reads``
    are the kinds its description lists (what a link that chooses may send it). With ``refine``, every latent it
    sends is fitted to what it read for up to ``refine.steps`` steps before it leaves (``latentcomm.model.optimise``:
    the sender spends compute so that the latent carries its text). Every handled message is recorded in
    ``trace``.
    """

    def __init__(self, name: str, pool: ReplicaPool, *, role: str = "", key: bytes | None = None,
                 trace: Trace | None = None, wire_dtype: str = "float16", max_new_tokens: int | None = None,
                 redeliver_for_s: float = 120.0, order_timeout_s: float = 120.0, remember: int = 100_000,
                 limits: Limits = DEFAULT_LIMITS, reads: Sequence[str] = KINDS,
                 refine: OptimiseConfig | None = None) -> None:
        if not name:
            raise ValueError("an agent needs a non-empty name")
        if not reads or set(reads) - set(KINDS):
            raise ValueError(f"reads must be some of {KINDS}, got {reads!r}")
        self.name = name
        self.pool = pool
        self.role = role
        self.key = key
        self.trace = trace if trace is not None else Trace()
        self.wire_dtype = wire_dtype
        self.limits = limits
        self.reads = tuple(reads)
        self.refine = refine
        self.max_new_tokens = max_new_tokens
        self.redeliver_for_s = redeliver_for_s
        self.order_timeout_s = order_timeout_s
        self.handlers: dict[str, Handler] = dict(DEFAULT_HANDLERS)
        self.duplicates = 0
        self.rejected = 0
        self._remember = remember
        self._results: collections.OrderedDict[str, tuple[bytes, Any]] = collections.OrderedDict()
        self._pending: dict[str, tuple[bytes, asyncio.Future]] = {}
        """Both by message id, with the SHA-256 of the bytes that came under that id."""
        self._expected: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._next_seq: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._acked: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
        self._acked_below: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Condition] = \
            weakref.WeakKeyDictionary()
        self._description: Description | None = None
        self._links: dict[str, Description] = {}
        """The descriptions of the peers of this agent's links, by name (exchanged once, kept)."""

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, role={self.role[:30]!r}, pool={self.pool.name!r})"

    def on(self, kind: str, handler: Handler) -> "Agent":
        """Use ``handler`` for messages of ``kind`` ("latent", "embedding", "text" or "kv"); returns self."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        self.handlers[kind] = handler
        return self

    def prompt(self, text: str) -> str:
        """``text`` under this agent's role prompt (the input its model sees)."""
        return f"{self.role}\n\n{text}" if self.role else text

    def parts(self, said: Said) -> list[str | LatentMessage]:
        """``said`` under the role prompt as the parts a replica reads: strings, and received latents and KV prefixes
        as the messages parsed on receipt (a received text is read as its text)."""
        items = [said] if isinstance(said, (str, Incoming)) else list(said)
        parts: list[str | LatentMessage] = [f"{self.role}\n\n"] if self.role else []
        for part in items:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Incoming) and part.kind in ("latent", "kv", "text"):
                parts.append(part.message.text() if part.kind == "text" else part.message)
            else:
                raise TypeError(f"{self.name} can read strings, latents, KV prefixes and texts, got "
                                f"{type(part).__name__}"
                                + (f" of kind {part.kind!r}" if isinstance(part, Incoming) else ""))
        return parts

    # ---- sending ----------------------------------------------------------------------------------
    async def send(self, to: Recipient, said: Said, *, kind: Kind = "latent", generate: bool = False,
                   byte_budget: int | None = None, conversation_id: str = "default",
                   metadata: Mapping[str, MetaValue] | None = None) -> Any:
        """Send ``said`` to ``to`` as a message of ``kind``; returns the receiver's handler result.

        ``said`` is read under the role prompt, received latents and KV prefixes in context. The replica method of
        ``SENDS[kind]`` makes the message with one forward pass, no generation, and packs it addressed; here it
        is only signed. "latent": the compressed latent; "kv": the KV cache of what the agent read (it grows with
        it, ``latentcomm.model.kv``); "embedding": the (D,) embedding of one string; "text": one string as is,
        or with ``generate`` the agent's own answer to ``said`` (``respond``: the text baseline; the hop's
        latency includes the generation). "auto": the link chooses kv, latent or (generated) text, ``to`` must
        describe itself (a ``Peer``), and ``byte_budget`` bounds the bytes of a KV cache on it.
        """
        if kind not in (*SENDS, "auto"):
            raise ValueError(f"unknown kind {kind!r}; send one of {(*SENDS, 'auto')}")
        if byte_budget is not None and (kind != "auto" or byte_budget < 1):
            raise ValueError(f"byte_budget (>= 1) bounds the KV cache of kind='auto', got {byte_budget!r} with "
                             f"kind={kind!r}")
        if generate and kind != "text":
            raise ValueError(f"generate=True sends the agent's generated answer as text: it needs kind='text', "
                             f"not {kind!r}")
        if (kind == "embedding" or (kind == "text" and not generate)) and not isinstance(said, str):
            raise TypeError(f"kind={kind!r}{'' if kind == 'embedding' else ' without generate'} sends "
                            f"one string, got {type(said).__name__}")  # before a sequence number is taken
        stream, routing = self._routing(to, conversation_id, metadata)  # the hop starts before any generation
        if kind == "auto":
            return await self._send_auto(to, said, stream, routing, byte_budget)  # type: ignore[arg-type]
        data = await self._make(kind, said, generate, routing)
        return await self._deliver(to, data, stream, routing["metadata"][SEQ_KEY])

    async def describe(self, peer: Description | None = None) -> Description:
        """What this agent runs and reads: its replicas' backbone and head (asked once), every kind, its limits.
        Given the asking peer's description, keeps it as that link's (the exchange)."""
        if peer is not None:
            self._links[peer.name] = peer
        if self._description is None:
            info = await self.pool.call("info")
            self._description = Description.of(self.name, info["backbone_id"], info["fingerprint"],
                                               kinds=self.reads, limits=self.limits)
        return self._description

    async def link(self, to: Peer, *, refresh: bool = False) -> Description:
        """``to``'s description: exchanged on the first message to it and kept (``refresh``: asked again)."""
        if not callable(getattr(to, "describe", None)):
            raise TypeError(f"kind='auto' chooses from the recipient's description: {type(to).__name__} has no "
                            "describe()")
        if refresh or to.name not in self._links:
            self._links[to.name] = await to.describe(await self.describe())
        return self._links[to.name]

    async def _make(self, kind: str, said: Said, generate: bool, routing: Mapping[str, Any]) -> bytes:
        """The packed, addressed message of ``kind`` made from ``said`` (``SENDS``)."""
        method = SENDS[kind]
        if method is not None:
            item = self.prompt(said) if kind == "embedding" else self.parts(said)
            refine = {"refine": self.refine, "refine_targets": [self.restatement(said)]} \
                if kind == "latent" and self.refine is not None else {}
            [data] = await self.pool.call(method, [item], dtype=self.wire_dtype, routing=[routing], **refine)
            return data
        text = await self.respond(said) if generate else said
        return pack(LatentMessage.from_text(text, **routing))

    async def _send_auto(self, to: Peer, said: Said, stream: tuple[str, str], routing: dict[str, Any],
                         byte_budget: int | None) -> Any:
        """Choose, make and deliver; on a refusal (``REFUSALS``) ask ``to`` for its description again and send the
        next kind instead, once, under the same sequence number (the refused message was not handled)."""
        seq = routing["metadata"][SEQ_KEY]
        choice, data = await self._choose(await self.link(to), said, routing, byte_budget, "", "")
        try:
            return await self._deliver(to, data, stream, seq)
        except REFUSALS as err:
            fallback = f"{choice.kind} refused: {type(err).__name__}"
            log.warning("%s -> %s: %s (%s); falling back once", self.name, to.name, fallback, err)
        theirs = await self.link(to, refresh=True)
        data = (await self._choose(theirs, said, routing, byte_budget, choice.kind, fallback))[1]
        return await self._deliver(to, data, stream, seq)

    async def _choose(self, theirs: Description, said: Said, routing: dict[str, Any], byte_budget: int | None,
                      refused: str, fallback: str) -> tuple[Choice, bytes]:
        """The first candidate kind that fits, made: a KV cache is made and measured (its bytes against the byte
        budget and the receiver's limits), and made again as the next kind when it does not fit."""
        makes = [k for k in SENT_KINDS if k != refused and not (k == "latent" and _holds_kv(said))]
        passed: list[str] = []
        for choice in candidates(await self.describe(), theirs, makes=makes):
            chosen = Choice(choice.kind, "; ".join([*passed, choice.why]))
            extra = {LINK_KEY: chosen.why} | ({FALLBACK_KEY: fallback} if fallback else {})
            data = await self._make(chosen.kind, said, chosen.kind == "text",
                                    dict(routing, metadata=routing["metadata"] | extra))
            if chosen.kind == "kv":
                over = fits(theirs, len(data), len(data) // VALUE_BYTES[self.wire_dtype], byte_budget)
                if over is not None:
                    passed.append(f"kv of {over}")
                    continue
            return chosen, data
        raise UnsupportedKind(f"{self.name} can send {theirs.name} none of {makes} (it takes "
                              f"{', '.join(theirs.kinds)})")

    def send_sync(self, to: Recipient, said: Said, **kwargs: Any) -> Any:
        """``send`` from synchronous code (not from inside a running event loop)."""
        return run_sync(self.send(to, said, **kwargs))

    async def send_message(self, to: Recipient, message: LatentMessage, *, conversation_id: str = "default") -> Any:
        """Address, sign and deliver an already built ``message``; returns the receiver's handler result."""
        stream, routing = self._routing(to, conversation_id, message.metadata)
        return await self._deliver(to, pack(address(message, created_ns=time.time_ns(), **routing)), stream,
                                   routing["metadata"][SEQ_KEY])

    async def forward(self, to: Recipient, incoming: Incoming, *, conversation_id: str = "default") -> Any:
        """Send a received message on unchanged (its kind, payload and the head that made it) as a new message of
        this agent's, its maker in the metadata (``FORWARDED_KEY``); returns the receiver's handler result."""
        message = incoming.message
        metadata = {**message.metadata, FORWARDED_KEY: message.metadata.get(FORWARDED_KEY, message.sender)}
        return await self.send_message(to, address(message, message_id=uuid.uuid4().hex, metadata=metadata),
                                       conversation_id=conversation_id)

    def restatement(self, said: Said) -> str:
        """The text this agent's refined latents are fitted to carry: what it read as text (strings and received
        texts), without its role prompt (a received latent or KV prefix is no text to restate)."""
        items = [said] if isinstance(said, (str, Incoming)) else list(said)
        return "".join(p if isinstance(p, str) else p.message.text() for p in items
                       if isinstance(p, str) or (isinstance(p, Incoming) and p.kind == "text")).strip()

    async def respond(self, said: Said) -> str:
        """This agent's own text answer to ``said`` (under the role prompt; latents read in context)."""
        [text] = await self.pool.call("respond", [self.parts(said)], max_new_tokens=self.max_new_tokens)
        return text

    def _routing(self, to: Recipient, conversation_id: str, metadata: Mapping[str, MetaValue] | None
                 ) -> tuple[tuple[str, str], dict[str, Any]]:
        """The stream of the next message to ``to`` and its routing fields (sequence number, ack, start time)."""
        stream = (conversation_id, to.name)
        seq = self._next_seq[stream]
        self._next_seq[stream] += 1
        meta = dict(metadata or {}) | {SEQ_KEY: seq, ACKED_KEY: self._acked_below[stream], STARTED_KEY: time.time_ns()}
        return stream, {"sender": self.name, "recipient": to.name, "conversation_id": conversation_id,
                        "metadata": meta}

    async def _deliver(self, to: Recipient, data: bytes, stream: tuple[str, str], seq: int) -> Any:
        """Sign ``data`` (packed, addressed) and deliver it; returns the receiver's handler result.

        Delivery is at-least-once: if the receiver's process or its replicas die, the same bytes (same
        message id) are sent again; the receiver's de-duplication makes the handler run once.
        """
        if self.key is not None:
            data = sign(data, self.key)
        delays = retry_delays(self.redeliver_for_s)
        while True:
            try:
                result = await to.receive(data)
            except (NoReplicaError, RayActorError):
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("%s -> %s: delivery of message %d of %s failed; re-sending", self.name, to.name, seq,
                            stream[0])
                await asyncio.sleep(delay)
            else:
                self._acknowledge(stream, seq)
                return result

    def _acknowledge(self, stream: tuple[str, str], seq: int) -> None:
        acked = self._acked[stream]
        acked.add(seq)
        while self._acked_below[stream] in acked:
            acked.remove(self._acked_below[stream])
            self._acked_below[stream] += 1

    # ---- receiving --------------------------------------------------------------------------------
    async def receive(self, data: bytes, *, strict: bool = False) -> Any:
        """Verify and unpack ``data``, drop duplicates, keep per-conversation order, run the kind's handler.

        A message whose kind a link chose (``LINK_KEY``), and with ``strict`` every message, is first checked
        against this agent's description: one it cannot read is refused (``Description.refusal``)."""
        try:
            message = unpack(data, key=self.key, limits=self.limits)
        except ProtocolError:
            self.rejected += 1
            raise
        if message.recipient and message.recipient != self.name:
            self.rejected += 1
            raise ProtocolError(f"{self.name} received a message addressed to {message.recipient!r}")
        if strict or LINK_KEY in message.metadata:
            refusal = (await self.describe()).refusal(message)
            if refusal is not None:
                self.rejected += 1
                raise refusal
        mid, digest = message.message_id, hashlib.sha256(data).digest()
        seen = self._results.get(mid) or self._pending.get(mid)
        if seen is not None and seen[0] != digest:
            self.rejected += 1
            raise ConflictingMessageError(f"{self.name}: message id {mid} already came with other content; "
                                          "a new message needs a new id")
        if mid in self._results:
            self.duplicates += 1
            return self._results[mid][1]
        if mid in self._pending:
            self.duplicates += 1
            return await asyncio.shield(self._pending[mid][1])
        future = asyncio.get_running_loop().create_future()
        self._pending[mid] = (digest, future)
        try:
            result = await self._in_order(message, Incoming(message, bytes(data)))
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved here; duplicates waiting on it get it re-raised
            raise
        else:
            future.set_result(result)
            self._results[mid] = (digest, result)
            while len(self._results) > self._remember:
                self._results.popitem(last=False)
            return result
        finally:
            self._pending.pop(mid, None)

    async def _in_order(self, message: LatentMessage, incoming: Incoming) -> Any:
        """Wait for the earlier messages of this (conversation, sender) stream, handle, then let the next go."""
        seq = message.metadata.get(SEQ_KEY)
        if not isinstance(seq, int) or isinstance(seq, bool):
            return await self._handle(incoming)
        stream = (message.conversation_id, message.sender)
        acked = message.metadata.get(ACKED_KEY)
        turn = self._turn()
        async with turn:
            if isinstance(acked, int) and acked > self._expected[stream]:
                self._expected[stream] = acked
                turn.notify_all()
            try:
                await asyncio.wait_for(turn.wait_for(lambda: self._expected[stream] >= seq), self.order_timeout_s)
            except asyncio.TimeoutError:
                raise OrderingError(f"{self.name}: message {seq} of {stream} waited {self.order_timeout_s} s for "
                                    f"message {self._expected[stream]}") from None
        try:
            return await self._handle(incoming)
        finally:
            async with turn:
                self._expected[stream] = max(self._expected[stream], seq + 1)
                turn.notify_all()

    async def _handle(self, incoming: Incoming) -> Any:
        message = incoming.message
        handler = self.handlers[message.kind]
        start_ns = time.time_ns()
        result = await handler(self, incoming)
        done_ns = time.time_ns()
        started = message.metadata.get(STARTED_KEY)
        started_ns = started if isinstance(started, int) and started <= message.created_ns else message.created_ns
        if message.kind == "text":
            text, text_from = message.text(), "message"
        elif isinstance(result, str):
            text, text_from = result, "receiver"
        else:
            text, text_from = None, ""
        self.trace.record(Hop(conversation_id=message.conversation_id, message_id=message.message_id,
                              sender=message.sender, receiver=self.name, kind=message.kind,
                              bytes=len(incoming.data), produce_s=(message.created_ns - started_ns) / 1e9,
                              deliver_s=max(start_ns - message.created_ns, 0) / 1e9,
                              handle_s=(done_ns - start_ns) / 1e9,
                              latency_s=max(done_ns - started_ns, 0) / 1e9, text=text, text_from=text_from,
                              metadata={k: v for k, v in message.metadata.items() if k not in AGENT_KEYS},
                              choice=str(message.metadata.get(LINK_KEY, "")),
                              fallback=str(message.metadata.get(FALLBACK_KEY, ""))))
        return result

    def _turn(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if loop not in self._turns:
            self._turns[loop] = asyncio.Condition()
        return self._turns[loop]

    # ---- model work for handlers ----------------------------------------------------------------------
    async def decode(self, incoming: Incoming, *, max_new_tokens: int | None = None) -> str:
        """The text of a latent message, decoded by this agent's replicas."""
        [text] = await self.pool.call("decode", [incoming.message],
                                      max_new_tokens=max_new_tokens or self.max_new_tokens)
        return text

    async def embed(self, incoming: Incoming) -> np.ndarray:
        """The (D,) embedding of a latent message (needs the head that made the latent); the replica's reply, a
        packed "embedding" message, is parsed here."""
        [data] = await self.pool.call("embed", [incoming.message])
        return message_embedding(unpack(data))



def _holds_kv(said: Said) -> bool:
    """Whether ``said`` reads a KV cache (a latent cannot be made after one: ``compress`` reads no KV prefix)."""
    items = [said] if isinstance(said, (str, Incoming)) else list(said)
    return any(isinstance(part, Incoming) and part.kind == "kv" for part in items)
