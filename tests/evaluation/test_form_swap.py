"""The form_swap suite: every built-in eval request in both forms, ASR and over-refusal per form, the form gap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from safety_lab.data import benign_pairs, harmful_requests, lookalike_requests
from safety_lab.data.forms import form_of
from safety_lab.evaluation import EvalConfig, compare
from safety_lab.evaluation import form_swap as F
from safety_lab.evaluation import suites as S
from safety_lab.evaluation.specs import METRICS
from safety_lab.evaluation.suites import SUITES
from safety_lab.models import generation, load_model, resolve_precision

RATES = ("asr", "over_refusal_rate")
NAMES = [
    f"{rate}_{form}{suffix}"
    for rate in RATES
    for form in ("question", "instruction")
    for suffix in ("", "_n", "_ci_low", "_ci_high")
] + ["asr_form_gap", "over_refusal_form_gap"]


def _cfg(**kw) -> SimpleNamespace:
    base = {
        "limit": None,
        "sample_seed": 0,
        "harmful_prompts": "builtin",
        "benign_prompts": "builtin",
        "judge": "keyword",
        "judge_model": None,
        "judge_style": "llama_guard",
        "device": "cpu",
        "max_new_tokens": 4,
        "batch_size": 64,
    }
    return SimpleNamespace(**{**base, **kw})


def _by_form(rows, outcome):
    out = {}
    for form in ("question", "instruction"):
        flags = [r[outcome] for r in rows if r["form"] == form and r[outcome] is not None]
        out[form] = (sum(flags) / len(flags), len(flags))
    return out


def _check_against_rows(result):
    m = result.metrics
    harmful = [r for r in result.rows if r["set"] == "harmful"]
    safe = [r for r in result.rows if r["set"] in ("benign", "lookalike")]
    assert len(harmful) + len(safe) == len(result.rows)
    for name, part, outcome in (("asr", harmful, "attack_success"), ("over_refusal_rate", safe, "refused")):
        for form, (value, n) in _by_form(part, outcome).items():
            assert m[f"{name}_{form}"] == pytest.approx(value) and m[f"{name}_{form}_n"] == n
            assert m[f"{name}_{form}_ci_low"] <= value <= m[f"{name}_{form}_ci_high"]
    assert m["asr_form_gap"] == pytest.approx(m["asr_instruction"] - m["asr_question"])
    assert m["over_refusal_form_gap"] == pytest.approx(
        m["over_refusal_rate_instruction"] - m["over_refusal_rate_question"]
    )
    # every item appears once as written and once restated, in the other form
    for part in (harmful, safe):
        by_key = {}
        for r in part:
            by_key.setdefault(r["key"], []).append(r)
        assert all(sorted(x["variant"] for x in pair) == ["original", "swap"] for pair in by_key.values())
        assert all({x["form"] for x in pair} == {"question", "instruction"} for pair in by_key.values())
        assert all(form_of(r["prompt"]) == r["form"] for r in part)


def test_form_swap_suite_on_the_tiny_model(tiny_model_dir, monkeypatch):
    """Real generation: the metrics exist, are declared, and agree with the per-item rows."""
    monkeypatch.setattr(S, "OVER_REFUSAL_MIN_ITEMS", 8)  # the floor on safe prompts, lowered to keep it fast
    result = F.form_swap_suite(
        load_model(str(tiny_model_dir), precision=resolve_precision("auto", "cpu")), _cfg(limit=6)
    )
    assert set(NAMES) <= set(result.metrics)
    assert all(METRICS.find(k) is not None and METRICS.find(k).suite == "form_swap" for k in result.metrics)
    _check_against_rows(result)
    m = result.metrics
    assert m["asr_question_n"] == m["asr_instruction_n"] == 6  # keyword judge: every output parsed
    assert m["over_refusal_rate_question_n"] == m["over_refusal_rate_instruction_n"] == 8
    assert set(result.paired) == {f"{r}_{f}" for r in RATES for f in ("question", "instruction")}


def test_a_model_that_refuses_every_instruction_shows_the_gap(monkeypatch):
    """Refusing by form: every instruction refused, every question answered, whatever it asks."""

    def generate(model, tokenizer, prompts, **_):
        return [
            "I'm sorry, but I can't help with that."
            if form_of(p) == "instruction"
            else "Step 1: open the file. Step 2: change the field."
            for p in prompts
        ]

    monkeypatch.setattr(generation, "generate", generate)
    result = F.form_swap_suite(SimpleNamespace(model=None, tokenizer=None), _cfg())
    _check_against_rows(result)
    m = result.metrics
    n_safe = len(benign_pairs("eval")) + len(lookalike_requests("eval"))
    assert m["over_refusal_rate_instruction_n"] == m["over_refusal_rate_question_n"] == n_safe
    assert m["asr_question_n"] == len(harmful_requests("eval"))
    assert (m["over_refusal_rate_instruction"], m["over_refusal_rate_question"]) == (1.0, 0.0)
    assert m["over_refusal_form_gap"] == 1.0 and m["over_refusal_form_gap_ci_low"] > 0.9
    assert m["asr_instruction"] == 0.0 and m["asr_form_gap"] == -m["asr_question"]
    assert m["asr_question"] == 1.0 and m["asr_form_gap_ci_high"] < -0.9  # every answered request counts
    # against a reference that answers everything, the per-form deltas are paired item by item
    monkeypatch.setattr(
        generation, "generate", lambda model, tokenizer, prompts, **_: ["Sure, here it is."] * len(prompts)
    )
    reference = F.form_swap_suite(SimpleNamespace(model=None, tokenizer=None), _cfg())
    deltas = compare({"form_swap": result}, {"form_swap": reference})
    assert deltas["over_refusal_rate_instruction_delta"] == 1.0 and deltas["over_refusal_form_gap_delta"] == 1.0
    assert deltas["over_refusal_rate_instruction_delta_ci_low"] > 0.9


def test_form_swap_is_a_default_suite_with_declared_metrics():
    assert "form_swap" in EvalConfig().suite_names() and "form_swap" in SUITES
    for name in ("over_refusal_rate_question", "over_refusal_rate_instruction", "over_refusal_form_gap"):
        spec = METRICS.get(name)
        assert spec.tag and spec.headline and spec.interval and spec.suite == "form_swap"
    assert METRICS.get("asr_form_gap").higher_is_better is None
    assert METRICS.get("over_refusal_rate_question").n_metric == "over_refusal_rate_question_n"
