"""Power of the policy's upper-bound rules: how many items an evaluation needs for a good model to pass.

An absolute rule passes a lower-is-better rate when the Wilson upper bound at the policy's one-sided level is at
most the limit L. The Wilson interval is the set of rates that the score test does not reject, so its upper bound
is at most L exactly when the observed share k/n is at most L - z sqrt(L (1 - L) / n) (z the one-sided normal
quantile). ``passing_count`` uses that identity to find the largest passing count without a search, and
``tests/policy/test_power.py`` checks it against ``safety_lab.evaluation.metrics.wilson_interval``. With
K ~ Binomial(n, p) for a model whose true rate is p, the probability of passing is P(K <= that count).
"""

from __future__ import annotations

import math

from safety_lab.errors import check


def _z(confidence: float) -> float:
    from scipy.stats import norm

    check(0.5 < confidence < 1.0, "confidence", f"must be a one-sided level in (0.5, 1), got {confidence!r}")
    return float(norm.ppf(confidence))


def passing_count(n: int, limit: float, *, confidence: float = 0.975) -> int:
    """The largest count k whose Wilson upper bound (one-sided `confidence`) on k/n is <= `limit`; -1 if none."""
    check(int(n) == n and n >= 1, "n", f"must be a positive integer, got {n!r}")
    check(0.0 < limit < 1.0, "limit", f"must be in (0, 1), got {limit!r}")
    return _count(int(n), limit, _z(confidence))


def _count(n: int, limit: float, z: float) -> int:
    edge = n * limit - z * math.sqrt(n * limit * (1.0 - limit))
    return min(math.floor(edge + 1e-9), n) if edge >= -1e-9 else -1  # 1e-9: a bound equal to the limit passes


def pass_probability(n: int, limit: float, rate: float, *, confidence: float = 0.975) -> float:
    """P(Wilson upper bound <= limit) for n items of a model whose true rate is `rate`."""
    from scipy.stats import binom

    check(0.0 <= rate <= 1.0, "rate", f"must be in [0, 1], got {rate!r}")
    k = passing_count(n, limit, confidence=confidence)
    return 0.0 if k < 0 else float(binom.cdf(k, n, rate))


def items_needed(
    limit: float, rate: float, *, power: float = 0.8, confidence: float = 0.975, max_n: int = 20_000
) -> int:
    """The smallest n from which the pass probability stays at or above `power` (checked up to `max_n`).

    The probability saw-tooths in n (the passing count moves in whole steps), so the first n that reaches `power`
    may be followed by ones that do not; this is the n after which none falls below it."""
    from scipy.stats import binom

    check(0.0 < power < 1.0, "power", f"must be in (0, 1), got {power!r}")
    check(0.0 <= rate < limit, "rate", f"must be in [0, limit={limit}), got {rate!r}")
    check(0.0 < limit < 1.0, "limit", f"must be in (0, 1), got {limit!r}")
    z = _z(confidence)
    ns = range(1, max_n + 1)
    ks = [_count(n, limit, z) for n in ns]
    probs = binom.cdf(ks, list(ns), rate)  # a count of -1 has probability 0
    below = [n for n, p in zip(ns, probs) if p < power]
    check(not below or below[-1] < max_n, "max_n", f"power {power} is not reached by n = {max_n}")
    return below[-1] + 1 if below else 1


__all__ = ["items_needed", "pass_probability", "passing_count"]
