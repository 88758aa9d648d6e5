"""The replica's generation engine: requests join a running batch between steps, and leave it when done.

``ContinuousGenerator`` keeps one batch of rows in generation on a model thread; with ``max_batch_size=1`` rows
run one at a time, in arrival order (generation without batching). Before every step the rows of
requests that arrived meanwhile are prefilled (one pass over their prompts) and their KV caches are left-padded
into the running cache; then one step feeds every row its last token. A row stops at its own EOS or its own
request's ``max_new_tokens`` and leaves the batch at once (its cache rows are dropped; columns no row attends
any more are trimmed). A request resolves when all its rows are done, with one token list per row, in order. A row
may follow a KV prefix (``latentcomm.model.kv``: the answer after a received cache); it is prefilled after it on its own and
then steps with the others. A backbone whose KV cache is not a plain ``DynamicCache`` (sliding-window layers:
Mistral, Gemma 2, ...) cannot have rows merged into or dropped from its cache: it runs one row at a time.

Greedy rows give what ``generation.generate`` gives for the same prompts (the same model calls, other
padding). A sampled row draws from its own generator, seeded from the request's ``seed`` and the row's index,
so its text depends on neither the other rows nor when it joined (``generate`` shares one generator per batch).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicLayer

from latentcomm.model.backbone import cache_keyword
from latentcomm.model.generation import Sampling, accepts_logits_to_keep, max_new_tokens_allowed, next_token, \
    penalize_repeats

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    prompts: list[torch.Tensor]
    """(T_i, H) prompt embeddings of each row, without padding."""
    prefixes: list[Any]
    """Each row's KV prefix (a cache of batch 1 that its prompt follows) or None."""
    max_new_tokens: int
    sampling: Sampling
    seed: int | None
    future: asyncio.Future
    results: list[list[int]] = field(default_factory=list)
    admitted: int = 0
    unfinished: int = 0


@dataclass(eq=False)
class _Row:
    request: _Request
    index: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)


