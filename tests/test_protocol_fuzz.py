"""Fuzz tests for latentcomm.protocols.unpack: mutated, truncated and random bytes only raise ProtocolError."""

from __future__ import annotations

import random
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentcomm.protocols import (
    MAGIC,
    LatentMessage,
    Limits,
    ProtocolError,
    SignatureError,
    pack,
    unpack,
)

KEY = b"fuzz-key-0123456789abcdef-012345"
SMALL = Limits(max_header_bytes=4096, max_payload_bytes=1 << 16, max_elements=1 << 15)


def _seeds() -> list[tuple[bytes, bool]]:
    """Valid packed messages of every kind and dtype, as (bytes, signed)."""
    rng = np.random.default_rng(0)
    meta = {"step": 7, "temp": 0.5, "ok": True, "note": "héllo"}
    msgs = [
        LatentMessage.from_array(rng.standard_normal((3, 8)), dtype=d, sender="a", recipient="b", metadata=meta)
        for d in ("float32", "float16", "bfloat16", "int8")
    ]
    msgs += [
        LatentMessage.from_array(rng.standard_normal(5), dtype="int8", fingerprint="fp"),
        LatentMessage.from_text("hello, agent ✓", sender="a", conversation_id="c"),
    ]
    return [(pack(m), False) for m in msgs] + [(pack(m, key=KEY), True) for m in msgs]


SEEDS = _seeds()


def _random_header(rng: random.Random) -> bytes:
    """A msgpack value shaped a bit like a header, to reach deeper validation."""
    scalars = [None, True, 0, -1, 2**63, 1.5, float("nan"), "", "latent", "int8", "utf8", b"\x00" * 32, [], {}]
    keys = ["id", "kind", "dtype", "shape", "nbytes", "sha256", "meta", "sender", "created_ns", "x"]
    values = [*scalars, [rng.randrange(-2, 2**33)] * rng.randrange(4)]
    header = {k: rng.choice(values) for k in rng.sample(keys, rng.randrange(len(keys)))}
    return msgpack.packb(header, use_bin_type=True)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random corruption of ``data``."""
    b = bytearray(data)
    op = rng.randrange(8)
    if op == 0:
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
    elif op == 1:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 3:
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 16)]
    elif op == 4:
        del b[rng.randrange(len(b)) :]
    elif op == 5:
        return rng.randbytes(rng.randrange(300))
    elif op == 6:
        b[rng.randrange(12) : 12] = rng.randbytes(rng.randint(1, 4))
        del b[12:]
        b += data[12:]
    else:
        raw = _random_header(rng)
        prefix = struct.pack("<4sBBBBI", MAGIC, 1, rng.choice([0, 0, 1]), 0, 0, len(raw))
        return prefix + raw + rng.randbytes(rng.randrange(64))
    return bytes(b)


def run_fuzz(cases: int, seed: int) -> dict[str, int]:
    """Feed ``cases`` corrupted inputs to ``unpack``; returns counts of each outcome."""
    rng = random.Random(seed)
    counts = {"rejected": 0, "accepted": 0, "unchanged": 0}
    for _ in range(cases):
        original, signed = rng.choice(SEEDS)
        data = mutate(rng, original)
        if data == original:
            counts["unchanged"] += 1
            continue
        key = KEY if signed and rng.random() < 0.8 else None
        try:
            msg = unpack(data, key=key, limits=SMALL)
        except ProtocolError as e:
            assert str(e), "errors must say what was wrong"
            counts["rejected"] += 1
            continue
        assert key is None, "a changed signed message verified"
        if msg.kind == "text":
            assert isinstance(msg.text(), str)
        else:
            assert np.isfinite(msg.array()).all()
        assert unpack(pack(msg, limits=SMALL), limits=SMALL) == msg
        counts["accepted"] += 1
    return counts


def test_fuzz_fast() -> None:
    counts = run_fuzz(5000, seed=1)
    assert sum(counts.values()) == 5000
    assert counts["rejected"] > 4000


@pytest.mark.slow
def test_fuzz_200k() -> None:
    counts = run_fuzz(200_000, seed=2)
    assert sum(counts.values()) == 200_000
    assert counts["rejected"] > 150_000


def test_every_truncation_rejected() -> None:
    for data, signed in SEEDS:
        for cut in range(len(data)):
            with pytest.raises(ProtocolError):
                unpack(data[:cut], key=KEY if signed else None)


def test_signed_mutations_always_rejected() -> None:
    rng = random.Random(3)
    signed = [d for d, s in SEEDS if s]
    for _ in range(1000):
        original = rng.choice(signed)
        data = mutate(rng, original)
        if data != original:
            with pytest.raises(ProtocolError):
                unpack(data, key=KEY)


def test_unsigned_when_required_is_signature_error() -> None:
    for data, signed in SEEDS:
        if not signed:
            with pytest.raises(SignatureError):
                unpack(data, key=KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_after_valid_prefix(tail: bytes) -> None:
    data = struct.pack("<4sBBBBI", MAGIC, 1, 0, 0, 0, len(tail)) + tail
    with pytest.raises(ProtocolError):
        unpack(data)
