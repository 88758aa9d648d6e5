"""Latent message format: pack, validate and stream compression-token latents between agents.

A message is a small msgpack header plus raw little-endian payload bytes (float32, float16,
bfloat16 or per-vector-scaled int8), optionally HMAC-SHA256 signed; see ``SPEC.md``. Depends
only on msgpack and numpy; ``to_torch``/``from_torch`` import torch lazily.

    msg = LatentMessage.from_array(latent, sender="a", recipient="b", dtype="float16")
    data = pack(msg, key=shared_key)
    same = unpack(data, key=shared_key).array()   # float32 (n, H)
"""

from .errors import (
    ChecksumMismatch,
    FingerprintMismatch,
    InvalidPayload,
    LimitExceeded,
    MalformedMessage,
    ProtocolError,
    SignatureError,
    UnsupportedKind,
    UnsupportedVersion,
)
from .link import Choice, Description, candidates, choose, fits
from .message import DTYPES, FORMAT_VERSION, KINDS, LatentMessage, MetaValue, from_torch, to_torch
from .quantize import (
    dequantize_int8,
    from_bfloat16_bits,
    quantize_int8,
    roundtrip,
    roundtrip_cosine,
    to_bfloat16_bits,
)
from .stream import read_frames, read_messages, write_frame, write_message
from .wire import DEFAULT_LIMITS, MAGIC, Limits, pack, sign, unpack

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "FORMAT_VERSION",
    "KINDS",
    "MAGIC",
    "ChecksumMismatch",
    "Choice",
    "Description",
    "FingerprintMismatch",
    "InvalidPayload",
    "LatentMessage",
    "LimitExceeded",
    "Limits",
    "MalformedMessage",
    "MetaValue",
    "ProtocolError",
    "SignatureError",
    "UnsupportedKind",
    "UnsupportedVersion",
    "candidates",
    "choose",
    "dequantize_int8",
    "from_bfloat16_bits",
    "fits",
    "from_torch",
    "pack",
    "quantize_int8",
    "read_frames",
    "read_messages",
    "roundtrip",
    "roundtrip_cosine",
    "sign",
    "to_bfloat16_bits",
    "to_torch",
    "unpack",
    "write_frame",
    "write_message",
]
