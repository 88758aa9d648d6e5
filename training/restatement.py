"""Held-out restatement: does a latent carry the words its input holds?

A receiver reads each latent inside a user turn with ``optimise.RESTATE`` (an instruction no head trains on) and
restates the message greedily (plain greedy: no repetition penalty). Scored against the input text: the exact-match rate (with its 95% Wilson interval)
and the token accuracy (the share of the input's tokens that the restatement has at the same position). Rows: the
text itself in the latent's place (the ceiling), each head's latent, and the latent optimised for the reading (the
bound, ``latentcomm.model.optimise``). Sets: made-up notes of held-out seeds (``training.notes``) and held-out
ShareGPT queries cut to a few dozen words.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.model.latent import Latent
from latentcomm.model.optimise import RESTATE, OptimiseConfig, optimise_latent
from latentcomm.stats import format_interval, wilson_interval
from latentcomm.training.notes import make_notes

HELDOUT_NOTE_SEED = 1_000_003
"""Notes of this seed are never trained on (training draws ``objectives.NOTE_SEED``)."""
CEILING = "text (ceiling)"
BOUND = "optimised latent (bound)"


@dataclass(frozen=True)
class RestatementRow:
    """One row of the restatement table."""

    row: str
    set: str
    n: int
    exact: float
    exact_ci95: tuple[float, float]
    token_accuracy: float


def heldout_sets(count: int, queries: list[str], words: int = 32) -> dict[str, list[str]]:
    """``count`` held-out notes and ``count`` held-out queries cut to ``words`` words."""
    return {"held-out notes": [n.text for n in make_notes(count, seed=HELDOUT_NOTE_SEED)],
            "held-out ShareGPT queries": [" ".join(q.split()[:words]) for q in queries[:count]]}


def token_accuracy(model: GenerativeEmbedder, said: str, text: str) -> float:
    """The share of ``text``'s tokens that ``said`` has at the same position."""
    tok = model.backbone.tokenizer
    want, got = tok(text, add_special_tokens=False).input_ids, tok(said, add_special_tokens=False).input_ids
    return sum(a == b for a, b in zip(want, got)) / max(1, len(want))


def restate(model: GenerativeEmbedder, messages: list[Latent | str], *, max_new_tokens: int, batch_size: int
            ) -> list[str]:
    """Each message (a latent row or a text) read with ``RESTATE`` and restated greedily, without the repetition
    controls of ``respond`` (a restatement repeats what its text repeats, e.g. a name)."""
    before, after = RESTATE
    return model.respond([[before, m, after] for m in messages], max_new_tokens=max_new_tokens,
                         batch_size=batch_size, repetition_penalty=1.0, no_repeat_ngram_size=0)


def score(model: GenerativeEmbedder, row: str, name: str, texts: list[str], said: list[str]) -> RestatementRow:
    exact = sum(s.strip() == t.strip() for s, t in zip(said, texts))
    accuracy = sum(token_accuracy(model, s, t) for s, t in zip(said, texts)) / len(texts)
    return RestatementRow(row, name, len(texts), exact / len(texts), wilson_interval(exact, len(texts)), accuracy)


def restatement_table(heads: dict[str, GenerativeEmbedder], sets: dict[str, list[str]], *, bound_of: str | None,
                      optimise: OptimiseConfig = OptimiseConfig(steps=100), max_new_tokens: int = 96,
                      batch_size: int = 8) -> list[RestatementRow]:
    """Rows per set: the text ceiling, each head's latent, and (for the head ``bound_of``) the optimised latent."""
    rows = []
    reader = next(iter(heads.values()))
    for name, texts in sets.items():
        rows.append(score(reader, CEILING, name, texts, restate(reader, texts, max_new_tokens=max_new_tokens,
                                                                batch_size=batch_size)))
        for head, model in heads.items():
            latent = model.compress(texts, batch_size=batch_size)
            said = restate(model, [latent[i] for i in range(len(texts))], max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
            rows.append(score(model, head, name, texts, said))
        if bound_of is not None:
            model = heads[bound_of]
            latent = optimise_latent(model, texts, config=optimise, batch_size=batch_size).latent
            said = restate(model, [latent[i] for i in range(len(texts))], max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
            rows.append(score(model, BOUND, name, texts, said))
    return rows


def table_markdown(rows: list[RestatementRow]) -> str:
    lines = ["| set | latent | n | exact match (95% CI) | token accuracy |", "|---|---|---:|---|---:|"]
    lines += [f"| {r.set} | {r.row} | {r.n} | {r.exact:.3f} ({format_interval(r.exact_ci95)}) | "
              f"{r.token_accuracy:.3f} |" for r in rows]
    return "\n".join(lines)


def rows_as_dicts(rows: list[RestatementRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