class ContinuousGenerator:
    """Generation with rows joining and leaving between steps; ``await generate(prompts, ...)`` from any task.

    At most ``max_batch_size`` rows run at once (one where the backbone's cache cannot be merged); further rows
    wait for a place (a request's rows may enter over several steps). All model work runs on ``executor`` (the
    replica's one model thread).
    """

    def __init__(self, model: PreTrainedModel, executor: Executor, *, max_batch_size: int, eos_token_ids: set[int]
                 ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.executor = executor
        self.eos_token_ids = set(eos_token_ids)
        self._keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self._cache_kw = cache_keyword(model)
        self._device = model.get_input_embeddings().weight.device
        self.merges = self._cache_merges()
        """Whether rows can join and leave the backbone's KV cache; without it they run one at a time."""
        self.max_batch_size = max_batch_size if self.merges else 1
        if max_batch_size > self.max_batch_size:
            log.warning("%s has no plain DynamicCache: generation runs one row at a time", type(model).__name__)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._reset()
        self.steps = 0
        self.peak_rows = 0

    def _reset(self) -> None:
        """No rows running: no cache, and empty per-row state (attention mask, next position, last token)."""
        self._rows: list[_Row] = []
        self._past: Any = None
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=self._device)
        self._next_position = torch.zeros(0, dtype=torch.long, device=self._device)
        self._last = torch.zeros(0, dtype=torch.long, device=self._device)

    async def generate(self, prompts: list[torch.Tensor], *, max_new_tokens: int, sampling: Sampling = Sampling(),
                       seed: int | None = None, prefixes: list[Any] | None = None) -> list[list[int]]:
        """New token ids of each prompt (T_i, H) (EOS cut off), generated in the running batch.

        ``prefixes`` (one per prompt, or None) are KV caches of batch 1 that a row attends to before its prompt, as
        in ``generation.generate(prefix=)``: such a row is prefilled on its own, then decodes with the others.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        prefixes = list(prefixes) if prefixes is not None else [None] * len(prompts)
        if len(prefixes) != len(prompts):
            raise ValueError(f"{len(prefixes)} prefixes for {len(prompts)} prompts")
        for prompt, prefix in zip(prompts, prefixes):
            length = prompt.shape[0] + (prefix.get_seq_length() if prefix is not None else 0)
            allowed = max_new_tokens_allowed(self.model, length)
            if max_new_tokens > allowed:
                raise ValueError(f"max_new_tokens={max_new_tokens} runs past the backbone's positions after a "
                                 f"{length}-position prompt (at most {allowed})")
        if max_new_tokens == 0 or not prompts:
            return [[] for _ in prompts]
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: whatever ran on the old one is gone
            self._loop, self._task = loop, None
            self._waiting.clear()
            self._reset()
        request = _Request(list(prompts), prefixes, max_new_tokens, sampling, seed, loop.create_future(),
                           results=[[] for _ in prompts], unfinished=len(prompts))
        self._waiting.append(request)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drive())
        return await request.future

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while self._rows or self._waiting:
            admitted = self._admit()
            try:
                finished, failed = await loop.run_in_executor(self.executor, self._step, admitted)
            except Exception as err:  # the running batch itself broke: every request in it fails
                failed = {row.request: err for row in self._rows + admitted}
                finished = []
                self._reset()
            for request in finished:
                if not request.future.done():
                    request.future.set_result(request.results)
            for request, err in failed.items():
                if not request.future.done():
                    request.future.set_exception(err)

    def _admit(self) -> list[_Row]:
        """Rows of waiting requests, oldest first, for the places left in the batch."""
        rows: list[_Row] = []
        room = self.max_batch_size - len(self._rows)
        while self._waiting and room > 0:
            request = self._waiting[0]
            if request.future.done():  # cancelled by its caller before it started
                self._waiting.popleft()
                continue
            take = min(room, len(request.prompts) - request.admitted)
            rows += [_Row(request, i, self._generator(request, i))
                     for i in range(request.admitted, request.admitted + take)]
            request.admitted += take
            room -= take
            if request.admitted == len(request.prompts):
                self._waiting.popleft()
        return rows

    @staticmethod
    def _generator(request: _Request, index: int) -> torch.Generator | None:
        if request.seed is None or request.sampling.temperature == 0:
            return None
        return torch.Generator().manual_seed((request.seed * 1_000_003 + index) % 2**63)

    @torch.no_grad()
    def _cache_merges(self) -> bool:
        """One position through the backbone: is its KV cache made of plain ``DynamicLayer``s?"""
        position = torch.zeros(1, 1, dtype=torch.long, device=self._device)
        _, past = self._forward(self.model.get_input_embeddings()(position), position + 1, position, None)
        layers = getattr(past, "layers", None)
        return layers is not None and all(type(layer) is DynamicLayer for layer in layers)

    # ---- the model thread ------------------------------------------------------------------------------
    @torch.no_grad()
    def _step(self, admitted: list[_Row]) -> tuple[list[_Request], dict[_Request, Exception]]:
        """One token for every row: a step of the running rows, a prefill of the admitted ones, then sampling."""
        self._drop([i for i, row in enumerate(self._rows) if row.request.future.done()])
        logits = self._decode_step() if self._rows else None
        failed: dict[_Request, Exception] = {}
        if admitted:
            try:
                first = self._prefill(admitted)
            except Exception as err:  # the admitted requests fail alone; earlier rows of theirs leave too
                failed = {row.request: err for row in admitted}
                gone = [i for i, row in enumerate(self._rows) if row.request in failed]
                if logits is not None and gone:
                    logits = logits[[i for i in range(len(self._rows)) if i not in set(gone)]]
                self._drop(gone)
            else:
                logits = first if logits is None else torch.cat([logits, first])
        if not self._rows:
            return [], failed
        self.steps += 1
        self.peak_rows = max(self.peak_rows, len(self._rows))
        tokens = self._sample(logits.float())
        finished, done_rows = [], []
        for i, (row, token) in enumerate(zip(self._rows, tokens)):
            if token in self.eos_token_ids or len(row.tokens) + 1 >= row.request.max_new_tokens:
                done_rows.append(i)
                request = row.request
                request.results[row.index] = row.tokens + ([] if token in self.eos_token_ids else [token])
                request.unfinished -= 1
                if request.unfinished == 0:
                    finished.append(request)
            row.tokens.append(token)
        self._last = torch.tensor(tokens, dtype=torch.long, device=self._device)
        self._drop(done_rows)
        return finished, failed

    def _forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any
                 ) -> tuple[torch.Tensor, Any]:
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self._keep, **({self._cache_kw: past} if past is not None else {}))
        return out.logits[:, -1], getattr(out, self._cache_kw)

    def _decode_step(self) -> torch.Tensor:
        """Feed each running row its last token; returns the next-token logits (B, V)."""
        embeds = self.model.get_input_embeddings()(self._last)[:, None]
        mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
        logits, self._past = self._forward(embeds, mask, self._next_position[:, None], self._past)
        self._mask, self._next_position = mask, self._next_position + 1
        return logits

    def _prefill(self, rows: list[_Row]) -> torch.Tensor:
        """Run the admitted rows' prompts (those without a prefix in one pass, each with one on its own after it)
        and merge their caches into the running batch; their first logits, in the order the rows now run."""
        plain = [row for row in rows if row.request.prefixes[row.index] is None]
        groups = ([plain] if plain else []) + [[row] for row in rows if row.request.prefixes[row.index] is not None]
        passes = []
        for group in groups:
            prefix = group[0].request.prefixes[group[0].index]  # None for the group of plain rows
            held = prefix.get_seq_length() if prefix is not None else 0
            embeds, mask = left_pad([row.request.prompts[row.index] for row in group], self._device)
            mask = torch.cat([mask.new_ones(len(group), held), mask], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, held:]
            logits, past = self._forward(embeds, mask, positions, prefix)
            if self.merges:
                _layers(past)  # a cache this class can merge, checked before any state changes
            passes.append((group, logits, past, mask))
        for group, _, past, mask in passes:
            if self._past is None:
                self._past, self._mask = past, mask
            else:
                self._mask = _merge(self._past, self._mask, past, mask)
            self._next_position = torch.cat([self._next_position, mask.sum(-1)])
            self._last = torch.cat([self._last, torch.zeros(len(group), dtype=torch.long, device=self._device)])
            self._rows += group
        return torch.cat([logits for _, logits, _, _ in passes])

    def _sample(self, logits: torch.Tensor) -> list[int]:
        """The next token of every row, each under its request's sampling and its own token history."""
        groups: dict[tuple[Sampling, int], list[int]] = collections.defaultdict(list)
        for i, row in enumerate(self._rows):
            groups[(row.request.sampling, len(row.tokens))].append(i)
        tokens = torch.empty(len(self._rows), dtype=torch.long)
        for (sampling, _), index in groups.items():
            history = torch.tensor([self._rows[i].tokens for i in index], dtype=torch.long, device=logits.device)
            scores = penalize_repeats(logits[index], history, sampling)
            if sampling.temperature == 0:
                tokens[index] = scores.argmax(-1).cpu()
                continue
            for j, i in enumerate(index):
                tokens[i] = next_token(scores[j:j + 1], sampling, self._rows[i].generator).cpu()[0]
        return tokens.tolist()

    def _drop(self, index: list[int]) -> None:
        """Remove rows from the batch (their cache rows too) and trim the columns no row attends any more."""
        if not index:
            return
        gone = set(index)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._reset()
            return
        select = torch.tensor(keep, dtype=torch.long, device=self._device)
        self._mask, self._next_position, self._last = self._mask[select], self._next_position[select], \
            self._last[select]
        used = self._mask.any(dim=0).nonzero()
        start = int(used.min()) if len(used) else 0
        for layer in _layers(self._past):
            layer.keys, layer.values = layer.keys[select, :, start:], layer.values[select, :, start:]
        self._mask = self._mask[:, start:]


