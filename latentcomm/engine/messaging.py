"""Conversions between the core's objects (Latent, embedding vectors, KV prefixes, text) and protocol LatentMessages.

No Ray here: these are the only places where a ``Latent`` becomes a wire message and back, so every
process (driver, replica actor, another service) agrees on how latents travel.

    msg = latent_message(model.compress("Why is the sky blue?"), sender="solver", recipient="critic")
    data = pack(msg, key=key)                                   # protocol bytes between processes
    text = model.decode(message_latent(unpack(data, key=key)))  # the receiver reads it
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from latentcomm.model.kv import KVPrefix
from latentcomm.model.latent import Latent
from latentcomm.protocols import LatentMessage, MalformedMessage, MetaValue

MESSAGE_FIELDS = ("sender", "recipient", "conversation_id", "message_id", "created_ns", "metadata")
"""Routing fields a caller may set on any message (see ``address``)."""
ROUTING_FIELDS = ("sender", "recipient", "conversation_id", "metadata")
"""What a reply or a message made for another keeps of the message it answers (``routing_of``)."""


def latent_message(latent: Latent, *, dtype: str = "float16", sender: str = "", recipient: str = "",
                   conversation_id: str = "", metadata: Mapping[str, MetaValue] | None = None,
                   message_id: str | None = None) -> LatentMessage:
    """One text's latent (a Latent of batch 1) as a "latent" message (n, H) tagged with its head and backbone."""
    if not isinstance(latent, Latent):
        raise TypeError(f"expected a Latent, got {type(latent).__name__}")
    if len(latent) != 1:
        raise ValueError(f"a message carries one latent; got a batch of {len(latent)} (index it: latent[i])")
    return LatentMessage.from_array(latent.numpy()[0], kind="latent", dtype=dtype, sender=sender,
                                    recipient=recipient, conversation_id=conversation_id,
                                    fingerprint=latent.fingerprint, backbone_id=latent.backbone_id,
                                    metadata=metadata, message_id=message_id)


def embedding_message(vector: np.ndarray, *, fingerprint: str, backbone_id: str, dtype: str = "float32",
                      sender: str = "", recipient: str = "", conversation_id: str = "",
                      metadata: Mapping[str, MetaValue] | None = None, message_id: str | None = None
                      ) -> LatentMessage:
    """One embedding (D,) as an "embedding" message, tagged with the head that made it."""
    vector = np.asarray(vector, dtype=np.float32)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1:
        raise ValueError(f"an embedding message carries one (D,) vector, got shape {vector.shape}")
    return LatentMessage.from_array(vector, kind="embedding", dtype=dtype, sender=sender, recipient=recipient,
                                    conversation_id=conversation_id, fingerprint=fingerprint,
                                    backbone_id=backbone_id, metadata=metadata, message_id=message_id)


def kv_message(prefix: KVPrefix, *, dtype: str = "float16", sender: str = "", recipient: str = "",
               conversation_id: str = "", metadata: Mapping[str, MetaValue] | None = None,
               message_id: str | None = None) -> LatentMessage:
    """A KV prefix as a "kv" message (2 x layers, kv_heads, T, head_dim), tagged with its backbone."""
    if not isinstance(prefix, KVPrefix):
        raise TypeError(f"expected a KVPrefix, got {type(prefix).__name__}")
    return LatentMessage.from_array(prefix.tensor.numpy(), kind="kv", dtype=dtype, sender=sender,
                                    recipient=recipient, conversation_id=conversation_id,
                                    backbone_id=prefix.backbone_id, metadata=metadata, message_id=message_id)


def message_kv(msg: LatentMessage) -> KVPrefix:
    """A "kv" message back as a KVPrefix (float32, dequantised)."""
    _expect_kind(msg, "kv")
    return KVPrefix(torch.from_numpy(np.array(msg.array())), msg.backbone_id)


def message_latent(msg: LatentMessage) -> Latent:
    """A "latent" message back as a Latent of batch 1 (float32, dequantised)."""
    _expect_kind(msg, "latent")
    return Latent.from_numpy(np.array(msg.array()), msg.fingerprint, msg.backbone_id)


def message_embedding(msg: LatentMessage) -> np.ndarray:
    """An "embedding" message back as a float32 (D,) array."""
    _expect_kind(msg, "embedding")
    return np.array(msg.array(), dtype=np.float32)


def address(msg: LatentMessage, **fields: Any) -> LatentMessage:
    """A copy of ``msg`` with new routing fields (sender, recipient, conversation_id, message_id, metadata, ...)."""
    unknown = set(fields) - set(MESSAGE_FIELDS)
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} on a message; settable: {MESSAGE_FIELDS}")
    return dataclasses.replace(msg, signature=None, **fields)


def routing_of(msg: LatentMessage) -> dict[str, Any]:
    """``msg``'s sender, recipient, conversation and metadata: the routing to pack a reply to it with."""
    return {name: getattr(msg, name) for name in ROUTING_FIELDS}


def _expect_kind(msg: LatentMessage, kind: str) -> None:
    if not isinstance(msg, LatentMessage):
        raise TypeError(f"expected a LatentMessage, got {type(msg).__name__}")
    if msg.kind != kind:
        raise MalformedMessage(f"expected a {kind!r} message, got {msg.kind!r} from {msg.sender or '?'}")
