"""Batched autoregressive generation that continues from input embeddings (soft prompts or token embeddings)."""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from latentcomm.model.backbone import cache_keyword


REPETITION_PENALTY = 1.1
NO_REPEAT_NGRAM_SIZE = 4
"""The repetition defaults of ``decode``/``respond`` everywhere (model, replica, generation job), chosen by
measurement: greedy decodes of a trained head loop (repeated word 4-gram) 52% of the time without them, 9% with."""


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (Hugging Face meanings, validated once here).

    ``temperature`` 0 is greedy. ``repetition_penalty`` > 1 divides the positive logits (multiplies the
    negative ones) of tokens already generated; ``no_repeat_ngram_size`` n > 0 forbids any token that would
    repeat an n-gram of the generated tokens. Both look at the generated tokens only: the prompt may be a soft
    prompt without token ids, and copying the question's words into the answer is no loop.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int) \
                or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be an int >= 0, got {self.no_repeat_ngram_size!r}")


def accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def penalize_repeats(logits: torch.Tensor, generated: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Apply the repetition penalty and the n-gram ban to next-token ``logits`` (B, V) given ``generated`` (B, t)."""
    if generated.shape[1] == 0:
        return logits
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, generated, True)
        penalized = torch.where(logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    n = sampling.no_repeat_ngram_size
    if n == 1:
        logits = logits.scatter(1, generated, float("-inf"))
    elif n > 1 and generated.shape[1] >= n:
        windows = generated.unfold(1, n - 1, 1)                       # (B, t - n + 2, n - 1)
        match = (windows[:, :-1] == windows[:, -1:]).all(-1)          # earlier windows equal to the last one
        banned = torch.where(match, generated[:, n - 1:], logits.shape[1])  # the token that followed each match
        ban = torch.zeros(logits.shape[0], logits.shape[1] + 1, dtype=torch.bool, device=logits.device)
        ban.scatter_(1, banned, True)
        logits = logits.masked_fill(ban[:, :-1], float("-inf"))
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """The next token (B,) of each row of ``logits`` (B, V): the argmax when greedy, else a (top-p) sample."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < sampling.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def max_new_tokens_allowed(model: PreTrainedModel, prompt_length: int) -> int:
    """The most new tokens the model's position range leaves after a prompt of ``prompt_length`` positions."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return max(int(limit) - prompt_length, 0) if limit else 1 << 20


@torch.no_grad()
def generate(model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *,
             max_new_tokens: int, eos_token_ids: set[int], pad_token_id: int, sampling: Sampling = Sampling(),
             seed: int | None = None, use_cache: bool = True, prefix: Any = None) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` per row after left-padded ``inputs_embeds`` (B, T, H).

    With ``use_cache`` each step feeds one token and reuses the KV cache; without it every step re-runs
    the whole sequence (the slow reference the cache must agree with). ``prefix`` is a KV cache of P positions
    (batch B) every row attends to before its prompt, which then takes positions P.. (the cache is extended in
    place: pass a copy). Returns each row's new token ids, cut before the first EOS. ``max_new_tokens`` may not
    run past the model's position range.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if prefix is not None and not use_cache:
        raise ValueError("a KV prefix needs use_cache=True")
    held = prefix.get_seq_length() if prefix is not None else 0
    allowed = max_new_tokens_allowed(model, held + inputs_embeds.shape[1])
    if max_new_tokens > allowed:
        raise ValueError(f"max_new_tokens={max_new_tokens} runs past the backbone's "
                         f"{allowed + held + inputs_embeds.shape[1]} positions after a "
                         f"{held + inputs_embeds.shape[1]}-position prompt (at most {allowed})")
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    embed = model.get_input_embeddings()
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    cache_kw = cache_keyword(model)
    eos = torch.tensor(sorted(eos_token_ids), device=device)

    mask = torch.cat([torch.ones(batch, held, dtype=torch.long, device=device), attention_mask.to(device).long()], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, held:]
    embeds, step_positions, past = inputs_embeds, positions, prefix
    tokens = torch.empty(batch, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=step_positions,
                    use_cache=use_cache, **keep, **({cache_kw: past} if past is not None else {}))
        logits = penalize_repeats(out.logits[:, -1].float(), tokens, sampling)
        token = next_token(logits, sampling, generator)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        finished |= torch.isin(token, eos)
        if bool(finished.all()):
            break
        new_embed = embed(token)[:, None].to(inputs_embeds.dtype)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        if use_cache:
            embeds, step_positions, past = new_embed, positions[:, -1:], getattr(out, cache_kw)
        else:
            embeds, step_positions = torch.cat([embeds, new_embed], dim=1), positions
    result = []
    for row in tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_token_ids), len(row))
        result.append(row[:cut])
    return result


_WORD = re.compile(r"\w+")


def has_loop(text: str, n: int = 4) -> bool:
    """Whether ``text`` repeats a word n-gram (lower-cased words): the loop measure of decodes and answers."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)
