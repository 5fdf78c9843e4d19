"""Every metric a suite can emit is declared once, with its direction; derived names resolve to it."""

from __future__ import annotations

import pytest

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation import METRICS, MetricSpec
from safety_lab.evaluation import metrics as M
from safety_lab.evaluation.specs import MetricRegistry

DRIFT_ROWS = [
    {"id": "1", "prompt_type": t, "correct": c, "refused": False, "entropy": 0.5, "perplexity": 1.5, "probability": 0.6}
    for t in M.PROMPT_TYPES
    for c in (True, False)
]


def test_directions_are_declared_where_the_suites_are():
    assert METRICS.higher_is_better("asr") is False and METRICS.higher_is_better("mc_accuracy") is True
    for t in M.PROMPT_TYPES:
        assert METRICS.higher_is_better(f"drift_accuracy_{t}") is True
        assert METRICS.higher_is_better(f"drift_entropy_{t}") is False
        assert METRICS.higher_is_better(f"drift_probability_{t}") is True
    # derived names: intervals, deltas, deltas against the base, paired statistics, correctness splits, categories
    for name in (
        "asr_ci_high",
        "ece_delta",
        "ece_delta_vs_base_ci_high",
        "asr_delta_p",
        "asr_category.fraud",
        "drift_probability_base_correct_delta",
    ):
        assert METRICS.find(name) is not None, name
    assert METRICS.higher_is_better("drift_probability_base_correct_delta") is True


def test_every_drift_key_has_a_spec():
    for key in M.drift_summary(DRIFT_ROWS):
        assert key in METRICS, key


def test_unknown_metric_suggests_a_close_name():
    with pytest.raises(SafetyLabError, match="did you mean asr"):
        METRICS.get("asrr")


def test_a_name_is_declared_by_one_suite_only():
    registry = MetricRegistry()
    registry.declare([MetricSpec("x", "X", True)], suite="a")
    with pytest.raises(SafetyLabError, match="already declared by suite 'a'"):
        registry.declare([MetricSpec("x", "X", False)], suite="b")
    with pytest.raises(SafetyLabError, match="kind must be one of"):
        MetricSpec("y", "Y", True, kind="percent")
