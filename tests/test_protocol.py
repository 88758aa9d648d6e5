"""Tests for latentcomm.protocols: round trips, validation, signatures, limits, versions, streams."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import socket
import struct
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentcomm.protocols import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MAGIC,
    ChecksumMismatch,
    FingerprintMismatch,
    InvalidPayload,
    LatentMessage,
    LimitExceeded,
    Limits,
    MalformedMessage,
    ProtocolError,
    SignatureError,
    UnsupportedVersion,
    from_torch,
    pack,
    read_frames,
    read_messages,
    roundtrip,
    roundtrip_cosine,
    to_torch,
    unpack,
    write_frame,
    write_message,
)

KEY = bytes(range(32))
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int8")


def latent(n: int = 10, h: int = 576, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, h)).astype(np.float32)


def make(dtype: str = "float16", **kw) -> LatentMessage:
    kw.setdefault("sender", "alice")
    kw.setdefault("recipient", "bob")
    kw.setdefault("conversation_id", "conv-1")
    kw.setdefault("fingerprint", "head-abc")
    kw.setdefault("backbone_id", "qwen3-0.6b")
    return LatentMessage.from_array(kw.pop("array", latent(3, 8)), dtype=dtype, **kw)


def split(data: bytes) -> tuple[tuple, dict, bytes]:
    """(prefix fields, header dict, payload) of an unsigned packed message."""
    prefix = struct.unpack_from("<4sBBBBI", data)
    hlen = prefix[5]
    header = msgpack.unpackb(data[12 : 12 + hlen], raw=False)
    start = 12 + hlen + (-(12 + hlen) % 8)
    return prefix, header, data[start : start + header["nbytes"]]


def assemble(
    header: dict | bytes,
    payload: bytes,
    *,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    reserved: int = 0,
    key: bytes | None = None,
) -> bytes:
    """Build raw message bytes by hand, bypassing pack's checks."""
    raw = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    body = struct.pack("<4sBBBBI", MAGIC, major, minor, flags | (1 if key else 0), reserved, len(raw))
    body += raw + b"\x00" * (-(12 + len(raw)) % 8) + payload
    return body + hmac.new(key, body, hashlib.sha256).digest() if key else body


def reheader(data: bytes, **changes) -> bytes:
    """Re-assemble an unsigned message with header keys changed (None deletes a key)."""
    _, header, payload = split(data)
    for k, v in changes.items():
        if v is None:
            header.pop(k)
        else:
            header[k] = v
    return assemble(header, payload)


# ---------------------------------------------------------------- round trips

finite32 = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 12)), draw(st.integers(1, 48)))
    else:
        shape = (draw(st.integers(1, 96)),)
    values = draw(st.lists(finite32, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.asarray(values, dtype=np.float32).reshape(shape)


metadata_st = st.dictionaries(
    st.text(max_size=16),
    st.one_of(
        st.text(max_size=32),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
    ),
    max_size=8,
)


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
@settings(max_examples=60, deadline=None)
@given(x=arrays(), metadata=metadata_st, signed=st.booleans())
def test_tensor_round_trip(dtype: str, x: np.ndarray, metadata: dict, signed: bool) -> None:
    msg = make(dtype, array=x, metadata=metadata)
    key = KEY if signed else None
    got = unpack(pack(msg, key=key), key=key)
    assert got == msg
    assert got.kind == ("latent" if x.ndim == 2 else "embedding")
    assert dict(got.metadata) == metadata
    y = got.array()
    assert y.dtype == np.float32 and y.shape == x.shape
    if dtype == "float32":
        np.testing.assert_array_equal(y, x)
    elif dtype == "float16":
        np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
    elif dtype == "bfloat16":
        assert np.all(np.abs(y - x) <= np.abs(x) * 2.0**-8 + 2.0**-133)  # half ulp, or subnormal ulp
    else:
        rows = x.reshape(-1, x.shape[-1])
        half_step = np.abs(rows).max(axis=1, keepdims=True) / 127 / 2
        assert np.all(np.abs(y.reshape(rows.shape) - rows) <= half_step * 1.0001 + 1e-30)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300), metadata=metadata_st)
def test_text_round_trip(text: str, metadata: dict) -> None:
    msg = LatentMessage.from_text(text, sender="a", recipient="b", metadata=metadata)
    got = unpack(pack(msg))
    assert got.text() == text and got == msg
    assert got.shape == (len(text.encode("utf-8")),) and got.dtype == "utf8"


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
def test_pack_is_canonical(dtype: str) -> None:
    data = pack(make(dtype), key=KEY)
    assert pack(unpack(data, key=KEY), key=KEY) == data


