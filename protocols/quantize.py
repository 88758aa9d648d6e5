"""Payload codecs: float32 arrays to and from float32/float16/bfloat16/int8 bytes, with fidelity.

Payload layouts (all little-endian, row-major, ``rows = prod(shape[:-1])``, so 1 for a vector):

- ``float32``: ``prod(shape)`` IEEE binary32 values.
- ``float16``: ``prod(shape)`` IEEE binary16 values.
- ``bfloat16``: ``prod(shape)`` u16 values, each the upper 16 bits of the binary32 value
  rounded to nearest, ties to even.
- ``int8``: ``rows`` binary32 scales, then ``prod(shape)`` signed bytes in [-127, 127];
  value = q * scale of its row (symmetric per-vector quantisation, scale = max|x| / 127).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import InvalidPayload, MalformedMessage

__all__ = [
    "TENSOR_DTYPES",
    "check_payload",
    "decode",
    "dequantize_int8",
    "encode",
    "from_bfloat16_bits",
    "payload_nbytes",
    "quantize_int8",
    "roundtrip",
    "roundtrip_cosine",
    "to_bfloat16_bits",
]

TENSOR_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8")
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
_MAX_INT8_SCALE = np.float32(np.finfo(np.float32).max / 128)  # so that 127 * scale stays finite


def _rows(shape: Sequence[int]) -> int:
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def _as_rows(x: np.ndarray) -> np.ndarray:
    """View ``x`` as (rows, last_dim) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: returns (q int8 same shape as ``x``, scale float32 (rows,))."""
    rows = _as_rows(x)
    scale = (np.abs(rows).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(rows / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(np.shape(x)), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of ``quantize_int8``: float32 array of ``q``'s shape."""
    shape = q.shape
    rows = q.reshape(-1, shape[-1]) if q.ndim > 1 else q.reshape(1, -1)
    return (rows.astype(np.float32) * scale.astype(np.float32)[:, None]).reshape(shape)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even); returns the uint16 bit patterns."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return ((u + rounding) >> np.uint32(16)).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def payload_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Exact payload length in bytes for a tensor of ``shape`` stored as ``dtype``."""
    n = math.prod(shape) * _ITEMSIZE[dtype]
    return n + 4 * _rows(shape) if dtype == "int8" else n


def encode(x: np.ndarray, dtype: str) -> bytes:
    """Encode a finite float array as a ``dtype`` payload; raises ``InvalidPayload`` on NaN/Inf/overflow."""
    if dtype not in _ITEMSIZE:
        raise MalformedMessage(f"unknown dtype {dtype!r}; expected one of {TENSOR_DTYPES}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InvalidPayload("array contains NaN or Inf")
    if dtype == "float32":
        return x.astype("<f4", copy=False).tobytes()
    if dtype == "int8":
        q, scale = quantize_int8(x)
        if (scale > _MAX_INT8_SCALE).any():
            raise InvalidPayload(f"array has |x| too large for an int8 scale (> {_MAX_INT8_SCALE * 127:.6g})")
        return scale.astype("<f4").tobytes() + q.tobytes()
    if dtype == "float16":
        with np.errstate(over="ignore"):
            out = x.astype("<f2")
        if not np.isfinite(out).all():
            raise InvalidPayload("array has values outside the float16 range (|x| > 65504)")
        return out.tobytes()
    bits = to_bfloat16_bits(x)
    if ((bits & np.uint16(0x7F80)) == np.uint16(0x7F80)).any():
        raise InvalidPayload("array has values that round to Inf in bfloat16")
    return bits.astype("<u2", copy=False).tobytes()


def decode(payload: bytes | memoryview, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Decode a payload to float32 of ``shape``; float32 payloads are a zero-copy read-only view."""
    n = math.prod(shape)
    if dtype == "float32":
        return np.frombuffer(payload, dtype="<f4", count=n).astype(np.float32, copy=False).reshape(shape)
    if dtype == "float16":
        return np.frombuffer(payload, dtype="<f2", count=n).astype(np.float32).reshape(shape)
    if dtype == "bfloat16":
        return from_bfloat16_bits(np.frombuffer(payload, dtype="<u2", count=n)).reshape(shape)
    rows = _rows(shape)
    scale = np.frombuffer(payload, dtype="<f4", count=rows)
    q = np.frombuffer(payload, dtype=np.int8, count=n, offset=4 * rows)
    return dequantize_int8(q.reshape(shape), scale)


def check_payload(payload: bytes | memoryview, dtype: str, shape: Sequence[int]) -> None:
    """Raise ``InvalidPayload`` if the payload holds NaN/Inf, int8 -128, or bad int8 scales."""
    expected = payload_nbytes(dtype, shape)
    if len(payload) != expected:
        raise MalformedMessage(f"payload is {len(payload)} bytes but shape {tuple(shape)} as {dtype} needs {expected}")
    n = math.prod(shape)
    if dtype == "float32":
        ok = np.isfinite(np.frombuffer(payload, dtype="<f4", count=n)).all()
    elif dtype in ("float16", "bfloat16"):
        inf_bits = 0x7C00 if dtype == "float16" else 0x7F80  # exponent all ones: Inf or NaN
        ok = n == 0 or (np.frombuffer(payload, dtype="<u2", count=n) & np.uint16(0x7FFF)).max() < inf_bits
    else:
        rows = _rows(shape)
        scale = np.frombuffer(payload, dtype="<f4", count=rows)
        if not ((scale >= 0) & (scale <= _MAX_INT8_SCALE)).all():
            raise InvalidPayload(f"int8 scales must be in [0, {_MAX_INT8_SCALE:.6g}]")
        if (np.frombuffer(payload, dtype=np.int8, count=n, offset=4 * rows) == -128).any():
            raise InvalidPayload("int8 values must be in [-127, 127]; found -128")
        ok = True
    if not ok:
        raise InvalidPayload(f"{dtype} payload contains NaN or Inf")


def roundtrip(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` after encoding as ``dtype`` and decoding back to float32."""
    x = np.asarray(x, dtype=np.float32)
    return decode(encode(x, dtype), dtype, x.shape)


def roundtrip_cosine(x: np.ndarray, dtype: str) -> np.ndarray:
    """Per-vector (per-row) cosine between ``x`` and its ``dtype`` round trip; 1.0 for two zero vectors."""
    a = _as_rows(x).astype(np.float64)
    b = _as_rows(roundtrip(x, dtype)).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb > 0, na * nb, 1.0)
    return np.where(both_zero, 1.0, dot / denom)
