"""Checkable multi-step tasks for latent chaining, each with its gold reasoning steps (one sentence a step).

* ``relations`` (ProsQA/ProntoQA style): shuffled facts "A's mentor is B." over made-up names, two chains of
  the same length (one a distractor); the question asks for the mentor of the mentor ... of A (h hops).
  Gold step k: "X's mentor is Y." The answer is a name: the last of the task's names in the answer text.
* ``arithmetic``: "Start with 4. Add 3. Multiply by 2. What is the result?" (h operations, small numbers).
  Gold step k: "4 + 3 = 7." The answer is the last number in the answer text.
* ``gsm8k``: GSM8K problems whose worked solution has at most ``max_hops`` lines; each line is a step. The
  package ships only the test split, so the first eligible problems are the test tasks and later ones train.
  A 135M backbone scores about 1% on GSM8K: this family is for bigger backbones.

Everything but GSM8K is made here from seeded word lists, so a test task can be known only by reasoning.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from latentcomm.tasks.gsm8k import last_number, load_gsm8k, normalize_number

FAMILIES: tuple[str, ...] = ("relations", "arithmetic", "gsm8k")
_SYLLABLES = ("ka lo mi ne ru ta vo zi be da fe gu ho ja ku li mo nu pe ri sa te vu wa xe yo zu bri dor fen "
              "gal hus kel mar nov pim quo rix sel tun".split())
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class ChainTask:
    """A question, its gold steps and its final answer; ``names`` are the entities it mentions (relations)."""

    id: str
    family: str
    question: str
    steps: tuple[str, ...]
    answer: str
    names: tuple[str, ...] = ()

    @property
    def hops(self) -> int:
        return len(self.steps)

    def step(self, k: int) -> str:
        """Gold step ``k`` (1-based); past the last step, the last step again: a finished chain stays put."""
        if k < 1:
            raise ValueError(f"steps count from 1, got {k}")
        return self.steps[min(k, self.hops) - 1]


def _names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.sample(_SYLLABLES, 2)).capitalize())
    return sorted(names, key=lambda _: rng.random())


def relation_task(index: int, hops: int, seed: str) -> ChainTask:
    """Two mentor chains of ``hops`` links each (shuffled facts); the question follows the first one."""
    rng = random.Random(f"relations:{seed}:{hops}:{index}")
    names = _names(rng, 2 * (hops + 1))
    chain, other = names[:hops + 1], names[hops + 1:]
    facts = [f"{a}'s mentor is {b}." for c in (chain, other) for a, b in zip(c, c[1:])]
    rng.shuffle(facts)
    asked = "the mentor of " * hops + chain[0]
    question = "Facts:\n" + "\n".join(facts) + f"\nQuestion: Who is {asked}?"
    steps = tuple(f"{a}'s mentor is {b}." for a, b in zip(chain, chain[1:]))
    return ChainTask(f"relations-{seed}-{hops}-{index}", "relations", question, steps, chain[-1], tuple(names))


def arithmetic_task(index: int, hops: int, seed: str) -> ChainTask:
    """``hops`` operations on a start value of 2..9; every value stays between 1 and 69."""
    rng = random.Random(f"arithmetic:{seed}:{hops}:{index}")
    value = rng.randint(2, 9)
    instructions, steps = [f"Start with {value}."], []
    for _ in range(hops):
        kinds = ["add", "subtract"] + (["multiply"] if value <= 20 else [])
        kind = rng.choice([k for k in kinds if k != "subtract" or value >= 2])
        if kind == "add":
            n = rng.randint(1, 9)
            new, text, sign = value + n, "Add {n}.", "+"
        elif kind == "subtract":
            n = rng.randint(1, min(9, value - 1))
            new, text, sign = value - n, "Subtract {n}.", "-"
        else:
            n = rng.choice([2, 3])
            new, text, sign = value * n, "Multiply by {n}.", "*"
        instructions.append(text.format(n=n))
        steps.append(f"{value} {sign} {n} = {new}.")
        value = new
    question = " ".join(instructions) + " What is the result?"
    return ChainTask(f"arithmetic-{seed}-{hops}-{index}", "arithmetic", question, tuple(steps), str(value))


def gsm8k_tasks(max_hops: int) -> list[ChainTask]:
    """Every GSM8K test problem whose solution has 1..``max_hops`` lines, in file order."""
    tasks = []
    for q in load_gsm8k():
        lines = tuple(line.strip() for line in q.solution.splitlines() if line.strip())
        if 1 <= len(lines) <= max_hops:
            tasks.append(ChainTask(q.id, "gsm8k", q.text, lines, q.answer))
    return tasks


def make_tasks(families: Sequence[str], max_hops: int, train_per_hops: int, test_per_hops: int, seed: int
               ) -> tuple[list[ChainTask], list[ChainTask]]:
    """(train, test) tasks: per family and per hop count 1..``max_hops``, disjoint by question text."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"unknown task families {unknown}; choose from {list(FAMILIES)}")
    if max_hops < 1 or train_per_hops < 0 or test_per_hops < 1:
        raise ValueError("need max_hops >= 1, train_per_hops >= 0 and test_per_hops >= 1")
    train: list[ChainTask] = []
    test: list[ChainTask] = []
    for family in families:
        if family == "gsm8k":
            pool = gsm8k_tasks(max_hops)
            for hops in range(1, max_hops + 1):
                same = [t for t in pool if t.hops == hops]
                test += same[:test_per_hops]
                train += same[test_per_hops:test_per_hops + train_per_hops]
            continue
        make = relation_task if family == "relations" else arithmetic_task
        for hops in range(1, max_hops + 1):
            held = [make(i, hops, f"{seed}-test") for i in range(test_per_hops)]
            seen = {t.question for t in held}
            chosen: list[ChainTask] = []
            for i in range(20 * train_per_hops + 100):  # small arithmetic chains repeat: skip repeats
                if len(chosen) == train_per_hops:
                    break
                task = make(i, hops, f"{seed}-train")
                if task.question not in seen:
                    seen.add(task.question)
                    chosen.append(task)
            test += held
            train += chosen
    return train, test


def final_part(text: str) -> str:
    """What follows the last "Answer:" in ``text`` (the whole text when there is none)."""
    found = list(_ANSWER.finditer(text))
    return text[found[-1].end():] if found else text


def extract_answer(text: str, task: ChainTask) -> str | None:
    """The answer ``text`` gives for ``task``: the last task name it mentions (relations) or its last number."""
    text = final_part(text)
    if task.family == "relations":
        spots = {name: m.start() for name in task.names
                 for m in re.finditer(rf"\b{re.escape(name)}\b", text, re.IGNORECASE)}
        return max(spots, key=spots.get) if spots else None
    return last_number(text)


def step_result(task: ChainTask, k: int) -> str | None:
    """What gold step ``k`` arrives at (its name or number): the answer after that step."""
    return extract_answer(task.step(k), task)


def is_correct(text: str, task: ChainTask, expected: str | None = None) -> bool:
    """Whether ``text`` ends on ``expected`` (default: the task's answer), read with ``extract_answer``."""
    found = extract_answer(text, task)
    expected = task.answer if expected is None else expected
    if found is None:
        return False
    return found == expected if task.family == "relations" else found == normalize_number(expected)
