"""``latentcomm serve``: the model replicas behind an HTTP front door on Ray Serve (the API: ``latentcomm.http.api``).

Each Serve replica of the ``latentcomm`` deployment holds one ``Replica`` (backbone + head), so concurrent HTTP
requests to it batch as they do for agents (``ReplicaConfig.batching``). Ray Serve does the rest: the HTTP
proxy, routing between replicas, health checks (a replica that stops answering is replaced) and autoscaling
between the bounds given by flags. A body declared (``Content-Length``) over the largest message the protocol's
limits allow is refused with 413 before any of it is read; a chunked one as soon as it passes that size. Request
bytes are verified (signature, limits, layout) and parsed once, before any model work; the replica reads that
parsed message, and packs its reply addressed to the request's routing, which the front door only signs.

    latentcomm serve --port 8000 --min-replicas 1 --max-replicas 4 --key-file key.hex
    curl -s -X POST localhost:8000/respond -H 'Content-Type: application/json' -d '{"text": "Hi!"}'
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcomm.cli.parser import add_config_arguments, backbone_source, config_from_args, count, existing_file, \
    head_folder, number, parser
from latentcomm.errors import LatentcommError
from latentcomm.http.api import JSON_TYPE, KINDS_READ, PROTOCOL_TYPE, ROUTES, parse_options
from latentcomm.engine.messaging import routing_of
from latentcomm.protocols import DEFAULT_LIMITS, LatentMessage, Limits, LimitExceeded, MalformedMessage, \
    ProtocolError, SignatureError, pack, sign, unpack
from latentcomm.engine.replica import Replica, ReplicaConfig

log = logging.getLogger(__name__)

APP_NAME = "latentcomm"


@dataclass(frozen=True)
class ServeConfig:
    """Where the front door listens, how many replicas serve it, and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    min_replicas: int = 1
    max_replicas: int = 1
    """Above ``min_replicas``, Serve adds replicas while requests queue (autoscaling) and removes idle ones."""
    target_ongoing_requests: float = 16.0
    """Requests in flight per replica that autoscaling aims at (batching wants several at once)."""
    max_ongoing_requests: int = 64
    """Requests one replica takes at once; more wait in the proxy."""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    key_file: str | None = None
    """HMAC keys, one hex string per line (one per peer, or old and new while rotating): requests must be signed
    with one of them, and the reply is signed with the same key. Without keys JSON bodies are accepted too."""
    max_payload_bytes: int = DEFAULT_LIMITS.max_payload_bytes
    """The largest message payload accepted (the protocol's ``Limits``); bodies are refused above the largest
    message it allows."""
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.max_ongoing_requests < 1 or self.target_ongoing_requests <= 0:
            raise ValueError("max_ongoing_requests must be >= 1 and target_ongoing_requests > 0")

    @property
    def limits(self) -> Limits:
        """The replica's limits with this front door's payload bound (they hold in the replicas too)."""
        return dataclasses.replace(self.replica.limits, max_payload_bytes=self.max_payload_bytes)

    def keys(self) -> tuple[bytes, ...]:
        """The HMAC keys of ``key_file`` (none without one)."""
        if self.key_file is None:
            return ()
        lines = [line.strip() for line in Path(self.key_file).read_text().splitlines() if line.strip()]
        try:
            keys = tuple(bytes.fromhex(line) for line in lines)
        except ValueError:
            raise ValueError(f"{self.key_file}: every line must be a hex key") from None
        if not keys or not all(keys):
            raise ValueError(f"{self.key_file} holds no key")
        return keys


class BodyTooLarge(ValueError):
    """A request body over the largest message allowed (HTTP 413)."""


async def read_body(chunks: AsyncIterator[bytes], headers: list[tuple[bytes, bytes]], limit: int) -> bytes:
    """The whole body, or BodyTooLarge when ``Content-Length`` says it is over ``limit`` (before reading any of
    it) or as soon as the bytes read pass ``limit``."""
    for name, value in headers:
        if name.lower() == b"content-length":
            if not value.isdigit():
                raise ValueError(f"bad Content-Length {value[:32]!r}")
            if int(value) > limit:
                raise BodyTooLarge(f"body of {int(value)} bytes > {limit} bytes, the largest message allowed")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"body of more than {limit} bytes, the largest message allowed")
    return bytes(body)


