"""The latent chain: step k's latent goes back in beside the question, fresh compression tokens make step k+1's.

    z_1 = compress([question, STEP_PROMPT])
    z_k = compress([question, z_{k-1}, STEP_PROMPT])            one forward pass per step, no generation
    answer = respond([question, z_K, ANSWER_PROMPT])  or  decode(z_K)

Training (``chain_train``) and evaluation (``chain_eval``) build their inputs with these functions only.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from latentcomm.model.latent import Latent
from latentcomm.model.embedder import GenerativeEmbedder, Part

STEP_PROMPT = "\nNext step:"
ANSWER_PROMPT = "\nReply with the answer only."


def step_input(question: str, previous: Latent | None) -> list[Part]:
    """The input of one chain step: the question, the previous step's latent row (none for step 1), the prompt."""
    return [question, STEP_PROMPT] if previous is None else [question, "\n", previous, STEP_PROMPT]


def answer_input(question: str, latent: Latent) -> list[Part]:
    """The input that answers from a chain's last latent row."""
    return [question, "\n", latent, ANSWER_PROMPT]


def chain_steps(model: GenerativeEmbedder, questions: Sequence[str], steps: int, *, batch_size: int = 16
                ) -> Iterator[Latent]:
    """The latents of steps 1..``steps`` for every question, one ``Latent`` (N, n, H) per step, as they are made."""
    previous: Latent | None = None
    for _ in range(steps):
        items = [step_input(q, None if previous is None else previous[i]) for i, q in enumerate(questions)]
        previous = model.compress(items, batch_size=batch_size, show_progress_bar=False)
        yield previous
