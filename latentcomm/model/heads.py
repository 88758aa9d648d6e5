"""The trainable parts: special-token embeddings, MLP_recon and MLP_align (the backbone stays frozen)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentcomm.model.config import HeadConfig, ProjectionKind
from latentcomm.model.lora import EncoderLoRA


class SpecialTokens(nn.Module):
    """m thought + n compression token embeddings, a parameter of their own (the vocabulary is untouched).

    Calling the module returns the (m + n, H) matrix, so that wrappers which hook module calls (ZeRO-3)
    see every use of the weight.
    """

    def __init__(self, count: int, hidden_size: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = torch.zeros(count, hidden_size) if init is None else init.detach().float().clone()
        if weight.shape != (count, hidden_size):
            raise ValueError(f"init must be ({count}, {hidden_size}), got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight


def projection(kind: ProjectionKind, in_dim: int, out_dim: int) -> nn.Module:
    """A linear map (the official heads) or a 2-layer MLP with a GELU."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    raise ValueError(f"unknown projection kind {kind!r}")


class FeatureStandardize(nn.BatchNorm1d):
    """Per-dimension standardisation of vectors (B, n, H), without learnable scale or shift.

    LLM hidden states share a large constant component and have a few outlier dimensions two orders of
    magnitude above the rest; a linear map on them barely learns. Training normalises with the batch's
    statistics and keeps running ones; inference (``eval()``, the default of a GenerativeEmbedder) uses the
    running statistics, so a latent or an embedding never depends on the rest of its batch.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size, affine=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        flat = latent.reshape(-1, latent.shape[-1])
        if self.training and flat.shape[0] < 2:
            return F.batch_norm(flat, self.running_mean, self.running_var, training=False,
                                eps=self.eps).view_as(latent)
        return super().forward(flat).view_as(latent)


RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Ridge strengths (times the number of rows) that ``CompressionHead.fit_align`` chooses from."""


def _init_scaled_identity(layer: nn.Linear, scale: float, bias: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.zero_()
        n = min(layer.weight.shape)
        layer.weight[:n, :n] = torch.eye(n) * scale
        layer.bias.copy_(bias)


def _init_small(layer: nn.Linear) -> None:
    """Weights N(0, 1/(in*out)) and zero bias: standardised inputs then give outputs of about unit norm."""
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=(layer.in_features * layer.out_features) ** -0.5)
        layer.bias.zero_()


class CompressionHead(nn.Module):
    """Everything that trains: special tokens, MLP_recon (H -> H), MLP_align (H -> embed_dim) and, when
    ``config.encoder_lora_rank`` > 0, the encoder-side LoRA adapters (``encoder_lora``; None otherwise) on the
    backbone linears ``lora_targets`` (path -> (in, out), from ``latentcomm.model.lora.lora_targets``).

    Both projections standardise each input dimension first (``FeatureStandardize``). Last-layer states of
    the compression tokens are nearly one constant vector (norm ~45 on SmolLM2, ~14x a token embedding's 3.2)
    with small query-dependent deviations; fed through unscaled, the soft prompt swamps the residual stream
    and carries no query information. Standardised, the deviations are what MLP_recon sees,
    and a linear MLP_recon starts as ``prompt_scale`` x identity plus ``prompt_mean``, so an untrained latent
    already looks like token embeddings (the mean embedding plus deviations of the vocabulary's spread).
    The special tokens start at the mean vocabulary embedding plus small noise.
    """

    def __init__(self, config: HeadConfig, hidden_size: int, token_init: torch.Tensor | None = None, *,
                 prompt_mean: torch.Tensor | None = None, prompt_scale: float = 1.0,
                 lora_targets: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.embed_dim = config.embed_dim or hidden_size
        self.special = SpecialTokens(config.num_special, hidden_size, token_init)
        self.recon = nn.Sequential(FeatureStandardize(hidden_size),
                                   projection(config.recon_head, hidden_size, hidden_size))
        self.align = nn.Sequential(FeatureStandardize(hidden_size),
                                   projection(config.align_head, hidden_size, self.embed_dim))
        if isinstance(self.recon[1], nn.Linear):
            mean = torch.zeros(hidden_size) if prompt_mean is None else prompt_mean.detach().float()
            _init_scaled_identity(self.recon[1], prompt_scale, mean)
        if isinstance(self.align[1], nn.Linear):
            _init_small(self.align[1])
        self.encoder_lora: EncoderLoRA | None = None
        if config.encoder_lora_rank:
            if not lora_targets:
                raise ValueError("a head with encoder_lora_rank > 0 needs the backbone's lora_targets")
            self.encoder_lora = EncoderLoRA(lora_targets, config.encoder_lora_rank)

    def latent(self, compression_states: torch.Tensor) -> torch.Tensor:
        """(B, n, H) last-layer compression states -> (B, n, H) latent p (the soft prompt)."""
        return self.recon(compression_states.float())

    def embed(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, n, H) latent -> (B, D) embedding: MLP_align on each vector, then the mean."""
        return self.align(latent.float()).mean(dim=1)

    @torch.no_grad()
    def fit_align(self, latents: torch.Tensor, targets: torch.Tensor, ridges: tuple[float, ...] = RIDGES
                  ) -> dict[str, float]:
        """Solve a linear MLP_align in closed form: the ridge regression of the teacher targets (N, D) on the mean
        standardised latent (the embedding is linear in it), i.e. the alignment loss minimised exactly.

        The ridge strength (a multiple of N) is the one with the lowest squared error on the last tenth of the
        rows when fitted on the rest; the final fit uses every row. Returns the chosen strength and that error.
        """
        if not isinstance(self.align[1], nn.Linear):
            raise ValueError("fit_align solves a linear MLP_align only (align_head='linear')")
        features = self.align[0](latents.float()).mean(dim=1).double().cpu()  # (N, H), running statistics
        targets = targets.double().cpu()
        if len(features) < 20 or len(features) != len(targets):
            raise ValueError(f"need at least 20 latents with one target each, got {len(features)} and {len(targets)}")
        cut = len(features) - len(features) // 10

        def solve(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
            x_mean, y_mean = x.mean(0), y.mean(0)
            xc = x - x_mean
            weight = torch.linalg.solve(xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype),
                                        xc.T @ (y - y_mean))
            return weight, y_mean - x_mean @ weight

        errors = {}
        for ridge in ridges:
            weight, bias = solve(features[:cut], targets[:cut], ridge)
            errors[ridge] = float(((features[cut:] @ weight + bias - targets[cut:]) ** 2).sum(-1).mean())
        best = min(errors, key=errors.get)
        weight, bias = solve(features, targets, best)
        self.align[1].weight.copy_(weight.T.to(self.align[1].weight))
        self.align[1].bias.copy_(bias.to(self.align[1].bias))
        return {"ridge": best, "validation_mse": errors[best], "rows": len(features)}


def initial_token_embeddings(vocab_embeddings: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Mean vocabulary embedding plus noise at 1/10 of the vocabulary's per-dimension spread."""
    table = vocab_embeddings.detach().float()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, table.shape[1], generator=generator) * table.std(dim=0).cpu() * 0.1
    return table.mean(dim=0).cpu() + noise


def embedding_statistics(vocab_embeddings: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean vocabulary embedding (H,), root-mean-square spread around it): the scale a soft prompt should have."""
    table = vocab_embeddings.detach().float()
    mean = table.mean(dim=0)
    return mean.cpu(), float((table - mean).pow(2).mean().sqrt())
