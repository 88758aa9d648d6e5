"""Hostile latentcomm messages for a receiver that holds ``KEY``: each with the protocol error it must end in.

Built from a valid message of the receiver's own head (``good``, unsigned) and from messages of another head and
another backbone: truncated, oversized, forged, tampered, foreign, NaN/Inf payloads, bad headers. Used by the
LangGraph channel's and the A2A server's tests (each adds the cases of its own framing)."""
from __future__ import annotations

import hashlib
import struct

import msgpack
import numpy as np

from latentcomm.protocols import (FORMAT_VERSION, MAGIC, ChecksumMismatch, FingerprintMismatch, InvalidPayload,
                                  LatentMessage, LimitExceeded, Limits, MalformedMessage, ProtocolError, SignatureError,
                                  UnsupportedVersion, pack, sign, unpack)

KEY = b"k" * 32
"""The receiver's HMAC key: every message it takes is signed with it."""


def craft(header: dict, payload: bytes, *, key: bytes | None = KEY, major: int = FORMAT_VERSION[0]) -> bytes:
    """A message from raw parts (header as given, however wrong), signed with ``key``."""
    head = msgpack.packb(header, use_bin_type=True)
    body = struct.pack("<4sBBBBI", MAGIC, major, 0, 0, 0, len(head)) + head
    body += b"\x00" * (-len(body) % 8) + payload
    return body if key is None else sign(body, key)


def header_of(data: bytes) -> dict:
    """The header of an unsigned packed message, as a dict to change and ``craft`` again."""
    length = struct.unpack_from("<I", data, 8)[0]
    return msgpack.unpackb(data[12:12 + length], raw=False)


def with_payload(good: bytes, values: np.ndarray) -> bytes:
    """``good`` (unsigned, float32) with another payload and its true checksum, signed: only the values are bad."""
    header = header_of(good)
    payload = np.asarray(values, dtype="<f4").tobytes()
    return craft(header | {"sha256": hashlib.sha256(payload).digest(), "nbytes": len(payload)}, payload)


def hostile(good: bytes, other_head: bytes, other_backbone_kv: bytes, other_backbone: bytes, *,
            max_payload_bytes: int) -> list[tuple[str, bytes, type[ProtocolError]]]:
    """(name, bytes, the error) for every hostile message to a receiver that unpacks payloads of at most
    ``max_payload_bytes``; ``good`` and the foreign ones are unsigned float32 latents (a KV cache for
    ``other_backbone_kv``) addressed to it."""
    signed = sign(good, KEY)
    message = unpack(good)
    values = message.array().copy()
    header = header_of(good)
    nan, inf = values.copy(), values.copy()
    nan[0, 0], inf[-1, -1] = np.nan, np.inf
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    rows = max_payload_bytes // (4 * values.shape[1]) + 1
    big = LatentMessage.from_array(np.zeros((rows, values.shape[1]), np.float32), dtype="float32",
                                   fingerprint=message.fingerprint, backbone_id=message.backbone_id,
                                   recipient=message.recipient)
    return [
        ("empty", b"", MalformedMessage),
        ("magic only", MAGIC, MalformedMessage),
        ("truncated to half", signed[:len(signed) // 2], SignatureError),
        ("truncated by one byte", signed[:-1], SignatureError),
        ("trailing byte", sign(good + b"\x00", KEY), MalformedMessage),
        ("wrong magic", b"\x89XYZ" + signed[4:], MalformedMessage),
        ("future major version", signed[:4] + bytes([FORMAT_VERSION[0] + 1]) + signed[5:], UnsupportedVersion),
        ("declared header of 4 GB", signed[:8] + b"\xff\xff\xff\xff" + signed[12:], LimitExceeded),
        ("payload over the limits", sign(pack(big, limits=Limits(max_payload_bytes=1 << 30, max_elements=1 << 28)), KEY), LimitExceeded),
        ("unsigned", good, SignatureError),
        ("forged: another key", sign(good, b"x" * 32), SignatureError),
        ("tampered payload byte", bytes(signed[:-40]) + bytes([signed[-40] ^ 1]) + signed[-39:], SignatureError),
        ("tampered header byte", signed[:20] + bytes([signed[20] ^ 1]) + signed[21:], SignatureError),
        ("checksum mismatch", sign(bytes(flipped), KEY), ChecksumMismatch),
        ("NaN payload", with_payload(good, nan), InvalidPayload),
        ("Inf payload", with_payload(good, inf), InvalidPayload),
        ("another head", sign(other_head, KEY), FingerprintMismatch),
        ("another backbone", sign(other_backbone, KEY), FingerprintMismatch),
        ("KV cache of another backbone", sign(other_backbone_kv, KEY), FingerprintMismatch),
        ("unknown kind", craft(header | {"kind": "telepathy"}, _payload(good)), MalformedMessage),
        ("utf8 dtype on a latent", craft(header | {"dtype": "utf8"}, _payload(good)), MalformedMessage),
        ("shape that is not the payload's", craft(header | {"shape": [1, 3]}, _payload(good)), MalformedMessage),
        ("missing header key", craft({k: v for k, v in header.items() if k != "sha256"}, _payload(good)),
         MalformedMessage),
        ("negative created_ns", craft(header | {"created_ns": -1}, _payload(good)), MalformedMessage),
        ("33 metadata items", craft(header | {"meta": {str(i): i for i in range(33)}}, _payload(good)),
         LimitExceeded),
        ("int8 value -128", _int8_min(message), InvalidPayload),
    ]


def _payload(good: bytes) -> bytes:
    return bytes(unpack(good).payload)


def _int8_min(message: LatentMessage) -> bytes:
    data = pack(LatentMessage.from_array(message.array(), dtype="int8", fingerprint=message.fingerprint,
                                         backbone_id=message.backbone_id, recipient=message.recipient))
    header = header_of(data)
    payload = bytearray(_payload(data))
    payload[-1] = 0x80
    return craft(header | {"sha256": hashlib.sha256(payload).digest()}, bytes(payload))
