"""Wire format: ``pack`` a LatentMessage to bytes and strictly ``unpack`` bytes back (see SPEC.md).

Layout: 12-byte prefix (magic, major, minor, flags, reserved, u32 LE header length), a msgpack
header map, zero padding to an 8-byte boundary, the raw payload, and, when flag bit 0 is set,
a 32-byte HMAC-SHA256 over everything before it. Every size is checked against ``Limits`` and
against the bytes actually present before anything is allocated or parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from . import quantize
from .errors import (
    FingerprintMismatch,
    LimitExceeded,
    MalformedMessage,
    ProtocolError,
    SignatureError,
    UnsupportedVersion,
)
from .message import DTYPES, FORMAT_VERSION, KINDS, LatentMessage

__all__ = ["DEFAULT_LIMITS", "MAGIC", "PREFIX_SIZE", "SIGNATURE_SIZE", "Limits", "pack", "unpack"]

MAGIC = b"\x89LCM"
_PREFIX = struct.Struct("<4sBBBBI")  # magic, major, minor, flags, reserved, header_len
PREFIX_SIZE = _PREFIX.size
SIGNATURE_SIZE = 32
_FLAG_SIGNED = 0x01
_ALIGN = 8
_HEADER_KEYS = frozenset(
    {
        "id",
        "kind",
        "conversation",
        "sender",
        "recipient",
        "created_ns",
        "fingerprint",
        "backbone",
        "dtype",
        "shape",
        "nbytes",
        "sha256",
        "meta",
    }
)


@dataclass(frozen=True)
class Limits:
    """Reader/writer bounds; a message outside them raises ``LimitExceeded``."""

    max_header_bytes: int = 64 * 1024
    max_payload_bytes: int = 64 * 1024 * 1024
    max_elements: int = 16 * 1024 * 1024
    max_dims: int = 4
    max_header_keys: int = 64
    max_metadata_items: int = 32
    max_string_len: int = 256

    @property
    def max_message_bytes(self) -> int:
        """Largest possible packed message under these limits."""
        return PREFIX_SIZE + self.max_header_bytes + _ALIGN - 1 + self.max_payload_bytes + SIGNATURE_SIZE


DEFAULT_LIMITS = Limits()


def _padding(header_len: int) -> int:
    return -(PREFIX_SIZE + header_len) % _ALIGN


def _check_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("key must be non-empty bytes (32 random bytes recommended)")
    return bytes(key)


def _check_sizes(shape: tuple[int, ...], nbytes: int, n_meta: int, limits: Limits) -> None:
    if len(shape) > limits.max_dims:
        raise LimitExceeded(f"{len(shape)} dims > max_dims {limits.max_dims}")
    if nbytes > limits.max_payload_bytes:
        raise LimitExceeded(f"payload of {nbytes} bytes > max_payload_bytes {limits.max_payload_bytes}")
    elements = math.prod(shape)
    if elements > limits.max_elements:
        raise LimitExceeded(f"{elements} elements > max_elements {limits.max_elements}")
    if n_meta > limits.max_metadata_items:
        raise LimitExceeded(f"{n_meta} metadata items > max_metadata_items {limits.max_metadata_items}")


def pack(msg: LatentMessage, *, key: bytes | None = None, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Serialise ``msg`` (signed with HMAC-SHA256 when ``key`` is given); raises ``LimitExceeded``."""
    if not isinstance(msg, LatentMessage):
        raise TypeError(f"pack expects a LatentMessage, got {type(msg).__name__}")
    _check_sizes(msg.shape, len(msg.payload), len(msg.metadata), limits)
    strings = [msg.message_id, msg.conversation_id, msg.sender, msg.recipient, msg.fingerprint, msg.backbone_id]
    strings += [s for kv in msg.metadata.items() for s in kv if isinstance(s, str)]
    for s in strings:
        if len(s.encode("utf-8")) > limits.max_string_len:
            raise LimitExceeded(f"string {s[:32]!r}... longer than max_string_len {limits.max_string_len} bytes")
    header = msgpack.packb(
        {
            "id": msg.message_id,
            "kind": msg.kind,
            "conversation": msg.conversation_id,
            "sender": msg.sender,
            "recipient": msg.recipient,
            "created_ns": msg.created_ns,
            "fingerprint": msg.fingerprint,
            "backbone": msg.backbone_id,
            "dtype": msg.dtype,
            "shape": list(msg.shape),
            "nbytes": len(msg.payload),
            "sha256": msg.sha256,
            "meta": dict(msg.metadata),
        },
        use_bin_type=True,
    )
    if len(header) > limits.max_header_bytes:
        raise LimitExceeded(f"header of {len(header)} bytes > max_header_bytes {limits.max_header_bytes}")
    flags = _FLAG_SIGNED if key is not None else 0
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION[0], FORMAT_VERSION[1], flags, 0, len(header))
    body = b"".join((prefix, header, b"\x00" * _padding(len(header)), msg.payload))
    if key is None:
        return body
    return body + hmac.new(_check_key(key), body, hashlib.sha256).digest()


def _unique_str_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if not isinstance(k, str):
            raise MalformedMessage(f"header map keys must be str, got {type(k).__name__}")
        if k in out:
            raise MalformedMessage(f"duplicate header key {k!r}")
        out[k] = v
    return out


