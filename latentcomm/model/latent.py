"""The latent of a batch of texts: n compression vectors per text, tagged with the head that made them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentcomm.errors import LatentError


@dataclass(frozen=True)
class Latent:
    """A (B, n, H) float32 tensor of latents (MLP_recon outputs) plus where they came from.

    ``fingerprint`` names the head (backbone identity + head weights), ``backbone_id`` the frozen LLM.
    Decoding needs the same backbone; embedding needs the same head.
    """

    vectors: torch.Tensor
    fingerprint: str
    backbone_id: str

    def __post_init__(self) -> None:
        check_vectors(self.vectors)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.vectors.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, index: int | slice) -> "Latent":
        rows = self.vectors[index] if isinstance(index, slice) else self.vectors[index].unsqueeze(0)
        return Latent(rows, self.fingerprint, self.backbone_id)

    def numpy(self) -> np.ndarray:
        return self.vectors.detach().cpu().numpy()

    @classmethod
    def from_numpy(cls, array: np.ndarray, fingerprint: str, backbone_id: str) -> "Latent":
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        if not np.issubdtype(array.dtype, np.floating):
            raise LatentError(f"latent must hold floats, got {array.dtype}")
        return cls(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), fingerprint, backbone_id)

    @classmethod
    def concat(cls, parts: list["Latent"], *, same_head: bool = True) -> "Latent":
        """One batch of ``parts``, which must come from one head; with ``same_head=False`` only from one backbone
        (all that decoding needs), and the batch carries the first part's fingerprint."""
        if not parts:
            raise LatentError("cannot concatenate zero latents")
        first = parts[0]
        if same_head:
            if any((p.fingerprint, p.backbone_id) != (first.fingerprint, first.backbone_id) for p in parts):
                raise LatentError("cannot concatenate latents from different heads")
        else:
            others = {p.backbone_id for p in parts} - {first.backbone_id}
            if others:
                raise LatentError(f"cannot batch latents of backbones {sorted(others)} with {first.backbone_id}")
        return cls(torch.cat([p.vectors for p in parts]), first.fingerprint, first.backbone_id)


def check_vectors(vectors: torch.Tensor, hidden_size: int | None = None) -> None:
    """Raise LatentError unless ``vectors`` is a finite float (B, n, H) tensor (with H = hidden_size if given)."""
    if not isinstance(vectors, torch.Tensor):
        raise LatentError(f"latent vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.ndim != 3 or 0 in vectors.shape:
        raise LatentError(f"latent vectors must be (batch, n, hidden) and non-empty, got {tuple(vectors.shape)}")
    if not vectors.is_floating_point():
        raise LatentError(f"latent vectors must be floating point, got {vectors.dtype}")
    if hidden_size is not None and vectors.shape[-1] != hidden_size:
        raise LatentError(f"latent hidden size {vectors.shape[-1]} != backbone hidden size {hidden_size}")
    if not torch.isfinite(vectors).all():
        raise LatentError("latent vectors contain NaN or Inf")
