"""Adding a metric is one suite edit: a toy suite's spec reaches the card (both renderings) and the table columns.

The toy suite is declared with the same ``suite(name, specs)`` decorator as the real ones; the fixture restores
the metric and suite registries afterwards.
"""

from pathlib import Path

import pytest

from safety_lab.evaluation import suites
from safety_lab.evaluation.specs import METRICS, MetricSpec, rate
from safety_lab.reporting.cards import safety_card
from safety_lab.reporting.tables import headline_columns, metric_cells, render

TOY_SPECS = (
    rate("toy_leak_rate", "Toy leak rate", higher=False, tag=True, headline=True, interval=True, fmt=".2%"),
    MetricSpec("toy_score", "Toy score", True, kind="score", fmt=".1f"),
)


@pytest.fixture
def toy_suite(monkeypatch):
    monkeypatch.setattr(METRICS, "_specs", dict(METRICS._specs))
    monkeypatch.setattr(suites.SUITES, "_items", dict(suites.SUITES._items))

    @suites.suite("toy", TOY_SPECS)
    def toy(loaded, cfg):  # pragma: no cover - never run: only its declarations matter here
        return suites.SuiteResult({})

    return toy


def _summary():
    return {
        "status": "pass",
        "metrics": {
            "asr": 0.2,
            "toy_leak_rate": 0.125,
            "toy_leak_rate_ci_low": 0.05,
            "toy_leak_rate_ci_high": 0.25,
            "toy_score": 7.0,
            "unknown_thing": 3.0,
        },
        "reference_metrics": {"asr": 0.1, "toy_leak_rate": 0.25, "toy_score": 9.0},
    }


def test_without_the_toy_suite_the_metric_is_only_a_name():
    md, _ = safety_card(_summary(), title="t")
    assert "Toy leak rate" not in md and "| `toy_leak_rate` | 0.1250 |" in md
    assert "toy_leak_rate" not in [c.key for c in headline_columns()]


def test_a_toy_suite_spec_reaches_the_card_and_the_tables(toy_suite):
    md, page = safety_card(_summary(), title="t")
    for text in (md, page):
        assert "Toy leak rate" in text and "Toy score" in text  # labels
        assert "12.50%" in text and "[5.00%, 25.00%]" in text  # its format and its interval
        assert "-12.50% (better)" in text  # its direction: a lower leak rate is better
        assert "-2.0 (worse)" in text  # toy_score: higher is better, one decimal
    pos = [md.index(n) for n in ("(`asr`)", "(`toy_leak_rate`)", "(`toy_score`)", "`unknown_thing`")]
    assert pos == sorted(pos)  # declared order (the toy suite last), unknown metrics after
    keys = [c.key for c in headline_columns()]
    assert keys[-2:] == ["toy_leak_rate", "toy_leak_rate_ci"] and "toy_score" not in keys  # headline only
    cells = metric_cells(_summary()["metrics"])
    assert cells["toy_leak_rate"] == "12.50%" and cells["toy_leak_rate_ci"] == "[5.00%, 25.00%]"
    table = render([{"model": "m", **cells}], "markdown", ["model", *keys]).splitlines()
    assert "toy_leak_rate | toy_leak_rate_ci |" in table[0] and "| 12.50% | [5.00%, 25.00%] |" in table[2]


def test_the_toy_suite_is_gone_after_the_test():
    assert METRICS.find("toy_leak_rate") is None and "toy" not in suites.SUITES


def test_a_toy_suite_reaches_the_version_tags_and_the_report(mlflow_store, monkeypatch):
    """End to end through the recorder: run the toy suite on a registered version, and its tagged metric becomes a
    safety.* version tag and a column of `report`, with no edit anywhere but the suite."""
    from types import SimpleNamespace

    import torch
    from mlflow.tracking import MlflowClient

    from safety_lab import evaluations
    from safety_lab.evaluation import EvalConfig
    from safety_lab.reporting.views import format_report, report_rows

    monkeypatch.setattr(METRICS, "_specs", dict(METRICS._specs))
    monkeypatch.setattr(suites.SUITES, "_items", dict(suites.SUITES._items))

    @suites.suite("toy", TOY_SPECS)
    def toy(loaded, cfg):
        return suites.SuiteResult(
            {"toy_leak_rate": 0.125, "toy_leak_rate_ci_low": 0.05, "toy_leak_rate_ci_high": 0.25, "toy_score": 7.0}
        )

    class NoWeights(torch.nn.Module):  # the toy suite reads no model: one parameter so it has a dtype to record
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        @property
        def dtype(self):
            return self.w.dtype

    monkeypatch.setattr(evaluations, "load_model", lambda spec, **kw: SimpleNamespace(spec=spec, model=NoWeights()))
    client = MlflowClient()
    client.create_registered_model("toy-model")
    mv = client.create_model_version("toy-model", source="file:///nowhere", tags={"data.name": "toy"})
    recorded = evaluations.evaluate_version("models:/toy-model/1", EvalConfig(suites="toy"))
    tags = client.get_model_version("toy-model", mv.version).tags
    assert tags["safety.toy_leak_rate"] == "12.50%" and tags["safety.toy_leak_rate_ci"] == "[5.00%, 25.00%]"
    assert "safety.toy_score" not in tags  # not declared tag=True
    assert recorded.status == tags["safety.status"] == "unevaluated"  # the policy's required ASR was not measured
    card = client.download_artifacts(recorded.run_id, "evaluation/safety_card.md")
    assert "Toy leak rate" in Path(card).read_text(encoding="utf-8")  # the card logged with the evaluation
    row = report_rows("toy-model")[0]
    assert row["toy_leak_rate"] == "12.50%"
    assert "toy_leak_rate" in format_report([row], "markdown").splitlines()[0]
