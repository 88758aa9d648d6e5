"""The fidelity table: does a latent carry what the sender's LLM would have said?

For held-out queries q_i with the backbone's own responses r_i, each row turns something into text and scores
that text against r_i with the teacher (MiniLM): the mean cosine, and R@1 of the text among all held-out
responses (is r_i the nearest?) — R@1 keeps on-topic rambling from scoring — plus the share of texts with a
repeated word 4-gram (a loop).

| row | text |
|---|---|
| decode | ``decode(compress(q_i))``: the latent as a bare soft prompt |
| in context | ``respond([before, latent_i, after])`` with ``EVALUATION_INSTRUCTION`` (never trained on) |
| floor: other latent | the same, with the next query's latent in place of the own one |
| floor: no message | ``respond([before, after])``: the instruction alone |
| reference: query text | ``respond([before, q_i, after])``: a receiver regenerating the answer from the query |
| ceiling: response text | ``respond([before, r_i, after])``: the receiver reading the real response |
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from latentcomm.model.generation import has_loop
from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.model.reading import EVALUATION_INSTRUCTION, Instruction
from latentcomm.model.teachers import Teacher, unit_rows


def retrieval_scores(query_emb: np.ndarray, doc_emb: np.ndarray) -> dict[str, float]:
    """Recall@1 and MRR when query i's only relevant document is document i (cosine similarity)."""
    if query_emb.shape != doc_emb.shape:
        raise ValueError(f"queries {query_emb.shape} and documents {doc_emb.shape} must have the same shape")
    sims = unit_rows(query_emb) @ unit_rows(doc_emb).T
    correct = np.diag(sims)[:, None]
    ranks = 1 + (sims > correct).sum(axis=1)
    return {"r@1": float((ranks == 1).mean()), "mrr": float((1.0 / ranks).mean()), "n": int(len(ranks))}


@dataclass(frozen=True)
class FidelityRow:
    """One row of the table: what was turned into text, and how close that text is to the own response."""

    row: str
    source: str
    """The head that made the latents, or "-" for rows without a latent."""
    cosine: float
    r_at_1: float
    loops: float
    n: int
    example: str


def score_texts(texts: list[str], responses: np.ndarray, teacher: Teacher) -> dict[str, float]:
    """Mean teacher cosine of text i to response i, R@1 of the texts among the responses, and the loop share."""
    emb = teacher.embed(texts)
    return {"cosine": float((unit_rows(emb) * unit_rows(responses)).sum(axis=1).mean()),
            "r_at_1": retrieval_scores(emb, responses)["r@1"], "loops": float(np.mean([has_loop(t) for t in texts]))}


def latent_rows(name: str, model: GenerativeEmbedder, queries: Sequence[str], targets: np.ndarray, teacher: Teacher,
                *, instruction: Instruction = EVALUATION_INSTRUCTION, settings: dict[str, Any]) -> list[FidelityRow]:
    """The rows of one head: decode, in context and the other-latent floor (``targets``: the teacher's embeddings
    of the own responses; ``settings``: keyword arguments of ``decode`` and ``respond``)."""
    before, after = instruction
    latent = model.compress(list(queries), batch_size=settings["batch_size"],
                            show_progress_bar=settings["show_progress_bar"])
    others = [latent[(i + 1) % len(latent)] for i in range(len(latent))]
    return [_row("decode", name, model.decode(latent, **settings), targets, teacher),
            _row("in context", name, model.respond([[before, latent[i], after] for i in range(len(latent))],
                                                   **settings), targets, teacher),
            _row("floor: other latent", name, model.respond([[before, o, after] for o in others], **settings),
                 targets, teacher)]


