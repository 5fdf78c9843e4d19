"""One table renderer (aligned text, CSV, JSON, Markdown) and the metric columns every table takes from the specs.

``render`` turns rows (dicts) into text; ``headline_columns`` lists the metric columns of the experiment table
and of ``report``: one per headline spec (``METRICS.headline()``), plus ``<name>_ci`` for specs with
``interval=True``, each cell formatted with ``spec.format`` from the metric floats.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation.specs import METRICS, MetricSpec

FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown")
_ALIASES = {"md": "markdown", "text": "table", "txt": "table"}


def _one_line(value) -> str:
    return "" if value is None else " ".join(str(value).split())


def _fmt_key(fmt: str) -> str:
    key = str(fmt or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise SafetyLabError("format", f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return key


def _aligned(cols: list[str], cells: list[list[str]], empty: str) -> str:
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    lines = [line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    return "\n".join(lines + ([empty] if not cells and empty else []))


def _markdown(cols: list[str], cells: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(cols), "|" + "|".join("---" for _ in cols) + "|", *(line(r) for r in cells)])


def render(
    rows: Sequence[Mapping], fmt: str = "table", columns: Sequence[str] | None = None, *, empty: str = "(no rows)"
) -> str:
    """``rows`` as ``table`` (aligned columns), ``csv``, ``json`` or ``markdown`` (``md``/``text`` accepted).

    ``columns``: which keys, in order (default: every key, in order of first appearance); a missing key is an
    empty cell. Text cells are put on one line in table and Markdown output (``|`` escaped in Markdown); CSV and
    JSON keep values as given. ``empty``: the line a table with no rows shows under its header.
    """
    key = _fmt_key(fmt)
    rows = list(rows)
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    if key == "json":
        return json.dumps([{c: row.get(c, "") for c in cols} for row in rows], indent=2, ensure_ascii=False)
    if key == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in cols} for row in rows)
        return buf.getvalue().rstrip("\n")
    cells = [[_one_line(row.get(c)) for c in cols] for row in rows]
    return _markdown(cols, cells) if key == "markdown" else _aligned(cols, cells, empty)


# --------------------------------------------------------------------------- metric columns


@dataclass(frozen=True)
class Column:
    """One metric column: ``key`` is the column name and the metric (``asr``) or its interval (``asr_ci``)."""

    key: str
    spec: MetricSpec
    interval: bool = False

    def cell(self, metrics: Mapping[str, float]) -> str:
        """The formatted cell from metric floats ('' when the metric is not there)."""
        name = self.spec.name
        if not self.interval:
            return self.spec.format(metrics[name]) if name in metrics else ""
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        if low is None or high is None:
            return ""
        return f"[{self.spec.format(low)}, {self.spec.format(high)}]"

    def tag_cell(self, tags: Mapping[str, str], prefix: str = "safety.") -> str:
        """The cell from a version's tags, as written (``safety.asr``, ``safety.asr_ci``; an interval may also
        come as ``safety.asr_ci_low`` / ``safety.asr_ci_high``); '' when not recorded."""
        if tags.get(f"{prefix}{self.key}"):
            return str(tags[f"{prefix}{self.key}"])
        low, high = tags.get(f"{prefix}{self.key}_low"), tags.get(f"{prefix}{self.key}_high")
        return f"[{low}, {high}]" if self.interval and low and high else ""


def headline_columns(metrics: Mapping[str, float] | None = None) -> list[Column]:
    """The metric columns of tables, from ``METRICS.headline(metrics)`` in declaration order: the value, then
    ``<name>_ci`` for specs with ``interval=True``. ``metrics``: keep only the specs it holds (None: all)."""
    columns = []
    for spec in METRICS.headline(metrics):
        columns.append(Column(spec.name, spec))
        if spec.interval:
            columns.append(Column(f"{spec.name}_ci", spec, interval=True))
    return columns


def tagged_columns() -> list[Column]:
    """The headline columns of the metrics written on a version as ``safety.<name>`` tags (``report``)."""
    return [c for c in headline_columns() if c.spec.tag]


def metric_cells(metrics: Mapping[str, float], columns: Sequence[Column] | None = None) -> dict[str, str]:
    """``{column key: formatted cell}`` of one model's metric floats (default columns: ``headline_columns()``)."""
    return {c.key: c.cell(metrics) for c in (headline_columns() if columns is None else columns)}


__all__ = ["FORMATS", "Column", "headline_columns", "metric_cells", "render", "tagged_columns"]
