"""Links that choose their message kind: what each side runs (``Description``) and the rule that picks one.

Before the first message on a link the two sides exchange descriptions (an agent's ``describe()``, a server's
``GET /info``, an A2A agent card) and cache them. The rule (``candidates``, ``fits``):

* ``kv`` where both run the same backbone, the receiver takes "kv" messages and the cache fits the receiver's limits
  and the link's optional byte budget;
* ``latent`` where the receiver reads the head's latents: the same backbone and the same head fingerprint;
* ``text`` otherwise.

A receiver holds to its description: ``Description.refusal`` is the protocol error for a message it cannot read (a
latent or embedding of another head, a KV cache of another backbone, a kind it does not take).

    choice = choose(mine, theirs, makes=("kv", "latent", "text"), kv_bytes=1_900_000, byte_budget=1_000_000)
    choice.kind, choice.why    # ('latent', 'kv of 1900000 bytes over the byte budget 1000000; same head 3f2a...')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FingerprintMismatch, MalformedMessage, ProtocolError, UnsupportedKind
from .message import KINDS, LatentMessage
from .wire import DEFAULT_LIMITS, Limits

__all__ = ["Choice", "Description", "candidates", "choose", "fits"]

SENT_KINDS: tuple[str, ...] = ("kv", "latent", "text")
"""What a link may choose, in the order it prefers them."""
_WHY_LEN = 200
"""Reasons travel in message metadata (strings of at most ``Limits.max_string_len`` bytes): kept short."""


@dataclass(frozen=True)
class Description:
    """What one side of a link runs and reads: its backbone and head, the kinds it takes and its size limits."""

    name: str
    backbone_id: str
    fingerprint: str
    kinds: tuple[str, ...] = KINDS
    """The message kinds it reads."""
    max_payload_bytes: int = DEFAULT_LIMITS.max_payload_bytes
    max_elements: int = DEFAULT_LIMITS.max_elements

    def __post_init__(self) -> None:
        for name in ("name", "backbone_id", "fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise MalformedMessage(f"description: {name} must be a string")
        kinds = self.kinds
        if not isinstance(kinds, (tuple, list)) or not all(isinstance(k, str) and k in KINDS for k in kinds):
            raise MalformedMessage(f"description: kinds must be some of {KINDS}, got {kinds!r}")
        object.__setattr__(self, "kinds", tuple(kinds))
        for name in ("max_payload_bytes", "max_elements"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MalformedMessage(f"description: {name} must be an int >= 1, got {value!r}")

    @classmethod
    def of(cls, name: str, backbone_id: str, fingerprint: str, *, kinds: Sequence[str] = KINDS,
           limits: Limits = DEFAULT_LIMITS) -> "Description":
        """The description of a reader with these ``limits``."""
        return cls(name, backbone_id, fingerprint, tuple(kinds), limits.max_payload_bytes, limits.max_elements)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backbone_id": self.backbone_id, "fingerprint": self.fingerprint,
                "kinds": list(self.kinds), "max_payload_bytes": self.max_payload_bytes,
                "max_elements": self.max_elements}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "Description":
        """A description read from another side (JSON of ``GET /info``, an agent card): every field checked;
        ``MalformedMessage`` when one is missing or wrong."""
        if not isinstance(fields, Mapping):
            raise MalformedMessage(f"description: expected a mapping, got {type(fields).__name__}")
        missing = sorted({"backbone_id", "fingerprint", "kinds", "max_payload_bytes", "max_elements"} - set(fields))
        if missing:
            raise MalformedMessage(f"description: missing {', '.join(missing)}")
        return cls(fields.get("name", ""), fields["backbone_id"], fields["fingerprint"], fields["kinds"],
                   _whole(fields["max_payload_bytes"]), _whole(fields["max_elements"]))

    def refusal(self, message: LatentMessage) -> ProtocolError | None:
        """The error for a message this side cannot read (None when it can): a kind it does not take, a latent or
        an embedding of another head, a KV cache of another backbone."""
        if message.kind not in self.kinds:
            return UnsupportedKind(f"{self.name or 'the receiver'} does not take {message.kind!r} messages; it "
                                   f"takes {', '.join(self.kinds)}")
        if message.kind in ("latent", "embedding") and (message.fingerprint, message.backbone_id) != (
                self.fingerprint, self.backbone_id):
            return FingerprintMismatch(f"{self.name or 'the receiver'} reads the latents of head {self.fingerprint}"
                                       f" on {self.backbone_id}, not of {message.fingerprint or '?'} on "
                                       f"{message.backbone_id or '?'}")
        if message.kind == "kv" and message.backbone_id != self.backbone_id:
            return FingerprintMismatch(f"{self.name or 'the receiver'} reads KV caches of backbone "
                                       f"{self.backbone_id}, not of {message.backbone_id or '?'}")
        return None


@dataclass(frozen=True)
class Choice:
    """The kind a link sends, and why."""

    kind: str
    why: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "why", self.why[:_WHY_LEN])


def candidates(sender: Description, receiver: Description, *, makes: Sequence[str] = SENT_KINDS) -> list[Choice]:
    """The kinds ``sender`` may send ``receiver``, preferred first (kv, latent, text), each with its reason; kinds
    the sender cannot make from what it says are left out (``makes``). Whether a KV cache fits is ``fits``'s."""
    same_backbone = sender.backbone_id == receiver.backbone_id
    same_head = same_backbone and sender.fingerprint == receiver.fingerprint
    backbone = f"backbone {sender.backbone_id[:16]}"
    out = []
    if "kv" in makes and "kv" in receiver.kinds and same_backbone:
        out.append(Choice("kv", f"same {backbone}"))
    if "latent" in makes and "latent" in receiver.kinds and same_head:
        out.append(Choice("latent", f"same head {sender.fingerprint[:16]}"))
    if "text" in makes and "text" in receiver.kinds:
        if not same_backbone:
            why = f"another backbone ({receiver.backbone_id[:16]} vs {sender.backbone_id[:16]})"
        elif not same_head:
            why = f"another head ({receiver.fingerprint[:16]} vs {sender.fingerprint[:16]})"
        else:
            why = "same head, but no kv that fits and no latent to send"
        out.append(Choice("text", why))
    return out


