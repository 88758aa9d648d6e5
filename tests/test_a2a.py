"""The A2A integration with a2a-sdk in process over loopback (127.0.0.1) on the tiny model: the agent card, latents,
KV caches and text sent as parts and answered, links that choose from the card, and hostile parts, each ending in
the A2A error it maps to with nothing run."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from a2a.types import Message, Part, Role, SendMessageRequest
from a2a.utils.errors import A2AError, ContentTypeNotSupportedError, InvalidParamsError
from google.protobuf import struct_pb2

from latentcomm.actors.agent import Agent, keep_latent
from latentcomm.actors.trace import Trace
from latentcomm.integrations.a2a import (A2A_ERRORS, ANSWERS_READ, ERROR_KEY, MEDIA_TYPE, VERSION_KEY, A2APeer,
                                         a2a_app, card_description, message_part)
from latentcomm.integrations.local import LocalPool
from latentcomm.protocols import (FingerprintMismatch, LatentMessage, LimitExceeded, Limits, ProtocolError,
                                  UnsupportedKind, UnsupportedVersion, pack, sign)
from conftest import free_port
from hostile import KEY, hostile

NOTE = "Note: Mira Lund lives in Oslo and keeps bees.\n\nQuestion: Where does Mira live?"
LIMITS = Limits(max_payload_bytes=100_000)


@contextlib.asynccontextmanager
async def served(agent: Agent) -> AsyncIterator[str]:
    """``agent`` behind an A2A server on 127.0.0.1 in this event loop; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(await a2a_app(agent, url), host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        await task


def answerer(replicas, which: str = "same") -> Agent:
    return Agent("answerer", LocalPool(replicas[which]), key=KEY, reads=ANSWERS_READ, limits=LIMITS,
                 trace=Trace()).on("latent", keep_latent)


async def test_latents_kv_and_text_parts_are_read_and_answered(replicas):
    server = answerer(replicas)
    alice = Agent("alice", LocalPool(replicas["same"]), key=KEY, wire_dtype="float32")
    async with served(server) as url, httpx.AsyncClient(timeout=60) as http:
        peer = await A2APeer.connect(url, http=http, ask="Where does Mira live?")
        assert card_description(peer.card) == await server.describe()
        assert set(peer.card.default_input_modes) == {"text/plain", MEDIA_TYPE}
        latent = await alice.send(peer, NOTE, kind="latent")
        cache = await alice.send(peer, NOTE, kind="kv")
        text = await peer.send_text("Mira lives in Oslo.")
        assert all(isinstance(a, str) for a in (latent, cache, text))
        assert [h.kind for h in server.trace.hops] == ["latent", "kv"]
        assert server.pool.method_calls["respond"] == 3 and server.pool.method_calls["decode"] == 0
        # the same latent read in this process gives the same answer
        [data] = await replicas["same"].compress([alice.parts(NOTE)], dtype="float32")
        local = Agent("answerer", LocalPool(replicas["same"])).on("latent", keep_latent)
        assert await local.respond([await local.receive(data), "Where does Mira live?"]) == latent


async def test_auto_chooses_from_the_agent_card(replicas):
    alice = Agent("alice", LocalPool(replicas["same"]), key=KEY, wire_dtype="float32")
    async with served(answerer(replicas)) as url, httpx.AsyncClient(timeout=60) as http:
        peer = await A2APeer.connect(url, http=http)
        assert isinstance(await alice.send(peer, NOTE, kind="auto"), str)
        assert isinstance(await alice.send(peer, NOTE, kind="auto", byte_budget=100), str)
    other = answerer(replicas, "head")
    async with served(other) as url, httpx.AsyncClient(timeout=60) as http:
        peer = await A2APeer.connect(url, http=http)
        assert isinstance(await alice.send(peer, NOTE, kind="auto", byte_budget=100), str)
        assert [h.kind for h in other.trace.hops] == ["text"] and "another head" in other.trace.hops[0].choice


def test_an_agent_that_reads_embeddings_is_not_served(replicas):
    with pytest.raises(ValueError, match="reads="):
        asyncio.run(a2a_app(Agent("x", LocalPool(replicas["same"])), "http://127.0.0.1:1"))


# ---- hostile parts ------------------------------------------------------------------------------------------------
def part(raw: bytes, *, media_type: str = MEDIA_TYPE, version: str | None = "1.0") -> Part:
    metadata = struct_pb2.Struct()
    if version is not None:
        metadata.update({VERSION_KEY: version})
    return Part(raw=raw, media_type=media_type, metadata=metadata)


@pytest.fixture(scope="module")
def hostile_parts(replicas) -> list[tuple[str, Part, type[A2AError], str | None]]:
    """(name, part, the A2A error, the protocol error's name in its data) for every hostile part."""
    to_answerer = [{"recipient": "answerer", "sender": "mallory"}]

    async def make() -> list[bytes]:
        return [*(await replicas["same"].compress(["a note"], dtype="float32", routing=to_answerer)),
                *(await replicas["head"].compress(["a note"], dtype="float32", routing=to_answerer)),
                *(await replicas["backbone"].prefill(["a note"], dtype="float32", routing=to_answerer)),
                *(await replicas["backbone"].compress(["a note"], dtype="float32", routing=to_answerer))]

    good, *_ = messages = asyncio.run(make())
    cases = [(name, part(data), A2A_ERRORS.get(error, InvalidParamsError), error.__name__)
             for name, data, error in hostile(*messages, max_payload_bytes=LIMITS.max_payload_bytes)]
    signed = sign(good, KEY)
    embedding = sign(pack(LatentMessage.from_array([1.0, 2.0], kind="embedding", recipient="answerer")), KEY)
    return cases + [
        ("wrong media type", part(signed, media_type="image/png"), ContentTypeNotSupportedError, None),
        ("raw part without a media type", part(signed, media_type=""), ContentTypeNotSupportedError,
         UnsupportedKind.__name__),
        ("a URL instead of bytes", Part(url="http://127.0.0.1:1/x", media_type=MEDIA_TYPE),
         ContentTypeNotSupportedError, UnsupportedKind.__name__),
        ("format version 2.0 in the part", part(signed, version="2.0"), ContentTypeNotSupportedError,
         UnsupportedVersion.__name__),
        ("no format version in the part", part(signed, version=None), ContentTypeNotSupportedError,
         UnsupportedVersion.__name__),
        ("part over the largest message", part(b"\x89LCM" + bytes(LIMITS.max_message_bytes)), InvalidParamsError,
         LimitExceeded.__name__),
        ("an embedding, which the answer cannot read", part(embedding), ContentTypeNotSupportedError,
         UnsupportedKind.__name__),
    ]


async def test_hostile_parts_end_in_their_a2a_error_with_nothing_run(replicas, hostile_parts):
    assert len(hostile_parts) >= 20
    server = answerer(replicas)
    failures = []
    async with served(server) as url, httpx.AsyncClient(timeout=60) as http:
        peer = await A2APeer.connect(url, http=http)
        for name, bad, error, reason in hostile_parts:
            request = SendMessageRequest(message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex,
                                                         parts=[Part(text="Read this:"), bad]))
            try:
                async for _ in peer.client.send_message(request):
                    pass
            except A2AError as err:
                if type(err) is not error or (err.data or {}).get(ERROR_KEY) != reason:
                    failures.append(f"{name}: {type(err).__name__} {err.data} ({err.message}), expected "
                                    f"{error.__name__} {reason}")
            else:
                failures.append(f"{name}: answered")
        # the peer raises the protocol error the server named
        with pytest.raises(FingerprintMismatch):
            await peer.send_parts([next(p for n, p, *_ in hostile_parts if n == "another head")])
    assert not failures, failures
    assert set(server.pool.method_calls) <= {"info"} and not server.trace.hops


def test_every_protocol_error_maps_to_an_a2a_error():
    from latentcomm.integrations.a2a import a2a_error, protocol_error
    from latentcomm.protocols import errors

    for name in errors.__all__:
        err = a2a_error(getattr(errors, name)("why"))
        assert isinstance(err, A2AError) and err.data == {ERROR_KEY: name}
        assert type(protocol_error(err)).__name__ == name
    assert isinstance(a2a_error(UnsupportedKind("x")), ContentTypeNotSupportedError)
    assert protocol_error(InvalidParamsError("x")) is None and issubclass(UnsupportedVersion, ProtocolError)
    assert message_part(b"\x89LCM\x01\x00").metadata[VERSION_KEY] == "1.0"
