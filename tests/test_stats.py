"""Small-sample statistics of the main job's scores and the experiments' reports, checked against values worked out
by hand."""
from __future__ import annotations

import math

import pytest

from latentcomm.stats import format_interval, paired_sign_test, wilson_interval


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    low, high = wilson_interval(8, 12)
    assert low == pytest.approx(0.3906, abs=1e-4) and high == pytest.approx(0.8619, abs=1e-4)
    assert wilson_interval(0, 12)[0] == 0.0 and 0 < wilson_interval(0, 12)[1] < 0.3
    assert wilson_interval(12, 12)[1] == pytest.approx(1.0) and wilson_interval(12, 12)[0] > 0.7
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(13, 12)


def test_paired_sign_test_counts_discordant_questions_only():
    a = [True, True, False, True, False, True]
    b = [True, False, True, False, False, True]
    assert paired_sign_test(a, b) == {"a_only": 2, "b_only": 1, "p": 1.0}
    lopsided = paired_sign_test([True] * 8, [False] * 8)
    assert lopsided["a_only"] == 8 and lopsided["p"] == pytest.approx(2 / 2 ** 8)
    assert math.isclose(paired_sign_test([True, False], [True, False])["p"], 1.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_sign_test([True], [True, False])


def test_small_sample_statistics():
    lo, hi = wilson_interval(8, 80)
    assert 0.05 < lo < 0.1 < hi < 0.19  # 8 of 80: the textbook Wilson interval 0.052-0.185
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    same = paired_sign_test([True, False, True], [True, False, True])
    assert same == {"a_only": 0, "b_only": 0, "p": 1.0}
    apart = paired_sign_test([True] * 10, [False] * 10)  # 10 discordant questions, all one way: p = 2 / 2**10
    assert apart["a_only"] == 10 and abs(apart["p"] - 2 / 1024) < 1e-12
    with pytest.raises(ValueError):
        paired_sign_test([True], [True, False])


def test_intervals_are_written_with_two_decimals():
    assert format_interval(wilson_interval(8, 80)) == "0.05–0.19"
    assert format_interval((0.0, 0.4937), sep="-") == "0.00-0.49"
