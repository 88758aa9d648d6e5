"""latentcomm over the A2A protocol (extra ``latentcomm[a2a]``, ``a2a-sdk``): a latent, KV or text message as an
A2A message part, an A2A server that exposes an ``Agent``, and a client-side peer that sends latents to one.

A message travels as a raw-bytes part: ``Part(raw=<packed message>, media_type=MEDIA_TYPE, metadata={VERSION_KEY:
"1.0"})`` (``protocols/SPEC.md``, "Inside an A2A part"). The server's agent card lists what it reads in the extension
``EXTENSION_URI``: its ``Description`` (backbone, head fingerprint, kinds, limits) and the media type.

The server is strict on input: every part is checked (media type, format version, size) before any is read, then
each latentcomm part is verified and parsed once by the agent (``Agent.receive(strict=True)``: signature, limits,
layout, NaN/Inf, a head or backbone it cannot read); a refused part ends the request in the A2A error it maps to
(``A2A_ERRORS``; the protocol error's name in the error data) before the agent answers. The SDK runs the JSON-RPC
transport, the task lifecycle and the agent card route.

    app = await a2a_app(Agent("answerer", LocalPool(ReplicaConfig()), key=key).on("latent", keep_latent), url)
    # uvicorn.run(app, host="127.0.0.1", port=8001)
    peer = await A2APeer.connect(url, ask="Answer the question.")
    answer = await alice.send(peer, "Note: ...", kind="auto")      # kv, latent or text, chosen from the card
"""
from __future__ import annotations

import uuid

import httpx
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import get_message_text, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (AgentCapabilities, AgentCard, AgentExtension, AgentInterface, AgentSkill, Message, Part, Role,
                       SendMessageRequest)
from a2a.utils.errors import A2AError, ContentTypeNotSupportedError, InvalidParamsError
from google.protobuf import json_format, struct_pb2
from starlette.applications import Starlette

from latentcomm import __version__
from latentcomm.actors.agent import Agent
from latentcomm.protocols import (FORMAT_VERSION, Description, LimitExceeded, MalformedMessage, ProtocolError,
                                  UnsupportedKind, UnsupportedVersion, errors)

MEDIA_TYPE = "application/vnd.latentcomm+msgpack"
"""The media type of a part that holds one packed latentcomm message."""
VERSION_KEY = "latentcomm_version"
"""Part metadata: the message format version, "major.minor" (a reader refuses another major before parsing)."""
EXTENSION_URI = "urn:latentcomm:a2a:messages:1"
"""The agent card extension whose params are the server agent's ``Description`` and ``MEDIA_TYPE``."""
ERROR_KEY = "latentcomm_error"
"""A2A error data: the name of the protocol error that refused a part (``latentcomm.protocols.errors``)."""
A2A_ERRORS: dict[type[ProtocolError], type[A2AError]] = {UnsupportedKind: ContentTypeNotSupportedError,
                                                         UnsupportedVersion: ContentTypeNotSupportedError,
                                                         ProtocolError: InvalidParamsError}
"""The A2A error of each protocol error (the first that matches, in order): a kind or format version the server
does not read is content it does not support; every other bad part is invalid params."""


def message_part(data: bytes) -> Part:
    """One packed (and signed) latentcomm message as an A2A part."""
    metadata = struct_pb2.Struct()
    metadata.update({VERSION_KEY: f"{data[4]}.{data[5]}" if len(data) > 5 else ""})
    return Part(raw=data, media_type=MEDIA_TYPE, metadata=metadata)


def a2a_error(err: ProtocolError) -> A2AError:
    """The A2A error a refused part maps to (``A2A_ERRORS``), naming the protocol error in its data."""
    kind = next(a2a for protocol, a2a in A2A_ERRORS.items() if isinstance(err, protocol))
    return kind(message=f"{type(err).__name__}: {err}", data={ERROR_KEY: type(err).__name__})


def protocol_error(err: A2AError) -> ProtocolError | None:
    """The protocol error an A2A error reports (by name in its data), or None for another A2A error."""
    name = (err.data or {}).get(ERROR_KEY)
    kind = getattr(errors, name, None) if name in errors.__all__ else None
    return kind(err.message) if kind is not None else None


def check_part(part: Part, limits_bytes: int) -> None:
    """A part the server reads at all: text, or a raw latentcomm message of a major version it reads and at most
    ``limits_bytes`` long; the protocol's error otherwise (checked before any part is parsed)."""
    if part.HasField("text") and part.media_type in ("", "text/plain"):
        return
    if not part.HasField("raw") or part.media_type != MEDIA_TYPE:
        what = part.WhichOneof("content") or "empty"
        raise UnsupportedKind(f"a part must be text or {MEDIA_TYPE} bytes, got a {what} part of media type "
                              f"{part.media_type or 'none'}")
    version = json_format.MessageToDict(part.metadata).get(VERSION_KEY)
    if not isinstance(version, str) or version.split(".")[0] != str(FORMAT_VERSION[0]):
        raise UnsupportedVersion(f"part metadata {VERSION_KEY}={version!r}; this server reads format "
                                 f"{FORMAT_VERSION[0]}.x")
    if len(part.raw) > limits_bytes:
        raise LimitExceeded(f"part of {len(part.raw)} bytes > {limits_bytes}, the largest message allowed")