def _parse_header(raw: memoryview, limits: Limits) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_unique_str_keys,
            max_ext_len=0,
            max_str_len=limits.max_string_len,
            max_bin_len=SIGNATURE_SIZE,
            max_array_len=max(limits.max_dims, limits.max_header_keys),
            max_map_len=max(limits.max_header_keys, limits.max_metadata_items),
        )
    except ProtocolError:
        raise
    except Exception as e:
        if "max_ext_len" in str(e):
            raise MalformedMessage("msgpack ext types are not allowed in the header") from None
        if "exceeds max_" in str(e):
            raise LimitExceeded(f"header: {e}") from None
        raise MalformedMessage(f"header is not one valid msgpack map: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"header must be a msgpack map, got {type(header).__name__}")
    return header


def _field(header: dict[str, Any], name: str, typ: type | tuple[type, ...]) -> Any:
    if name not in header:
        raise MalformedMessage(f"header is missing required key {name!r}")
    value = header[name]
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise MalformedMessage(f"header key {name!r} has type {type(value).__name__}")
    return value


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    key: bytes | None = None,
    require_signature: bool | None = None,
    expect_fingerprint: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> LatentMessage:
    """Parse and fully validate one packed message; any bad input raises a ``ProtocolError``.

    ``require_signature`` defaults to ``key is not None``. A signature is verified only when a
    key is given. The returned payload is a zero-copy read-only view of ``data``.
    """
    if require_signature is None:
        require_signature = key is not None
    if require_signature and key is None:
        raise ValueError("require_signature=True needs a key")
    if key is not None:
        key = _check_key(key)
    try:
        mv = memoryview(data)
    except TypeError:
        raise MalformedMessage(f"expected a bytes-like object, got {type(data).__name__}") from None
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
        raise MalformedMessage("expected a contiguous 1-D byte buffer")
    mv = mv.cast("B").toreadonly()
    n = len(mv)

    if n > limits.max_message_bytes:
        raise LimitExceeded(f"message of {n} bytes > largest allowed {limits.max_message_bytes}")
    if n < PREFIX_SIZE:
        raise MalformedMessage(f"truncated: {n} bytes, the prefix alone is {PREFIX_SIZE}")
    magic, major, minor, flags, reserved, header_len = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise MalformedMessage(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if major != FORMAT_VERSION[0]:
        raise UnsupportedVersion(f"format {major}.{minor}: this reader supports major {FORMAT_VERSION[0]} only")
    if flags & ~_FLAG_SIGNED or reserved:
        raise MalformedMessage(f"reserved prefix bits set (flags={flags:#04x}, reserved={reserved:#04x})")
    if header_len == 0:
        raise MalformedMessage("header length is 0")
    if header_len > limits.max_header_bytes:
        raise LimitExceeded(f"header of {header_len} bytes > max_header_bytes {limits.max_header_bytes}")
    signed = bool(flags & _FLAG_SIGNED)
    payload_start = PREFIX_SIZE + header_len + _padding(header_len)
    trailer = SIGNATURE_SIZE if signed else 0
    if n < payload_start + trailer:
        raise MalformedMessage(f"truncated: {n} bytes, header and padding end at {payload_start + trailer}")

    signature = bytes(mv[n - SIGNATURE_SIZE :]) if signed else None
    if require_signature and not signed:
        raise SignatureError("message is unsigned but a signature is required")
    if signed and key is not None:
        expected_sig = hmac.new(key, mv[: n - SIGNATURE_SIZE], hashlib.sha256).digest()
        if not hmac.compare_digest(expected_sig, signature):
            raise SignatureError("HMAC-SHA256 signature does not verify (tampered, or a different key)")

    header = _parse_header(mv[PREFIX_SIZE : PREFIX_SIZE + header_len], limits)
    if minor <= FORMAT_VERSION[1]:
        unknown = sorted(set(header) - _HEADER_KEYS)
        if unknown:
            raise MalformedMessage(f"unknown header keys {unknown} in a {major}.{minor} message")
    kind = _field(header, "kind", str)
    dtype = _field(header, "dtype", str)
    if kind not in KINDS:
        raise MalformedMessage(f"unknown kind {kind!r}; expected one of {KINDS}")
    if dtype not in DTYPES:
        raise MalformedMessage(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
    shape = _field(header, "shape", list)
    if len(shape) > limits.max_dims:
        raise LimitExceeded(f"{len(shape)} dims > max_dims {limits.max_dims}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MalformedMessage(f"shape must be non-negative ints, got {shape!r}")
    shape = tuple(shape)
    nbytes = _field(header, "nbytes", int)
    if nbytes < 0:
        raise MalformedMessage(f"nbytes is negative ({nbytes})")
    meta = _field(header, "meta", dict)
    _check_sizes(shape, nbytes, len(meta), limits)
    if kind != "text" and dtype != "utf8":
        expected = quantize.payload_nbytes(dtype, shape)
        if nbytes != expected:
            raise MalformedMessage(f"nbytes {nbytes} != {expected} needed for shape {shape} as {dtype}")
    if n != payload_start + nbytes + trailer:
        what = "truncated" if n < payload_start + nbytes + trailer else "trailing bytes"
        raise MalformedMessage(f"{what}: {n} bytes, header declares {payload_start + nbytes + trailer}")
    if any(mv[PREFIX_SIZE + header_len : payload_start]):
        raise MalformedMessage("padding bytes after the header must be zero")
    fingerprint = _field(header, "fingerprint", str)
    if expect_fingerprint is not None and fingerprint != expect_fingerprint:
        raise FingerprintMismatch(f"message head fingerprint {fingerprint!r} != expected {expect_fingerprint!r}")

    return LatentMessage(
        kind=kind,
        shape=shape,
        dtype=dtype,
        payload=mv[payload_start : payload_start + nbytes],
        sender=_field(header, "sender", str),
        recipient=_field(header, "recipient", str),
        conversation_id=_field(header, "conversation", str),
        fingerprint=fingerprint,
        backbone_id=_field(header, "backbone", str),
        metadata=meta,
        message_id=_field(header, "id", str),
        created_ns=_field(header, "created_ns", int),
        version=(major, minor),
        sha256=_field(header, "sha256", bytes),
        signature=signature,
    )
