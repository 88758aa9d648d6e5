"""The HTTP API of ``latentcomm serve``: routes, content types, options and status codes (no torch, no Ray here).

    POST /compress   text  -> latent message        POST /decode    latent -> text
    POST /embed      text or latent -> embedding    POST /respond   text   -> text
    GET  /info       the replica's identity, what it reads, its limits and batch counters (JSON)

A request body is one packed protocol message (``application/x-latentcomm``, ``protocols/SPEC.md``: a "text"
message for text, a "latent" message for a latent) or JSON text, ``{"text": "...", <options>}``. Options go
in the query string (``/decode?max_new_tokens=32``) or, for JSON, in the body. Latents and embeddings come back
as protocol messages; text comes back as a "text" message, or as ``{"text": "..."}`` when the request was JSON
or asks for it (``Accept: application/json``). Replies keep the request's conversation, sender, recipient and
metadata. With HMAC keys, requests must be signed with one of them, and the reply is signed with the same key;
JSON is then refused.

Status codes: 400 malformed message or options (the ``ProtocolError`` text), 401 bad or missing signature,
404 unknown route, 405 not POST, 413 body or declared sizes over the protocol's limits (refused before the
body is read in full), 415 other content types, 422 a valid message the model cannot use (another backbone or
head), 500 anything else.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROTOCOL_TYPE = "application/x-latentcomm"
JSON_TYPE = "application/json"
ROUTES = ("compress", "embed", "decode", "respond")
KINDS_READ = ("latent", "text")
"""The message kinds the routes read (``GET /info``'s ``kinds``: a link chooses a latent or text for a server)."""

OPTIONS: dict[str, dict[str, type]] = {
    "compress": {"prompt": str, "dtype": str},
    "embed": {"prompt": str, "dtype": str},
    "decode": {"max_new_tokens": int},
    "respond": {"max_new_tokens": int, "temperature": float, "top_p": float, "repetition_penalty": float,
                "no_repeat_ngram_size": int, "seed": int},
}
"""The options of each route and their types."""


def parse_options(route: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (query-string strings or JSON values) as the typed options of ``route``; ValueError if unknown
    or of the wrong type."""
    known = OPTIONS[route]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for /{route}; it takes {sorted(known)}")
    options = {}
    for name, value in given.items():
        kind = known[name]
        if isinstance(value, str) and kind is not str:
            try:
                value = kind(value)
            except ValueError:
                raise ValueError(f"option {name}={value!r} is not a {kind.__name__}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise ValueError(f"option {name} must be a {kind.__name__}, got {type(value).__name__}")
        options[name] = value
    return options
