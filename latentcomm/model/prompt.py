"""Prompt layout: inputs as parts, the chat template around them, and rows of token ids and vectors embedded as one
padded batch — what the embedder feeds the backbone."""
from __future__ import annotations

import warnings
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from latentcomm.errors import HeadMismatchError
from latentcomm.model.backbone import Backbone
from latentcomm.model.config import HeadConfig
from latentcomm.model.latent import Latent, LatentError, check_vectors

Part = Union[str, Latent]
"""One piece of an input: text (tokenised) or a latent row (1, n, H) that enters verbatim as n soft tokens."""
Item = Union[str, Latent, Sequence[Part]]
"""One input: a string, a latent row, or a sequence of parts, all inside the user turn of the chat template."""
Segment = Union[list[int], torch.Tensor]
"""Token ids, or (k, H) vectors placed as they are."""
Template = tuple[list[int], list[int]]
"""Token ids before and after a user turn's content."""

MIN_QUERY_TOKENS = 16
"""Fewer query tokens than this left by the template and prompt: a warning (none at all: ``ValueError``)."""
_QUERY = "\x00LATENTCOMM_QUERY\x00"
"""Stands for the query while the chat template is rendered, then split on."""


def as_items(inputs: Item | Sequence[Item], what: str = "texts") -> list[list[Part]]:
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


def item_size(parts: list[Part]) -> int:
    """Rough length of an item for sorting batches (characters; a latent vector counts as 4)."""
    return sum(len(p) if isinstance(p, str) else 4 * p.vectors.shape[1] for p in parts)


def row_width(row: list[Segment]) -> int:
    """Positions a row of segments takes."""
    return sum(len(seg) for seg in row)


def common_head(rows: list[list[Segment]]) -> list[int]:
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


def check_backbone(latent: Latent, backbone: Backbone) -> None:
    """Raise unless ``latent`` is a finite latent of ``backbone`` (any head on it)."""
    if not isinstance(latent, Latent):
        raise TypeError(f"expected a Latent, got {type(latent).__name__} (wrap arrays with Latent.from_numpy)")
    check_vectors(latent.vectors, backbone.hidden_size)
    if latent.backbone_id != backbone.backbone_id:
        raise HeadMismatchError(f"latent comes from backbone {latent.backbone_id}, this model runs "
                                f"{backbone.backbone_id}")


class PromptLayout:
    """Where each input's tokens and vectors go on ``backbone`` under ``config``: the chat template around the
    user turn (cached per prompt), the query's token budget, text parts as ids and latent parts as vectors."""

    def __init__(self, backbone: Backbone, config: HeadConfig) -> None:
        self.backbone = backbone
        self.config = config
        self._templates: dict[str | None, Template] = {}

    @property
    def _chat(self) -> bool:
        return bool(self.config.chat_template and self.backbone.tokenizer.chat_template)

    def _ids(self, text: str) -> list[int]:
        return self.backbone.tokenizer(text, add_special_tokens=False).input_ids

    def template(self, prompt: str | None) -> Template:
        """Token ids before and after the query (chat template and instruction), cached per prompt."""
        if prompt not in self._templates:
            tok = self.backbone.tokenizer
            content = (prompt or "") + _QUERY
            if self._chat:
                text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
                before, after = text.split(_QUERY)
                self._templates[prompt] = (self._ids(before), self._ids(after))
            else:
                self._templates[prompt] = (tok(content.split(_QUERY)[0], add_special_tokens=True).input_ids, [])
        return self._templates[prompt]

    def turn_template(self, *, opens: bool = True, answers: bool = True) -> Template:
        """Token ids before and after a user turn's content in the chat template: with the system prompt where the
        turn opens the conversation, ending in the assistant's generation prompt where the model answers next
        (both: ``respond``'s turn). KV hand-offs (``latentcomm.model.kv``) chain turns this way; without a chat
        template, nothing around the content."""
        key = f"turn:{opens}:{answers}"
        if key not in self._templates:
            if not self._chat:
                self._templates[key] = ([], [])
                return self._templates[key]
            tok = self.backbone.tokenizer
            earlier = [] if opens else [{"role": "user", "content": "."}]
            text = tok.apply_chat_template([*earlier, {"role": "user", "content": _QUERY}],
                                           add_generation_prompt=answers, tokenize=False)
            if earlier:
                head = tok.apply_chat_template(earlier, add_generation_prompt=False, tokenize=False)
                if not text.startswith(head):
                    raise ValueError(f"{self.backbone.name}'s chat template does not extend a conversation by a "
                                     "user turn: KV hand-offs need one that does")
                text = text[len(head):]
            before, after = text.split(_QUERY)
            self._templates[key] = (self._ids(before), self._ids(after))
        return self._templates[key]

    def query_budget(self, before: list[int], after: list[int]) -> int:
        """Query tokens ``max_query_tokens`` leaves inside this template (refused at 0, a warning when few)."""
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
        before, after = self.template(prompt)
        budget = self.query_budget(before, after)
        encoded = self.backbone.tokenizer(texts, add_special_tokens=False).input_ids
        return [before + ids[:budget] + after for ids in encoded]

    def query_rows(self, items: list[list[Part]], prompt: str | None, template: Template | None = None
                   ) -> list[list[Segment]]:
        """Each item as segments inside the user turn: template (``prompt``'s, or ``template``'s ids before and
        after), then its parts (text as ids, latents as vectors).

        Latent parts are never cut; text parts share what ``max_query_tokens`` leaves, first come first served.
        """
        before, after = template or self.template(prompt)
        budget = self.query_budget(before, after)
        texts = [p for parts in items for p in parts if isinstance(p, str)]
        encoded = iter(self.backbone.tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
        rows = []
        for parts in items:
            latents = [self.latent_part(p) for p in parts if isinstance(p, Latent)]
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

    def latent_part(self, part: Latent) -> torch.Tensor:
        """A latent part's (n, H) vectors, after checking it is one row from a head on this backbone."""
        if len(part) != 1:
            raise LatentError(f"a latent part is one row (1, n, H), got a batch of {len(part)}: index it (latent[i])")
        check_backbone(part, self.backbone)
        return part.vectors[0]

    def embed_rows(self, rows: list[list[Segment]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
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
