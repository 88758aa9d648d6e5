"""The tasks of the main job: what the first agent of a chain holds, what every later agent reads, how the final
answer is scored.

Every agent of a chain is asked the task's question; only the first one holds what answers it (a note, or the
problem to solve). A later agent reads the message of the agent before it inside its own user turn, after
``reading.EVALUATION_INSTRUCTION``'s opening, the same words in every mode: only what stands in the message's
place changes (a latent read as soft tokens, its decoded text, or generated text; a KV prefix stands before the
whole turn instead, ``latentcomm.model.kv``). The floor is the last agent asked without any message.

* ``facts`` (default): ``latentcomm.tasks.facts`` — a note about a made-up person; the answer is one word of it.
* ``gsm8k``: GSM8K test problems; the answer is the final number (a 135M backbone scores about 1%: this task is
  for bigger backbones).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from latentcomm.tasks import facts
from latentcomm.tasks.gsm8k import last_number, load_gsm8k
from latentcomm.model.reading import EVALUATION_INSTRUCTION

TaskName = Literal["facts", "gsm8k"]
TASKS: tuple[str, ...] = ("facts", "gsm8k")


@dataclass(frozen=True)
class Item:
    """One question of a task: what the first agent holds, what every agent is asked, and the gold answer."""

    id: str
    context: str
    question: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A task's roles (first, relaying and last agent), the words around a message, and its metric."""

    name: TaskName
    first_role: str
    relay_role: str
    last_role: str
    ask: str
    """Text after the message in the last agent's input."""
    metric: str
    load: Callable[[int, int], list[Item]]
    correct: Callable[[str, Item], bool]

    def first_input(self, item: Item) -> str:
        return f"{item.context}\n\nQuestion: {item.question}" if item.context != item.question else item.question

    def later_input(self, item: Item, message: Any, *, last: bool) -> list[Any]:
        """The parts a later agent reads: the question, the message (a latent or a text; a list: several, in the
        order they came), and for the last one the task's ask."""
        messages = message if isinstance(message, list) else [message]
        return [f"Question: {item.question}\n\n{EVALUATION_INSTRUCTION[0]}", *messages,
                f"\n{self.ask}" if last else ""]

    def floor_input(self, item: Item) -> str:
        return f"Question: {item.question}\n\n{self.ask}"

    def score(self, finals: Sequence[str], items: Sequence[Item]) -> float:
        """The share of final answers that are correct."""
        return sum(self.correct(f, i) for f, i in zip(finals, items, strict=True)) / len(items)


def _fact_items(count: int, offset: int) -> list[Item]:
    return [Item(f.id, f"Note: {f.note}", f.question, f.answer) for f in facts.fact_items(count, offset=offset)]


def _fact_correct(final: str, item: Item) -> bool:
    return facts.is_correct(final, facts.FactItem(item.id, item.context, item.question, item.answer))


def _gsm8k_items(count: int, offset: int) -> list[Item]:
    return [Item(q.id, q.text, q.text, q.answer) for q in load_gsm8k(count, offset=offset)]


FACTS = Task("facts", first_role="Read the note and answer the question about it in one sentence.",
             relay_role="Pass on, in one sentence, what the message says that answers the question.",
             last_role="Answer the question in one short sentence.", ask="Answer the question.",
             metric="the final answer names the note's word that answers the question (case-insensitive)",
             load=_fact_items, correct=_fact_correct)
GSM8K = Task("gsm8k", first_role="Solve this maths problem step by step and end with the final number.",
             relay_role="Check the proposed solution to the problem and give the correct final number.",
             last_role="Give the final number that answers the problem.", ask="Final number:",
             metric="exact match: the last number in the final answer == GSM8K's answer",
             load=_gsm8k_items, correct=lambda final, item: last_number(final) == item.answer)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {TASKS}")
    return FACTS if name == "facts" else GSM8K
