"""Batched autoregressive generation that continues from input embeddings (soft prompts or token embeddings)."""
from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _next_token(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
             max_new_tokens: int, eos_token_ids: set[int], pad_token_id: int, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, use_cache: bool = True) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` per row after left-padded ``inputs_embeds`` (B, T, H).

    With ``use_cache`` each step feeds one token and reuses the KV cache; without it every step re-runs
    the whole sequence (the slow reference the cache must agree with). Greedy when ``temperature`` is 0.
    Returns each row's new token ids, cut before the first EOS.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    embed = model.get_input_embeddings()
    keep = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    eos = torch.tensor(sorted(eos_token_ids), device=device)

    mask = attention_mask.to(device).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    embeds, step_positions, past = inputs_embeds, positions, None
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=step_positions,
                    past_key_values=past, use_cache=use_cache, **keep)
        token = _next_token(out.logits[:, -1], temperature, top_p, generator)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens[:, step] = token
        finished |= torch.isin(token, eos)
        if bool(finished.all()):
            break
        new_embed = embed(token)[:, None].to(inputs_embeds.dtype)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        if use_cache:
            embeds, step_positions, past = new_embed, positions[:, -1:], out.past_key_values
        else:
            embeds, step_positions = torch.cat([embeds, new_embed], dim=1), positions
    result = []
    for row in tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_token_ids), len(row))
        result.append(row[:cut])
    return result