class HTTPError(Exception):
    """A request refused with ``status``; the message is the reply body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(err: Exception) -> int:
    """The HTTP status of an error raised while serving a request."""
    if isinstance(err, HTTPError):
        return err.status
    if isinstance(err, (LimitExceeded, BodyTooLarge)):
        return 413
    if isinstance(err, SignatureError):
        return 401
    if isinstance(err, ProtocolError):
        return 400
    if isinstance(err, LatentcommError):
        return 422
    if isinstance(err, (TypeError, ValueError)):
        return 400
    return 500


class LatentcommServer:
    """The Serve deployment: one model replica answering the routes of ``latentcomm.http.api``."""

    def __init__(self, replica: ReplicaConfig, keys: tuple[bytes, ...] = (), limits: Limits = DEFAULT_LIMITS
                 ) -> None:
        self.replica = Replica(replica)
        self.keys = keys
        self.limits = limits

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse, Response

        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if route == "info" and request.method == "GET":
                return JSONResponse(self.replica.info() | {"kinds": list(KINDS_READ),
                                                            "max_payload_bytes": self.limits.max_payload_bytes,
                                                            "max_elements": self.limits.max_elements,
                                                            "counters": self.replica.counters()})
            if route not in ROUTES:
                raise HTTPError(404, f"no route /{route}; POST to one of {['/' + r for r in ROUTES]} or GET /info")
            if request.method != "POST":
                raise HTTPError(405, f"/{route} takes POST")
            body = await read_body(request.stream(), request.scope.get("headers", []), self.limits.max_message_bytes)
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            key = None
            if kind == PROTOCOL_TYPE:
                (message, key), options = self._verify(body), parse_options(route, dict(request.query_params))
            elif kind == JSON_TYPE:
                message, options = self._json(route, body)
            else:
                raise HTTPError(415, f"send {PROTOCOL_TYPE} (a packed message) or {JSON_TYPE}, not {kind!r}")
            reply = await getattr(self, f"_{route}")(message, options)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            status = status_of(err)
            if status == 500:
                log.exception("serving /%s failed", route)
            return PlainTextResponse(f"{type(err).__name__}: {err}", status_code=status)
        if isinstance(reply, str):
            if kind == JSON_TYPE or JSON_TYPE in request.headers.get("accept", ""):
                return JSONResponse({"text": reply, "conversation_id": message.conversation_id})
            reply = pack(LatentMessage.from_text(reply, **routing_of(message)))
        return Response(reply if key is None else sign(reply, key), media_type=PROTOCOL_TYPE)

    # ---- parsing --------------------------------------------------------------------------------------
    def _verify(self, body: bytes) -> tuple[LatentMessage, bytes | None]:
        """The request message, checked against the limits, and the key it is signed with (when there are keys)."""
        if not self.keys:
            return unpack(body, limits=self.limits), None
        error: SignatureError | None = None
        for key in self.keys:
            try:
                return unpack(body, key=key, limits=self.limits), key
            except SignatureError as err:
                error = err
        raise error  # type: ignore[misc]

    def _json(self, route: str, body: bytes) -> tuple[LatentMessage, dict[str, Any]]:
        if self.keys:
            raise HTTPError(401, f"this server takes signed {PROTOCOL_TYPE} messages only")
        if route == "decode":
            raise HTTPError(400, f"/decode reads a latent: send it as {PROTOCOL_TYPE}")
        try:
            fields = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HTTPError(400, f"bad JSON: {err}") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("text"), str):
            raise HTTPError(400, 'expected a JSON object {"text": "...", <options>}')
        text = fields.pop("text")
        conversation = fields.pop("conversation_id", "")
        if not isinstance(conversation, str):
            raise HTTPError(400, "conversation_id must be a string")
        return LatentMessage.from_text(text, conversation_id=conversation), parse_options(route, fields)

    # ---- routes: a packed reply (unsigned, addressed to the request's routing) or a text ----------------------
    async def _compress(self, message: LatentMessage, options: dict[str, Any]) -> bytes:
        [data] = await self.replica.compress([_text_of(message, "compress")], routing=[routing_of(message)],
                                             **options)
        return data

    async def _embed(self, message: LatentMessage, options: dict[str, Any]) -> bytes:
        if message.kind == "latent":
            [data] = await self.replica.embed([message], dtype=options.get("dtype", "float32"))
        else:
            [data] = await self.replica.embed_texts([_text_of(message, "embed")], routing=[routing_of(message)],
                                                    **options)
        return data

    async def _decode(self, message: LatentMessage, options: dict[str, Any]) -> str:
        if message.kind != "latent":
            raise MalformedMessage(f"/decode reads a latent message, got a {message.kind!r} one")
        [text] = await self.replica.decode([message], **options)
        return text

    async def _respond(self, message: LatentMessage, options: dict[str, Any]) -> str:
        [text] = await self.replica.respond([_text_of(message, "respond")], **options)
        return text


def _text_of(message: LatentMessage, route: str) -> str:
    if message.kind != "text":
        raise MalformedMessage(f"/{route} reads a text message, got a {message.kind!r} one")
    return message.text()


def start(config: ServeConfig, *, name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Start Serve on the running Ray cluster (once) and deploy the front door of ``config`` as application
    ``name`` under ``route_prefix``; returns its URL."""
    from ray import serve

    limits = config.limits
    serve.start(http_options={"host": config.host, "port": config.port})
    scale: dict[str, Any] = {"num_replicas": config.min_replicas} if config.min_replicas == config.max_replicas else \
        {"autoscaling_config": {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
                                "target_ongoing_requests": config.target_ongoing_requests}}
    deployment = serve.deployment(LatentcommServer, name=name).options(
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        max_ongoing_requests=config.max_ongoing_requests, **scale)
    replica = dataclasses.replace(config.replica, limits=limits)
    serve.run(deployment.bind(replica, config.keys(), limits), name=name, route_prefix=route_prefix)
    return f"http://{config.host}:{config.port}{route_prefix.rstrip('/')}"


