"""Calibration of multiple-choice confidences: binned ECE, Brier score and reliability curve, and the smooth
calibration error (a kernel-smoothed, debiased ECE) with bootstrap intervals, alone and paired.

Binned ECE (15 equal-width bins, logged for comparison with the paper, not gated) is compared with a reference by a
paired percentile bootstrap (``scipy.stats.bootstrap(paired=True)``): items are resampled jointly, so each resample
compares the two models on the same items; seeded. The interval is the bootstrap's own: binned ECE is biased
upward, so the point estimate can fall outside it. The gating calibration measure is the debiased smooth ECE:

Smooth ECE (Błasiok & Nakkiran 2023, "Smooth ECE: principled reliability diagrams via kernel smoothing"; the
``relplot`` package) smooths the residuals ``confidence - correct`` with a Gaussian kernel reflected at 0 and 1
and integrates the absolute smoothed residual over [0, 1]:

    smECE_sigma = integral over t of |S(t)| dt,    S(t) = (1/n) sum_i K_sigma(t, f_i) (f_i - y_i).

A kernel instead of bins makes the estimate continuous in the confidences, but ``|S(t)|`` is still biased
upward by the sampling noise of ``S(t)``: a calibrated model scored on 200 items reads about 0.04 at
``sigma = 0.1``. This module removes that bias point by point: ``S(t)^2 - D(t)``, with
``D(t) = (1/n^2) sum_i K_sigma(t, f_i)^2 (f_i - y_i)^2``, is the U-statistic (the i != j terms of ``S(t)^2``)
and estimates the squared population residual without the noise term, so

    smooth_ece = integral over t of sqrt(max(S(t)^2 - D(t), 0)) dt.

It converges to the population smECE_sigma (zero exactly when the model is calibrated) as n grows, and a
uniform over-confidence of 0.10 has smECE_sigma = 0.10 (the reflected kernel keeps all mass in [0, 1]).
``sigma`` is fixed (``BANDWIDTH``) rather than searched per sample as ``relplot.smECE`` does, so the paired
bootstrap compares one functional on every resample; ``tests/evaluation/test_calibration.py`` is the
simulation that chose it.

Intervals: a basic (reverse-percentile) bootstrap, ``[2 theta - q_hi, 2 theta - q_lo]`` (Davison & Hinkley
1997, eq. 5.6), which reflects the resamples' remaining bias back onto the estimate; paired comparisons resample
items jointly, so each resample scores the version and its reference on the same items. Seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from safety_lab.errors import check
from safety_lab.evaluation.metrics import as_bools, as_floats
from safety_lab.evaluation.paired import PairedComparison

BANDWIDTH = 0.1  # kernel standard deviation on the confidence axis
GRID_POINTS = 101  # evaluation points for the integral over [0, 1] (trapezoid rule)


# --------------------------------------------------------------------------- binned
class ReliabilityBin(NamedTuple):
    bin_low: float
    bin_high: float
    count: int
    accuracy: float
    mean_confidence: float


def calibration_inputs(correct, confidence, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    check(
        isinstance(n_bins, (int, np.integer)) and not isinstance(n_bins, bool) and n_bins >= 1,
        "n_bins",
        f"must be a positive integer, got {n_bins!r}",
    )
    ok = as_bools(correct, "correct")
    conf = as_floats(confidence, "confidence")
    check(len(ok) == len(conf), "confidence", f"has {len(conf)} items but correct has {len(ok)}")
    check(len(ok) > 0, "correct", "no items to score")
    check(bool(np.all(np.isfinite(conf))), "confidence", "contains NaN or infinite values")
    check(
        bool(np.all((conf >= 0.0) & (conf <= 1.0))),
        "confidence",
        f"values must lie in [0, 1] (min {conf.min():.4g}, max {conf.max():.4g})",
    )
    return ok, conf


def _bin_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i = [edges[i], edges[i+1]); a confidence of exactly 1.0 goes in the last bin
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    return idx, edges


def reliability_curve(
    correct: Sequence[bool | int], confidence: Sequence[float], *, n_bins: int = 15
) -> list[ReliabilityBin]:
    """Equal-width bins on [0, 1]; one (bin_low, bin_high, count, accuracy, mean_confidence) per non-empty bin."""
    ok, conf = calibration_inputs(correct, confidence, n_bins)
    idx, edges = _bin_index(conf, n_bins)
    out = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        if count:
            out.append(
                ReliabilityBin(
                    float(edges[b]), float(edges[b + 1]), count, float(ok[mask].mean()), float(conf[mask].mean())
                )
            )
    return out


def expected_calibration_error(
    correct: Sequence[bool | int], confidence: Sequence[float], *, n_bins: int = 15
) -> float:
    """ECE = sum over bins of (bin count / N) * |bin accuracy - bin mean confidence|."""
    ok, conf = calibration_inputs(correct, confidence, n_bins)
    return _ece(ok, conf, n_bins)


def _ece(correct: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    """ECE of validated arrays, as sum over bins of |correct in bin - confidence in bin| / N (vectorised: the
    paired bootstrap calls it thousands of times)."""
    idx, _ = _bin_index(conf, n_bins)
    acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins)
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    return float(np.abs(acc - mean_conf).sum() / len(conf))


def brier_score(probs: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Multi-class Brier score: mean over items of sum_k (p_k - onehot_k)^2.

    Rows may have different numbers of options (multiple-choice sets with 3-5 options).
    """
    rows = [(as_floats(row, "probs")) for row in probs]
    labs = list(labels)
    check(len(rows) == len(labs), "labels", f"has {len(labs)} items but probs has {len(rows)}")
    check(len(rows) > 0, "probs", "no items to score")
    total = 0.0
    for i, (p, y) in enumerate(zip(rows, labs)):
        check(len(p) > 0, "probs", f"item {i} has no options")
        check(bool(np.all(np.isfinite(p))), "probs", f"item {i} contains NaN or infinite values")
        check(
            isinstance(y, (int, np.integer)) and not isinstance(y, bool) and 0 <= y < len(p),
            "labels",
            f"item {i} label {y!r} is not an option index in [0, {len(p) - 1}]",
        )
        onehot = np.zeros(len(p))
        onehot[int(y)] = 1.0
        total += float(np.sum((p - onehot) ** 2))
    return total / len(rows)