class LatentcommExecutor(AgentExecutor):
    """Runs one request on a latentcomm ``Agent``: reads the parts in order (text as is, latentcomm messages through
    ``agent.receive``) and answers them in one text message."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        parts = list(context.message.parts) if context.message else []
        try:
            for part in parts:
                check_part(part, self.agent.limits.max_message_bytes)
            said = [part.text if part.HasField("text") else await self.agent.receive(part.raw, strict=True)
                    for part in parts]
        except ProtocolError as err:
            raise a2a_error(err) from None
        if not parts:
            raise InvalidParamsError(message="the message has no parts")
        answer = await self.agent.respond(said)
        await event_queue.enqueue_event(new_text_message(answer, context_id=context.context_id,
                                                         task_id=context.task_id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise InvalidParamsError(message="a latentcomm request answers at once; there is nothing to cancel")


def agent_card(description: Description, url: str, *, about: str = "") -> AgentCard:
    """The card of a latentcomm agent served at ``url``: JSON-RPC, text and ``MEDIA_TYPE`` in, text out, and its
    ``Description`` in the ``EXTENSION_URI`` extension."""
    params = struct_pb2.Struct()
    params.update(description.to_dict() | {"media_type": MEDIA_TYPE,
                                           "format_version": f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"})
    extension = AgentExtension(uri=EXTENSION_URI, required=False, params=params,
                               description="reads latentcomm messages (latents, KV caches, texts) as raw parts")
    inputs = ["text/plain", MEDIA_TYPE]
    return AgentCard(
        name=description.name, description=about or f"latentcomm agent {description.name}", version=__version__,
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=False, extensions=[extension]),
        default_input_modes=inputs, default_output_modes=["text/plain"],
        skills=[AgentSkill(id="respond", name="respond", tags=["latentcomm"], input_modes=inputs,
                           description=f"answers text and the {', '.join(description.kinds)} messages it reads "
                                       "in context")])


def card_description(card: AgentCard) -> Description:
    """The ``Description`` an agent card lists (``MalformedMessage`` when it lists none, or a bad one)."""
    for extension in card.capabilities.extensions:
        if extension.uri == EXTENSION_URI:
            return Description.from_dict(json_format.MessageToDict(extension.params) | {"name": card.name})
    raise MalformedMessage(f"agent card {card.name!r} has no {EXTENSION_URI} extension: it reads no latentcomm "
                           "messages")


ANSWERS_READ = ("latent", "kv", "text")
"""What an agent's answer reads among its parts (``Agent.parts``): latents and texts, and one KV cache."""


async def a2a_app(agent: Agent, url: str, *, about: str = "") -> Starlette:
    """A Starlette app serving ``agent`` over A2A JSON-RPC at ``url`` (its card at the well-known path).

    The agent reads kinds its answer can read (``Agent(reads=...)`` within ``ANSWERS_READ``; the card lists them,
    a part of another kind is refused); its handlers read what arrives (``keep_latent`` keeps a latent to read in
    context)."""
    if set(agent.reads) - set(ANSWERS_READ):
        raise ValueError(f"an A2A agent answers on {', '.join(ANSWERS_READ)}: make it with reads= some of them, not "
                         f"{', '.join(agent.reads)}")
    card = agent_card(await agent.describe(), url, about=about or agent.role)
    handler = DefaultRequestHandler(agent_executor=LatentcommExecutor(agent), task_store=InMemoryTaskStore(),
                                    agent_card=card, validate_input_modes=True)
    return Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")])


class A2APeer:
    """A remote A2A agent that reads latentcomm messages, as a recipient of ``Agent.send``: ``describe`` reads its
    card (so ``kind="auto"`` chooses for it), ``receive`` sends the message as a part between the text parts
    ``before`` and ``ask`` (where given) and returns its text answer. A part the server refused raises the protocol
    error it names."""

    def __init__(self, client: Client, card: AgentCard, *, before: str = "", ask: str = "") -> None:
        self.client = client
        self.card = card
        self.name = card.name
        self.before = before
        self.ask = ask

    @classmethod
    async def connect(cls, url: str, *, http: httpx.AsyncClient | None = None, ask: str = "") -> "A2APeer":
        """The peer at ``url``: its card fetched (``/.well-known/agent-card.json``), a JSON-RPC client made."""
        http = http or httpx.AsyncClient(timeout=600)
        card = await A2ACardResolver(http, url).get_agent_card()
        return cls(ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card), card, ask=ask)

    async def describe(self, peer: Description | None = None) -> Description:
        return card_description(self.card)

    def asking(self, before: str = "", ask: str = "") -> "A2APeer":
        """The same peer (client, card) with other texts around the message."""
        return A2APeer(self.client, self.card, before=before, ask=ask)

    async def receive(self, data: bytes) -> str:
        return await self.send_parts(self._around(message_part(data)))

    async def send_text(self, text: str) -> str:
        """The same exchange in text: ``text`` as a text part in the message's place; the answer."""
        return await self.send_parts(self._around(Part(text=text)))

    def _around(self, part: Part) -> list[Part]:
        return [*([Part(text=self.before)] if self.before else []), part, *([Part(text=self.ask)] if self.ask else [])]

    async def send_parts(self, parts: list[Part]) -> str:
        """One A2A message of ``parts``; the text of the answer."""
        request = SendMessageRequest(message=Message(role=Role.ROLE_USER, parts=parts, message_id=uuid.uuid4().hex))
        try:
            async for response in self.client.send_message(request):
                if response.HasField("message"):
                    return get_message_text(response.message)
        except A2AError as err:
            refused = protocol_error(err)
            if refused is not None:
                raise refused from err
            raise
        raise MalformedMessage(f"{self.name} answered without a message")

    async def close(self) -> None:
        await self.client.close()


__all__ = ["A2APeer", "A2A_ERRORS", "ANSWERS_READ", "EXTENSION_URI", "LatentcommExecutor", "MEDIA_TYPE", "VERSION_KEY", "a2a_app",
           "a2a_error", "agent_card", "card_description", "check_part", "message_part", "protocol_error"]
