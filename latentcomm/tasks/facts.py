"""The fact-relay task: one agent holds a short note about a made-up person, the last agent must answer a question
about it. Made by the project (seeded word lists, no external data), so nothing can be known without the note.

The answer is one word of the note (a city, a job, a pet or a colour); a final answer is correct when it contains
that word (case-insensitive). On SmolLM2-135M-Instruct (``latentcomm run``, 8 questions, holder -> relay ->
answerer): passed on as generated text, 7 of 8 final answers are right; asked without the note, none.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

FIRST_NAMES = ("Mira Tomas Lena Oskar Priya Jonas Amara Felix Ines Kenji Sofia Rafael Nadia Emil Zara Hugo Leila "
               "Arjun Maren Bruno Yara Teodor Celia Ravi").split()
LAST_NAMES = ("Castell Varga Okafor Lindqvist Moreau Tanaka Quintero Novak Haddad Brennan Ferreira Kowalski Duarte "
              "Ivanova Mensah Albrecht Sorensen Takeda Rossi Nakamura").split()
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "city": tuple("Lisbon Oslo Nairobi Montreal Kyoto Valparaiso Tbilisi Ghent Hobart Porto Riga Cusco Tallinn "
                  "Marrakesh Bergen Krakow".split()),
    "job": tuple("dentist pilot baker architect librarian welder nurse chemist jeweller florist plumber translator "
                 "carpenter geologist tailor beekeeper".split()),
    "pet": tuple("parrot tortoise ferret goldfish hamster rabbit iguana beagle canary hedgehog".split()),
    "colour": tuple("green orange purple yellow silver crimson teal brown scarlet indigo".split()),
}
QUESTIONS = {"city": "In which city does {name} live?", "job": "What is {name}'s job?",
             "pet": "What pet does {name} have?", "colour": "What is {name}'s favourite colour?"}


@dataclass(frozen=True)
class FactItem:
    """A note, a question about it and the one-word answer."""

    id: str
    note: str
    question: str
    answer: str


def fact_items(count: int, *, seed: int = 0, offset: int = 0) -> list[FactItem]:
    """``count`` items after skipping ``offset``; the same (seed, index) always gives the same item."""
    if count < 1 or offset < 0:
        raise ValueError(f"need count >= 1 and offset >= 0, got {count} and {offset}")
    items = []
    for index in range(offset, offset + count):
        rng = random.Random(f"{seed}:{index}")
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        value = {key: rng.choice(values) for key, values in ATTRIBUTES.items()}
        article = "an" if value["job"][0] in "aeiou" else "a"
        note = (f"{name} is {article} {value['job']} who lives in {value['city']}. {name.split()[0]} has a pet "
                f"{value['pet']} and loves the colour {value['colour']}.")
        asked = rng.choice(sorted(ATTRIBUTES))
        items.append(FactItem(f"facts-{seed}-{index}", note, QUESTIONS[asked].format(name=name), value[asked]))
    return items


def is_correct(answer: str, item: FactItem) -> bool:
    """The final answer names the right word."""
    return re.search(rf"\b{re.escape(item.answer.lower())}\b", answer.lower()) is not None
