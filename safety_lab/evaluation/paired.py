"""Paired comparisons of a version with its reference on the same items (matched by item key).

Binary outcomes: the difference of the two proportions, Newcombe's hybrid-score interval for paired data
(Newcombe 1998, Stat. Med. 17:2635, method 10: the Wilson intervals of both proportions combined with the observed
correlation phi) and the exact McNemar p-value (two-sided binomial test of the discordant pairs against 1/2; 1.0
when none are discordant). Calibration errors are compared in ``safety_lab.evaluation.calibration``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safety_lab.errors import check
from safety_lab.evaluation.metrics import as_bools, wilson_interval


@dataclass(frozen=True)
class PairedComparison:
    """A version against its reference on the same n items: delta = version - reference."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # NaN where no exact test applies (ECE)
    n: int

    def as_metrics(self, name: str, suffix: str = "_delta") -> dict[str, float]:
        """``<name><suffix>``, ``..._ci_low``, ``..._ci_high``, ``..._p`` (NaN p-values are left out)."""
        out = {
            f"{name}{suffix}": self.delta,
            f"{name}{suffix}_ci_low": self.ci_low,
            f"{name}{suffix}_ci_high": self.ci_high,
        }
        if not np.isnan(self.p_value):
            out[f"{name}{suffix}_p"] = self.p_value
        return out


def _paired_flags(version: Sequence[Any], reference: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    v, r = as_bools(version, "version"), as_bools(reference, "reference")
    check(len(v) == len(r), "reference", f"has {len(r)} items but version has {len(v)}; paired outcomes must pair up")
    check(len(v) > 0, "version", "no paired items to compare")
    return v, r


def mcnemar_exact(version: Sequence[bool], reference: Sequence[bool]) -> float:
    """Exact McNemar p-value (two-sided) for paired binary outcomes.

    Only the discordant pairs carry information: b = version 1 / reference 0, c = version 0 / reference 1.
    Under no difference b ~ Binomial(b + c, 1/2); p = scipy's two-sided binomial test, 1.0 when b + c = 0.
    """
    from scipy.stats import binomtest

    v, r = _paired_flags(version, reference)
    b, c = int((v & ~r).sum()), int((~v & r).sum())
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def paired_proportion_difference(
    version: Sequence[bool], reference: Sequence[bool], *, confidence: float = 0.95
) -> PairedComparison:
    """Difference of two paired proportions with Newcombe's interval (method 10) and the exact McNemar p.

    With a = both 1, b = version only, c = reference only, d = neither (n items): p1 = (a + b) / n,
    p2 = (a + c) / n, delta = p1 - p2 = (b - c) / n; [l_i, u_i] the Wilson intervals of p_i and phi the
    correlation of the pair, its numerator ad - bc lowered by n/2 when positive (Newcombe's correction):
    low = delta - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2), high symmetric.
    """
    v, r = _paired_flags(version, reference)
    n = len(v)
    a, b = int((v & r).sum()), int((v & ~r).sum())
    c, d = int((~v & r).sum()), int((~v & ~r).sum())
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence=confidence)
    l2, u2 = wilson_interval(a + c, n, confidence=confidence)
    margins = float(a + b) * (c + d) * (a + c) * (b + d)
    numerator = a * d - b * c
    numerator = max(numerator - n / 2, 0.0) if numerator > 0 else numerator
    phi = numerator / np.sqrt(margins) if margins > 0 else 0.0
    delta = p1 - p2
    low = delta - np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = delta + np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return PairedComparison(
        delta=float(delta),
        ci_low=float(max(low, -1.0)),
        ci_high=float(min(high, 1.0)),
        p_value=mcnemar_exact(v, r),
        n=n,
    )


__all__ = ["PairedComparison", "mcnemar_exact", "paired_proportion_difference"]