@dataclass(frozen=True)
class CalibrationResult:
    mc_accuracy: float
    ece: float
    brier: float
    n: int

    def as_metrics(self) -> dict[str, float]:
        return {"mc_accuracy": self.mc_accuracy, "ece": self.ece, "brier": self.brier}


def softmax(logps: np.ndarray) -> np.ndarray:
    """Option probabilities from option log-likelihoods (-inf options get 0)."""
    finite = logps[np.isfinite(logps)]
    m = finite.max()
    e = np.where(np.isfinite(logps), np.exp(logps - m), 0.0)
    return e / e.sum()


def mc_summary(
    option_logprobs: Sequence[Sequence[float]], labels: Sequence[int], *, n_bins: int = 15
) -> CalibrationResult:
    """Multiple-choice accuracy and calibration from each option's log-likelihood.

    Each item's option log-likelihoods are normalised with a softmax; the chosen option is the
    argmax (first on ties) and its normalised probability is the confidence.
    """
    items = [as_floats(row, "option_logprobs") for row in option_logprobs]
    labs = list(labels)
    check(len(items) == len(labs), "labels", f"has {len(labs)} items but option_logprobs has {len(items)}")
    check(len(items) > 0, "option_logprobs", "no items to score")
    probs, correct, confidence = [], [], []
    for i, (lp, y) in enumerate(zip(items, labs)):
        check(len(lp) >= 2, "option_logprobs", f"item {i} has {len(lp)} option(s), need at least 2")
        check(
            not bool(np.any(np.isnan(lp))) and not bool(np.any(lp == np.inf)),
            "option_logprobs",
            f"item {i} contains NaN or +inf",
        )
        check(bool(np.any(np.isfinite(lp))), "option_logprobs", f"item {i} has no finite log-likelihood")
        check(
            isinstance(y, (int, np.integer)) and not isinstance(y, bool) and 0 <= y < len(lp),
            "labels",
            f"item {i} label {y!r} is not an option index in [0, {len(lp) - 1}]",
        )
        p = softmax(lp)
        chosen = int(np.argmax(p))
        probs.append(p)
        correct.append(chosen == int(y))
        confidence.append(float(min(max(p[chosen], 0.0), 1.0)))
    return CalibrationResult(
        mc_accuracy=float(np.mean(correct)),
        ece=expected_calibration_error(correct, confidence, n_bins=n_bins),
        brier=brier_score(probs, labs),
        n=len(items),
    )