def fits(receiver: Description, nbytes: int, elements: int, byte_budget: int | None = None) -> str | None:
    """Why a message of ``nbytes`` bytes and ``elements`` values does not fit ``receiver``'s limits or the byte
    budget (None when it fits)."""
    if byte_budget is not None and nbytes > byte_budget:
        return f"{nbytes} bytes over the byte budget {byte_budget}"
    if nbytes > receiver.max_payload_bytes:
        return f"{nbytes} bytes over the receiver's max_payload_bytes {receiver.max_payload_bytes}"
    if elements > receiver.max_elements:
        return f"{elements} values over the receiver's max_elements {receiver.max_elements}"
    return None


def choose(sender: Description, receiver: Description, *, makes: Sequence[str] = SENT_KINDS,
           kv_bytes: int | None = None, kv_elements: int | None = None, byte_budget: int | None = None) -> Choice:
    """The rule in one call, for a sender that knows its KV cache's size (``kv_bytes``, ``kv_elements``; a cache of
    unknown size is not sent): the first of ``candidates`` that fits."""
    passed: list[str] = []
    for choice in candidates(sender, receiver, makes=makes):
        if choice.kind == "kv":
            over = "its size is unknown" if kv_bytes is None else fits(receiver, kv_bytes, kv_elements or 0,
                                                                        byte_budget)
            if over is not None:
                passed.append(f"kv: {over}")
                continue
            return Choice("kv", f"{choice.why}; {kv_bytes} bytes fit")
        return Choice(choice.kind, "; ".join([*passed, choice.why]))
    raise UnsupportedKind(f"{receiver.name or 'the receiver'} takes none of {', '.join(makes)} "
                          f"(it takes {', '.join(receiver.kinds)})")


def _whole(value: Any) -> int:
    """A JSON number that is a whole number (JSON readers may give 1e6 as a float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
