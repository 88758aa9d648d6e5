"""Notes for training heads that copy: short texts about made-up entities with questions about them.

Made by the project, from its own templates and from word pools too large to memorise — made-up names from
syllables, numbers, dates, and thousands of ordinary words taken from the packaged ShareGPT training queries — so
that the only way to restate a note, or to answer a question about it, is to carry its words. Nothing here comes
from ``latentcomm.tasks.facts`` (the fact-relay task stays a test, never training data): its names, cities, jobs,
pets and colours are kept out of every pool, and its sentence shapes are not used.
"""
from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from latentcomm.tasks import facts

SYLLABLES = ("ka ri to me na lu so vi da ne mo ta be ru gi fa lo pe zu ha ki no sa we yo ma ti ba ku re di "
             "ol an ir el ur os ar en ul is").split()
PLACE_ENDINGS = ("ford", "wick", "ton", "ville", "berg", "dale", "mouth", "stead", "ia", "ar", "heim", "port")
MONTHS = ("January February March April May June July August September October November December").split()


@dataclass(frozen=True)
class Note:
    """A note, a question about one of its facts, the answer (a word, name, number or date of the note), and an
    answer sentence to train on."""

    id: str
    text: str
    question: str
    answer: str

    @property
    def answer_sentence(self) -> str:
        return f"{self.answer}."


@lru_cache(maxsize=1)
def _forbidden() -> frozenset[str]:
    words = {w.lower() for w in (*facts.FIRST_NAMES, *facts.LAST_NAMES)}
    for values in facts.ATTRIBUTES.values():
        words |= {v.lower() for v in values}
    return frozenset(words)


@lru_cache(maxsize=1)
def word_pool(min_count: int = 3) -> tuple[str, ...]:
    """Ordinary lower-case words (4-12 letters) seen at least ``min_count`` times in the packaged ShareGPT training
    queries, without the fact-relay task's words; sorted, so the pool is the same everywhere."""
    from latentcomm.training.responses import PACKAGED_RESPONSES

    counts: Counter[str] = Counter()
    with gzip.open(PACKAGED_RESPONSES, "rt", encoding="utf-8") as f:
        next(f)  # the archive's header
        for line in f:
            record = json.loads(line)
            if record["split"] == "train":
                counts.update(re.findall(r"\b[a-z]{4,12}\b", record["query"]))
    forbidden = _forbidden()
    return tuple(sorted(w for w, c in counts.items() if c >= min_count and w not in forbidden))


def made_up_name(rng: random.Random, syllables: int) -> str:
    """A capitalised name of ``syllables`` syllables that is none of the fact-relay task's words."""
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(syllables))
        if name not in _forbidden():
            return name.capitalize()


def _person(rng: random.Random) -> str:
    return f"{made_up_name(rng, rng.randint(2, 3))} {made_up_name(rng, rng.randint(2, 3))}"


def _place(rng: random.Random) -> str:
    return made_up_name(rng, 2) + rng.choice(PLACE_ENDINGS)


def _date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1900, 2030)}"


def _number(rng: random.Random) -> str:
    return str(rng.choice((rng.randint(2, 99), rng.randint(100, 9999))))


TEMPLATES: tuple[tuple[str, dict[str, str]], ...] = (
    ("{person} keeps {number} {word}s in a shed near {place}. The shed was built on {date}.",
     {"person": "Who keeps the {word}s?", "number": "How many {word}s are kept in the shed?",
      "word": "What does {person} keep in the shed?", "place": "Where is the shed?",
      "date": "When was the shed built?"}),
    ("Project {title} began on {date} in {place}. Its budget is {number} dollars and its lead, {person}, "
     "studies {word}.",
     {"title": "What is the name of the project?", "date": "When did the project begin?",
      "place": "Where did the project begin?", "number": "What is the project's budget in dollars?",
      "person": "Who leads the project?", "word": "What does the project's lead study?"}),
    ("The ship {title} carries {number} crates of {word} to {place}. Captain {person} expects to land on {date}.",
     {"title": "What is the ship called?", "number": "How many crates does the ship carry?",
      "word": "What do the crates hold?", "place": "Where is the ship going?", "person": "Who is the captain?",
      "date": "When does the captain expect to land?"}),
    ("Memo from {person}: the {word} review moves to {date}, in room {number} at {place}.",
     {"person": "Who wrote the memo?", "word": "Which review was moved?", "date": "When is the review now?",
      "number": "Which room is the review in?", "place": "Where is the room?"}),
    ("{title} Works makes {word} in {place}. {person} founded it on {date}, and it employs {number} people.",
     {"title": "What is the company called?", "word": "What does the company make?",
      "place": "Where is the company?", "person": "Who founded the company?",
      "date": "When was the company founded?", "number": "How many people does the company employ?"}),
    ("Password hint for {person}: {word}. The locker at {place} is number {number}, last opened on {date}.",
     {"person": "Whose password hint is it?", "word": "What is the password hint?",
      "place": "Where is the locker?", "number": "What is the locker's number?",
      "date": "When was the locker last opened?"}),
)
"""(note template, question per slot). Every slot's value appears once in the note."""


def make_note(index: int, *, seed: int = 0) -> Note:
    """The ``index``-th note of ``seed``: the same (seed, index) gives the same note everywhere."""
    rng = random.Random(f"notes:{seed}:{index}")
    template, questions = TEMPLATES[rng.randrange(len(TEMPLATES))]
    values = {"person": _person(rng), "place": _place(rng), "date": _date(rng), "number": _number(rng),
              "word": rng.choice(word_pool()), "title": made_up_name(rng, rng.randint(2, 3))}
    text = template.format(**values)
    slot = rng.choice(sorted(questions))
    return Note(f"note-{seed}-{index}", text, questions[slot].format(**values), values[slot])


def make_notes(count: int, *, seed: int = 0, offset: int = 0) -> list[Note]:
    """``count`` notes starting at ``offset``; seeds keep training and held-out notes apart."""
    if count < 1 or offset < 0:
        raise ValueError(f"need count >= 1 and offset >= 0, got {count} and {offset}")
    return [make_note(i, seed=seed) for i in range(offset, offset + count)]
