"""Wire format: ``pack`` a LatentMessage to bytes and strictly ``unpack`` bytes back (see SPEC.md).

Layout: 12-byte prefix (magic, major, minor, flags, reserved, u32 LE header length), a msgpack
header map, zero padding to an 8-byte boundary, the raw payload, and, when flag bit 0 is set,
a 32-byte HMAC-SHA256 over everything before it. Every size is checked against ``Limits`` and
against the bytes actually present before anything is allocated or parsed.

``unpack`` follows the reader rules of SPEC.md in four stages: the prefix, the signature, the header (one
msgpack map with the keys of this version) and the layout (kind, dtype, shape and payload size within the
limits and agreeing, the payload exactly where the header puts it); then the expected fingerprint. The
kind, dtype and shape rules are ``message.py``'s own functions, and the rest of what the fields say (kind and
dtype agreeing, the checksum, finite values) is checked by ``LatentMessage`` itself, as for a message built
in memory.
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
from .message import FORMAT_VERSION, LatentMessage, check_kind_dtype, check_shape

__all__ = ["DEFAULT_LIMITS", "MAGIC", "PREFIX_SIZE", "SIGNATURE_SIZE", "Limits", "pack", "sign", "unpack"]

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


def _check_dims(ndim: int, limits: Limits) -> None:
    if ndim > limits.max_dims:
        raise LimitExceeded(f"{ndim} dims > max_dims {limits.max_dims}")


def _check_sizes(shape: tuple[int, ...], nbytes: int, n_meta: int, limits: Limits) -> None:
    """Payload bytes, elements and metadata items within ``limits`` (dimensions: ``_check_dims``)."""
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
    _check_dims(len(msg.shape), limits)
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


def sign(data: bytes, key: bytes) -> bytes:
    """The unsigned packed message ``data`` with its HMAC-SHA256 trailer: the signed flag set and the trailer
    appended, without parsing or repacking (only the prefix is checked), so ``unpack(sign(pack(m), k), key=k)``
    equals ``unpack(pack(m, key=k), key=k)``."""
    key = _check_key(key)
    if not isinstance(data, bytes) or len(data) < PREFIX_SIZE or data[:4] != MAGIC:
        raise MalformedMessage("sign expects the bytes of one packed message")
    if data[6] & _FLAG_SIGNED:
        raise MalformedMessage("message is already signed")
    body = b"".join((data[:6], bytes([data[6] | _FLAG_SIGNED]), data[7:]))
    return body + hmac.new(key, body, hashlib.sha256).digest()


@dataclass(frozen=True)
class _Prefix:
    """What the 12-byte prefix says: version, whether a signature trails, and where header and payload lie."""

    major: int
    minor: int
    signed: bool
    header_len: int

    @property
    def header_end(self) -> int:
        return PREFIX_SIZE + self.header_len

    @property
    def payload_start(self) -> int:
        return self.header_end + _padding(self.header_len)

    @property
    def trailer(self) -> int:
        return SIGNATURE_SIZE if self.signed else 0


@dataclass(frozen=True)
class _Layout:
    """What the header says about the payload, checked against the limits and the bytes present."""

    kind: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    metadata: dict[str, Any]


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
    key is given. From ``bytes`` the returned payload is a zero-copy read-only view of ``data``; a writable buffer
    (``bytearray``, a writable ``memoryview``) is copied first, so later changes to it cannot change the message.
    """
    if require_signature is None:
        require_signature = key is not None
    if require_signature and key is None:
        raise ValueError("require_signature=True needs a key")
    if key is not None:
        key = _check_key(key)
    mv = _byte_view(data, limits)
    prefix = _read_prefix(mv, limits)
    signature = _verify_signature(mv, prefix, key, require_signature)
    header = _read_header(mv, prefix, limits)
    layout = _read_layout(mv, prefix, header, limits)
    fingerprint = _field(header, "fingerprint", str)
    if expect_fingerprint is not None and fingerprint != expect_fingerprint:
        raise FingerprintMismatch(f"message head fingerprint {fingerprint!r} != expected {expect_fingerprint!r}")
    return LatentMessage(
        kind=layout.kind,
        shape=layout.shape,
        dtype=layout.dtype,
        payload=mv[prefix.payload_start : prefix.payload_start + layout.nbytes],
        sender=_field(header, "sender", str),
        recipient=_field(header, "recipient", str),
        conversation_id=_field(header, "conversation", str),
        fingerprint=fingerprint,
        backbone_id=_field(header, "backbone", str),
        metadata=layout.metadata,
        message_id=_field(header, "id", str),
        created_ns=_field(header, "created_ns", int),
        version=(prefix.major, prefix.minor),
        sha256=_field(header, "sha256", bytes),
        signature=signature,
    )


