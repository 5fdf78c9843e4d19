"""Metric declarations: one ``MetricSpec`` per metric, registered by the suite that computes it.

Everything that shows, tags, compares or gates a metric (cards, ``report``, the experiment table, version
tags, the policy) iterates these declarations; adding a metric is one edit in its suite.

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


__all__ = ["KINDS", "METRICS", "MetricRegistry", "MetricSpec", "count", "rate"]
