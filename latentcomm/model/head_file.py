"""A head folder (``config.json`` + ``head.safetensors``): written by ``write_head``, read strictly by ``read_head`` —
the two files checked against each other and the backbone before any tensor is allocated, so that every broken
or hostile head folder raises ``HeadMismatchError`` and nothing else.

The safetensors header (8-byte little-endian length, JSON) is parsed here with bounded sizes, every tensor's
dtype, shape and byte range is checked against the file, and the shapes must be exactly those the config's head
would have (worked out on the meta device: no memory). Only then are the bytes read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from latentcomm.errors import HeadMismatchError
from latentcomm.model.config import HeadConfig
from latentcomm.model.lora import lora_targets

if TYPE_CHECKING:
    from latentcomm.model.backbone import Backbone

HEAD_FORMAT = "latentcomm-head"
HEAD_FORMAT_VERSION = 2
"""2: MLP_recon standardises its input (format 1 heads fed raw states and cannot be loaded)."""
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 1 << 20
_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_META_KEYS = {"format": str, "format_version": int, "backbone": str, "backbone_id": str, "fingerprint": str,
              "head": dict}


def read_config(path: Path) -> tuple[dict[str, Any], HeadConfig]:
    """``config.json`` of a head folder: its metadata and its ``HeadConfig``, every field checked."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise HeadMismatchError(f"{path} is {path.stat().st_size} bytes, larger than any head config")
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise HeadMismatchError(f"{path} is not readable JSON: {type(err).__name__}: {err}") from None
    if not isinstance(meta, dict):
        raise HeadMismatchError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != HEAD_FORMAT:
        raise HeadMismatchError(f"{path} is not a latentcomm head")
    if meta.get("format_version") != HEAD_FORMAT_VERSION:
        raise HeadMismatchError(f"{path} has head format {meta.get('format_version')}; this latentcomm reads format "
                                f"{HEAD_FORMAT_VERSION} only (retrain the head)")
    for key, kind in _META_KEYS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise HeadMismatchError(f"{path}: {key!r} must be a {kind.__name__}, got {type(meta.get(key)).__name__}")
    try:
        config = HeadConfig.from_dict(meta["head"])
    except (TypeError, ValueError) as err:
        raise HeadMismatchError(f"{path}: invalid head config: {err}") from None
    return meta, config


def tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in a safetensors file, after checking the header against the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise HeadMismatchError(f"{path} is truncated ({size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise HeadMismatchError(f"{path}: header length {length} does not fit the {size}-byte file")
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise HeadMismatchError(f"{path}: unreadable safetensors header: {type(err).__name__}: {err}") from None
    if not isinstance(header, dict):
        raise HeadMismatchError(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    tensors, ranges = {}, []
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2):
            raise HeadMismatchError(f"{path}: malformed header entry for {name!r}")
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise HeadMismatchError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        numbers = [*shape, begin, end]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
            raise HeadMismatchError(f"{path}: tensor {name!r} has a bad shape or offsets")
        if end - begin != math.prod(shape) * _DTYPE_SIZES[dtype] or 8 + length + end > size:
            raise HeadMismatchError(f"{path}: tensor {name!r} does not fit its byte range in the file")
        tensors[name] = (dtype, tuple(shape))
        ranges.append((begin, end))
    ranges.sort()
    if any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])) or (ranges and ranges[0][0] != 0) \
            or 8 + length + (ranges[-1][1] if ranges else 0) != size:
        raise HeadMismatchError(f"{path}: tensor byte ranges overlap, leave gaps or do not end the file")
    return tensors