def test_fields_survive_round_trip() -> None:
    msg = make("int8", message_id="m1", created_ns=1_700_000_000_123_456_789, metadata={"step": 3})
    got = unpack(pack(msg))
    for f in dataclasses.fields(LatentMessage):
        if f.name not in ("payload", "signature"):
            assert getattr(got, f.name) == getattr(msg, f.name), f.name
    assert got.created_ns == 1_700_000_000_123_456_789 and got.version == FORMAT_VERSION
    assert got.sha256 == hashlib.sha256(bytes(msg.payload)).digest()


def test_defaults_unique_id_and_time() -> None:
    a, b = make(), make()
    assert a.message_id != b.message_id and len(a.message_id) == 32
    assert abs(a.created_ns - time.time_ns()) < 60 * 10**9


def test_float32_unpack_is_zero_copy() -> None:
    data = pack(make("float32", array=latent()))
    y = unpack(data).array()
    assert np.shares_memory(y, np.frombuffer(data, dtype=np.uint8))
    assert not y.flags.writeable


def test_message_is_frozen_and_hashable() -> None:
    msg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.sender = "mallory"  # type: ignore[misc]
    assert len({msg, unpack(pack(msg))}) == 1


def test_text_and_array_accessors_are_kind_specific() -> None:
    with pytest.raises(TypeError):
        LatentMessage.from_text("hi").array()
    with pytest.raises(TypeError):
        make().text()


def test_torch_helpers_round_trip() -> None:
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 16, dtype=torch.bfloat16)
    msg = from_torch(t, dtype="bfloat16", sender="a")
    back = to_torch(unpack(pack(msg)))
    assert back.dtype == torch.float32 and torch.equal(back, t.float())


# ---------------------------------------------------------------- quantisation fidelity


def test_bfloat16_matches_torch_rounding() -> None:
    torch = pytest.importorskip("torch")
    x = latent(64, 64, seed=1) * 100
    expected = torch.from_numpy(x).bfloat16().float().numpy()
    np.testing.assert_array_equal(roundtrip(x, "bfloat16"), expected)


def test_bfloat16_ties_to_even() -> None:
    x = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8], dtype=np.float32)
    np.testing.assert_array_equal(roundtrip(x, "bfloat16"), [1.0, 1 + 2.0**-6])


@pytest.mark.parametrize(
    ("dtype", "min_cos"), [("float32", 1 - 1e-12), ("float16", 0.99999), ("bfloat16", 0.9999), ("int8", 0.999)]
)
def test_roundtrip_cosine(dtype: str, min_cos: float) -> None:
    cos = roundtrip_cosine(latent(), dtype)
    assert cos.shape == (10,) and cos.min() >= min_cos


def test_int8_zero_row_and_scale() -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    x[1] = [1, -2, 3, -4]
    y = unpack(pack(make("int8", array=x))).array()
    np.testing.assert_allclose(y, x, atol=4 / 254)
    assert roundtrip_cosine(x, "int8")[0] == 1.0


# ---------------------------------------------------------------- signatures


