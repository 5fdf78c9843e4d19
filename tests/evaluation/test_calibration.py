"""Smooth ECE: the simulation that chose the estimator, and its hand-checked properties."""

from __future__ import annotations

import numpy as np
import pytest

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation import calibration as C

LIMIT = 0.10  # the policy's smooth_ece non_inferior limit: pass only when the paired upper bound is below it
REPS = 200
RESAMPLES = 400


def _mc_items() -> int:
    from safety_lab.evaluation.suites import load_mc

    return len(load_mc("builtin"))


def _simulate(n: int, shift: float, seed: int) -> dict[str, np.ndarray]:
    """REPS paired evaluations of n items: a calibrated reference and a version whose stated confidence is
    ``shift`` above its true accuracy; the version answers 80% of items as the reference did."""
    rng = np.random.default_rng(seed)
    out = {"reference": [], "low": [], "high": [], "delta": []}
    for _ in range(REPS):
        p = rng.uniform(0.3, 0.85, n)  # true probability of a right answer; the reference states it
        ref = rng.random(n) < p
        ver = np.where(rng.random(n) < 0.8, ref, rng.random(n) < p)
        result = C.paired_smooth_ece_difference(
            ver, p + shift, ref, p, n_resamples=RESAMPLES, seed=int(rng.integers(2**31))
        )
        out["reference"].append(C.smooth_ece(ref, p))
        out["delta"].append(result.delta)
        out["low"].append(result.ci_low)
        out["high"].append(result.ci_high)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def runs():
    n = _mc_items()
    return n, _simulate(n, 0.0, seed=1), _simulate(n, LIMIT, seed=2)


def test_a_calibrated_model_reads_near_zero(runs):
    n, calibrated, _ = runs
    assert n >= 150
    assert calibrated["reference"].mean() < 0.03
    binned = np.mean([C.expected_calibration_error(*_one(n, s)) for s in range(50)])
    assert binned > 2 * calibrated["reference"].mean()  # what binned 15-bin ECE reads on the same draws


def _one(n, seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 0.85, n)
    return rng.random(n) < p, p


def test_an_over_confidence_of_the_limit_is_detected(runs):
    """The rule fails a version when the paired upper bound reaches the limit; at a true increase of 0.10 it
    must do so at least 80% of the time."""
    _, _, shifted = runs
    assert (shifted["high"] >= LIMIT).mean() >= 0.80


def test_two_calibrated_models_pass(runs):
    _, calibrated, _ = runs
    assert (calibrated["high"] < LIMIT).mean() >= 0.95


def test_paired_interval_coverage(runs):
    """Coverage of the true increase by the 95% interval: within 5 points at no change; at a 0.10 increase the
    estimate is pulled down by the noise floor the debiasing cannot remove at this n, and coverage is lower."""
    _, calibrated, shifted = runs
    covered = (calibrated["low"] <= 0.0) & (calibrated["high"] >= 0.0)
    assert abs(covered.mean() - 0.95) <= 0.05
    covered = (shifted["low"] <= LIMIT) & (shifted["high"] >= LIMIT)
    assert covered.mean() >= 0.80


def test_uniform_over_confidence_reads_as_the_shift():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.3, 0.85, 20_000)
    correct = rng.random(len(p)) < p
    assert C.smooth_ece(correct, p) < 0.01
    assert C.smooth_ece(correct, p + 0.1) == pytest.approx(0.1, abs=0.01)


def test_paired_difference_is_exactly_zero_against_itself_and_is_seeded():
    correct, conf = _one(100, 3)
    same = C.paired_smooth_ece_difference(correct, conf, correct, conf)
    assert (same.delta, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    a = C.paired_smooth_ece_difference(correct, conf + 0.1, correct, conf, seed=4)
    b = C.paired_smooth_ece_difference(correct, conf + 0.1, correct, conf, seed=4)
    assert (a.delta, a.ci_low, a.ci_high, a.n) == (b.delta, b.ci_low, b.ci_high, b.n)
    assert a.ci_low < a.delta < a.ci_high and np.isnan(a.p_value)


def test_interval_of_one_model():
    correct, conf = _one(200, 5)
    estimate, low, high = C.smooth_ece_interval(correct, conf + 0.15)
    assert low < estimate < high and low >= 0.0 and high <= 1.0
    assert estimate == C.smooth_ece(correct, conf + 0.15)


def test_bad_input_names_the_field():
    with pytest.raises(SafetyLabError, match="confidence"):
        C.smooth_ece([True, False], [0.5, 1.5])
    with pytest.raises(SafetyLabError, match="reference_correct"):
        C.paired_smooth_ece_difference([True], [0.5], [True, False], [0.5, 0.5])
    with pytest.raises(SafetyLabError, match="n_resamples"):
        C.smooth_ece_interval([True], [0.5], n_resamples=10)


def test_binned_ece_interval_is_the_bootstraps_own(monkeypatch):
    """The paired binned-ECE interval is reported as the bootstrap gives it, even when it leaves out the point
    estimate (binned ECE is biased, so that happens); it is not widened to reach the estimate."""
    import types

    import scipy.stats

    interval = types.SimpleNamespace(confidence_interval=types.SimpleNamespace(low=0.20, high=0.30))
    monkeypatch.setattr(scipy.stats, "bootstrap", lambda *args, **kwargs: interval)
    correct, conf = _one(50, 6)
    result = C.paired_ece_difference(correct, conf, correct, conf)
    assert result.delta == 0.0 and (result.ci_low, result.ci_high) == (0.20, 0.30)
