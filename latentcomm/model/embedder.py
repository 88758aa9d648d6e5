"""GenerativeEmbedder: a frozen causal LM plus a compression head — compress, encode, embed, decode, respond."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from latentcomm.model.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from latentcomm.model.config import HeadConfig
from latentcomm.errors import HeadMismatchError
from latentcomm.model.generation import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY, Sampling, generate
from latentcomm.model.heads import CompressionHead, FeatureStandardize, embedding_statistics, initial_token_embeddings
from latentcomm.model.head_file import HEAD_FORMAT, HEAD_FORMAT_VERSION, check_tensors, read_config, read_tensors
from latentcomm.model.latent import Latent, LatentError, check_vectors
from latentcomm.model.lora import lora_targets
from latentcomm.model.losses import IGNORE_INDEX, AlignLoss, alignment_loss, reconstruction_loss
from latentcomm.model.reading import Instruction

if TYPE_CHECKING:
    from latentcomm.model.optimise import OptimiseConfig

log = logging.getLogger(__name__)
MIN_QUERY_TOKENS = 16
"""Fewer query tokens than this left by the template and prompt: a warning (none at all: ``ValueError``)."""

DEFAULT_HEAD_DIR = Path(__file__).parents[1] / "pretrained" / DEFAULT_BACKBONE
"""The trained head shipped for the default backbone (made by ``latentcomm train``)."""
_SPLIT = "\x00LATENTCOMM_QUERY\x00"
MIN_TEMPLATE_CACHE = 4
"""Shortest shared token run worth a cached KV (shorter ones are recomputed)."""
TEMPLATE_CACHE_ENTRIES = 32
"""Distinct shared runs (prompts, instructions) whose KV cache is kept."""


@dataclass
class LossOutput:
    """The weighted training loss and its two parts (floats detached for logging)."""

    loss: torch.Tensor
    recon: float
    align: float


Part = Union[str, Latent]
"""One piece of an input: text (tokenised) or a latent row (1, n, H) that enters verbatim as n soft tokens."""
Item = Union[str, Latent, Sequence[Part]]
"""One input: a string, a latent row, or a sequence of parts, all inside the user turn of the chat template."""
Segment = Union[list[int], torch.Tensor]
"""Token ids, or (k, H) vectors placed as they are."""


def _as_items(inputs: Item | Sequence[Item], what: str = "texts") -> list[list[Part]]:
    """Inputs as lists of parts: a string or latent is one item; a list holds items (each a string, a latent
    row or a list of parts)."""
    if isinstance(inputs, (str, Latent)):
        inputs = [inputs]
    if not isinstance(inputs, Sequence):
        raise TypeError(f"{what} must be strings or lists of parts, got {type(inputs).__name__}")
    items = []
    for item in inputs:
        parts = [item] if isinstance(item, (str, Latent)) else item
        if not isinstance(parts, Sequence):
            raise TypeError(f"{what} must be strings or lists of strings and latents, got {type(item).__name__}")
        bad = [type(p).__name__ for p in parts if not isinstance(p, (str, Latent))]
        if bad:
            raise TypeError(f"{what} must be strings or lists of strings and latents, got {sorted(set(bad))}")
        items.append(list(parts))
    if not items:
        raise ValueError(f"{what} is empty: pass at least one string or list of parts")
    return items


def _size(parts: list[Part]) -> int:
    """Rough length of an item for sorting batches (characters; a latent vector counts as 4)."""
    return sum(len(p) if isinstance(p, str) else 4 * p.vectors.shape[1] for p in parts)


def _batches(order: list[int], batch_size: int, show: bool | None, desc: str) -> Iterator[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(order), batch_size)
    if show is None:
        show = len(starts) > 1 and sys.stderr.isatty()
    for start in tqdm(starts, desc=desc, disable=not show, unit="batch"):
        yield order[start:start + batch_size]


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one length; returns (ids, attention_mask) as (B, T) tensors."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _common_head(rows: list[list[Segment]]) -> list[int]:
    """The token ids that every non-empty row starts with (within its first segment, when that holds ids)."""
    firsts = [row[0] for row in rows if row]
    if not firsts or not all(isinstance(f, list) for f in firsts):
        return []
    head = firsts[0]
    for ids in firsts[1:]:
        n = next((i for i, (a, b) in enumerate(zip(head, ids)) if a != b), min(len(head), len(ids)))
        head = head[:n]
    return list(head)


def positions_of(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids (B, T) of the real tokens of a padded batch, counting on from ``start`` (B, 1)."""
    return start + (mask.cumsum(-1) - 1).clamp(min=0)


