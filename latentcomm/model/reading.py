"""How a receiver reads a latent inside its own prompt: the reading instructions of training and evaluation.

A reading instruction is text before and after the latent inside the user turn of the chat template, e.g.
``["Here is a message from a colleague:\\n", latent, "\\nWhat does the message say?"]``. Training with
``in_context_share`` > 0 draws one of ``TRAINING_INSTRUCTIONS`` per sample (the bare user turn — the latent
alone — among them) and reconstructs the sender's response as the assistant's answer. ``EVALUATION_INSTRUCTION``
is never trained on: the fidelity table reads latents with it, so a head cannot score by memorising a phrasing.
"""
from __future__ import annotations

import hashlib
from typing import Sequence, TypeVar

T = TypeVar("T")

Instruction = tuple[str, str]
"""(text before the latent, text after it) inside the user turn."""

TRAINING_INSTRUCTIONS: tuple[Instruction, ...] = (
    ("", ""),
    ("Read this message and write out what it says:\n", ""),
    ("A teammate sent you this note:\n", "\nRepeat its content in full."),
    ("Message received:\n", "\nWhat is the message?"),
    ("", "\nRestate the message above."),
    ("You got the following reply from another assistant.\n", "\nWrite that reply out."),
    ("Here is an answer written by someone else:\n", "\nReproduce it."),
    ("Below is a compressed message.\n", "\nDecompress it into text."),
)
EVALUATION_INSTRUCTION: Instruction = ("Here is a message from a colleague:\n", "\nWhat does the message say?")


def draw_instruction(key: str, share: float, instructions: Sequence[T] = TRAINING_INSTRUCTIONS) -> T | None:
    """The reading instruction of the sample named ``key``, or None (the bare prefix) for a share ``1 - share``.

    Deterministic in ``key`` (e.g. ``"<seed>:<epoch>:<query id>"``), so a resumed run draws the same ones; any
    other per-sample choice (``training.grounding``'s templates) draws the same way under its own key.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"in-context share must be in [0, 1], got {share}")
    digest = hashlib.sha256(key.encode()).digest()
    if int.from_bytes(digest[:8], "little") / 2**64 >= share:
        return None
    return instructions[int.from_bytes(digest[8:16], "little") % len(instructions)]
