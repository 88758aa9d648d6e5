"""GenerativeEmbedder: a frozen causal LM plus a compression head — compress, encode, embed, decode, respond.

Where inputs go in the prompt is ``prompt.py``; the head is ``heads.py``; its folder format is ``head_file.py``.
Here: the two ways through the backbone (one pass, or the split with a KV cache), the training loss, the fits, and
the batched inference API.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentcomm.errors import HeadMismatchError
from latentcomm.model.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from latentcomm.model.config import HeadConfig
from latentcomm.model.generation import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY, Sampling, generate
from latentcomm.model.head_file import head_fingerprint, head_lora_targets, read_config, read_head, write_head
from latentcomm.model.heads import CompressionHead, FeatureStandardize, embedding_statistics, initial_token_embeddings
from latentcomm.model.latent import Latent, LatentError
from latentcomm.model.losses import AlignLoss, alignment_loss, row_losses
from latentcomm.model.prompt import (Item, Part, PromptLayout, Segment, Template, as_items, check_backbone,
                                     common_head, item_size, positions_of, row_width)
from latentcomm.model.reading import Instruction

if TYPE_CHECKING:
    from latentcomm.model.optimise import OptimiseConfig

__all__ = ["DEFAULT_HEAD_DIR", "GenerativeEmbedder", "Item", "LossOutput", "Part", "load_embedder"]

log = logging.getLogger(__name__)

DEFAULT_HEAD_DIR = Path(__file__).parents[1] / "pretrained" / DEFAULT_BACKBONE
"""The trained head shipped for the default backbone (made by ``latentcomm train``)."""
MIN_TEMPLATE_CACHE = 4
"""Shortest shared token run worth a cached KV (shorter ones are recomputed)."""
PASS_COST_POSITIONS = 32
"""What one more forward pass costs on CPU, in positions of a row (Python and per-layer overhead): a batch of rows
of different widths is split where the padding saved exceeds it (``padding_groups``)."""
TEMPLATE_CACHE_ENTRIES = 32
"""Distinct shared runs (prompts, instructions) whose KV cache is kept."""
States = tuple[torch.Tensor, torch.Tensor]
"""States (B, S, H) of each row's suffix, and the suffix mask (B, S)."""


@dataclass
class LossOutput:
    """The weighted training loss and its two parts (floats detached for logging)."""

    loss: torch.Tensor
    recon: float
    align: float
    recon_rows: tuple[float, ...] = ()
    """Each sample's reconstruction loss (mean nats per response token), in the batch's order."""


def _batches(order: list[int], batch_size: int, show: bool | None, desc: str) -> Iterator[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(order), batch_size)
    if show is None:
        show = len(starts) > 1 and sys.stderr.isatty()
    for start in tqdm(starts, desc=desc, disable=not show, unit="batch"):
        yield order[start:start + batch_size]


def _runs(order: list[int], states: list[States]) -> list[list[int]]:
    """``order`` cut into the rows of each pass of ``states``."""
    bounds = np.cumsum([0] + [len(h) for h, _ in states])
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def padding_groups(widths: list[int], pass_cost: int | None) -> list[list[int]]:
    """Split a batch of rows, ``widths`` in descending order, into runs of neighbours, each one padded pass: the
    split with the fewest computed positions (each run's size x its widest row) plus ``pass_cost`` per pass.
    ``pass_cost`` None: one pass."""
    n = len(widths)
    if pass_cost is None or n < 2:
        return [list(range(n))]
    best = [0] * (n + 1)  # best[j]: cost of rows [0, j); cut[j]: where its last run starts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = min((best[i] + (j - i) * widths[i] + pass_cost, i) for i in range(j))
    groups, j = [], n
    while j:
        groups.append(list(range(cut[j], j)))
        j = cut[j]
    return groups[::-1]


