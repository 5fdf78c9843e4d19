"""Smooth calibration error: a kernel-smoothed, debiased ECE with bootstrap intervals, alone and paired.

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

import numpy as np

from safety_lab.errors import check
from safety_lab.evaluation.metrics import PairedComparison, _calibration_inputs

BANDWIDTH = 0.1  # kernel standard deviation on the confidence axis
GRID_POINTS = 101  # evaluation points for the integral over [0, 1] (trapezoid rule)


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
    return _calibration_inputs(correct, confidence, 1)


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


__all__ = ["BANDWIDTH", "paired_smooth_ece_difference", "smooth_ece", "smooth_ece_interval"]