def test_every_bit_flip_of_signed_message_rejected() -> None:
    data = bytearray(pack(make("int8", array=latent(2, 4)), key=KEY))
    for i in range(len(data) * 8):
        data[i // 8] ^= 1 << (i % 8)
        with pytest.raises(ProtocolError):
            unpack(bytes(data), key=KEY)
        data[i // 8] ^= 1 << (i % 8)
    assert unpack(bytes(data), key=KEY).signature is not None


def test_header_tamper_is_a_signature_error() -> None:
    data = pack(make(), key=KEY)
    i = data.index(b"alice")
    tampered = data[:i] + b"eve00" + data[i + 5 :]
    with pytest.raises(SignatureError, match="does not verify"):
        unpack(tampered, key=KEY)


def test_wrong_key_rejected() -> None:
    with pytest.raises(SignatureError):
        unpack(pack(make(), key=KEY), key=b"another key of 32 bytes........")


def test_unsigned_rejected_when_key_given() -> None:
    data = pack(make())
    with pytest.raises(SignatureError, match="unsigned"):
        unpack(data, key=KEY)
    assert unpack(data, key=KEY, require_signature=False).signature is None


def test_stripped_signature_rejected() -> None:
    data = bytearray(pack(make(), key=KEY)[:-32])
    data[6] = 0
    with pytest.raises(SignatureError):
        unpack(bytes(data), key=KEY)


def test_signed_message_readable_without_key() -> None:
    msg = make()
    got = unpack(pack(msg, key=KEY))
    assert got == msg and got.signature is not None and len(got.signature) == 32


def test_require_signature_without_key_is_caller_error() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        unpack(pack(make()), require_signature=True)


# ---------------------------------------------------------------- checksum, fingerprint, payload values


def test_payload_bit_flip_is_checksum_mismatch() -> None:
    data = bytearray(pack(make("float32")))
    data[-1] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        unpack(bytes(data))


def test_wrong_fingerprint() -> None:
    data = pack(make(fingerprint="head-abc"))
    assert unpack(data, expect_fingerprint="head-abc").fingerprint == "head-abc"
    with pytest.raises(FingerprintMismatch, match="head-xyz"):
        unpack(data, expect_fingerprint="head-xyz")


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_from_array_rejects_nan_inf(dtype: str, bad: float) -> None:
    x = latent(2, 4)
    x[1, 2] = bad
    with pytest.raises(InvalidPayload):
        make(dtype, array=x)


@pytest.mark.parametrize(("dtype", "big"), [("float16", 1e5), ("bfloat16", 3.4028235e38)])
def test_overflow_to_inf_rejected(dtype: str, big: float) -> None:
    with pytest.raises(InvalidPayload):
        make(dtype, array=np.array([big], dtype=np.float32))


@pytest.mark.parametrize(
    ("dtype", "payload"),
    [
        ("float32", np.array([1, np.nan], "<f4").tobytes()),
        ("float32", np.array([np.inf, 1], "<f4").tobytes()),
        ("float16", np.array([1, np.inf], "<f2").tobytes()),
        ("bfloat16", np.array([0x3F80, 0x7FC0], "<u2").tobytes()),
        ("int8", np.array([np.nan], "<f4").tobytes() + b"\x01\x02"),
        ("int8", np.array([-1.0], "<f4").tobytes() + b"\x01\x02"),
        ("int8", np.array([0.5], "<f4").tobytes() + b"\x01\x80"),
    ],
)
def test_wire_payload_with_bad_values_rejected(dtype: str, payload: bytes) -> None:
    data = reheader(pack(make(dtype, array=np.ones(2, np.float32))), sha256=hashlib.sha256(payload).digest())
    _, header, _ = split(data)
    with pytest.raises(InvalidPayload):
        unpack(assemble(header, payload))


def test_invalid_utf8_text_rejected() -> None:
    payload = b"ok\xff"
    data = reheader(pack(LatentMessage.from_text("abc")), sha256=hashlib.sha256(payload).digest())
    _, header, _ = split(data)
    with pytest.raises(InvalidPayload, match="UTF-8"):
        unpack(assemble(header, payload))


def test_nonfinite_metadata_rejected() -> None:
    with pytest.raises(InvalidPayload):
        make(metadata={"x": float("nan")})


# ---------------------------------------------------------------- versions


def test_newer_minor_accepted_and_unknown_keys_ignored() -> None:
    _, header, payload = split(pack(make()))
    header["added_in_1_1"] = {"anything": [1, 2]}
    got = unpack(assemble(header, payload, minor=FORMAT_VERSION[1] + 1))
    assert got.version == (1, FORMAT_VERSION[1] + 1) and got.sender == "alice"


def test_unknown_key_in_current_minor_rejected() -> None:
    _, header, payload = split(pack(make()))
    header["typo"] = 1
    with pytest.raises(MalformedMessage, match="typo"):
        unpack(assemble(header, payload))


@pytest.mark.parametrize("major", [0, 2, 255])
def test_other_major_rejected(major: int) -> None:
    _, header, payload = split(pack(make()))
    with pytest.raises(UnsupportedVersion, match=f"format {major}"):
        unpack(assemble(header, payload, major=major))


# ---------------------------------------------------------------- limits


def _peak_bytes(fn) -> tuple[int, float, BaseException]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except BaseException as e:
        err = e
    else:
        err = AssertionError("no error raised")
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, elapsed, err


def test_ten_gb_payload_claim_rejected_without_allocating() -> None:
    _, header, _ = split(pack(make("float32")))
    header.update(shape=[1, 10 * 2**30 // 4], nbytes=10 * 2**30)
    data = assemble(header, b"")
    peak, elapsed, err = _peak_bytes(lambda: unpack(data))
    assert isinstance(err, LimitExceeded) and "max_payload_bytes" in str(err)
    assert elapsed < 0.5 and peak < 256 * 1024


def test_ten_gb_claim_with_permissive_limits_is_truncation_not_allocation() -> None:
    huge = Limits(max_payload_bytes=2**40, max_elements=2**40)
    _, header, _ = split(pack(make("float32")))
    header.update(shape=[1, 10 * 2**30 // 4], nbytes=10 * 2**30)
    data = assemble(header, b"\x00" * 64)
    peak, elapsed, err = _peak_bytes(lambda: unpack(data, limits=huge))
    assert isinstance(err, MalformedMessage) and "truncated" in str(err)
    assert elapsed < 0.5 and peak < 256 * 1024


def test_header_length_claim_over_limit() -> None:
    data = struct.pack("<4sBBBBI", MAGIC, 1, 0, 0, 0, 0xFFFFFFFF) + b"\x80"
    with pytest.raises(LimitExceeded, match="max_header_bytes"):
        unpack(data)


def test_oversized_input_rejected_before_parsing() -> None:
    small = Limits(max_header_bytes=64, max_payload_bytes=64)
    with pytest.raises(LimitExceeded, match="largest allowed"):
        unpack(b"\x00" * (small.max_message_bytes + 1), limits=small)


def test_too_many_elements() -> None:
    data = pack(make("int8", array=latent(4, 64)))
    with pytest.raises(LimitExceeded, match="max_elements"):
        unpack(data, limits=Limits(max_elements=100))


def test_long_string_and_many_metadata_items() -> None:
    with pytest.raises(LimitExceeded):
        pack(make(sender="x" * 300))
    with pytest.raises(LimitExceeded, match="max_metadata_items"):
        pack(make(metadata={str(i): i for i in range(40)}))
    data = pack(make(metadata={str(i): i for i in range(20)}))
    with pytest.raises(LimitExceeded, match="max_metadata_items"):
        unpack(data, limits=Limits(max_metadata_items=10))
    with pytest.raises(LimitExceeded, match="max_str_len"):
        unpack(pack(make(sender="x" * 100)), limits=Limits(max_string_len=50))


def test_default_limits_fit_a_large_latent() -> None:
    msg = make("float32", array=latent(64, 4096))
    assert unpack(pack(msg), limits=DEFAULT_LIMITS) == msg


# ---------------------------------------------------------------- malformed inputs


def _dup_key_header(data: bytes) -> bytes:
    _, header, _ = split(data)
    raw = msgpack.packb(header, use_bin_type=True)
    extra = msgpack.packb("sender") + msgpack.packb("mallory")
    return bytes([raw[0] + 1]) + raw[1:] + extra  # fixmap count + 1, "sender" twice


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: b"XLCM" + d[4:], "magic"),
        (lambda d: d[:5], "truncated"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\x00", "trailing"),
        (lambda d: d[:6] + b"\x02" + d[7:], "reserved"),
        (lambda d: d[:7] + b"\x01" + d[8:], "reserved"),
        (lambda d: reheader(d, kind="image"), "unknown kind"),
        (lambda d: reheader(d, dtype="float64"), "unknown dtype"),
        (lambda d: reheader(d, dtype="utf8"), "utf8"),
        (lambda d: reheader(d, shape=[3, 9]), "nbytes"),
        (lambda d: reheader(d, shape=[3, True]), "shape"),
        (lambda d: reheader(d, shape=[24]), "2-D"),
        (lambda d: reheader(d, nbytes=-1), "negative"),
        (lambda d: reheader(d, sender=None), "missing required key 'sender'"),
        (lambda d: reheader(d, sender=5), "'sender' has type int"),
        (lambda d: reheader(d, created_ns=-1), "created_ns"),
        (lambda d: reheader(d, sha256=b"short"), "sha256"),
        (lambda d: reheader(d, meta={"x": [1]}), "metadata"),
        (lambda d: reheader(d, meta={"x": {"y": 1}}), "metadata"),
        (lambda d: assemble(msgpack.packb([1, 2]), split(d)[2]), "must be a msgpack map"),
        (lambda d: assemble(msgpack.packb({1: 2}), split(d)[2]), "map key"),
        (lambda d: assemble(msgpack.packb(msgpack.ExtType(3, b"xy")), b""), "ext"),
        (lambda d: assemble(msgpack.packb(msgpack.Timestamp(1, 0)), b""), "ext"),
        (lambda d: assemble(b"\x91" * 5000, b""), "msgpack"),
        (lambda d: assemble(b"\xc1", b""), "msgpack"),
        (lambda d: assemble(_dup_key_header(d), split(d)[2]), "duplicate header key 'sender'"),
    ],
)
def test_malformed_inputs(mutate, match: str) -> None:
    data = mutate(pack(make("float16", array=latent(3, 8))))
    with pytest.raises(MalformedMessage, match=match):
        unpack(data)


def test_nonzero_padding_rejected() -> None:
    data = next(d for d in (pack(make(sender="a" * k)) for k in range(1, 9)) if d[8] % 8 != 4)
    pad_at = 12 + struct.unpack_from("<I", data, 8)[0]
    with pytest.raises(MalformedMessage, match="padding"):
        unpack(data[:pad_at] + b"\x01" + data[pad_at + 1 :])


@pytest.mark.parametrize("bad", ["a string", 12, None, np.zeros(4, np.float32)])
def test_non_bytes_input(bad) -> None:
    with pytest.raises(MalformedMessage):
        unpack(bad)


def test_accepts_bytearray_and_memoryview() -> None:
    data = pack(make())
    assert unpack(bytearray(data)) == unpack(memoryview(data)) == unpack(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "latent", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8},
        {"kind": "text", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8},
        {"kind": "embedding", "shape": (0,), "dtype": "float32", "payload": b""},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 7},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": "text"},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8, "sender": 1},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8, "sender": "\ud800"},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8, "version": (1,)},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8, "message_id": ""},
        {"kind": "embedding", "shape": (2,), "dtype": "float32", "payload": b"\x00" * 8, "metadata": {1: 2}},
    ],
)
def test_direct_construction_is_validated(kwargs: dict) -> None:
    with pytest.raises(MalformedMessage):
        LatentMessage(**kwargs)


def test_direct_construction_wrong_checksum() -> None:
    with pytest.raises(ChecksumMismatch):
        LatentMessage(kind="embedding", shape=(2,), dtype="float32", payload=b"\x00" * 8, sha256=b"\x00" * 32)


# ---------------------------------------------------------------- streams


def test_stream_round_trip_file() -> None:
    msgs = [make(d) for d in TENSOR_DTYPES] + [LatentMessage.from_text("done", sender="alice")]
    buf = io.BytesIO()
    total = sum(write_message(buf, m, key=KEY) for m in msgs)
    assert total == len(buf.getvalue())
    buf.seek(0)
    assert list(read_messages(buf, key=KEY)) == msgs


def test_stream_round_trip_socket() -> None:
    a, b = socket.socketpair()
    msgs = [make("int8"), make("bfloat16")]
    with a, b:
        for m in msgs:
            write_message(a, m)
        a.shutdown(socket.SHUT_WR)
        assert list(read_messages(b)) == msgs


def test_empty_stream_yields_nothing() -> None:
    assert list(read_messages(io.BytesIO(b""))) == []


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 50, -1])
def test_truncated_stream(cut: int) -> None:
    buf = io.BytesIO()
    write_message(buf, make())
    one = buf.getvalue()
    data = one + one[:cut]
    reader = read_messages(io.BytesIO(data))
    assert next(reader).sender == "alice"
    with pytest.raises(MalformedMessage, match="truncated stream"):
        next(reader)


