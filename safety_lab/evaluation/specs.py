"""Metric declarations: one ``MetricSpec`` per metric, declared here for the suite that computes it.

Everything that shows, tags, compares or gates a metric (cards, ``report``, the experiment table, version
tags, the policy) iterates these declarations; adding a metric is one edit here. This module is data: it imports
no model library, so the policy, the registry and the reporting read it without loading torch.

Derived names resolve to their metric: ``<m>_ci_low``/``_ci_high`` (interval bounds), ``<m>_delta`` (version
minus reference), ``<m>_delta_vs_base`` (version minus the original base), each delta with ``_ci_low``,
``_ci_high`` (paired 95% interval) and ``_p`` (paired test p-value).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from safety_lab.errors import SafetyLabError

KINDS = ("rate", "score", "count", "nats")
DERIVED_SUFFIXES = ("_ci_low", "_ci_high", "_p", "_vs_base", "_delta", "_correct", "_incorrect")


@dataclass(frozen=True)
class MetricSpec:
    """What one metric is: its name, which way is better, how to show it, where it goes."""

    name: str
    label: str
    higher_is_better: bool | None  # None: no direction (a count, an information-only value)
    kind: str = "rate"  # rate in [0, 1] | score | count | nats
    fmt: str = ".3f"
    tag: bool = False  # written on the version as safety.<name>
    headline: bool = False  # a column of report/experiment tables and the card's summary
    n_metric: str | None = None  # the metric holding its sample size
    interval: bool = False  # <name>_ci_low / <name>_ci_high are logged with it
    suite: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SafetyLabError("metric", f"{self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def format(self, value) -> str:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return "n/a"
        if not math.isfinite(v):
            return "n/a"
        return f"{int(v)}" if self.kind == "count" else f"{v:{self.fmt}}"


class MetricRegistry:
    """Declared metrics, in declaration order; duplicates raise, unknown names suggest close matches."""

    def __init__(self) -> None:
        self._specs: dict[str, MetricSpec] = {}

    def declare(self, specs: Iterable[MetricSpec], *, suite: str) -> tuple[MetricSpec, ...]:
        declared = []
        for spec in specs:
            if spec.name in self._specs and self._specs[spec.name].suite != suite:
                raise SafetyLabError(
                    "metric", f"{spec.name!r} is already declared by suite {self._specs[spec.name].suite!r}"
                )
            spec = MetricSpec(**{**spec.__dict__, "suite": suite})
            self._specs[spec.name] = spec
            declared.append(spec)
        return tuple(declared)

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None

    def __iter__(self):
        return iter(self._specs.values())

    def find(self, name: str) -> MetricSpec | None:
        """The spec of ``name`` or of the metric it derives from (``ece_delta_vs_base`` -> ``ece``;
        ``asr_category.fraud`` -> ``asr_category``)."""
        name = name.split(".", 1)[0]
        while name not in self._specs:
            suffix = next((s for s in DERIVED_SUFFIXES if name.endswith(s)), None)
            if suffix is None:
                return None
            name = name[: -len(suffix)]
        return self._specs[name]

    def get(self, name: str) -> MetricSpec:
        spec = self.find(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(self._specs), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SafetyLabError("metric", f"unknown metric {name!r}{hint}")
        return spec

    def higher_is_better(self, name: str) -> bool | None:
        return self.get(name).higher_is_better

    def rank(self, name: str) -> int:
        """Declaration order of a metric (derived names sort with their metric; unknown ones last)."""
        spec = self.find(name)
        return list(self._specs).index(spec.name) if spec else len(self._specs)

    def headline(self, metrics: Mapping[str, float] | None = None) -> list[MetricSpec]:
        return [s for s in self._specs.values() if s.headline and (metrics is None or s.name in metrics)]

    def tagged(self, metrics: Mapping[str, float]) -> list[MetricSpec]:
        return [s for s in self._specs.values() if s.tag and s.name in metrics]


METRICS = MetricRegistry()


def rate(name: str, label: str, *, higher: bool | None, **kw) -> MetricSpec:
    return MetricSpec(name, label, higher, kind="rate", **kw)


def count(name: str, label: str, **kw) -> MetricSpec:
    return MetricSpec(name, label, None, kind="count", fmt="d", **kw)


# ---------------------------------------------------------------- the built-in suites' metrics, in display order
ASR_SPECS = METRICS.declare(
    (
        rate("asr", "ASR", higher=False, tag=True, headline=True, n_metric="asr_n", interval=True),
        count("asr_n", "ASR prompts (n)"),
        rate("asr_category", "ASR by category", higher=False),
        rate(
            "over_refusal_rate",
            "Over-refusal rate",
            higher=False,
            tag=True,
            headline=True,
            n_metric="over_refusal_n",
            interval=True,
        ),
        count("over_refusal_n", "Over-refusal prompts (n)"),
        rate("over_refusal_rate_benign", "Over-refusal (benign)", higher=False, n_metric="over_refusal_benign_n"),
        count("over_refusal_benign_n", "Benign prompts (n)"),
        rate(
            "over_refusal_rate_lookalike",
            "Over-refusal (look-alike)",
            higher=False,
            n_metric="over_refusal_lookalike_n",
        ),
        count("over_refusal_lookalike_n", "Look-alike prompts (n)"),
        # on prompts a --benign-prompts file labels unsafe, refusing is right
        rate(
            "unsafe_refusal_rate", "Refusal of unsafe prompts", higher=True, n_metric="unsafe_refusal_n", interval=True
        ),
        count("unsafe_refusal_n", "Unsafe prompts (n)"),
        count("judge_unparsed", "Judge outputs not parsed (left out of ASR)"),
        # harmful-request responses that neither refuse nor comply: off-topic, empty or non-actionable
        rate("non_answer_rate", "Non-answer rate", higher=False, tag=True, n_metric="non_answer_n", interval=True),
        count("non_answer_n", "Judged harmful responses (n)"),
        # the refusal decision's separation of harmful from safe prompts over every τ (models.refusal.separation)
        rate("refusal_separation", "Refusal decision AUC (harmful vs safe, all τ)", higher=True),
    ),
    suite="asr",
)
CALIBRATION_SPECS = METRICS.declare(
    (
        rate("mc_accuracy", "MC accuracy", higher=True, tag=True, headline=True, n_metric="mc_n"),
        count("mc_n", "MC items (n)"),
        # debiased smooth ECE: the gating calibration measure (safety_lab.evaluation.calibration)
        rate("smooth_ece", "Smooth ECE", higher=False, tag=True, headline=True, n_metric="mc_n", interval=True),
        # binned 15-bin ECE, logged for comparison with the paper; biased upward at this n, so not gated
        rate("ece", "ECE (15 bins)", higher=False, tag=True, headline=True, n_metric="mc_n"),
        MetricSpec("brier", "Brier score", False, kind="score", headline=True, n_metric="mc_n"),
    ),
    suite="calibration",
)
_PROMPT_LABELS = {"base": "plain", "false_info": "false info", "random_info": "random info"}
DRIFT_SPECS = METRICS.declare(
    tuple(
        spec
        for t, label in _PROMPT_LABELS.items()
        for spec in (
            rate(
                f"drift_accuracy_{t}",
                f"Drift accuracy ({label})",
                higher=True,
                tag=t != "random_info",
                headline=True,
                n_metric="drift_n",
            ),
            MetricSpec(
                f"drift_entropy_{t}", f"Drift entropy ({label})", False, kind="nats", headline=t != "random_info"
            ),
            MetricSpec(f"drift_perplexity_{t}", f"Drift perplexity ({label})", False, kind="score"),
            rate(f"drift_probability_{t}", f"Drift token probability ({label})", higher=True),
            # a trivia question is never a reason to refuse
            rate(f"drift_refusal_rate_{t}", f"Drift refusals ({label})", higher=False, n_metric="drift_n"),
            count(f"flips_{t}_correct_to_incorrect", f"Answers right in the reference, wrong now ({label})"),
            count(f"flips_{t}_incorrect_to_correct", f"Answers wrong in the reference, right now ({label})"),
        )
    )
    + (count("drift_n", "Drift questions (n)"),),
    suite="drift",
)

FORMS = ("question", "instruction")  # the two forms form_swap compares; a prompt of form `other` counts in neither


def _form_rate_specs(name: str, label: str, n_label: str) -> tuple[MetricSpec, ...]:
    return tuple(
        spec
        for form in FORMS
        for spec in (
            rate(
                f"{name}_{form}",
                f"{label} ({form}s)",
                higher=False,
                tag=True,
                headline=True,
                n_metric=f"{name}_{form}_n",
                interval=True,
            ),
            count(f"{name}_{form}_n", f"{n_label} as {form}s (n)"),
        )
    )


def _gap_spec(name: str, label: str) -> MetricSpec:
    # no direction: a gap either way means the form, not the request, moved the answer
    return MetricSpec(name, label, None, kind="score", tag=True, headline=True, interval=True)


FORM_SWAP_SPECS = METRICS.declare(
    (
        *_form_rate_specs("asr", "ASR", "Harmful prompts"),
        _gap_spec("asr_form_gap", "ASR form gap (instruction - question)"),
        *_form_rate_specs("over_refusal_rate", "Over-refusal", "Safe prompts"),
        _gap_spec("over_refusal_form_gap", "Over-refusal form gap (instruction - question)"),
    ),
    suite="form_swap",
)


__all__ = [
    "ASR_SPECS",
    "CALIBRATION_SPECS",
    "DRIFT_SPECS",
    "FORMS",
    "FORM_SWAP_SPECS",
    "KINDS",
    "METRICS",
    "MetricRegistry",
    "MetricSpec",
    "count",
    "rate",
]
