"""The latent message: an immutable, self-validating record of one latent, embedding or text.

A ``LatentMessage`` that exists is valid: ``__post_init__`` checks every field's type, that
kind, dtype, shape and payload length agree, the payload's SHA-256, and that the payload holds
no NaN/Inf. Size limits are the wire's concern (``wire.Limits``).
"""

from __future__ import annotations

import hashlib
import math
import time
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import quantize
from .errors import ChecksumMismatch, InvalidPayload, MalformedMessage

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "KINDS",
    "LatentMessage",
    "MetaValue",
    "check_kind_dtype",
    "check_shape",
    "from_torch",
    "to_torch",
]

FORMAT_VERSION: tuple[int, int] = (1, 0)
KINDS: tuple[str, ...] = ("latent", "embedding", "text", "kv")
SHAPE_DIMS = {"latent": 2, "embedding": 1, "text": 1, "kv": 4}
"""Dimensions of each kind's shape: latent (n, H), embedding (D,), text (nbytes,), kv (2 x layers, heads, T, d)."""
DTYPES: tuple[str, ...] = (*quantize.TENSOR_DTYPES, "utf8")
MetaValue = str | int | float | bool

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_STR_FIELDS = ("message_id", "conversation_id", "sender", "recipient", "fingerprint", "backbone_id")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_utf8(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedMessage(f"{name} is not encodable as UTF-8 (lone surrogate?)") from None


def check_kind_dtype(kind: str, dtype: str) -> None:
    """``kind`` is one of ``KINDS`` and ``dtype`` one of ``DTYPES``; ``MalformedMessage`` otherwise."""
    if kind not in KINDS:
        raise MalformedMessage(f"unknown kind {kind!r}; expected one of {KINDS}")
    if dtype not in DTYPES:
        raise MalformedMessage(f"unknown dtype {dtype!r}; expected one of {DTYPES}")


def check_shape(shape: object) -> tuple[int, ...]:
    """``shape`` (a tuple or list) as a tuple of non-negative ints; ``MalformedMessage`` otherwise."""
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else None
    if dims is None or not all(_is_int(d) and d >= 0 for d in dims):
        raise MalformedMessage(f"shape must be a tuple of non-negative ints, got {shape!r}")
    return dims


def _check_metadata(metadata: object) -> Mapping[str, MetaValue]:
    if not isinstance(metadata, Mapping):
        raise MalformedMessage(f"metadata must be a mapping, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise MalformedMessage(f"metadata keys must be str, got {type(k).__name__}")
        _check_utf8("metadata key", k)
        if isinstance(v, str):
            _check_utf8(f"metadata[{k!r}]", v)
        elif isinstance(v, bool):
            pass
        elif _is_int(v):
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise MalformedMessage(f"metadata[{k!r}] = {v} does not fit in int64")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InvalidPayload(f"metadata[{k!r}] is {v}; floats must be finite")
        else:
            raise MalformedMessage(f"metadata[{k!r}] has type {type(v).__name__}; allowed: str, int, float, bool")
    return types.MappingProxyType(dict(metadata))


def _as_payload(payload: object) -> bytes | memoryview:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, memoryview):
        if payload.ndim != 1 or payload.itemsize != 1 or not payload.c_contiguous:
            raise MalformedMessage("payload memoryview must be 1-D contiguous bytes")
        return payload.cast("B").toreadonly()
    raise MalformedMessage(f"payload must be bytes or memoryview, got {type(payload).__name__}")


@dataclass(frozen=True, kw_only=True)
class LatentMessage:
    """One message: a latent (n, H), an embedding (D,), UTF-8 text, or a key/value cache (2 x layers, heads, T, d),
    plus who/what/when.

    ``created_ns`` is integer Unix time in nanoseconds. ``sha256`` is the payload's SHA-256
    (computed when left empty). ``version`` and ``signature`` record what ``unpack`` read;
    ``pack`` always writes ``FORMAT_VERSION`` and signs only when given a key.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str
    payload: bytes | memoryview = field(repr=False)
    sender: str = ""
    recipient: str = ""
    conversation_id: str = ""
    fingerprint: str = ""
    backbone_id: str = ""
    metadata: Mapping[str, MetaValue] = field(default_factory=dict)
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_ns: int = field(default_factory=time.time_ns)
    version: tuple[int, int] = field(default=FORMAT_VERSION, compare=False)
    sha256: bytes = field(default=b"", repr=False)
    signature: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise MalformedMessage(f"{name} must be str, got {type(value).__name__}")
            _check_utf8(name, value)
        if not self.message_id:
            raise MalformedMessage("message_id must not be empty")
        if not (_is_int(self.created_ns) and 0 <= self.created_ns <= _INT64_MAX):
            raise MalformedMessage(f"created_ns must be an int in [0, 2**63), got {self.created_ns!r}")
        version = tuple(self.version) if isinstance(self.version, (tuple, list)) else ()
        if not (len(version) == 2 and all(_is_int(v) and 0 <= v <= 255 for v in version)):
            raise MalformedMessage(f"version must be (major, minor) with 0..255 each, got {self.version!r}")
        object.__setattr__(self, "version", version)
        self._check_kind_dtype_shape()
        payload = _as_payload(self.payload)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "metadata", _check_metadata(self.metadata))
        if self.signature is not None and not (isinstance(self.signature, bytes) and len(self.signature) == 32):
            raise MalformedMessage("signature must be None or 32 bytes")
        if not isinstance(self.sha256, bytes) or len(self.sha256) not in (0, 32):
            raise MalformedMessage("sha256 must be 32 bytes (or empty to compute it)")
        if self.kind == "text" and len(payload) != self.shape[0]:
            raise MalformedMessage(f"text payload is {len(payload)} bytes but shape says {self.shape[0]}")
        if self.kind != "text":
            expected = quantize.payload_nbytes(self.dtype, self.shape)
            if len(payload) != expected:
                raise MalformedMessage(
                    f"payload is {len(payload)} bytes but shape {self.shape} as {self.dtype} needs {expected}"
                )
        digest = hashlib.sha256(payload).digest()
        if not self.sha256:
            object.__setattr__(self, "sha256", digest)
        elif self.sha256 != digest:
            raise ChecksumMismatch(f"payload sha256 is {digest.hex()[:16]}..., header says {self.sha256.hex()[:16]}...")
        if self.kind == "text":
            try:
                str(payload, "utf-8")
            except UnicodeDecodeError as e:
                raise InvalidPayload(f"text payload is not valid UTF-8: {e.reason} at byte {e.start}") from None
        else:
            quantize.check_payload(payload, self.dtype, self.shape)

    def _check_kind_dtype_shape(self) -> None:
        check_kind_dtype(self.kind, self.dtype)
        if (self.kind == "text") != (self.dtype == "utf8"):
            raise MalformedMessage(f"kind {self.kind!r} cannot use dtype {self.dtype!r} (utf8 is for text only)")
        shape = check_shape(self.shape)
        want_dims = SHAPE_DIMS[self.kind]
        if len(shape) != want_dims:
            raise MalformedMessage(f"kind {self.kind!r} needs a {want_dims}-D shape, got {shape}")
        if self.kind != "text" and min(shape) < 1:
            raise MalformedMessage(f"kind {self.kind!r} needs every dimension >= 1, got {shape}")
        object.__setattr__(self, "shape", shape)

    def __hash__(self) -> int:
        return hash(self.message_id)

    @classmethod
    def from_array(
        cls,
        array: Any,
        *,
        kind: str | None = None,
        dtype: str = "float16",
        sender: str = "",
        recipient: str = "",
        conversation_id: str = "",
        fingerprint: str = "",
        backbone_id: str = "",
        metadata: Mapping[str, MetaValue] | None = None,
        message_id: str | None = None,
        created_ns: int | None = None,
    ) -> LatentMessage:
        """Build a message from a float array: (n, H) is a "latent", (D,) an "embedding", 4-D a "kv" by default."""
        x = np.asarray(array, dtype=np.float32)
        kind = kind if kind is not None else {2: "latent", 4: "kv"}.get(x.ndim, "embedding")
        if kind not in ("latent", "embedding", "kv"):
            raise MalformedMessage(f"from_array makes 'latent', 'embedding' or 'kv' messages, not {kind!r}")
        return cls(
            kind=kind,
            shape=tuple(int(d) for d in x.shape),
            dtype=dtype,
            payload=quantize.encode(x, dtype),
            sender=sender,
            recipient=recipient,
            conversation_id=conversation_id,
            fingerprint=fingerprint,
            backbone_id=backbone_id,
            metadata={} if metadata is None else metadata,
            message_id=uuid.uuid4().hex if message_id is None else message_id,
            created_ns=time.time_ns() if created_ns is None else created_ns,
        )

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        sender: str = "",
        recipient: str = "",
        conversation_id: str = "",
        fingerprint: str = "",
        backbone_id: str = "",
        metadata: Mapping[str, MetaValue] | None = None,
        message_id: str | None = None,
        created_ns: int | None = None,
    ) -> LatentMessage:
        """Build a "text" message; the payload is ``text`` encoded as UTF-8."""
        if not isinstance(text, str):
            raise MalformedMessage(f"text must be str, got {type(text).__name__}")
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidPayload(f"text cannot be encoded as UTF-8: {e.reason}") from None
        return cls(
            kind="text",
            shape=(len(payload),),
            dtype="utf8",
            payload=payload,
            sender=sender,
            recipient=recipient,
            conversation_id=conversation_id,
            fingerprint=fingerprint,
            backbone_id=backbone_id,
            metadata={} if metadata is None else metadata,
            message_id=uuid.uuid4().hex if message_id is None else message_id,
            created_ns=time.time_ns() if created_ns is None else created_ns,
        )

    def array(self) -> np.ndarray:
        """The payload as float32 of ``shape``, dequantised; float32 payloads are a read-only zero-copy view."""
        if self.kind == "text":
            raise TypeError("a text message has no array; use .text()")
        return quantize.decode(self.payload, self.dtype, self.shape)

    def text(self) -> str:
        """The payload of a "text" message as a str."""
        if self.kind != "text":
            raise TypeError(f"a {self.kind} message has no text; use .array()")
        return str(self.payload, "utf-8")


def to_torch(msg: LatentMessage, device: str | torch.device | None = None) -> torch.Tensor:
    """The message's array as a float32 ``torch.Tensor`` (imports torch lazily)."""
    import torch

    x = msg.array()
    tensor = torch.from_numpy(x if x.flags.writeable else x.copy())
    return tensor if device is None else tensor.to(device)


def from_torch(tensor: torch.Tensor, **kwargs: Any) -> LatentMessage:
    """``LatentMessage.from_array`` for a tensor on any device or dtype; kwargs as there."""
    return LatentMessage.from_array(tensor.detach().float().cpu().numpy(), **kwargs)
