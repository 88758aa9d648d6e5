"""Small-sample statistics for scores over a few dozen questions: how sure a share is, and whether two modes
answering the same questions differ.

``wilson_interval`` bounds a share of successes (it stays inside [0, 1] and is not degenerate at 0 or n
successes, unlike the normal approximation); ``format_interval`` writes one. ``paired_sign_test`` compares two
modes on the same questions by their discordant pairs only (McNemar's exact test: the questions one mode gets
right and the other wrong).
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``n`` (95% for z = 1.96)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_interval(bounds: Sequence[float], sep: str = "–") -> str:
    """An interval with two decimals, e.g. ``0.05–0.19``."""
    low, high = bounds
    return f"{low:.2f}{sep}{high:.2f}"


def paired_sign_test(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Questions only ``a`` gets right (``a_only``), only ``b`` gets right (``b_only``), and the exact two-sided
    p-value that both are right as often (a binomial(a_only + b_only, 1/2) test; 1.0 without discordant pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired results need the same questions, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = a_only + b_only
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2 ** n  # n = 0: tail 1, p 1
    return {"a_only": a_only, "b_only": b_only, "p": min(1.0, 2 * tail)}
