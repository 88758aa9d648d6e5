"""The head loader on broken and hostile head folders: only HeadMismatchError, and no large allocation."""
from __future__ import annotations

import json
import random
import resource
import shutil
import struct
from pathlib import Path

import pytest

from conftest import TINY_HEAD
from latentcomm import GenerativeEmbedder, HeadMismatchError


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory) -> Path:
    return GenerativeEmbedder(tiny, TINY_HEAD, seed=0).save_pretrained(tmp_path_factory.mktemp("head") / "head")


def _load(folder: Path, tiny) -> GenerativeEmbedder:
    return GenerativeEmbedder.from_pretrained(folder, backbone=tiny)


def _variant(saved: Path, tmp: Path, config: bytes | None = None, tensors: bytes | None = None) -> Path:
    folder = tmp / "variant"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(saved, folder)
    if config is not None:
        (folder / "config.json").write_bytes(config)
    if tensors is not None:
        (folder / "head.safetensors").write_bytes(tensors)
    return folder


def _config_mutations(meta: dict) -> list[bytes]:
    raw = json.dumps(meta).encode()
    out = [raw[:cut] for cut in range(0, len(raw), 7)]
    out += [b"null", b"[]", b"{}", b'"head"', b"\xff\xfe\x00bad", b"[" * 100_000, b"1e999"]
    for key in meta:
        out.append(json.dumps({k: v for k, v in meta.items() if k != key}).encode())
        for bad in (None, "x", 7, 1.5, [], {}, True, 10**12):
            out.append(json.dumps({**meta, key: bad}).encode())
    for key in meta["head"]:
        out.append(json.dumps({**meta, "head": {k: v for k, v in meta["head"].items() if k != key}}).encode())
        for bad in (None, "x", -1, 1.5, [], True, 10**9, 10**12):
            out.append(json.dumps({**meta, "head": {**meta["head"], key: bad}}).encode())
    out.append(json.dumps({**meta, "head": {**meta["head"], "extra": 1}}).encode())
    return out


def _tensor_mutations(data: bytes, rng: random.Random) -> list[bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]

    def rebuilt(new_header: dict, new_body: bytes = body) -> bytes:
        text = json.dumps(new_header).encode()
        return struct.pack("<Q", len(text)) + text + new_body

    out = [data[:cut] for cut in sorted(rng.sample(range(len(data)), 60))]
    out += [struct.pack("<Q", 2**63) + data[8:], struct.pack("<Q", len(data)) + data[8:], b"", b"\x00" * 8]
    for _ in range(80):
        flipped = bytearray(data)
        flipped[rng.randrange(8 + length)] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
    names = [n for n in header if n != "__metadata__"]
    for name in names:
        out.append(rebuilt({k: v for k, v in header.items() if k != name}))
        entry = header[name]
        out.append(rebuilt({**header, name: {**entry, "shape": [10**9, *entry["shape"][1:]]}}))
        out.append(rebuilt({**header, name: {**entry, "dtype": "F16"}}))
        out.append(rebuilt({**header, name: {**entry, "data_offsets": [0, 2**40]}}))
        out.append(rebuilt({**header, name: {**entry, "shape": "x"}}))
    out.append(rebuilt({**header, "extra": {"dtype": "F32", "shape": [1], "data_offsets": [len(body), len(body) + 4]}},
                       body + b"\x00" * 4))
    out.append(rebuilt(header, body + b"\x00"))
    out.append(rebuilt(header, body[:-4] + struct.pack("<f", float("nan"))))
    return out


def test_only_head_mismatch_errors_and_bounded_memory(saved, tiny, tmp_path) -> None:
    rng = random.Random(0)
    original = _load(saved, tiny).fingerprint  # the intact head loads
    meta = json.loads((saved / "config.json").read_text())
    data = (saved / "head.safetensors").read_bytes()
    cases = [(c, None) for c in _config_mutations(meta)] + [(None, t) for t in _tensor_mutations(data, rng)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = 0
    for config, tensors in cases:
        folder = _variant(saved, tmp_path, config, tensors)
        try:
            model = _load(folder, tiny)
        except HeadMismatchError:
            continue
        assert model.fingerprint == original  # what still loads is the very same head (a harmless change)
        loaded += 1
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(cases) > 300
    assert loaded < len(cases) // 10
    assert growth_mb < 300, f"peak memory grew by {growth_mb:.0f} MB"


def test_huge_sizes_in_the_config_are_refused_before_allocating(saved, tiny, tmp_path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    hostile = {**meta, "head": {**meta["head"], "num_thought": 10**9}}
    folder = _variant(saved, tmp_path, json.dumps(hostile).encode())
    with pytest.raises(HeadMismatchError, match="config needs"):
        _load(folder, tiny)
    with pytest.raises(HeadMismatchError, match="JSON"):
        _load(_variant(saved, tmp_path, b'{"format": "latentcomm-head", "head": {'), tiny)
