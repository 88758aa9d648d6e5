"""A small client of ``latentcomm serve`` (see ``latentcomm.http.api``): protocol messages over HTTP, no torch.

It needs only the standard library and ``latentcomm.protocols`` (msgpack, numpy), so any process can hold
one; a service in another language speaks the same bytes (``protocols/SPEC.md``) with its own HTTP client.

    client = Client("http://127.0.0.1:8000", key=shared_key)
    latent = client.compress("Why is the sky blue?", conversation_id="c1")   # a LatentMessage
    client.decode(latent, max_new_tokens=32)                                 # text
    client.choose(mine).kind          # what to send it: "latent" where it runs my head, else "text" (GET /info, once)
"""
from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from latentcomm.errors import RequestError
from latentcomm.http.api import PROTOCOL_TYPE, parse_options
from latentcomm.protocols import Choice, Description, LatentMessage, choose, pack, unpack


class Client:
    """One keep-alive connection to a server (use one client per thread); requests signed when given a key."""

    def __init__(self, url: str, *, key: bytes | None = None, timeout_s: float = 120.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s)://host:port URL, got {url!r}")
        self.url = url.rstrip("/")
        self.key = key
        self._path = parts.path.rstrip("/")
        connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._connection = connection(parts.hostname, parts.port, timeout=timeout_s)
        self._description: Description | None = None

    def compress(self, text: str, *, prompt: str | None = None, dtype: str = "float16", **routing: Any
                 ) -> LatentMessage:
        """The latent of ``text`` (one forward pass on the server), with the routing fields given."""
        return self.post("compress", LatentMessage.from_text(text, **routing), prompt=prompt, dtype=dtype)

    def embed(self, item: str | LatentMessage, *, dtype: str = "float32", prompt: str | None = None,
              **routing: Any) -> LatentMessage:
        """The embedding message of a text, or of a latent made by the server's head."""
        message = LatentMessage.from_text(item, **routing) if isinstance(item, str) else item
        return self.post("embed", message, dtype=dtype, prompt=prompt)

    def decode(self, latent: LatentMessage, *, max_new_tokens: int | None = None) -> str:
        """The text the server's frozen LLM writes from ``latent``."""
        return self.post("decode", latent, max_new_tokens=max_new_tokens).text()

    def respond(self, text: str, **options: Any) -> str:
        """The backbone's own answer to ``text`` (options: ``max_new_tokens``, sampling, ``seed``)."""
        return self.post("respond", LatentMessage.from_text(text), **options).text()

    def info(self) -> dict[str, Any]:
        """The identity of the replica that answered: backbone, head fingerprint, latent shape, batching."""
        status, _, body = self._request("GET", f"{self._path}/info", b"", {})
        if status != 200:
            raise RequestError(status, body.decode("utf-8", "replace"))
        return json.loads(body)

    def describe(self, *, refresh: bool = False) -> Description:
        """What the server runs and reads (``GET /info``: backbone, head, the kinds its routes read, its limits),
        asked once and kept (``refresh``: asked again); ``MalformedMessage`` if a field is missing or wrong."""
        if refresh or self._description is None:
            self._description = Description.from_dict(self.info())
        return self._description

    def choose(self, sender: Description, *, kv_bytes: int | None = None, kv_elements: int | None = None,
               byte_budget: int | None = None) -> Choice:
        """The kind ``sender`` should send this server: the rule of ``latentcomm.protocols.link`` against
        ``describe()`` (the front door reads latents of its own head and text)."""
        return choose(sender, self.describe(), kv_bytes=kv_bytes, kv_elements=kv_elements, byte_budget=byte_budget)

    def post(self, route: str, message: LatentMessage, **options: Any) -> LatentMessage:
        """POST one message to ``/route`` with ``options`` (None values left out); the reply message, verified."""
        given = {k: v for k, v in options.items() if v is not None}
        parse_options(route, given)  # a typo fails here, before the network
        query = f"?{urllib.parse.urlencode(given)}" if given else ""
        status, kind, body = self._request("POST", f"{self._path}/{route}{query}", pack(message, key=self.key),
                                           {"Content-Type": PROTOCOL_TYPE})
        if status != 200:
            raise RequestError(status, body.decode("utf-8", "replace"))
        if kind != PROTOCOL_TYPE:
            raise RequestError(status, f"expected a {PROTOCOL_TYPE} reply, got {kind!r}")
        return unpack(body, key=self.key)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str, bytes]:
        """One request on the kept-alive connection, reconnecting once if the server closed it meanwhile."""
        for attempt in (0, 1):
            try:
                self._connection.request(method, path, body=body, headers=dict(headers))
                response = self._connection.getresponse()
                return response.status, response.getheader("Content-Type", ""), response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

