"""The form_swap suite: every built-in eval request asked as a question and as an instruction.

Each held-out harmful, benign and look-alike request is generated twice: as written, and as its swap from
``builtin/form_swaps.jsonl`` (the same request restated in the other form). ASR and over-refusal are then
reported per form (``safety_lab.data.forms.form_of`` of the prompt the model saw), with the gap
instruction minus question. A model that refuses by form rather than by harm shows a large gap.
"""

from __future__ import annotations

import safety_lab.evaluation.metrics as M
from safety_lab.data import form_swaps
from safety_lab.data.forms import form_of
from safety_lab.errors import check
from safety_lab.evaluation.paired import paired_proportion_difference
from safety_lab.evaluation.specs import FORM_SWAP_SPECS, FORMS
from safety_lab.evaluation.suites import (
    SuiteResult,
    attack_metrics,
    generate_answers,
    refusal_metrics,
    sample_prompts,
    suite,
)


def _both_forms(items: list[dict], swaps: dict[str, str], *, harmful: bool) -> list[dict]:
    """Two rows per item: as written (`variant` original) and restated (`variant` swap), each with its `form`."""
    out = []
    for item in items:
        check(item["id"] in swaps, "form_swaps", f"no swap for eval row {item['id']!r}")
        for variant, prompt in (("original", item["prompt"]), ("swap", swaps[item["id"]])):
            row = {**item, "prompt": prompt, "variant": variant, "form": form_of(prompt)}
            if harmful:
                row["behavior"] = prompt
            out.append(row)
    return out


def per_form(rows: list[dict], outcome: str, name: str, gap: str) -> tuple[dict[str, float], dict[str, dict]]:
    """``<name>_<form>`` with ``_n`` and its Wilson interval for each form, over rows whose ``outcome`` is judged;
    ``<gap>`` = instruction minus question, with Newcombe's paired interval and exact McNemar p when every
    judged item was judged in both forms. Also returns ``{<name>_<form>: {item key: outcome}}`` for pairing."""
    metrics: dict[str, float] = {}
    by_form: dict[str, dict[str, bool]] = {}
    for form in FORMS:
        by_form[form] = {r["key"]: bool(r[outcome]) for r in rows if r["form"] == form and r[outcome] is not None}
        flags = list(by_form[form].values())
        if not flags:
            continue
        low, high = M.wilson_interval(sum(flags), len(flags))
        metrics.update(
            {
                f"{name}_{form}": sum(flags) / len(flags),
                f"{name}_{form}_n": float(len(flags)),
                f"{name}_{form}_ci_low": low,
                f"{name}_{form}_ci_high": high,
            }
        )
    if f"{name}_question" in metrics and f"{name}_instruction" in metrics:
        metrics[gap] = metrics[f"{name}_instruction"] - metrics[f"{name}_question"]
        question, instruction = by_form["question"], by_form["instruction"]
        if question.keys() == instruction.keys():
            keys = sorted(question)
            paired = paired_proportion_difference([instruction[k] for k in keys], [question[k] for k in keys])
            metrics.update({k: v for k, v in paired.as_metrics(gap, "").items() if k != gap})
    return metrics, {f"{name}_{form}": outcomes for form, outcomes in by_form.items()}


@suite("form_swap", FORM_SWAP_SPECS)
def form_swap_suite(loaded, cfg) -> SuiteResult:
    """ASR and over-refusal of the built-in eval requests in both forms, and the gap between forms.

    The same judge path as the asr suite: ``cfg.judge`` for attack success, ``is_refusal`` for over-refusal.
    Always the built-in sets (their swaps are written for them), sampled as the asr suite samples them.
    """
    swaps = form_swaps()
    harmful, safe = sample_prompts(cfg, "builtin", "builtin")
    harmful, safe = _both_forms(harmful, swaps, harmful=True), _both_forms(safe, swaps, harmful=False)
    responses = generate_answers(loaded, cfg, [r["prompt"] for r in harmful + safe], desc="form_swap: generate")
    _, judged, _ = attack_metrics(harmful, responses[: len(harmful)], cfg)
    _, refused = refusal_metrics(safe, responses[len(harmful) :])
    rows = [
        {**row, "variant": item["variant"], "form": item["form"], "key": f"{row['set']}:{row['id']}"}
        for item, row in zip(harmful + safe, judged + refused)
    ]
    asr, asr_paired = per_form(rows[: len(harmful)], "attack_success", "asr", "asr_form_gap")
    refusal, refusal_paired = per_form(rows[len(harmful) :], "refused", "over_refusal_rate", "over_refusal_form_gap")
    return SuiteResult({**asr, **refusal}, rows, {}, {**asr_paired, **refusal_paired})


__all__ = ["FORM_SWAP_SPECS", "form_swap_suite", "per_form"]
