"""What each training sample asks of the head: LLM2Vec-Gen's response, a restatement of the input, or an answer to a
question about a note — all read from the latent.

* ``response`` (the paper's objective): the latent of a query reconstructs the backbone's own response to it.
* ``restate`` (autoencoding, ICAE / 500xCompressor's pretraining objective): the latent of a query, cut to
  ``restate_tokens`` tokens, is read inside a user turn with a request to restate it, and the query's own text is
  the answer. The latent must carry the words its input holds.
* ``qa``: the latent of a note (``training.notes``: made-up names, numbers, dates and thousands of ordinary words) is
  read inside a user turn with a question about the note, and the answer is the note's word, name, number or date.

Each sample's objective, instruction and note are drawn from its key (``"<seed>:<epoch>:<query id>"``), so a
resumed run sees exactly the samples it would have seen. The alignment term applies to the samples whose target
is the query's teacher embedding (``response`` and ``restate``), not to notes, which have none.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from latentcomm.model.reading import TRAINING_INSTRUCTIONS, Instruction, draw_instruction
from latentcomm.training.notes import make_note

Objective = Literal["response", "restate", "qa"]
RESTATE_INSTRUCTIONS: tuple[Instruction, ...] = tuple(i for i in TRAINING_INSTRUCTIONS if i != ("", ""))
"""The reading instructions of restatement samples: the training ones that ask for the message back."""
QA_LEAD_INS: tuple[str, ...] = ("A teammate sent you this note:\n", "Message received:\n", "",
                                "Read this message:\n", "You got the following note from another assistant.\n")
QA_ASKS: tuple[str, ...] = ("\n{question} Answer in a few words.", "\nQuestion: {question}\nAnswer briefly.",
                            "\nUsing the note above: {question}")
NOTE_SEED = 17
"""The note seed of training samples (held-out evaluation notes use other seeds)."""
NOTE_RANGE = 10_000_000
"""Training notes are drawn from this many note indices."""


@dataclass(frozen=True)
class Sample:
    """One training sample: what the latent is made of, what the reader must answer, how the latent is read, and
    whether the query's teacher target applies."""

    query: str
    response: str
    instruction: Instruction | None
    aligned: bool
    objective: Objective


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64


def draw_objective(key: str, restate_share: float, qa_share: float) -> Objective:
    """The objective of the sample named ``key``: ``restate`` for a share ``restate_share`` of keys, ``qa`` for
    ``qa_share``, else ``response``."""
    if not (0 <= restate_share and 0 <= qa_share and restate_share + qa_share <= 1):
        raise ValueError(f"restate and qa shares must be >= 0 and sum to at most 1, got {restate_share}, {qa_share}")
    u = _unit(f"objective:{key}")
    return "restate" if u < restate_share else "qa" if u < restate_share + qa_share else "response"


def qa_instruction(key: str, question: str) -> Instruction:
    """A lead-in before the latent and the question after it, drawn from ``key``."""
    lead = QA_LEAD_INS[int(_unit(f"lead:{key}") * len(QA_LEAD_INS))]
    ask = QA_ASKS[int(_unit(f"ask:{key}") * len(QA_ASKS))]
    return lead, ask.format(question=question)


def make_sample(key: str, query: str, response: str, instruction: Instruction | None, *, restate_share: float,
                qa_share: float, restate_text: str) -> Sample:
    """The sample of ``key`` for one (query, own response) record: the record itself (with its drawn
    ``instruction``), its query restated (``restate_text``: the query cut to the restatement budget), or a note's
    question."""
    objective = draw_objective(key, restate_share, qa_share)
    if objective == "restate":
        read = draw_instruction(f"restate:{key}", 1.0, RESTATE_INSTRUCTIONS)
        return Sample(restate_text, restate_text, read, True, objective)
    if objective == "qa":
        note = make_note(int(_unit(f"note:{key}") * NOTE_RANGE), seed=NOTE_SEED)
        return Sample(note.text, note.answer_sentence, qa_instruction(key, note.question), False, objective)
    return Sample(query, response, instruction, True, objective)