def text_rows(reader: GenerativeEmbedder, queries: Sequence[str], responses: Sequence[str], targets: np.ndarray,
              teacher: Teacher, *, instruction: Instruction = EVALUATION_INSTRUCTION, settings: dict[str, Any]
              ) -> list[FidelityRow]:
    """The rows without a latent: no message (the floor), the query text (reference), the response (ceiling)."""
    before, after = instruction
    return [_row("floor: no message", "-", reader.respond([[before, after]], **settings) * len(queries), targets,
                 teacher),  # greedy: one text
            _row("reference: query text", "-", reader.respond([[before, q, after] for q in queries], **settings),
                 targets, teacher),
            _row("ceiling: response text", "-", reader.respond([[before, r, after] for r in responses], **settings),
                 targets, teacher)]


def _row(row: str, source: str, texts: list[str], targets: np.ndarray, teacher: Teacher) -> FidelityRow:
    return FidelityRow(row, source, **score_texts(texts, targets, teacher), n=len(texts), example=texts[0])


def generation_settings(max_new_tokens: int = 64, batch_size: int = 16, decoding: dict[str, Any] | None = None,
                        show_progress_bar: bool = True) -> dict[str, Any]:
    """The keyword arguments the table passes to ``decode`` and ``respond``."""
    return dict(max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress_bar=show_progress_bar,
                **(decoding or {}))


def fidelity_table(heads: dict[str, GenerativeEmbedder], queries: Sequence[str], responses: Sequence[str],
                   teacher: Teacher, *, instruction: Instruction = EVALUATION_INSTRUCTION, max_new_tokens: int = 64,
                   batch_size: int = 16, decoding: dict[str, Any] | None = None, show_progress_bar: bool = True
                   ) -> list[FidelityRow]:
    """Every row of the module docstring, for each head in ``heads`` and once for the head-free rows.

    ``decoding`` overrides the sampling settings of both ``decode`` and ``respond`` (their defaults otherwise).
    """
    if len(queries) != len(responses) or len(queries) < 2:
        raise ValueError(f"need at least 2 queries with one response each, got {len(queries)} and {len(responses)}")
    targets = teacher.embed(list(responses))
    settings = generation_settings(max_new_tokens, batch_size, decoding, show_progress_bar)
    rows = [row for name, model in heads.items()
            for row in latent_rows(name, model, queries, targets, teacher, instruction=instruction, settings=settings)]
    reader = next(iter(heads.values()))
    return rows + text_rows(reader, queries, responses, targets, teacher, instruction=instruction, settings=settings)


DECODING_GRID: tuple[dict[str, Any], ...] = (
    {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0},
    {"repetition_penalty": 1.0, "no_repeat_ngram_size": 4},
    {"repetition_penalty": 1.1, "no_repeat_ngram_size": 0},
    {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4},
    {"repetition_penalty": 1.2, "no_repeat_ngram_size": 4},
    {"repetition_penalty": 1.1, "no_repeat_ngram_size": 3},
)
"""Repetition settings the decoding sweep compares (greedy decoding; the first is plain greedy)."""


def decoding_sweep(model: GenerativeEmbedder, queries: Sequence[str], responses: Sequence[str], teacher: Teacher, *,
                   grid: Sequence[dict[str, Any]] = DECODING_GRID, max_new_tokens: int = 64, batch_size: int = 16
                   ) -> list[dict[str, Any]]:
    """Decode fidelity of ``model``'s latents under each repetition setting (how ``decode``'s defaults were chosen)."""
    targets = teacher.embed(list(responses))
    latent = model.compress(list(queries), batch_size=batch_size)
    return [{**settings, **score_texts(model.decode(latent, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                    **settings), targets, teacher)} for settings in grid]


def table_markdown(rows: Sequence[FidelityRow]) -> str:
    """The table as markdown: one line per row, cosine, R@1 and loop share."""
    lines = ["| row | latents from | MiniLM cosine | R@1 | loops |", "|---|---|---|---|---|"]
    lines += [f"| {r.row} | {r.source} | {r.cosine:.3f} | {r.r_at_1:.3f} | {r.loops:.0%} |" for r in rows]
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[FidelityRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
