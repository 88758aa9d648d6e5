"""Configuration of a compression head: the special tokens, the two projections and the input budget."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

ProjectionKind = Literal["linear", "mlp"]


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the trainable part of a generative embedder (everything else is the frozen backbone).

    The paper's default is 20 special tokens: 10 thought + 10 compression. The official V2 scripts use 0
    thought tokens; any non-negative ``num_thought`` works, ``num_compression`` must be at least 1.
    """

    num_thought: int = 10
    num_compression: int = 10
    recon_head: ProjectionKind = "linear"
    align_head: ProjectionKind = "linear"
    embed_dim: int | None = None
    """Width of the embedding (the teacher's dimension); ``None`` means the backbone's hidden size."""
    max_query_tokens: int = 512
    """Longest query kept, in tokens, before the special tokens (which are never truncated)."""
    max_response_tokens: int = 256
    """Longest response kept for the reconstruction loss."""
    chat_template: bool = True
    """Wrap the query as a user turn of the backbone's chat template, so the special tokens sit where the
    assistant's answer would start."""
    teacher: str = "minilm"
    """Name of the teacher whose embedding space ``embed`` aligns to (recorded, not loaded, by the head)."""
    state_layer: int = -1
    """Which states of the compression tokens feed MLP_recon: -1 the last layer's (the paper), k >= 1 the residual
    stream after decoder layer k."""
    encoder_lora_rank: int = 0
    """Rank of the encoder-side LoRA adapters (``latentcomm.model.lora``) on the backbone's attention query and value
    projections, active only while this head compresses; 0 = none (the backbone as it is)."""

    def __post_init__(self) -> None:
        for name in ("num_thought", "num_compression", "max_query_tokens", "max_response_tokens", "state_layer",
                     "encoder_lora_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.embed_dim is not None and (isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int)):
            raise ValueError(f"embed_dim must be an int or None, got {self.embed_dim!r}")
        if not isinstance(self.chat_template, bool) or not isinstance(self.teacher, str):
            raise ValueError("chat_template must be a bool and teacher a string")
        if self.num_thought < 0:
            raise ValueError(f"num_thought must be >= 0, got {self.num_thought}")
        if self.num_compression < 1:
            raise ValueError(f"num_compression must be >= 1, got {self.num_compression}")
        for name in ("recon_head", "align_head"):
            if getattr(self, name) not in ("linear", "mlp"):
                raise ValueError(f"{name} must be 'linear' or 'mlp', got {getattr(self, name)!r}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if self.max_query_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_query_tokens and max_response_tokens must be positive")
        if self.state_layer != -1 and self.state_layer < 1:
            raise ValueError(f"state_layer must be -1 (last layer) or a decoder layer >= 1, got {self.state_layer}")
        if self.encoder_lora_rank < 0:
            raise ValueError(f"encoder_lora_rank must be >= 0, got {self.encoder_lora_rank}")

    @property
    def num_special(self) -> int:
        return self.num_thought + self.num_compression

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown HeadConfig fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """Canonical JSON (part of a head's fingerprint). Fields added after head format 2 appear only when they
        differ from their default, so heads saved before them keep their fingerprints."""
        data = self.to_dict()
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        return json.dumps(data, sort_keys=True)


_LATER_FIELDS = {"state_layer": -1, "encoder_lora_rank": 0}