class GenerativeEmbedder(nn.Module):
    """LLM2Vec-Gen on a frozen backbone. Only ``head`` (special tokens + MLP_recon + MLP_align) is a submodule,
    so ``parameters()``, ``state_dict()`` and optimizers see exactly what trains.

    Data flow: text -> query tokens ⊕ m thought ⊕ n compression tokens -> frozen LLM -> last-layer states
    of the n compression tokens (B, n, H) -> MLP_recon -> latent p (B, n, H) -> either a soft prompt for
    ``decode`` or MLP_align + mean -> embedding (B, D).
    """

    def __init__(self, backbone: Backbone, config: HeadConfig | None = None, *, seed: int = 0) -> None:
        """A fresh (untrained) head on ``backbone``; the same ``seed`` gives the same head in any process."""
        super().__init__()
        self.backbone = backbone
        self.config = config or HeadConfig()
        if self.config.state_layer > backbone.num_layers:
            raise ValueError(f"state_layer {self.config.state_layer} > the backbone's {backbone.num_layers} layers")
        vocab = backbone.model.get_input_embeddings().weight
        init = initial_token_embeddings(vocab, self.config.num_special, seed)
        prompt_mean, prompt_scale = embedding_statistics(vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = CompressionHead(self.config, backbone.hidden_size, init, prompt_mean=prompt_mean,
                                   prompt_scale=prompt_scale, lora_targets=_lora_targets(backbone, self.config))
        self.head = head.to(backbone.device)
        self.padding_side = "left"
        self.prefix_cache = True
        """Take the token run every row starts with (chat template + prompt) from a KV cache made once per run;
        False recomputes it for every row (what ``bench encode`` compares against)."""
        self._template_ids: dict[str | None, tuple[list[int], list[int]]] = {}
        self._template_kv: dict[tuple[int, ...], Any] = {}
        self._fingerprint: tuple[tuple[int, ...], str] | None = None
        self.eval()  # inference by default; a training loop calls train()

    # ---- identity ----------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of the backbone identity, the head config and the head weights (recomputed after updates)."""
        params = [p for _, p in sorted(self.head.state_dict(keep_vars=True).items())]
        versions = tuple(p._version for p in params)
        if self._fingerprint is None or self._fingerprint[0] != versions:
            digest = hashlib.sha256(self.backbone.backbone_id.encode())
            digest.update(self.config.to_json().encode())
            for name, tensor in sorted(self.head.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = (versions, digest.hexdigest()[:16])
        return self._fingerprint[1]

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # ---- tokenisation ------------------------------------------------------------------------------
    def _template(self, prompt: str | None) -> tuple[list[int], list[int]]:
        """Token ids before and after the query (chat template and instruction), cached per prompt."""
        if prompt not in self._template_ids:
            tok = self.backbone.tokenizer
            content = (prompt or "") + _SPLIT
            if self.config.chat_template and tok.chat_template:
                text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
                before, after = text.split(_SPLIT)
                ids = (tok(before, add_special_tokens=False).input_ids, tok(after, add_special_tokens=False).input_ids)
            else:
                ids = (tok(content.split(_SPLIT)[0], add_special_tokens=True).input_ids, [])
            self._template_ids[prompt] = ids
        return self._template_ids[prompt]

    def turn_template(self, *, opens: bool = True, answers: bool = True) -> tuple[list[int], list[int]]:
        """Token ids before and after a user turn's content in the chat template: with the system prompt where the
        turn opens the conversation, ending in the assistant's generation prompt where the model answers next
        (both: ``respond``'s turn). KV hand-offs (``latentcomm.model.kv``) chain turns this way; without a chat
        template, nothing around the content."""
        key = f"turn:{opens}:{answers}"
        if key not in self._template_ids:
            tok = self.backbone.tokenizer
            if not (self.config.chat_template and tok.chat_template):
                self._template_ids[key] = ([], [])
                return self._template_ids[key]
            earlier = [] if opens else [{"role": "user", "content": "."}]
            text = tok.apply_chat_template([*earlier, {"role": "user", "content": _SPLIT}],
                                           add_generation_prompt=answers, tokenize=False)
            if earlier:
                head = tok.apply_chat_template(earlier, add_generation_prompt=False, tokenize=False)
                if not text.startswith(head):
                    raise ValueError(f"{self.backbone.name}'s chat template does not extend a conversation by a "
                                     "user turn: KV hand-offs need one that does")
                text = text[len(head):]
            before, after = text.split(_SPLIT)
            self._template_ids[key] = (tok(before, add_special_tokens=False).input_ids,
                                       tok(after, add_special_tokens=False).input_ids)
        return self._template_ids[key]

    def _query_budget(self, before: list[int], after: list[int]) -> int:
        budget = self.config.max_query_tokens - len(before) - len(after)
        if budget < 1:
            raise ValueError(f"the chat template and prompt take {len(before) + len(after)} of max_query_tokens="
                             f"{self.config.max_query_tokens} tokens: no room is left for the query (shorten the "
                             "prompt or raise max_query_tokens)")
        if budget < MIN_QUERY_TOKENS:
            warnings.warn(f"the chat template and prompt leave only {budget} of max_query_tokens="
                          f"{self.config.max_query_tokens} tokens for the query: longer queries are cut to {budget} "
                          "tokens and may get the same latent", stacklevel=3)
        return budget

    def query_token_ids(self, texts: list[str], prompt: str | None = None) -> list[list[int]]:
        """Template + query ids per text; the query alone is truncated to fit ``max_query_tokens``."""
        before, after = self._template(prompt)
        budget = self._query_budget(before, after)
        encoded = self.backbone.tokenizer(texts, add_special_tokens=False).input_ids
        return [before + ids[:budget] + after for ids in encoded]

    def _query_rows(self, items: list[list[Part]], prompt: str | None,
                    template: tuple[list[int], list[int]] | None = None) -> list[list[Segment]]:
        """Each item as segments inside the user turn: template (``prompt``'s, or ``template``'s ids before and
        after), then its parts (text as ids, latents as vectors).

        Latent parts are never cut; text parts share what ``max_query_tokens`` leaves, first come first served.
        """
        before, after = template or self._template(prompt)
        budget = self._query_budget(before, after)
        texts = [p for parts in items for p in parts if isinstance(p, str)]
        encoded = iter(self.backbone.tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
        rows = []
        for parts in items:
            latents = [self._latent_part(p) for p in parts if isinstance(p, Latent)]
            room = budget - sum(v.shape[0] for v in latents)
            if room < 0:
                raise ValueError(f"latent parts take {budget - room} positions, more than the {budget} that "
                                 f"max_query_tokens={self.config.max_query_tokens} leaves for the query")
            row: list[Segment] = [before]
            vectors = iter(latents)
            for part in parts:
                if isinstance(part, str):
                    ids = next(encoded)[:room]
                    room -= len(ids)
                    row.append(ids)
                else:
                    row.append(next(vectors))
            rows.append(row + [after])
        return rows

    def _latent_part(self, part: Latent) -> torch.Tensor:
        """A latent part's (n, H) vectors, after checking it is one row from a head on this backbone."""
        if len(part) != 1:
            raise LatentError(f"a latent part is one row (1, n, H), got a batch of {len(part)}: index it (latent[i])")
        self._check_latent(part, same_head=False)
        return part.vectors[0]

    def _embed_rows(self, rows: list[list[Segment]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of segments -> (embeds (B, T, H), mask (B, T)), padded on ``side``; differentiable in the vectors."""
        bb = self.backbone
        flat = [t for row in rows for seg in row if isinstance(seg, list) for t in seg]
        table = bb.embed_tokens(torch.tensor(flat, dtype=torch.long, device=bb.device)) if flat else None
        offset, embedded = 0, []
        for row in rows:
            pieces = [torch.zeros(0, bb.hidden_size, dtype=bb.dtype, device=bb.device)]
            for seg in row:
                if isinstance(seg, list):
                    pieces.append(table[offset:offset + len(seg)])
                    offset += len(seg)
                else:
                    pieces.append(seg.to(bb.device, bb.dtype))
            embedded.append(torch.cat(pieces))
        width = max(e.shape[0] for e in embedded)
        pads = [(width - e.shape[0], 0) if side == "left" else (0, width - e.shape[0]) for e in embedded]
        embeds = torch.stack([F.pad(e, (0, 0, *pad)) for e, pad in zip(embedded, pads)])
        mask = torch.stack([F.pad(torch.ones(e.shape[0], dtype=torch.long, device=bb.device), pad)
                            for e, pad in zip(embedded, pads)])
        return embeds, mask

    def _template_cache(self, head: list[int], batch: int) -> Any:
        """A KV cache of the token run ``head`` (the chat template and prompt every row starts with) for
        ``batch`` rows: computed once per distinct head, then copied (the backbone is frozen)."""
        key = tuple(head)
        if key not in self._template_kv:
            bb = self.backbone
            ids = torch.tensor([head], device=bb.device)
            with torch.no_grad():
                _, cache = bb.hidden_states(bb.embed_tokens(ids), torch.ones_like(ids), positions_of(torch.ones_like(ids)),
                                            use_cache=True)
            self._template_kv[key] = cache
            while len(self._template_kv) > TEMPLATE_CACHE_ENTRIES:
                self._template_kv.pop(next(iter(self._template_kv)))
        cache = copy.deepcopy(self._template_kv[key])
        cache.batch_repeat_interleave(batch)
        return cache

    def _run(self, prefix: list[list[Segment]], suffix: list[list[Segment]], *, one_pass: bool | None = None,
             layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """States (B, S, H) of each row's ``suffix`` after its ``prefix`` (last layer, or after decoder ``layer``;
        see ``Backbone.hidden_states``), and the suffix mask (B, S).

        What needs no autograd is not recomputed: the token run every non-empty prefix starts with (chat
        template and prompt) comes from a KV cache made once; the rest of the prefix (query, received latents,
        an instruction) runs without autograd and hands its KV cache to the pass over the suffix (special
        tokens, or a latent and the response), so backward goes through the suffix positions only.
        ``one_pass=True`` is the plain reference: everything in one pass, no cache (what the cached paths
        must agree with); False is the split; None picks one cached pass when autograd is off (inference:
        one call is cheaper than two) and the split when it is on. Rows are padded on ``padding_side`` before
        the suffix, the suffix on the right.
        """
        bb = self.backbone
        single = one_pass if one_pass is not None else not torch.is_grad_enabled()
        cache, masks, start = None, [], torch.zeros(len(prefix), 1, dtype=torch.long, device=bb.device)
        head = _common_head(prefix) if one_pass is not True and self.prefix_cache else []
        if len(head) >= MIN_TEMPLATE_CACHE:
            present = torch.tensor([[bool(row)] for row in prefix], dtype=torch.long, device=bb.device)
            cache = self._template_cache(head, len(prefix))
            masks.append(present.expand(-1, len(head)))
            start = present * len(head)
            prefix = [[row[0][len(head):], *row[1:]] if row else [] for row in prefix]
        if single:
            embeds, mask = self._embed_rows([p + s for p, s in zip(prefix, suffix)], self.padding_side)
            hidden, _ = bb.hidden_states(embeds, torch.cat([*masks, mask], dim=1), positions_of(mask, start),
                                         cache=cache, layer=layer)
            starts = (mask.shape[1] - mask.sum(-1) if self.padding_side == "left" else 0) + \
                torch.tensor([sum(len(seg) for seg in p) for p in prefix], device=bb.device)
            lengths = torch.tensor([sum(len(seg) for seg in s) for s in suffix], device=bb.device)
            steps = torch.arange(int(lengths.max()), device=bb.device)
            index = (starts[:, None] + steps).clamp(max=mask.shape[1] - 1)
            suffix_mask = (steps < lengths[:, None]).long()
            return torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1])), suffix_mask
        if any(len(seg) for row in prefix for seg in row):
            embeds, rest_mask = self._embed_rows(prefix, self.padding_side)
            masks.append(rest_mask)
            with torch.no_grad():
                _, cache = bb.hidden_states(embeds, torch.cat(masks, dim=1), positions_of(rest_mask, start),
                                            cache=cache, use_cache=True)
            start = start + rest_mask.sum(-1, keepdim=True)
        embeds, suffix_mask = self._embed_rows(suffix, "right")
        hidden, _ = bb.hidden_states(embeds, torch.cat([*masks, suffix_mask], dim=1), positions_of(suffix_mask, start),
                                     cache=cache, layer=layer)
        return hidden, suffix_mask

    # ---- the differentiable path ---------------------------------------------------------------------
    def latent_vectors(self, items: Sequence[Item], prompt: str | None = None, *, one_pass: bool | None = None
                       ) -> torch.Tensor:
        """(B, n, H) float32 latents, differentiable w.r.t. the head (the backbone is frozen).

        A head with encoder LoRA runs this pass, and only this one, with its adapters on; the whole input then
        depends on trainable weights, so it runs as one pass under autograd, without the template KV cache.
        """
        rows = self._query_rows(_as_items(items), prompt)
        special = self.head.special().to(self.backbone.dtype)
        lora = self.head.encoder_lora
        with lora.active(self.backbone.model) if lora is not None else nullcontext():
            hidden, _ = self._run(rows, [[special]] * len(rows), one_pass=True if lora is not None else one_pass,
                                  layer=self.config.state_layer)
        return self.head.latent(hidden[:, self.config.num_thought:self.config.num_special])

    def reconstruction_logits(self, latent: torch.Tensor, responses: list[str],
                              instructions: Sequence[Instruction | None] | None = None, *,
                              one_pass: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, V) of the N response tokens of the batch given each latent, and their labels (N,).

        Each latent is read as a bare soft prompt (``instructions`` None or a None entry: [latent, response]) or
        inside a user turn with a reading instruction (before, after): [template, before, latent, after,
        template end, response], the layout ``respond([[before, latent, after]])`` uses.
        """
        bb = self.backbone
        tok = bb.tokenizer
        limit = self.config.max_response_tokens
        answers = [ids[:limit - 1] + [tok.eos_token_id] for ids in tok(responses, add_special_tokens=False).input_ids]
        instructions = list(instructions) if instructions is not None else [None] * len(responses)
        if len(instructions) != len(responses):
            raise ValueError(f"{len(instructions)} instructions for {len(responses)} responses")
        template_before, template_after = self._template(None)
        texts = [t for ins in instructions if ins is not None for t in ins]
        encoded = iter(tok(texts, add_special_tokens=False).input_ids if texts else [])
        prefix, suffix, starts = [], [], []
        for vectors, answer, ins in zip(latent, answers, instructions):
            if ins is None:
                prefix.append([])
                suffix.append([vectors, answer])
                starts.append(vectors.shape[0])
            else:
                before, after = next(encoded), next(encoded) + template_after
                prefix.append([template_before + before])
                suffix.append([vectors, after, answer])
                starts.append(vectors.shape[0] + len(after))
        hidden, _ = self._run(prefix, suffix, one_pass=one_pass)
        labels = torch.full(hidden.shape[:2], IGNORE_INDEX, dtype=torch.long, device=bb.device)
        for i, (answer, start) in enumerate(zip(answers, starts)):
            labels[i, start - 1:start - 1 + len(answer)] = torch.tensor(answer, device=bb.device)
        keep = labels != IGNORE_INDEX
        return bb.model.get_output_embeddings()(hidden[keep]), labels[keep]

    def forward(self, queries: Sequence[Item], responses: list[str], targets: torch.Tensor, *,
                recon_weight: float = 1.0, align_weight: float = 1.0, align_loss: AlignLoss = "mse",
                prompt: str | None = None, instructions: Sequence[Instruction | None] | None = None,
                one_pass: bool | None = None) -> LossOutput:
        """Training loss: recon_weight * L_recon + align_weight * L_align for one batch.

        ``instructions`` (one per sample, None = bare prefix) places each latent inside a reading instruction
        for the reconstruction term; ``one_pass=True`` turns off the KV caches (the slower reference step).
        """
        if not (len(queries) == len(responses) == len(targets)):
            raise ValueError(f"batch sizes differ: {len(queries)} queries, {len(responses)} responses, "
                             f"{len(targets)} targets")
        latent = self.latent_vectors(queries, prompt, one_pass=one_pass)
        zero = latent.new_zeros(())
        recon = reconstruction_loss(*self.reconstruction_logits(latent, responses, instructions, one_pass=one_pass)) \
            if recon_weight else zero
        align = alignment_loss(self.head.embed(latent), targets, align_loss) if align_weight else zero
        total = recon_weight * recon + align_weight * align
        return LossOutput(total, float(recon.detach()), float(align.detach()))

    @torch.no_grad()
    def fit_standardization(self, texts: Sequence[Item], *, batch_size: int = 16, prompt: str | None = None
                            ) -> "GenerativeEmbedder":
        """Estimate the standardisation statistics of MLP_recon's and MLP_align's inputs on ``texts``; returns self.

        No parameter changes: this makes an untrained head what the first training step sees. Training keeps
        these statistics itself; without them an untrained head's latents are the raw compression states
        (see ``CompressionHead``), which no backbone can read as a prompt.
        """
        items = _as_items(texts, "calibration texts")
        layers = {m: m.momentum for m in self.head.modules() if isinstance(m, FeatureStandardize)}
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over all batches
        self.train()
        try:
            for start in range(0, len(items), batch_size):
                self.head.embed(self.latent_vectors(items[start:start + batch_size], prompt))
        finally:
            for layer, momentum in layers.items():
                layer.momentum = momentum
            self.eval()
        return self

    @torch.no_grad()
    def fit_alignment(self, texts: Sequence[Item], targets: np.ndarray | torch.Tensor, *, batch_size: int = 16,
                      show_progress_bar: bool | None = None) -> dict[str, float]:
        """Solve MLP_align in closed form on ``texts`` and their teacher embeddings (N, D): the exact minimiser of
        the alignment loss for the latents this head makes now (``CompressionHead.fit_align``); returns its stats.

        SGD on the joint loss leaves the linear align head far from its optimum (on SmolLM2 a ridge fit of the
        same map retrieves held-out responses about twice as well), so training ends with this fit.
        """
        items = _as_items(texts, "alignment texts")
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
        if targets.ndim != 2 or len(targets) != len(items) or targets.shape[1] != self.head.embed_dim:
            raise ValueError(f"targets must be ({len(items)}, {self.head.embed_dim}), got {tuple(targets.shape)}")
        latents = self.compress(items, batch_size=batch_size, show_progress_bar=show_progress_bar).vectors
        return self.head.fit_align(latents.to(self.device), targets)

    # ---- the public, batched inference API ------------------------------------------------------------
    def compress(self, texts: Item | Sequence[Item], *, batch_size: int = 16, prompt: str | None = None,
                 show_progress_bar: bool | None = None, refine_steps: int = 0,
                 refine: "OptimiseConfig | None" = None) -> Latent:
        """Inputs -> Latent (B, n, H): one forward pass per batch, no generation.

        Each input is a string or a list of parts (strings and latent rows of this backbone), e.g.
        ``[question, solver_latent, "Is this right?"]``: an agent turns what it read into its own latent.
        ``refine_steps`` > 0 then fits the latent to the input for that many steps (``latentcomm.model.optimise``:
        the receiver, reading it inside a user turn, restates the input's text; ``refine`` sets the rest of the
        fit). Only the message changes; the head is untouched, and 0 steps is the head's latent.
        """
        latent = self._compress(texts, batch_size, prompt, show_progress_bar)
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
        if not refine_steps:
            return latent
        from latentcomm.model.optimise import OptimiseConfig, optimise_latent

        config = dataclasses.replace(refine or OptimiseConfig(), steps=refine_steps)
        return optimise_latent(self, texts, config=config, initial=latent, batch_size=batch_size,
                               show_progress_bar=show_progress_bar).latent

    @torch.no_grad()
    def _compress(self, texts: Item | Sequence[Item], batch_size: int, prompt: str | None,
                  show_progress_bar: bool | None) -> Latent:
        items = _as_items(texts)
        order = sorted(range(len(items)), key=lambda i: -_size(items[i]))
        out = torch.empty(len(items), self.config.num_compression, self.backbone.hidden_size)
        for idx in _batches(order, batch_size, show_progress_bar, "compress"):
            out[idx] = self.latent_vectors([items[i] for i in idx], prompt).float().cpu()
        if not torch.isfinite(out).all():
            raise LatentError("compress produced NaN or Inf (a broken head, or a received latent far outside the "
                              "backbone's range)")
        return Latent(out, self.fingerprint, self.backbone.backbone_id)

    @torch.no_grad()
    def embed_latent(self, latent: Latent, *, normalize_embeddings: bool = False, convert_to_numpy: bool = True
                     ) -> np.ndarray | torch.Tensor:
        """Latent (B, n, H) -> embeddings (B, D) through MLP_align + mean pooling. Needs this very head."""
        self._check_latent(latent, same_head=True)
        if latent.shape[1] != self.config.num_compression:
            raise LatentError(f"latent has {latent.shape[1]} vectors, this head makes {self.config.num_compression}")
        emb = self.head.embed(latent.vectors.to(self.device)).float()
        if not torch.isfinite(emb).all():
            raise LatentError("the embedding of this latent is not finite (the latent's values are far outside "
                              "what this head produces)")
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy() if convert_to_numpy else emb.cpu()

    def encode(self, sentences: Item | Sequence[Item], *, batch_size: int = 32, show_progress_bar: bool | None = None,
               normalize_embeddings: bool = False, convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               prompt: str | None = None) -> np.ndarray | torch.Tensor:
        """Embed texts (sentence-transformers conventions): (N, D) array, or (D,) for a single string.

        ``prompt`` is an instruction placed before each text inside the user turn. Texts are sorted by
        length internally to waste less padding; the output follows the input order. Inputs may be lists of
        parts, as for ``compress``.
        """
        single = isinstance(sentences, (str, Latent))
        latent = self.compress(sentences, batch_size=batch_size, prompt=prompt, show_progress_bar=show_progress_bar)
        emb = self.embed_latent(latent, normalize_embeddings=normalize_embeddings,
                                convert_to_numpy=convert_to_numpy and not convert_to_tensor)
        return emb[0] if single else emb

    @torch.no_grad()
    def decode(self, latent: Latent, *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
               repetition_penalty: float = REPETITION_PENALTY, no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE,
               seed: int | None = None, batch_size: int = 16, use_cache: bool = True,
               show_progress_bar: bool | None = None) -> list[str]:
        """Latent -> text: the frozen LLM continues from the latent as a bare soft prompt (batched, KV-cached).

        Any head on the same backbone can produce the latent; greedy unless ``temperature`` > 0. To read a
        latent inside a prompt instead, ``respond([[instruction, latent, ...]])``. The repetition defaults are
        ``respond``'s, chosen by measurement (``evaluate --sweep-decoding``; figures in the shipped head's TRAINING.md).
        """
        sampling = Sampling(temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        vectors, mask = self.decode_prompts(latent)
        texts: list[str] = []
        for idx in _batches(list(range(len(latent))), batch_size, show_progress_bar, "decode"):
            texts += self._generate(vectors[idx], mask[idx], max_new_tokens, sampling, seed, use_cache)
        return texts

    @torch.no_grad()
    def respond(self, texts: Item | Sequence[Item], *, max_new_tokens: int = 128, temperature: float = 0.0,
                top_p: float = 1.0, repetition_penalty: float = REPETITION_PENALTY, no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE,
                seed: int | None = None, batch_size: int = 8, use_cache: bool = True,
                show_progress_bar: bool | None = None) -> list[str]:
        """The backbone's own answer to each input through its chat template (no special tokens involved).

        Inputs may be lists of parts: ``respond([["Problem: ...", latent, "Give the final number."]])`` reads
        the latent in context. The repetition defaults (1.1, no repeated 4-gram) were chosen by measurement:
        greedy answers of SmolLM2-135M repeated a word 4-gram in 45% of 96 ShareGPT queries, 3% with them.
        """
        items = _as_items(texts)
        sampling = Sampling(temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        order = sorted(range(len(items)), key=lambda i: -_size(items[i]))
        answers: list[str] = [""] * len(items)
        for idx in _batches(order, batch_size, show_progress_bar, "respond"):
            embeds, mask = self.respond_prompts([items[i] for i in idx])
            for i, text in zip(idx, self._generate(embeds, mask, max_new_tokens, sampling, seed, use_cache)):
                answers[i] = text
        return answers

    def decode_prompts(self, latent: Latent) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``decode`` generates after: the latent's vectors (B, n, H) on the backbone, and their mask."""
        self._check_latent(latent, same_head=False)
        vectors = latent.vectors.to(self.device, self.backbone.dtype)
        return vectors, torch.ones(vectors.shape[:2], dtype=torch.long, device=self.device)

    def respond_prompts(self, texts: Item | Sequence[Item], template: tuple[list[int], list[int]] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``respond`` generates after: each input in the chat template (or inside ``template``'s ids, e.g. a
        ``turn_template``), embedded (B, T, H), left-padded mask."""
        return self._embed_rows(self._query_rows(_as_items(texts), None, template), "left")

    def stop_token_ids(self) -> set[int]:
        """Tokens that end a generation: the tokenizer's EOS and the backbone's generation-config EOS ids."""
        eos = self.backbone.model.generation_config.eos_token_id
        return {self.backbone.tokenizer.eos_token_id} | set(np.atleast_1d(eos or []).tolist())

    def detokenize(self, ids: list[list[int]]) -> list[str]:
        """Generated token ids -> stripped texts (special tokens dropped)."""
        return [t.strip() for t in self.backbone.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _generate(self, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                  seed: int | None, use_cache: bool) -> list[str]:
        ids = generate(self.backbone.model, embeds, mask, max_new_tokens=max_new_tokens,
                       eos_token_ids=self.stop_token_ids(), pad_token_id=self.backbone.tokenizer.pad_token_id,
                       sampling=sampling, seed=seed, use_cache=use_cache)
        return self.detokenize(ids)

    def _check_latent(self, latent: Latent, *, same_head: bool) -> None:
        if not isinstance(latent, Latent):
            raise TypeError(f"expected a Latent, got {type(latent).__name__} (wrap arrays with Latent.from_numpy)")
        check_vectors(latent.vectors, self.backbone.hidden_size)
        if latent.backbone_id != self.backbone.backbone_id:
            raise HeadMismatchError(f"latent comes from backbone {latent.backbone_id}, this model runs "
                                    f"{self.backbone.backbone_id}")
        if same_head and latent.fingerprint != self.fingerprint:
            raise HeadMismatchError(f"latent was made by head {latent.fingerprint}, this head is {self.fingerprint}; "
                                    "embedding needs the producing head (decoding only needs the same backbone)")

    # ---- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write only the trainable parts: ``head.safetensors`` (fp32) and ``config.json``; never a non-finite head."""
        if not all(torch.isfinite(p).all() for p in self.head.parameters()):
            raise ValueError("the head holds NaN or Inf weights: refusing to save it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, directory / "head.safetensors", metadata={"fingerprint": self.fingerprint})
        meta = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "backbone": self.backbone.name,
                "backbone_id": self.backbone.backbone_id, "fingerprint": self.fingerprint,
                "head": self.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike = DEFAULT_HEAD_DIR, *, backbone: Backbone | str | None = None,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None
                        ) -> "GenerativeEmbedder":
        """Load a saved head onto its backbone (loaded by name from the head's config unless given).

        Every broken head folder (bad or truncated JSON, wrong types, tensors that do not match the config)
        raises ``HeadMismatchError``; sizes are checked against the file before anything is allocated.
        """
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no head at {directory} (expected config.json and head.safetensors)")
        meta, config = read_config(config_path)
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone or meta["backbone"], device=device, dtype=dtype)
        if backbone.backbone_id != meta["backbone_id"]:
            raise HeadMismatchError(f"head {directory} was trained on backbone {meta['backbone_id']} "
                                    f"({meta['backbone']}), not on {backbone.backbone_id} ({backbone.name})")
        if config.state_layer > backbone.num_layers:
            raise HeadMismatchError(f"{config_path}: state_layer {config.state_layer} > the backbone's layers")
        try:
            targets = _lora_targets(backbone, config)
        except ValueError as err:
            raise HeadMismatchError(f"{config_path}: {err}") from None
        check_tensors(directory / "head.safetensors", config, backbone.hidden_size, targets)
        state = read_tensors(directory / "head.safetensors", backbone.device)
        model = cls(backbone, config)
        model.head.load_state_dict(state)
        if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
            raise HeadMismatchError(f"head weights in {directory} hold NaN or Inf")
        if model.fingerprint != meta["fingerprint"]:
            raise HeadMismatchError(f"head weights in {directory} do not match the fingerprint in its config")
        return model


def _lora_targets(backbone: Backbone, config: HeadConfig) -> dict[str, tuple[int, int]] | None:
    """The backbone linears a head's encoder LoRA adapts (None for a head without one)."""
    return lora_targets(backbone.model) if config.encoder_lora_rank else None


def load_embedder(head: str | os.PathLike | None = None, *, backbone: str | os.PathLike | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  config: HeadConfig | None = None) -> GenerativeEmbedder:
    """The usual entry point: a saved head (the shipped default when ``head`` is None) on its backbone.

    With a ``backbone`` other than the default and no head, or when no default head is shipped, returns
    an untrained head (``config`` or the defaults) and logs that it is untrained.
    """
    if head is not None:
        return GenerativeEmbedder.from_pretrained(head, backbone=backbone, device=device, dtype=dtype)
    if backbone in (None, DEFAULT_BACKBONE) and config is None and (DEFAULT_HEAD_DIR / "config.json").is_file():
        return GenerativeEmbedder.from_pretrained(DEFAULT_HEAD_DIR, device=device, dtype=dtype)
    log.warning("no trained head given: using an untrained head on %s", backbone or DEFAULT_BACKBONE)
    return GenerativeEmbedder(load_backbone(backbone or DEFAULT_BACKBONE, device=device, dtype=dtype), config)