def expected_tensors(config: HeadConfig, hidden_size: int, lora_targets: dict[str, tuple[int, int]] | None = None
                     ) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the state dict a head of ``config`` has on a backbone of ``hidden_size`` (and, for a head
    with encoder LoRA, the backbone's ``lora_targets``); no memory used."""
    from latentcomm.model.heads import CompressionHead

    with torch.device("meta"):
        head = CompressionHead(config, hidden_size, lora_targets=lora_targets)
    return {name: tuple(t.shape) for name, t in head.state_dict().items()}


def check_tensors(path: Path, config: HeadConfig, hidden_size: int,
                  lora_targets: dict[str, tuple[int, int]] | None = None) -> None:
    """Raise ``HeadMismatchError`` unless ``path`` holds exactly the fp32 tensors a head of ``config`` has."""
    found = tensor_header(path)
    expected = expected_tensors(config, hidden_size, lora_targets)
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise HeadMismatchError(f"{path}: tensors do not match the config (missing {missing}, unexpected {extra})")
    for name, shape in expected.items():
        dtype, got = found[name]
        if got != shape or dtype not in ("F32", "I64"):
            raise HeadMismatchError(f"{path}: {name} is {dtype} {list(got)}, the config needs {list(shape)}")


def read_tensors(path: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The tensors of a checked file (``check_tensors`` first)."""
    from safetensors.torch import load_file

    try:
        return {k: v.to(device) for k, v in load_file(os.fspath(path)).items()}
    except Exception as err:  # safetensors raises its own error types for what the checks above did not see
        raise HeadMismatchError(f"{path}: unreadable tensors: {type(err).__name__}: {err}") from None


def check_folder(folder: Path) -> HeadConfig:
    """Check a head folder without loading a backbone: ``config.json``, and ``head.safetensors`` against it at the
    hidden size of its special-token table (``from_pretrained`` then checks that size against the backbone)."""
    _, config = read_config(folder / "config.json")
    path = folder / "head.safetensors"
    found = tensor_header(path)
    _, shape = found.get("special.weight", ("", ()))
    check_tensors(path, config, shape[-1] if len(shape) == 2 and shape[-1] > 0 else 1,
                  file_lora_targets(path, found) if config.encoder_lora_rank else None)
    return config


def file_lora_targets(path: Path, found: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, tuple[int, int]]:
    """The (in, out) shapes of the encoder LoRA adapters a head file holds, under placeholder paths in file order
    (the file names adapters by index; ``from_pretrained`` checks them against the backbone's own linears)."""
    targets, i = {}, 0
    while (down := found.get(f"encoder_lora.adapters.{i}.down.weight")) and \
            (up := found.get(f"encoder_lora.adapters.{i}.up.weight")):
        if len(down[1]) != 2 or len(up[1]) != 2:
            raise HeadMismatchError(f"{path}: encoder LoRA adapter {i} is not two matrices")
        targets[f"{i:06d}"] = (down[1][1], up[1][0])
        i += 1
    if not targets:
        raise HeadMismatchError(f"{path}: the config asks for encoder LoRA, the file holds no adapters")
    return targets


def head_fingerprint(backbone_id: str, config: HeadConfig, state: Mapping[str, torch.Tensor]) -> str:
    """Hash of the backbone identity, the head config and the head weights (16 hex digits)."""
    digest = hashlib.sha256(backbone_id.encode())
    digest.update(config.to_json().encode())
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def head_lora_targets(backbone: Backbone, config: HeadConfig) -> dict[str, tuple[int, int]] | None:
    """The backbone linears a head's encoder LoRA adapts (None for a head without one)."""
    return lora_targets(backbone.model) if config.encoder_lora_rank else None


def write_head(directory: str | os.PathLike, state: Mapping[str, torch.Tensor], config: HeadConfig,
               backbone: Backbone, fingerprint: str) -> Path:
    """Write a head folder: ``head.safetensors`` (fp32) and ``config.json``; never a non-finite head."""
    from safetensors.torch import save_file

    if not all(torch.isfinite(t).all() for t in state.values()):
        raise ValueError("the head holds NaN or Inf weights: refusing to save it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, directory / "head.safetensors", metadata={"fingerprint": fingerprint})
    meta = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "backbone": backbone.name,
            "backbone_id": backbone.backbone_id, "fingerprint": fingerprint, "head": config.to_dict()}
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_head(directory: Path, meta: dict[str, Any], config: HeadConfig, backbone: Backbone
              ) -> dict[str, torch.Tensor]:
    """The tensors of the head folder ``directory`` (its ``read_config`` gave ``meta`` and ``config``) on
    ``backbone``, after checking that they fit the config and the backbone."""
    config_path = directory / "config.json"
    if backbone.backbone_id != meta["backbone_id"]:
        raise HeadMismatchError(f"head {directory} was trained on backbone {meta['backbone_id']} "
                                f"({meta['backbone']}), not on {backbone.backbone_id} ({backbone.name})")
    if config.state_layer > backbone.num_layers:
        raise HeadMismatchError(f"{config_path}: state_layer {config.state_layer} > the backbone's layers")
    try:
        targets = head_lora_targets(backbone, config)
    except ValueError as err:
        raise HeadMismatchError(f"{config_path}: {err}") from None
    check_tensors(directory / "head.safetensors", config, backbone.hidden_size, targets)
    state = read_tensors(directory / "head.safetensors", backbone.device)
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise HeadMismatchError(f"head weights in {directory} hold NaN or Inf")
    return state
