"""Scoring the main job: task score and its interval, agreement with text, hop times, ratios and paired tests.

Pure functions: each returns new values (``results``) and changes nothing it is given.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from latentcomm.actors.job.config import JobConfig
from latentcomm.actors.job.modes import BASELINE
from latentcomm.actors.job.results import (Answer, ChainResult, FloorSummary, HopSummary, ModeSummary, Ratios,
                                           RunResult)
from latentcomm.actors.job.run import JobRun, ModeRun, agent_names
from latentcomm.actors.agent import FORWARDED_KEY
from latentcomm.actors.trace import Hop, hop_stats
from latentcomm.model.teachers import Teacher, unit_rows
from latentcomm.stats import paired_sign_test, wilson_interval


@dataclass(frozen=True)
class Agreement:
    """How close a group's final answers are to text mode's answers to the same questions."""

    cosine: float
    """Mean teacher cosine with the same question's text answer."""
    r_at_1: float
    """The share whose nearest text answer (among all questions') is the same question's."""
    per_answer: tuple[float, ...]
    """Each answer's cosine, in order."""


def agreements(answers: Mapping[str, Sequence[Answer]], teacher: Teacher | None) -> dict[str, Agreement | None]:
    """The ``Agreement`` of each group (a mode, or the floor) with the text answers (``answers[BASELINE]``);
    all None without a teacher."""
    if teacher is None:
        return {name: None for name in answers}
    reference = unit_rows(teacher.embed([a.final for a in answers[BASELINE]]))
    out = {}
    for name, rows in answers.items():
        sims = unit_rows(teacher.embed([a.final for a in rows])) @ reference.T
        cosines = np.diag(sims)
        out[name] = Agreement(float(np.mean(cosines)), float(np.mean(np.argmax(sims, axis=1) == np.arange(len(rows)))),
                              tuple(float(c) for c in cosines))
    return out


def with_agreement(answers: Sequence[Answer], agreement: Agreement | None) -> list[Answer]:
    """Copies of ``answers`` carrying their cosine with text (unchanged copies without a teacher)."""
    if agreement is None:
        return list(answers)
    return [dataclasses.replace(a, agreement=c) for a, c in zip(answers, agreement.per_answer, strict=True)]


def task_score(answers: Sequence[Answer]) -> float:
    return statistics.fmean(a.correct for a in answers)


def score_interval(answers: Sequence[Answer]) -> tuple[float, float]:
    """The 95% Wilson interval of the share of correct answers."""
    return wilson_interval(sum(a.correct for a in answers), len(answers))


def against_text(answers: Sequence[Answer], text: Sequence[Answer]) -> dict[str, float | int]:
    """The questions only this mode answers right (``a_only``), only text does (``b_only``), and the exact
    two-sided p-value that both score alike (``stats.paired_sign_test``)."""
    return paired_sign_test([a.correct for a in answers], [a.correct for a in text])


def summarize(run: ModeRun, hops: Sequence[Hop], agreement: Agreement | None) -> ModeSummary:
    """One mode at one K from its answers and its hops in the trace."""
    mine = [h for h in hops if h.metadata.get("mode") == run.mode and h.metadata.get("agents") == run.agents]
    made = [h for h in mine if FORWARDED_KEY not in h.metadata]
    names = agent_names(run.agents)
    per_hop = {}
    for sender, receiver in zip(names, names[1:]):
        stats = hop_stats([h for h in made if (h.sender, h.receiver) == (sender, receiver)])
        per_hop[f"{sender}->{receiver}"] = HopSummary(stats.mean_latency_s, stats.mean_produce_s,
                                                      stats.mean_handle_s, stats.mean_bytes)
    every, sent = hop_stats(mine), hop_stats(made)
    return ModeSummary(
        mode=run.mode, agents=run.agents, questions=len(run.answers), task_score=task_score(run.answers),
        task_score_ci95=score_interval(run.answers), agreement_cosine=agreement.cosine if agreement else None,
        agreement_r_at_1=agreement.r_at_1 if agreement else None, wall_s=run.wall_s,
        mean_question_s=statistics.fmean(a.seconds for a in run.answers), hop_s=sent.mean_latency_s,
        answer_s=statistics.fmean(a.answer_s for a in run.answers), bytes_per_message=every.mean_bytes,
        generations=run.generations, hops=per_hop, sender_s=sent.mean_produce_s,
        messages_per_question=every.count / len(run.answers))


def summarize_floor(floor: Sequence[Answer], agreement: Agreement | None) -> FloorSummary:
    return FloorSummary(task_score(floor), score_interval(floor), agreement.cosine if agreement else None,
                        agreement.r_at_1 if agreement else None)


def ratios(mode: ModeSummary, text: ModeSummary) -> Ratios:
    """``mode`` / text for time, bytes and task score."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    return Ratios(*(ratio(getattr(mode, key), getattr(text, key)) for key in
                    ("wall_s", "hop_s", "answer_s", "bytes_per_message", "task_score")))


def score_chain(k: int, runs: Mapping[str, ModeRun], floor: Sequence[Answer], hops: Sequence[Hop],
                teacher: Teacher | None) -> tuple[ChainResult, dict[str, list[Answer]]]:
    """The ``ChainResult`` of the chain of ``k`` agents, and its answers (by mode, and the floor's) with their
    agreement."""
    answers = {name: run.answers for name, run in runs.items()} | {"floor": floor}
    agree = agreements(answers, teacher)
    summaries = {name: summarize(run, hops, agree[name]) for name, run in runs.items()}
    compared = [name for name in runs if name != BASELINE]
    text = runs[BASELINE].answers
    result = ChainResult(k, summaries, summarize_floor(floor, agree["floor"]),
                         {m: ratios(summaries[m], summaries[BASELINE]) for m in compared},
                         {m: against_text(runs[m].answers, text) for m in compared})
    return result, {name: with_agreement(rows, agree[name]) for name, rows in answers.items()}


def score_job(job: JobRun, config: JobConfig, teacher: Teacher | None) -> RunResult:
    """Every chain length of ``job`` scored; the floor's answers carry their agreement with the last K's text."""
    runs, scored, floor = [], [], job.floor
    hops = job.trace.hops
    for k, chain in job.chains.items():
        result, answers = score_chain(k, chain, job.floor, hops, teacher)
        runs.append(result)
        floor = answers.pop("floor")
        scored += [a for rows in answers.values() for a in rows]
    return RunResult(config, job.task.name, job.task.metric, job.replicas, job.head, job.pool, job.host, runs,
                     [*floor, *scored])