def paired_ece_difference(
    version_correct: Sequence[bool],
    version_confidence: Sequence[float],
    reference_correct: Sequence[bool],
    reference_confidence: Sequence[float],
    *,
    n_bins: int = 15,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedComparison:
    """ECE(version) - ECE(reference) with a paired percentile bootstrap interval (items resampled jointly).

    Item i of the version and item i of the reference are the same question; each of the ``n_resamples``
    resamples draws item indices once and recomputes both ECEs on them (``scipy.stats.bootstrap``,
    ``paired=True``, seeded). p_value is NaN: no exact test applies.
    """
    from scipy.stats import bootstrap

    check(0.0 < confidence < 1.0, "confidence", f"must be in (0, 1), got {confidence!r}")
    check(
        isinstance(n_resamples, int) and n_resamples >= 100,
        "n_resamples",
        f"must be an integer >= 100, got {n_resamples!r}",
    )
    vc, vp = calibration_inputs(version_correct, version_confidence, n_bins)
    rc, rp = calibration_inputs(reference_correct, reference_confidence, n_bins)
    check(len(vc) == len(rc), "reference_correct", f"has {len(rc)} items but version has {len(vc)}")

    def statistic(a, b, c, d):
        return _ece(a, b, n_bins) - _ece(c, d, n_bins)

    delta = statistic(vc, vp, rc, rp)
    if len(vc) < 2:
        return PairedComparison(delta=delta, ci_low=-1.0, ci_high=1.0, p_value=float("nan"), n=len(vc))
    res = bootstrap(
        (vc, vp, rc, rp),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(low) or np.isnan(high):  # every resample gave the same value
        low = high = delta
    return PairedComparison(delta=delta, ci_low=low, ci_high=high, p_value=float("nan"), n=len(vc))


# --------------------------------------------------------------------------- smooth


def _kernel(conf: np.ndarray, sigma: float) -> np.ndarray:
    """K[t, i]: the Gaussian density at grid point t around conf[i], reflected at 0 and 1."""
    t = np.linspace(0.0, 1.0, GRID_POINTS)[:, None]
    out = np.zeros((GRID_POINTS, len(conf)))
    for centre in (conf, -conf, 2.0 - conf):
        out += np.exp(-0.5 * ((t - centre[None, :]) / sigma) ** 2)
    return out / (sigma * np.sqrt(2.0 * np.pi))


def _weighted_smooth_ece(kernel: np.ndarray, residual: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Debiased smooth ECE of each row of ``weights`` (item counts of a resample; all ones = the sample)."""
    n = weights.sum(axis=1, keepdims=True)
    s = (weights * residual) @ kernel.T / n
    d = (weights * residual**2) @ (kernel**2).T / n**2
    values = np.sqrt(np.maximum(s**2 - d, 0.0))
    return (values[:, 1:] + values[:, :-1]).sum(axis=1) / (2 * (GRID_POINTS - 1))


def _checked(correct: Sequence, confidence: Sequence) -> tuple[np.ndarray, np.ndarray]:
    return calibration_inputs(correct, confidence, 1)


def smooth_ece(correct: Sequence[bool | int], confidence: Sequence[float], *, bandwidth: float = BANDWIDTH) -> float:
    """Debiased smooth ECE of one model's (correct, confidence) pairs (see the module docstring)."""
    check(0.0 < bandwidth <= 1.0, "bandwidth", f"must be in (0, 1], got {bandwidth!r}")
    ok, conf = _checked(correct, confidence)
    return float(_weighted_smooth_ece(_kernel(conf, bandwidth), conf - ok, np.ones((1, len(ok))))[0])


def _resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Item counts of ``n_resamples`` bootstrap resamples of n items, one row each."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    weights = np.zeros((n_resamples, n))
    np.add.at(weights, (np.arange(n_resamples)[:, None], idx), 1.0)
    return weights


def _basic_interval(estimate: float, replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    q_low, q_high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(2 * estimate - q_high), float(2 * estimate - q_low)


def _check_bootstrap(n_resamples: int, confidence: float, bandwidth: float) -> None:
    check(0.0 < confidence < 1.0, "confidence", f"must be in (0, 1), got {confidence!r}")
    check(0.0 < bandwidth <= 1.0, "bandwidth", f"must be in (0, 1], got {bandwidth!r}")
    check(
        isinstance(n_resamples, int) and n_resamples >= 100,
        "n_resamples",
        f"must be an integer >= 100, got {n_resamples!r}",
    )


def smooth_ece_interval(
    correct: Sequence[bool | int],
    confidence: Sequence[float],
    *,
    bandwidth: float = BANDWIDTH,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(smooth ECE, basic-bootstrap low, high); the bounds are clipped to [0, 1]."""
    _check_bootstrap(n_resamples, level, bandwidth)
    ok, conf = _checked(correct, confidence)
    kernel, residual = _kernel(conf, bandwidth), conf - ok
    estimate = float(_weighted_smooth_ece(kernel, residual, np.ones((1, len(ok))))[0])
    replicates = _weighted_smooth_ece(kernel, residual, _resample_weights(len(ok), n_resamples, seed))
    low, high = _basic_interval(estimate, replicates, level)
    return estimate, max(low, 0.0), min(high, 1.0)


def paired_smooth_ece_difference(
    version_correct: Sequence[bool],
    version_confidence: Sequence[float],
    reference_correct: Sequence[bool],
    reference_confidence: Sequence[float],
    *,
    bandwidth: float = BANDWIDTH,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedComparison:
    """smooth ECE(version) - smooth ECE(reference) on the same items, with a paired basic-bootstrap interval.

    Item i of the version and item i of the reference are the same question; each resample draws item counts
    once and scores both models with them. Returns a ``PairedComparison`` whose p_value is NaN (no exact test).
    """
    _check_bootstrap(n_resamples, confidence, bandwidth)
    vc, vp = _checked(version_correct, version_confidence)
    rc, rp = _checked(reference_correct, reference_confidence)
    check(len(vc) == len(rc), "reference_correct", f"has {len(rc)} items but version has {len(vc)}")
    weights = np.vstack([np.ones((1, len(vc))), _resample_weights(len(vc), n_resamples, seed)])
    version = _weighted_smooth_ece(_kernel(vp, bandwidth), vp - vc, weights)
    reference = _weighted_smooth_ece(_kernel(rp, bandwidth), rp - rc, weights)
    deltas = version - reference
    delta = float(deltas[0])
    low, high = _basic_interval(delta, deltas[1:], confidence)
    return PairedComparison(delta=delta, ci_low=max(low, -1.0), ci_high=min(high, 1.0), p_value=float("nan"), n=len(vc))


__all__ = [
    "BANDWIDTH",
    "CalibrationResult",
    "ReliabilityBin",
    "brier_score",
    "calibration_inputs",
    "expected_calibration_error",
    "mc_summary",
    "paired_ece_difference",
    "paired_smooth_ece_difference",
    "reliability_curve",
    "smooth_ece",
    "smooth_ece_interval",
]
