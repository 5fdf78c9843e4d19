"""safety_lab.policy.power: the pass probability of an upper-bound rule and the items it needs."""

import pytest
from scipy.stats import binom

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation.metrics import wilson_interval
from safety_lab.policy.power import items_needed, pass_probability, passing_count


@pytest.mark.parametrize("n", [1, 10, 40, 50, 74, 112, 151, 254, 400])
@pytest.mark.parametrize("limit", [0.10, 0.20])
def test_the_passing_count_is_where_the_wilson_bound_crosses_the_limit(n, limit):
    k = passing_count(n, limit)
    if k >= 0:
        assert wilson_interval(k, n)[1] <= limit
    if k < n:
        assert wilson_interval(k + 1, n)[1] > limit
    # a one-sided 90% bound (the two-sided 80% interval's high end) lets more through
    k90 = passing_count(n, limit, confidence=0.9)
    assert k90 >= k and (k90 < 0 or wilson_interval(k90, n, confidence=0.8)[1] <= limit)


def test_pass_probability_sums_the_binomial_over_passing_counts():
    # n = 74, limit 0.20: counts 0..8 pass (Wilson(8, 74) high end 0.199, Wilson(9, 74) 0.215)
    expected = sum(binom.pmf(k, 74, 0.10) for k in range(9))
    assert pass_probability(74, 0.20, 0.10) == pytest.approx(expected)
    assert pass_probability(1, 0.10, 0.0) == 0.0  # one item can never bound a rate below 0.10
    # at a true rate equal to the limit a pass is rare (about 1 - confidence), not the ~50% of a point estimate
    assert pass_probability(74, 0.20, 0.20) < 0.03 and pass_probability(151, 0.10, 0.10) < 0.03


@pytest.mark.parametrize("limit,rate,n", [(0.20, 0.05, 40), (0.20, 0.10, 112), (0.10, 0.03, 113), (0.10, 0.05, 254)])
def test_items_needed_for_80_percent_power(limit, rate, n):
    assert items_needed(limit, rate) == n
    assert all(pass_probability(m, limit, rate) >= 0.8 for m in range(n, n + 200))
    assert pass_probability(n - 1, limit, rate) < 0.8


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(SafetyLabError, match="rate"):
        items_needed(0.10, 0.10)  # a model at the limit cannot be shown within it
    with pytest.raises(SafetyLabError, match="confidence"):
        passing_count(10, 0.1, confidence=0.4)
    with pytest.raises(SafetyLabError, match="max_n"):
        items_needed(0.10, 0.09, max_n=100)
