"""The two training objectives: reconstruction of the response from the latent, alignment to a teacher."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

AlignLoss = Literal["mse", "cosine"]
IGNORE_INDEX = -100


def reconstruction_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions; logits (..., V) already aligned with labels (...)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, ...]:
    """Each row's token NLLs from flat logits (N, V) and labels (N,) whose rows hold ``counts`` tokens
    (``reconstruction_logits``' layout, every position labelled)."""
    return F.cross_entropy(logits.float(), labels, reduction="none").split(counts)


def row_losses(logits: torch.Tensor, labels: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Mean token NLL of each row (B,) (``token_losses``' layout); their token-weighted mean is
    ``reconstruction_loss``."""
    return torch.stack([chunk.mean() for chunk in token_losses(logits, labels, counts)])


def alignment_loss(predicted: torch.Tensor, target: torch.Tensor, kind: AlignLoss = "mse") -> torch.Tensor:
    """The paper's squared error ||e - ê||² (summed over dimensions), or 1 - cosine; averaged over the batch.

    The sum, not a per-dimension mean: with unit-norm teacher vectors a per-dimension mean would shrink the
    alignment gradient by the embedding width (384 for MiniLM) against the reconstruction term.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"embedding shape {tuple(predicted.shape)} != teacher shape {tuple(target.shape)}")
    predicted, target = predicted.float(), target.float().to(predicted.device)
    if kind == "mse":
        return (predicted - target).pow(2).sum(dim=-1).mean()
    if kind == "cosine":
        return (1 - F.cosine_similarity(predicted, target, dim=-1)).mean()
    raise ValueError(f"unknown alignment loss {kind!r}")
