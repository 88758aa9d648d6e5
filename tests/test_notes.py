"""The training notes: deterministic, answerable from their own text, and apart from the fact-relay task."""
from __future__ import annotations

import re

import pytest

from latentcomm.tasks import facts
from latentcomm.training.notes import TEMPLATES, make_note, make_notes, word_pool


def test_notes_are_deterministic_and_answerable() -> None:
    notes = make_notes(300, seed=3)
    assert notes == make_notes(300, seed=3)
    assert notes[10:20] == make_notes(10, seed=3, offset=10)
    assert make_note(5, seed=3) != make_note(5, seed=4)
    for note in notes:
        assert note.answer in note.text, note
        assert note.question.endswith("?") and note.answer_sentence.endswith(".")
    assert len({n.text for n in notes}) == len(notes)
    assert len({n.question.split()[0] for n in notes}) >= 4


def test_every_template_and_slot_is_drawn() -> None:
    notes = make_notes(600)
    for template, questions in TEMPLATES:
        assert set(re.findall(r"\{(\w+)\}", template)) == set(questions)
    asked = {q for n in notes for _, questions in TEMPLATES for q in questions if n.answer}
    assert asked >= {"person", "place", "date", "number", "word", "title"}


def test_pools_are_large_and_hold_nothing_of_the_fact_task() -> None:
    pool = word_pool()
    assert len(pool) > 2000 and pool == tuple(sorted(pool))
    task_words = {w.lower() for w in (*facts.FIRST_NAMES, *facts.LAST_NAMES)}
    task_words |= {v.lower() for values in facts.ATTRIBUTES.values() for v in values}
    assert not task_words & set(pool)
    texts = " ".join(n.text.lower() for n in make_notes(2000))
    assert not {w for w in task_words if re.search(rf"\b{w}\b", texts)}


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        make_notes(0)
    with pytest.raises(ValueError):
        make_notes(3, offset=-1)
