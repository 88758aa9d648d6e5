"""Small-sample statistics for the reports: how far an accuracy on a few dozen questions can be trusted."""
from __future__ import annotations

import math
from typing import Sequence


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for ``z`` = 1.96) of an accuracy ``correct / n``."""
    if not 0 <= correct <= n or n < 1:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got {correct} of {n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_interval(bounds: Sequence[float]) -> str:
    """An interval as the reports write it: ``0.05–0.19``."""
    low, high = bounds
    return f"{low:.2f}–{high:.2f}"


def paired_sign_test(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Two methods on the same questions: the questions only ``a`` / only ``b`` gets right and the exact two-sided
    McNemar p-value (a binomial test on those discordant questions; 1.0 when there are none)."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same questions, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n if n else 0.5
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail)}
