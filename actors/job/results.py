"""What a run of the main job found, as values: each answer, each mode's summary, the ratios to text, the floor.

``RunResult.to_dict`` is ``results.json``; its keys are those of every run written so far (``results/main-job/``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from latentcomm.actors.job.config import JobConfig


@dataclass(frozen=True)
class Answer:
    """One question's journey through a chain in one mode (or the floor: the last agent with no message)."""

    question_id: str
    mode: str
    agents: int
    final: str
    correct: bool
    seconds: float
    answer_s: float
    """The last agent's own answer (respond on its parts)."""
    agreement: float | None = None
    """Teacher cosine with text mode's final answer to the same question (set by scoring)."""


@dataclass(frozen=True)
class HopSummary:
    """Mean times and size of the hops between two agents of a chain."""

    latency_s: float
    produce_s: float
    handle_s: float
    bytes: float


@dataclass(frozen=True)
class ModeSummary:
    """Quality, total, per-hop and answer time, bytes per message and generations of one mode at one K."""

    mode: str
    agents: int
    questions: int
    task_score: float
    task_score_ci95: tuple[float, float]
    agreement_cosine: float | None
    agreement_r_at_1: float | None
    wall_s: float
    mean_question_s: float
    hop_s: float
    answer_s: float
    bytes_per_message: float
    generations: int
    hops: dict[str, HopSummary]
    """By ``sender->receiver``."""
    sender_s: float
    """Mean time a sender takes to make one message (refinement included; forwarded messages not counted)."""
    messages_per_question: float
    """Messages sent along the chain per question (forwarding relays send more than one per hop)."""


@dataclass(frozen=True)
class FloorSummary:
    """The last agent asked without any message."""

    task_score: float
    task_score_ci95: tuple[float, float]
    agreement_cosine: float | None
    agreement_r_at_1: float | None


@dataclass(frozen=True)
class Ratios:
    """A mode / text for time, bytes and task score (time and bytes below 1: cheaper than text; None: text's is 0)."""

    wall_s: float | None
    hop_s: float | None
    answer_s: float | None
    bytes_per_message: float | None
    task_score: float | None


@dataclass(frozen=True)
class ChainResult:
    """Every mode at one chain length, the floor, and each compared mode against text."""

    agents: int
    summaries: dict[str, ModeSummary]
    floor: FloorSummary
    over_text: dict[str, Ratios]
    against_text: dict[str, dict[str, float | int]]
    """``stats.paired_sign_test`` of the mode (a) and text (b) on the same questions."""


@dataclass(frozen=True)
class RunResult:
    """A whole ``latentcomm run``: its config, what it ran on, one ``ChainResult`` per K and every answer."""

    config: JobConfig
    task: str
    metric: str
    replicas: list[dict[str, Any]]
    head: str
    pool: dict[str, Any]
    host: dict[str, Any]
    runs: list[ChainResult]
    answers: list[Answer]
    """The floor's (scored against the last chain length's text answers), then each K's, mode by mode."""

    def to_dict(self) -> dict[str, Any]:
        """The contents of ``results.json``."""
        return asdict(self)
