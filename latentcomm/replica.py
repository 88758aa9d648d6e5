"""A model replica: one frozen backbone + head, spoken to in protocol bytes (no Ray here).

``Replica`` is a plain class (usable in-process); ``latentcomm.pool.ReplicaPool`` runs N of them as Ray actors,
for the agents (``actors/``) and for the response generation job (``training/``). Only the ``ReplicaConfig``
is pickled to the actor: the backbone and head are loaded inside it, from a path or the default alias.
Latents and embeddings leave and enter the actor as packed ``LatentMessage`` bytes, never as pickled tensors.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from latentcomm.backbone import DEFAULT_BACKBONE, load_backbone
from latentcomm.config import HeadConfig
from latentcomm.latent import Latent
from latentcomm.messaging import embedding_message, latent_message, message_latent
from latentcomm.model import GenerativeEmbedder, load_embedder
from latentcomm.protocols import LatentMessage, pack, unpack


@dataclass(frozen=True)
class ReplicaConfig:
    """What a replica loads: a backbone (alias, HF folder or GGUF) and a head (folder, or None for the default)."""

    backbone: str = DEFAULT_BACKBONE
    head: str | None = None
    """A saved head folder; None means the shipped head of the default backbone, else an untrained head."""
    head_config: HeadConfig | None = None
    """An untrained head of this shape instead of the shipped one (tests; response generation, which uses the
    backbone alone); ignored when ``head`` is given."""
    device: str | None = None
    dtype: str | None = None
    """Backbone dtype name (``float32``, ``bfloat16``, ...); None picks the device's fast one."""
    num_threads: int | None = None
    """torch CPU threads inside the actor; None keeps torch's default."""
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.dtype is not None and not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {self.dtype!r}; use e.g. 'float32' or 'bfloat16'")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class Replica:
    """A frozen LLM with a compression head: compress, embed, decode and respond, over protocol bytes."""

    def __init__(self, config: ReplicaConfig) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        start = time.perf_counter()
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.config = config
        if config.head is None and config.head_config is not None:
            backbone = load_backbone(config.backbone, device=config.device, dtype=dtype)
            self.model = GenerativeEmbedder(backbone, config.head_config)
        else:
            self.model = load_embedder(config.head, backbone=config.backbone, device=config.device, dtype=dtype)
        self.load_s = time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """Identity of this replica: process id, backbone, head fingerprint, latent shape, load time."""
        return {"pid": os.getpid(), "backbone": self.model.backbone.name, "backbone_id": self.model.backbone.backbone_id,
                "fingerprint": self.model.fingerprint, "num_compression": self.model.config.num_compression,
                "hidden_size": self.model.backbone.hidden_size, "device": str(self.model.device),
                "dtype": str(self.model.backbone.dtype).removeprefix("torch."), "load_s": self.load_s}

    def compress(self, texts: list[str], *, dtype: str = "float16", prompt: str | None = None) -> list[bytes]:
        """Texts -> one packed "latent" message each (one forward pass per batch, no generation)."""
        latent = self.model.compress(texts, prompt=prompt, show_progress_bar=False)
        return [pack(latent_message(latent[i], dtype=dtype)) for i in range(len(latent))]

    def embed(self, messages: list[bytes], *, dtype: str = "float32") -> list[bytes]:
        """Packed "latent" messages (made by this head) -> packed "embedding" messages with the same routing."""
        out = []
        for data in messages:
            msg = unpack(data, expect_fingerprint=self.model.fingerprint)
            vector = self.model.embed_latent(message_latent(msg))[0]
            out.append(pack(self._embedding(vector, dtype, msg)))
        return out

    def embed_texts(self, texts: list[str], *, dtype: str = "float32", prompt: str | None = None) -> list[bytes]:
        """Texts -> packed "embedding" messages (compress + MLP_align + mean pooling)."""
        vectors = self.model.encode(texts, prompt=prompt, show_progress_bar=False)
        return [pack(self._embedding(v, dtype)) for v in vectors]

    def decode(self, messages: list[bytes], *, max_new_tokens: int | None = None) -> list[str]:
        """Packed "latent" messages -> text: the frozen LLM continues from each latent as a soft prompt."""
        latents = [message_latent(unpack(data)) for data in messages]
        if not latents:
            return []
        return self.model.decode(Latent.concat(latents, same_head=False),
                                 max_new_tokens=max_new_tokens or self.config.max_new_tokens, show_progress_bar=False)

    def respond(self, texts: list[str], *, max_new_tokens: int | None = None, **generation: Any) -> list[str]:
        """The backbone's own answer to each text (autoregressive generation: the text baseline, the training data).

        ``generation``: further keyword arguments of ``GenerativeEmbedder.respond`` (sampling, ``seed``,
        ``batch_size``).
        """
        return self.model.respond(texts, max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                                  show_progress_bar=False, **generation)

    def _embedding(self, vector: Any, dtype: str, source: LatentMessage | None = None) -> LatentMessage:
        routing = {} if source is None else {"sender": source.sender, "recipient": source.recipient,
                                             "conversation_id": source.conversation_id,
                                             "metadata": source.metadata}
        return embedding_message(vector, fingerprint=self.model.fingerprint,
                                 backbone_id=self.model.backbone.backbone_id, dtype=dtype, **routing)