def _byte_view(data: object, limits: Limits) -> memoryview:
    """``data`` as a read-only 1-D byte view: no copy of ``bytes`` (or a view of them), a copy of any other buffer,
    which its owner could change later (after the size check: a huge buffer is refused without copying)."""
    try:
        mv = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise MalformedMessage(f"expected a bytes-like object, got {type(data).__name__}") from None
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
        raise MalformedMessage("expected a contiguous 1-D byte buffer")
    if mv.nbytes > limits.max_message_bytes:
        raise LimitExceeded(f"message of {mv.nbytes} bytes > largest allowed {limits.max_message_bytes}")
    return mv.cast("B") if type(mv.obj) is bytes else memoryview(mv.tobytes())


def _read_prefix(mv: memoryview, limits: Limits) -> _Prefix:
    """Stage 1 (the overall size is ``_byte_view``'s): magic, major version, reserved bits, and a header that fits
    in the message."""
    n = len(mv)
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
    prefix = _Prefix(major, minor, bool(flags & _FLAG_SIGNED), header_len)
    if n < prefix.payload_start + prefix.trailer:
        end = prefix.payload_start + prefix.trailer
        raise MalformedMessage(f"truncated: {n} bytes, header and padding end at {end}")
    return prefix


def _verify_signature(mv: memoryview, prefix: _Prefix, key: bytes | None, required: bool) -> bytes | None:
    """Stage 2: the HMAC trailer (checked when there is a key) or its absence; returns the signature bytes."""
    if required and not prefix.signed:
        raise SignatureError("message is unsigned but a signature is required")
    if not prefix.signed:
        return None
    signature = bytes(mv[len(mv) - SIGNATURE_SIZE :])
    if key is not None:
        expected = hmac.new(key, mv[: len(mv) - SIGNATURE_SIZE], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("HMAC-SHA256 signature does not verify (tampered, or a different key)")
    return signature


def _read_header(mv: memoryview, prefix: _Prefix, limits: Limits) -> dict[str, Any]:
    """Stage 3: one bounded msgpack map with unique string keys, and no keys this minor version does not know."""
    header = _parse_header(mv[PREFIX_SIZE : prefix.header_end], limits)
    if prefix.minor <= FORMAT_VERSION[1]:
        unknown = sorted(set(header) - _HEADER_KEYS)
        if unknown:
            raise MalformedMessage(f"unknown header keys {unknown} in a {prefix.major}.{prefix.minor} message")
    return header


def _read_layout(mv: memoryview, prefix: _Prefix, header: dict[str, Any], limits: Limits) -> _Layout:
    """Stage 4: kind, dtype and shape valid, sizes within ``limits``, ``nbytes`` what dtype and shape need, and the
    payload exactly where the header puts it (zero padding before it, nothing but the signature after it)."""
    kind = _field(header, "kind", str)
    dtype = _field(header, "dtype", str)
    check_kind_dtype(kind, dtype)
    shape = _field(header, "shape", list)
    _check_dims(len(shape), limits)
    shape = check_shape(shape)
    nbytes = _field(header, "nbytes", int)
    if nbytes < 0:
        raise MalformedMessage(f"nbytes is negative ({nbytes})")
    meta = _field(header, "meta", dict)
    _check_sizes(shape, nbytes, len(meta), limits)
    if kind != "text" and dtype != "utf8":
        expected = quantize.payload_nbytes(dtype, shape)
        if nbytes != expected:
            raise MalformedMessage(f"nbytes {nbytes} != {expected} needed for shape {shape} as {dtype}")
    end = prefix.payload_start + nbytes + prefix.trailer
    if len(mv) != end:
        what = "truncated" if len(mv) < end else "trailing bytes"
        raise MalformedMessage(f"{what}: {len(mv)} bytes, header declares {end}")
    if any(mv[prefix.header_end : prefix.payload_start]):
        raise MalformedMessage("padding bytes after the header must be zero")
    return _Layout(kind, dtype, shape, nbytes, meta)


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