_HELP = {
    "host": "address to listen on (keep 127.0.0.1 unless the port is protected)",
    "port": "HTTP port of the front door",
    "target_ongoing_requests": "requests in flight per replica that autoscaling aims at",
    "max_ongoing_requests": "requests one replica takes at once (more wait in the proxy)",
    "num_cpus": "CPUs Ray reserves per replica",
    "num_gpus": "GPUs Ray reserves per replica",
    "int8": "dynamically quantised int8 linears in the backbone (CPU)",
    "weights_dtype": "backbone weights dtype (float32, bfloat16, ...; default: the device's fast one)",
    "device": "torch device of each replica (default: cuda if visible, else cpu)",
    "max_new_tokens": "default decode/respond budget per request",
    "min_replicas": "model replicas at least (autoscaling lower bound)",
    "max_replicas": "model replicas at most (autoscaling upper bound; equal to --min-replicas: fixed)",
    "key_file": "file of HMAC keys, one hex string per line (requests must be signed)",
    "max_payload_bytes": "largest message payload accepted (protocol limit); larger bodies get 413",
    "backbone": "frozen backbone: the default alias, a Hugging Face folder/id or a .gguf file",
    "head": "saved head folder (default: the shipped head)",
    "batching": "batch concurrent requests (--no-batching: each request alone, generation one row at a time)",
    "max_batch_size": "most rows in one forward pass or running generation",
    "max_wait_s": "how long a compress/embed request waits for others to share its pass",
    "regroup_share": "while callers of the last pass are still to come back, wait for them up to this share of "
                     "its duration (0: never)",
    "num_threads": "torch CPU threads per replica",
}


_FLAG_TYPES = {
    "port": count(1), "min_replicas": count(1), "max_replicas": count(1), "max_ongoing_requests": count(1),
    "target_ongoing_requests": number(0, above=True), "num_cpus": number(0), "num_gpus": number(0),
    "key_file": existing_file, "max_payload_bytes": count(1), "backbone": backbone_source, "head": head_folder,
    "num_threads": count(1), "max_new_tokens": count(1), "max_batch_size": count(1), "max_wait_s": number(0),
    "regroup_share": number(0, 1),
}


def main(argv: list[str] | None = None) -> int:
    p = parser("serve", "the model replicas behind an HTTP front door (Ray Serve)")
    add_config_arguments(p, ServeConfig, helps=_HELP, flag_types=_FLAG_TYPES, exclude=("limits",))
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    args = p.parse_args(argv)
    config = config_from_args(ServeConfig, args)
    config.keys()  # a bad key file fails here, before Ray starts
    from ray import serve

    from latentcomm.runtime.cluster import init_ray

    init_ray(args.address)
    url = start(config)
    print(f"latentcomm serve: {url} (POST /compress /embed /decode /respond, GET /info); Ctrl-C stops it",
          flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