class _RecordingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests: list[int] = []

    def read(self, n: int = -1) -> bytes:
        self.requests.append(n)
        return super().read(n)


def test_oversized_frame_rejected_before_reading() -> None:
    stream = _RecordingStream(struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 100)
    with pytest.raises(LimitExceeded, match="frame"):
        list(read_messages(stream))
    assert stream.requests == [4]


def test_bad_frame_content_is_protocol_error() -> None:
    buf = io.BytesIO()
    write_frame(buf, b"not a message")
    buf.seek(0)
    with pytest.raises(MalformedMessage):
        list(read_messages(buf))
    buf.seek(0)
    assert list(read_frames(buf)) == [b"not a message"]


# ---------------------------------------------------------------- spec


def test_spec_examples_are_valid_canonical_messages() -> None:
    import re
    from pathlib import Path

    import latentcomm.protocols

    spec = (Path(latentcomm.protocols.__file__).parent / "SPEC.md").read_text()
    blocks = re.findall(r"```text\n(.*?)```", spec, flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        data = bytes.fromhex("".join(line[10:] for line in block.splitlines()))
        key = bytes(range(32)) if "hmac" in block else None
        msg = unpack(data, key=key)
        assert msg.message_id == "00112233445566778899aabbccddeeff"
        assert pack(msg, key=key) == data


def test_sign_appends_the_trailer_without_repacking():
    from latentcomm.protocols import MalformedMessage, sign

    msg = LatentMessage.from_array(np.ones((3, 4), dtype=np.float32), sender="a", recipient="b")
    key = b"k" * 32
    assert sign(pack(msg), key) == pack(msg, key=key)
    assert unpack(sign(pack(msg), key), key=key).signature is not None
    with pytest.raises(MalformedMessage):
        sign(pack(msg, key=key), key)
    with pytest.raises(MalformedMessage):
        sign(b"not a message", key)
