"""KV hand-off: the frozen backbone's key/value cache of an agent's input, sent instead of a compressed latent.

Peers that pass caches between agents (KVComm, LatentMAS; ``../shared/docs/peers.md``) hand over everything the
sender read, at a size that grows with its input: 2 x layers x kv_heads x T x head_dim values (11,520 per token
on SmolLM2-135M, against a compression latent's fixed 10 x 576). A receiver attends to the cache before its own
chat turn, so a ``KVPrefix`` is context that comes first wherever it stands among an input's parts. No head is
involved: any agent on the same backbone reads any other's. ``prefill`` makes one (one forward pass, extending a
received prefix: a relay's cache holds the chain so far); ``respond_after`` answers in text after one, and
``answer_prompt`` gives what that answer is generated after (a replica batches such rows).

The cache is a conversation of closed user turns (``GenerativeEmbedder.turn_template``): the first opens it with
the system prompt, each relay's follows as another user turn, and only the answer's turn ends in the assistant's
generation prompt. (Turns that each held a system prompt and an empty assistant turn made the receiver of a
three-agent chain answer with nothing: measured on SmolLM2-135M, 1 of 12 facts right against 8 of 12 at K = 2.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from transformers import DynamicCache

from latentcomm.errors import LatentError
from latentcomm.model.generation import Sampling, generate, max_new_tokens_allowed

if TYPE_CHECKING:
    from latentcomm.model.embedder import GenerativeEmbedder
    from latentcomm.model.prompt import Part


@dataclass(frozen=True)
class KVPrefix:
    """Keys and values (2 x layers, kv_heads, T, head_dim) of T positions (keys of layer i at 2i, values at 2i+1)
    on the backbone ``backbone_id``."""

    tensor: torch.Tensor
    backbone_id: str

    def __post_init__(self) -> None:
        if self.tensor.ndim != 4 or self.tensor.shape[0] % 2 or min(self.tensor.shape) < 1:
            raise LatentError(f"a KV prefix is (2 x layers, kv_heads, T, head_dim), got {tuple(self.tensor.shape)}")
        if not torch.isfinite(self.tensor).all():
            raise LatentError("a KV prefix holds NaN or Inf")

    @property
    def length(self) -> int:
        """Positions the prefix holds (T)."""
        return int(self.tensor.shape[2])

    @classmethod
    def from_cache(cls, cache: Any, backbone_id: str) -> "KVPrefix":
        """The first row of a transformers cache."""
        layers = [t for layer in cache.layers for t in (layer.keys[0], layer.values[0])]
        return cls(torch.stack(layers).float().cpu(), backbone_id)

    def to_cache(self, device: torch.device, dtype: torch.dtype) -> DynamicCache:
        """A fresh cache of batch 1 holding these positions (every call a new one: generation extends it)."""
        cache = DynamicCache()
        x = self.tensor.to(device, dtype)
        for i in range(x.shape[0] // 2):
            cache.update(x[2 * i][None], x[2 * i + 1][None], i)
        return cache


def kv_shape(model: "GenerativeEmbedder") -> tuple[int, int, int]:
    """(2 x layers, kv_heads, head_dim): what a KV prefix of ``model``'s backbone has around its T."""
    cfg = model.backbone.model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers, int(heads), int(head_dim)


def take_prefix(model: "GenerativeEmbedder", parts: str | Sequence[Any]) -> tuple[KVPrefix | None, list["Part"]]:
    """The one KV prefix among ``parts`` (a string is one part; checked against ``model``'s backbone) and the other
    parts."""
    parts = [parts] if isinstance(parts, str) else parts
    prefixes = [p for p in parts if isinstance(p, KVPrefix)]
    if len(prefixes) > 1:
        raise LatentError(f"an input reads at most one KV prefix, got {len(prefixes)}")
    rest = [p for p in parts if not isinstance(p, KVPrefix)]
    if not prefixes:
        return None, rest
    prefix = prefixes[0]
    if prefix.backbone_id != model.backbone.backbone_id:
        raise LatentError(f"a KV prefix from backbone {prefix.backbone_id} cannot be read on "
                          f"{model.backbone.backbone_id}: caches are specific to their backbone")
    want = kv_shape(model)
    got = tuple(prefix.tensor.shape)
    if (got[0], got[1], got[3]) != want:
        raise LatentError(f"a KV prefix of shape {got} does not fit this backbone's (2 x layers, kv_heads, T, "
                          f"head_dim) = ({want[0]}, {want[1]}, T, {want[2]})")
    return prefix, rest


def _turn(model: "GenerativeEmbedder", parts: str | Sequence[Any], *, answers: bool
          ) -> tuple[DynamicCache | None, torch.Tensor, int]:
    """The cache of the prefix among ``parts`` (None without one), the user turn of the other parts embedded
    (1, T, H) — opening the conversation without a prefix, ending in the generation prompt where ``answers`` — and
    the positions before the turn."""
    prefix, rest = take_prefix(model, parts)
    bb = model.backbone
    embeds, _ = model.respond_prompts([rest], model.turn_template(opens=prefix is None, answers=answers))
    held = prefix.length if prefix is not None else 0
    if max_new_tokens_allowed(bb.model, held + embeds.shape[1]) < 1:
        raise LatentError(f"a {held}-position KV prefix and a {embeds.shape[1]}-token turn fill the backbone's "
                          "position range")
    return (prefix.to_cache(bb.device, bb.dtype) if prefix is not None else None), embeds, held


@torch.no_grad()
def prefill(model: "GenerativeEmbedder", parts: str | Sequence[Any]) -> KVPrefix:
    """The KV prefix of ``parts`` as a closed user turn after the received prefix among them (the conversation so
    far): one forward pass."""
    cache, embeds, held = _turn(model, parts, answers=False)
    bb = model.backbone
    length = held + embeds.shape[1]
    mask = torch.ones(1, length, dtype=torch.long, device=bb.device)
    positions = torch.arange(held, length, device=bb.device)[None]
    _, cache = bb.hidden_states(embeds, mask, positions, cache=cache, use_cache=True)
    return KVPrefix.from_cache(cache, bb.backbone_id)


def answer_prompt(model: "GenerativeEmbedder", parts: str | Sequence[Any]) -> tuple[DynamicCache | None, torch.Tensor]:
    """What the answer to ``parts`` is generated after: a fresh cache of the KV prefix among them (None without one)
    and their chat turn, ending in the generation prompt, embedded (T, H) (positions after the prefix's)."""
    cache, embeds, _ = _turn(model, parts, answers=True)
    return cache, embeds[0]


@torch.no_grad()
def respond_after(model: "GenerativeEmbedder", parts: str | Sequence[Any], *, max_new_tokens: int,
                  sampling: Sampling = Sampling(), seed: int | None = None) -> str:
    """The backbone's answer to the chat turn of ``parts``, attending to the KV prefix among them first (one row;
    a replica's continuous batch runs many at once: ``ContinuousGenerator.generate(prefixes=)``)."""
    cache, embeds = answer_prompt(model, parts)
    bb = model.backbone
    mask = torch.ones(1, embeds.shape[0], dtype=torch.long, device=bb.device)
    [ids] = generate(bb.model, embeds[None], mask, max_new_tokens=max_new_tokens, eos_token_ids=model.stop_token_ids(),
                     pad_token_id=bb.tokenizer.pad_token_id, sampling=sampling, seed=seed, prefix=cache)
    return model.detokenize([ids])[0]
