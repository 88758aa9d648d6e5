"""Every answering method on one shard of test tasks, timed: one Ray task of ``latentcomm experiment chain``.

| method | what runs | forward passes |
|---|---|---|
| direct | ``respond(question + DIRECT_PROMPT)`` | one per generated token |
| text CoT | ``respond(question + COT_PROMPT)``: steps written as text, then "Answer: ..." | one per generated token |
| ceiling: gold steps as text | the question with the task's gold steps, then DIRECT_PROMPT | one per generated token |
| latent chain ×k → answer | k chain steps (``chaining.run_chain``), ``respond(answer_input(q, z_k))`` | k + answer tokens |
| latent chain ×k → decode | the same k steps, ``decode(z_k)``: the last step read back as text | k + decoded tokens |

A generation's forward passes are its tokens including the end token (the prefill makes the first): the output
re-tokenised plus one, capped at the token budget. All generations are greedy with ``respond``'s repetition
settings. Wall time is each method's own share of the shard (the chain's steps are counted in every k they
feed), on the same process and batches.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from latentcomm.model.backbone import load_backbone
from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.experiments.chain_tasks import ChainTask, extract_answer, is_correct, step_result
from latentcomm.experiments.chaining import ANSWER_PROMPT, answer_input, chain_steps

DIRECT_PROMPT = ANSWER_PROMPT
COT_PROMPT = "\nThink step by step: write one short step per line, then a last line 'Answer: ...'."
GOLD_PROMPT = "\nWorked steps:\n"
CEILING = "ceiling: gold steps as text"


def chain_method(k: int | str, reader: str) -> str:
    """The name of a latent-chain row: ``k`` steps (or "hops", as many as each task needs), read by ``reader``."""
    return f"latent chain ×{k} → {reader}"


@dataclass(frozen=True)
class EvalSettings:
    """What a shard runs: chains of 1..``max_steps`` steps and the token budgets."""

    max_steps: int
    batch_size: int
    max_new_tokens: int
    """Budget of direct answers, chain answers and decodes."""
    cot_tokens: int
    """Budget of the text chain of thought (steps and answer)."""

    @property
    def generation(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "repetition_penalty": 1.1, "no_repeat_ngram_size": 4,
                "show_progress_bar": False}


def generation_passes(model: GenerativeEmbedder, texts: Sequence[str], budget: int) -> list[int]:
    """Forward passes of each generation: its tokens plus the end token, at most ``budget``."""
    ids = model.backbone.tokenizer(list(texts), add_special_tokens=False).input_ids
    return [min(len(row) + 1, budget) for row in ids]


def timed(fn: Callable[[], list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = fn()
    return texts, time.perf_counter() - start


def evaluate_shard(backbone: str, head: str, tasks: list[ChainTask], settings: EvalSettings,
                   home: str | None = None) -> dict[str, Any]:
    """Records (task, method, correct, passes, output) of every method on ``tasks`` and each method's seconds."""
    if home:
        os.environ["LATENTCOMM_HOME"] = home
    model = GenerativeEmbedder.from_pretrained(head, backbone=load_backbone(backbone))
    gen = settings.generation
    questions = [t.question for t in tasks]
    records: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}

    def add(method: str, texts: list[str], passes: list[int], elapsed: float, steps: int | None = None) -> None:
        seconds[method] = elapsed
        for task, text, n in zip(tasks, texts, passes):
            record = {"task": task.id, "family": task.family, "hops": task.hops, "method": method, "steps": steps,
                      "correct": is_correct(text, task), "found": extract_answer(text, task), "passes": n,
                      "output": text}
            if steps is not None:  # does the chain's k-th latent hold what gold step k arrives at?
                record["step_correct"] = is_correct(text, task, step_result(task, steps))
            records.append(record)

    def respond(items: list, budget: int) -> tuple[list[str], float, list[int]]:
        texts, elapsed = timed(lambda: model.respond(items, max_new_tokens=budget, **gen))
        return texts, elapsed, generation_passes(model, texts, budget)

    for method, items, budget in (
            ("direct", [q + DIRECT_PROMPT for q in questions], settings.max_new_tokens),
            ("text CoT", [q + COT_PROMPT for q in questions], settings.cot_tokens),
            (CEILING, [t.question + GOLD_PROMPT + "\n".join(t.steps) + DIRECT_PROMPT for t in tasks],
             settings.max_new_tokens)):
        texts, elapsed, passes = respond(items, budget)
        add(method, texts, passes, elapsed)

    chain, chain_seconds = chain_steps(model, questions, settings.max_steps, batch_size=settings.batch_size), 0.0
    for k in range(1, settings.max_steps + 1):
        start = time.perf_counter()
        latent = next(chain)
        chain_seconds += time.perf_counter() - start
        texts, elapsed, passes = respond([answer_input(q, latent[i]) for i, q in enumerate(questions)],
                                         settings.max_new_tokens)
        add(chain_method(k, "answer"), texts, [k + n for n in passes], chain_seconds + elapsed, steps=k)
        texts, elapsed = timed(lambda: model.decode(latent, max_new_tokens=settings.max_new_tokens, **gen))
        add(chain_method(k, "decode"), texts, [k + n for n in generation_passes(model, texts, settings.max_new_tokens)],
            chain_seconds + elapsed, steps=k)
    return {"records": records, "seconds": seconds, "questions": len(tasks)}