def left_pad(prompts: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (T_i, H) as one left-padded batch (B, T, H) on ``device``, and its attention mask (B, T)."""
    width = max(p.shape[0] for p in prompts)
    embeds = torch.stack([F.pad(p.to(device), (0, 0, width - p.shape[0], 0)) for p in prompts])
    mask = torch.stack([F.pad(torch.ones(p.shape[0], dtype=torch.long, device=device), (width - p.shape[0], 0))
                        for p in prompts])
    return embeds, mask


def _layers(cache: Any) -> list[DynamicLayer]:
    layers = getattr(cache, "layers", None)
    if layers is None or not all(type(layer) is DynamicLayer for layer in layers):
        raise NotImplementedError(f"rows join and leave a plain DynamicCache only, got {type(cache).__name__}")
    return layers


def _merge(past: Any, mask: torch.Tensor, new: Any, new_mask: torch.Tensor) -> torch.Tensor:
    """Append the rows of cache ``new`` to ``past`` in place, both left-padded to one length; the merged mask."""
    width = max(mask.shape[1], new_mask.shape[1])
    for layer, extra in zip(_layers(past), _layers(new)):
        pad, pad_new = (0, 0, width - layer.keys.shape[2], 0), (0, 0, width - extra.keys.shape[2], 0)
        layer.keys = torch.cat([F.pad(layer.keys, pad), F.pad(extra.keys, pad_new)])
        layer.values = torch.cat([F.pad(layer.values, pad), F.pad(extra.values, pad_new)])
    return torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(new_mask, (width - new_mask.shape[1], 0))])