class GenerativeEmbedder(nn.Module):
    """LLM2Vec-Gen on a frozen backbone. Only ``head`` (special tokens + MLP_recon + MLP_align) is a submodule,
    so ``parameters()``, ``state_dict()`` and optimizers see exactly what trains.

    Data flow: text -> query tokens ⊕ m thought ⊕ n compression tokens -> frozen LLM -> last-layer states
    of the n compression tokens (B, n, H) -> MLP_recon -> latent p (B, n, H) -> either a soft prompt for
    ``decode`` or MLP_align + mean -> embedding (B, D).
    """

    def __init__(self, backbone: Backbone, config: HeadConfig | None = None, *, seed: int = 0,
                 padding_side: Literal["left", "right"] = "left", prefix_cache: bool = True) -> None:
        """A fresh (untrained) head on ``backbone``; the same ``seed`` gives the same head in any process.

        ``padding_side``: where rows of different lengths are padded before their special tokens (results do not
        depend on it). ``prefix_cache``: take the token run every row starts with (chat template + prompt) from a
        KV cache made once; False recomputes it for every row (what ``bench encode`` compares against).
        """
        super().__init__()
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
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
                                   prompt_scale=prompt_scale, lora_targets=head_lora_targets(backbone, self.config))
        self.head = head.to(backbone.device)
        self.layout = PromptLayout(backbone, self.config)
        self._padding_side = padding_side
        self._prefix_cache = prefix_cache
        self._template_kv: dict[tuple[int, ...], Any] = {}
        self._fingerprint: tuple[tuple[int, ...], str] | None = None
        self.eval()  # inference by default; a training loop calls train()

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @property
    def prefix_cache(self) -> bool:
        return self._prefix_cache

    @property
    def fingerprint(self) -> str:
        """Hash of the backbone identity, the head config and the head weights (recomputed after updates)."""
        versions = tuple(p._version for _, p in sorted(self.head.state_dict(keep_vars=True).items()))
        if self._fingerprint is None or self._fingerprint[0] != versions:
            state = self.head.state_dict()
            self._fingerprint = (versions, head_fingerprint(self.backbone.backbone_id, self.config, state))
        return self._fingerprint[1]

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # ---- the prompt (``PromptLayout``) ----------------------------------------------------------------
    def turn_template(self, *, opens: bool = True, answers: bool = True) -> Template:
        """Token ids before and after a user turn's content (``PromptLayout.turn_template``)."""
        return self.layout.turn_template(opens=opens, answers=answers)

    def query_token_ids(self, texts: list[str], prompt: str | None = None) -> list[list[int]]:
        """Template + query ids per text; the query alone is truncated to fit ``max_query_tokens``."""
        return self.layout.query_token_ids(texts, prompt)

    # ---- two ways through the backbone ----------------------------------------------------------------
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

    def _template_run(self, prefix: list[list[Segment]], *, cached: bool
                      ) -> tuple[Any, list[torch.Tensor], torch.Tensor, list[list[Segment]]]:
        """The token run every non-empty row of ``prefix`` starts with, taken from its template KV cache: (cache,
        its mask (B, h) in a list, the positions after it (B, 1), the rows without it). Nothing is taken unless
        ``cached`` and ``prefix_cache`` are on and the run has ``MIN_TEMPLATE_CACHE`` tokens."""
        bb = self.backbone
        start = torch.zeros(len(prefix), 1, dtype=torch.long, device=bb.device)
        head = common_head(prefix) if cached and self.prefix_cache else []
        if len(head) < MIN_TEMPLATE_CACHE:
            return None, [], start, prefix
        present = torch.tensor([[bool(row)] for row in prefix], dtype=torch.long, device=bb.device)
        cache = self._template_cache(head, len(prefix))
        rest = [[row[0][len(head):], *row[1:]] if row else [] for row in prefix]
        return cache, [present.expand(-1, len(head))], present * len(head), rest

    def _one_pass(self, prefix: list[list[Segment]], suffix: list[list[Segment]], *, layer: int = -1,
                  template_cache: bool = True) -> States:
        """States of each row's ``suffix`` after its ``prefix`` (last layer, or after decoder ``layer``; see
        ``Backbone.hidden_states``) from one pass over both, rows padded on ``padding_side``.

        With ``template_cache`` (inference) the shared template run comes from its KV cache; without, nothing is
        cached: the plain reference that the other paths agree with.
        """
        bb = self.backbone
        cache, masks, start, prefix = self._template_run(prefix, cached=template_cache)
        embeds, mask = self.layout.embed_rows([p + s for p, s in zip(prefix, suffix)], self.padding_side)
        hidden, _ = bb.hidden_states(embeds, torch.cat([*masks, mask], dim=1), positions_of(mask, start),
                                     cache=cache, layer=layer)
        # each row's suffix starts after its left padding and its prefix: gather it to (B, S, H)
        starts = (mask.shape[1] - mask.sum(-1) if self.padding_side == "left" else 0) + \
            torch.tensor([sum(len(seg) for seg in p) for p in prefix], device=bb.device)
        lengths = torch.tensor([sum(len(seg) for seg in s) for s in suffix], device=bb.device)
        steps = torch.arange(int(lengths.max()), device=bb.device)
        index = (starts[:, None] + steps).clamp(max=mask.shape[1] - 1)
        suffix_mask = (steps < lengths[:, None]).long()
        return torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1])), suffix_mask

    def _split_pass(self, prefix: list[list[Segment]], suffix: list[list[Segment]], *, layer: int = -1) -> States:
        """The states of ``_one_pass`` from two passes (training): the prefix without autograd after the template
        run's KV cache (query, received latents, an instruction; padded on ``padding_side``), then the suffix
        (special tokens, or a latent and the response; padded on the right) reading the prefix's KV cache, so
        backward goes through the suffix positions only."""
        bb = self.backbone
        cache, masks, start, prefix = self._template_run(prefix, cached=True)
        if any(len(seg) for row in prefix for seg in row):
            embeds, rest_mask = self.layout.embed_rows(prefix, self.padding_side)
            masks.append(rest_mask)
            with torch.no_grad():
                _, cache = bb.hidden_states(embeds, torch.cat(masks, dim=1), positions_of(rest_mask, start),
                                            cache=cache, use_cache=True)
            start = start + rest_mask.sum(-1, keepdim=True)
        embeds, suffix_mask = self.layout.embed_rows(suffix, "right")
        hidden, _ = bb.hidden_states(embeds, torch.cat([*masks, suffix_mask], dim=1), positions_of(suffix_mask, start),
                                     cache=cache, layer=layer)
        return hidden, suffix_mask

    def _in_groups(self, prefix: list[list[Segment]], suffix: list[list[Segment]], widths: list[int], *,
                   reference: bool, layer: int = -1) -> tuple[list[int], list[States]]:
        """States of ``_path(reference)`` over rows of similar ``widths`` at a time (``padding_groups``; one pass
        on other devices than the CPU and for a reference): the row order of the passes, and each pass's states."""
        order = sorted(range(len(widths)), key=lambda i: -widths[i])
        pass_cost = PASS_COST_POSITIONS if self.device.type == "cpu" and not reference else None
        path, rows, states = self._path(reference), [], []
        for group in padding_groups([widths[i] for i in order], pass_cost):
            chosen = [order[j] for j in group]
            rows += chosen
            states.append(path([prefix[i] for i in chosen], [suffix[i] for i in chosen], layer=layer))
        return rows, states

    def _path(self, reference: bool) -> Callable[..., States]:
        """Which way computes states: the plain one pass for a ``reference``; else the split under autograd
        (training: backward through the suffix only), one pass with the template cache without (inference)."""
        if reference:
            return partial(self._one_pass, template_cache=False)
        return self._split_pass if torch.is_grad_enabled() else self._one_pass

    # ---- the differentiable path ---------------------------------------------------------------------
    def latent_vectors(self, items: Sequence[Item], prompt: str | None = None, *, reference: bool = False
                       ) -> torch.Tensor:
        """(B, n, H) float32 latents, differentiable w.r.t. the head (the backbone is frozen).

        ``reference``: compute them in one plain pass, no KV cache (slower; what the cached paths agree with).
        A head with encoder LoRA runs this pass, and only this one, with its adapters on; the whole input then
        depends on trainable weights, so it always runs as the plain pass.
        """
        return self._row_latents(self.layout.query_rows(as_items(items), prompt), reference=reference)

    def _row_latents(self, rows: list[list[Segment]], *, reference: bool = False) -> torch.Tensor:
        """``latent_vectors`` of rows already laid out (``PromptLayout.query_rows``)."""
        special = self.head.special().to(self.backbone.dtype)
        lora = self.head.encoder_lora
        with lora.active(self.backbone.model) if lora is not None else nullcontext():
            order, states = self._in_groups(rows, [[special]] * len(rows), [row_width(r) for r in rows],
                                            reference=reference or lora is not None, layer=self.config.state_layer)
        hidden = torch.cat([h for h, _ in states])[torch.argsort(torch.tensor(order))]  # (B, num_special, H)
        return self.head.latent(hidden[:, self.config.num_thought:self.config.num_special])

    def response_ids(self, responses: list[str]) -> list[list[int]]:
        """The token ids each response is reconstructed as: the response and the end token, or, when that is longer
        than ``max_response_tokens``, its first ``max_response_tokens`` tokens without one (a cut response does not
        end there: an end token would teach the head to stop at the cut; ``bench positions`` measured it)."""
        tok = self.backbone.tokenizer
        limit = self.config.max_response_tokens
        return [ids + [tok.eos_token_id] if len(ids) < limit else ids[:limit]
                for ids in tok(responses, add_special_tokens=False).input_ids]

    def reconstruction_logits(self, latent: torch.Tensor, responses: list[str],
                              instructions: Sequence[Instruction | None] | None = None, *,
                              reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, V) of the N response tokens of the batch given each latent, and their labels (N,).

        Each latent is read as a bare soft prompt (``instructions`` None or a None entry: [latent, response]) or
        inside a user turn with a reading instruction (before, after): [template, before, latent, after,
        template end, response], the layout ``respond([[before, latent, after]])`` uses. ``reference`` as for
        ``latent_vectors``.
        """
        return self._reconstruction(latent, self.response_ids(responses), instructions, reference=reference)

    def _reconstruction(self, latent: torch.Tensor, answers: list[list[int]],
                        instructions: Sequence[Instruction | None] | None, *, reference: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``reconstruction_logits`` of responses already tokenised (``response_ids``)."""
        bb = self.backbone
        tok = bb.tokenizer
        instructions = list(instructions) if instructions is not None else [None] * len(answers)
        if len(instructions) != len(answers):
            raise ValueError(f"{len(instructions)} instructions for {len(answers)} responses")
        template_before, template_after = self.layout.template(None)
        texts = [t for ins in instructions if ins is not None for t in ins]
        encoded = iter(tok(texts, add_special_tokens=False).input_ids if texts else [])
        prefix, suffix, starts = [], [], []
        for vectors, answer, ins in zip(latent, answers, instructions):
            if ins is None:
                prefix.append([])
                suffix.append([vectors, answer[:-1]])  # the last token is only a label: nothing reads it
                starts.append(vectors.shape[0])
            else:
                before, after = next(encoded), next(encoded) + template_after
                prefix.append([template_before + before])
                suffix.append([vectors, after, answer[:-1]])
                starts.append(vectors.shape[0] + len(after))
        order, states = self._in_groups(prefix, suffix, [row_width(s) for s in suffix], reference=reference)
        kept, labels, owners = [], [], []
        for rows, (hidden, _) in zip(_runs(order, states), states):
            for row, i in enumerate(rows):  # row i's states from the one before its answer to its last token
                start = starts[i] - 1
                kept.append(hidden[row, start:start + len(answers[i])])
                labels.append(torch.tensor(answers[i], device=bb.device))
                owners.append(i)
        rows = sorted(range(len(owners)), key=owners.__getitem__)  # the batch's order
        return bb.model.get_output_embeddings()(torch.cat([kept[r] for r in rows])), torch.cat([labels[r] for r in rows])

    def forward(self, queries: Sequence[Item], responses: list[str], targets: torch.Tensor, *,
                recon_weight: float = 1.0, align_weight: float = 1.0, align_loss: AlignLoss = "mse",
                prompt: str | None = None, instructions: Sequence[Instruction | None] | None = None,
                reference: bool = False) -> LossOutput:
        """Training loss: recon_weight * L_recon + align_weight * L_align for one batch.

        ``instructions`` (one per sample, None = bare prefix) places each latent inside a reading instruction
        for the reconstruction term; ``reference`` turns off the KV caches (the slower one-pass step). A target
        row of NaN marks a sample without a teacher target: the alignment term averages over the others.
        """
        if not (len(queries) == len(responses) == len(targets)):
            raise ValueError(f"batch sizes differ: {len(queries)} queries, {len(responses)} responses, "
                             f"{len(targets)} targets")
        latent = self.latent_vectors(queries, prompt, reference=reference)
        zero = latent.new_zeros(())
        recon, rows = zero, ()
        if recon_weight:
            answers = self.response_ids(responses)
            logits, labels = self._reconstruction(latent, answers, instructions, reference=reference)
            counts = [len(ids) for ids in answers]
            per_row = row_losses(logits, labels, counts)
            weights = per_row.new_tensor(counts)
            recon, rows = (per_row * weights).sum() / weights.sum(), tuple(per_row.detach().tolist())
        has_target = torch.isfinite(targets).all(dim=-1)
        align = alignment_loss(self.head.embed(latent)[has_target], targets[has_target], align_loss) \
            if align_weight and has_target.any() else zero
        total = recon_weight * recon + align_weight * align
        return LossOutput(total, float(recon.detach()), float(align.detach()), rows)

    @torch.no_grad()
    def fit_standardization(self, texts: Sequence[Item], *, batch_size: int = 16, prompt: str | None = None
                            ) -> "GenerativeEmbedder":
        """Estimate the standardisation statistics of MLP_recon's and MLP_align's inputs on ``texts``; returns self.

        No parameter changes: this makes an untrained head what the first training step sees. Training keeps
        these statistics itself; without them an untrained head's latents are the raw compression states
        (see ``CompressionHead``), which no backbone can read as a prompt.
        """
        items = as_items(texts, "calibration texts")
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
        items = as_items(texts, "alignment texts")
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
        rows = self.layout.query_rows(as_items(texts), prompt)
        order = sorted(range(len(rows)), key=lambda i: -row_width(rows[i]))
        out = torch.empty(len(rows), self.config.num_compression, self.backbone.hidden_size)
        for idx in _batches(order, batch_size, show_progress_bar, "compress"):
            out[idx] = self._row_latents([rows[i] for i in idx]).float().cpu()
        if not torch.isfinite(out).all():
            raise LatentError("compress produced NaN or Inf (a broken head, or a received latent far outside the "
                              "backbone's range)")
        return Latent(out, self.fingerprint, self.backbone.backbone_id)

    @torch.no_grad()
    def embed_latent(self, latent: Latent, *, normalize_embeddings: bool = False, convert_to_numpy: bool = True
                     ) -> np.ndarray | torch.Tensor:
        """Latent (B, n, H) -> embeddings (B, D) through MLP_align + mean pooling. Needs this very head."""
        check_backbone(latent, self.backbone)
        if latent.fingerprint != self.fingerprint:
            raise HeadMismatchError(f"latent was made by head {latent.fingerprint}, this head is {self.fingerprint}; "
                                    "embedding needs the producing head (decoding only needs the same backbone)")
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
        items = as_items(texts)
        sampling = Sampling(temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        order = sorted(range(len(items)), key=lambda i: -item_size(items[i]))
        answers: list[str] = [""] * len(items)
        for idx in _batches(order, batch_size, show_progress_bar, "respond"):
            embeds, mask = self.respond_prompts([items[i] for i in idx])
            for i, text in zip(idx, self._generate(embeds, mask, max_new_tokens, sampling, seed, use_cache)):
                answers[i] = text
        return answers

    def decode_prompts(self, latent: Latent) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``decode`` generates after: the latent's vectors (B, n, H) on the backbone, and their mask."""
        check_backbone(latent, self.backbone)
        vectors = latent.vectors.to(self.device, self.backbone.dtype)
        return vectors, torch.ones(vectors.shape[:2], dtype=torch.long, device=self.device)

    def respond_prompts(self, texts: Item | Sequence[Item], template: Template | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``respond`` generates after: each input in the chat template (or inside ``template``'s ids, e.g. a
        ``turn_template``), embedded (B, T, H), left-padded mask."""
        return self.layout.embed_rows(self.layout.query_rows(as_items(texts), None, template), "left")

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

    # ---- persistence (the folder format: ``head_file``) --------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write only the trainable parts: ``head.safetensors`` (fp32) and ``config.json``; never a non-finite head."""
        return write_head(directory, self.head.state_dict(), self.config, self.backbone, self.fingerprint)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike = DEFAULT_HEAD_DIR, *, backbone: Backbone | str | None = None,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None
                        ) -> "GenerativeEmbedder":
        """Load a saved head onto its backbone (loaded by name from the head's config unless given).

        Every broken head folder (bad or truncated JSON, wrong types, tensors that do not match the config)
        raises ``HeadMismatchError``; sizes are checked against the file before anything is allocated.
        """
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"no head at {directory} (expected config.json and head.safetensors)")
        meta, config = read_config(directory / "config.json")
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone or meta["backbone"], device=device, dtype=dtype)
        state = read_head(directory, meta, config, backbone)
        model = cls(backbone, config)
        model.head.load_state_dict(state)
        if model.fingerprint != meta["fingerprint"]:
            raise HeadMismatchError(f"head weights in {directory} do not match the fingerprint in its config")
        return model


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
