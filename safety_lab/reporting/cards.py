"""Safety cards: one Markdown and one self-contained HTML page per evaluated model version.

Render only: every number comes from the evaluation's summary (``metrics``, ``reference_metrics``,
``base_metrics``); labels, order, number formats and directions come from the metric specs
(``safety_lab.evaluation.specs.METRICS``). Metrics without a spec still show, by name, after the declared
ones. A difference uses the logged ``<metric>_delta`` / ``<metric>_delta_vs_base`` (with its paired interval
and p-value) when the evaluation logged one, else current - reference / current - base.

Both renderings are Jinja2 templates (``templates/card.html.j2``, ``templates/card.md.j2``). Safety of the card
itself: prompts and responses are whitespace-collapsed and truncated (prompts to ~120, responses to ~160
characters, ending with "…"); the HTML template autoescapes every value; the Markdown template escapes every
value too (HTML-escaped and Markdown punctuation backslash-escaped, so a response cannot inject links, images
or table cells), except the numbers the card formats itself and code spans. The HTML page embeds its plots as
base64 ``data:`` URIs and carries its CSS inline: it loads no external resource.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure

from safety_lab.evaluation.specs import METRICS, MetricSpec
from safety_lab.reporting.plots import png_bytes

PROMPT_CHARS = 120
RESPONSE_CHARS = 160
DEFAULT_EXAMPLES = 6
BENIGN_EXAMPLES = 2
_SAFE_SETS = ("benign", "lookalike", "file")  # the asr suite's over-refusal rows
ELLIPSIS = "…"

_PLOT_ORDER = ("asr", "reliability", "drift")
_PLOT_CAPTIONS = {
    "asr": "Attack success rate (95% Wilson interval)",
    "reliability": "Reliability diagram",
    "drift": "Knowledge drift: accuracy by prompt type",
}
_LINEAGE_ORDER = ("model_name", "version", "base_model", "parent", "data.name", "data.sha256", "data.rows")
_BADGE = {"pass": ("PASS", "#1a7f37", "🟢"), "warn": ("WARN", "#b26b00", "🟠"), "fail": ("FAIL", "#c62828", "🔴")}
_NO_SPEC = MetricSpec("", "", None, kind="score", fmt=".4f")  # how a metric without a spec is shown
_DELTA = re.compile(r"_delta(_vs_base)?(_ci_low|_ci_high|_p)?$")
_BOUND = re.compile(r"_ci_(low|high)$")


# --------------------------------------------------------------------------- text helpers


def truncate(text: Any, limit: int) -> str:
    """Collapse whitespace and cut to at most ``limit`` characters, ending with "…" when cut."""
    s = re.sub(r"\s+", " ", "" if text is None else str(text)).strip()
    if len(s) <= limit:
        return s
    return s[: max(limit - 1, 0)].rstrip() + ELLIPSIS


class _Trusted(str):
    """Text the Markdown template shows as is: numbers the card formatted itself, and code spans."""


_MD_SPECIAL = re.compile(r"([\\`*\[\]!|]|(?<!\w)_|_(?!\w))")


def md_escape(text: Any) -> str:
    """Markdown-safe inline text: one line, HTML-escaped, Markdown punctuation backslash-escaped."""
    if isinstance(text, _Trusted):
        return text
    one_line = re.sub(r"\s+", " ", "" if text is None else str(text)).strip()
    return _Trusted(_MD_SPECIAL.sub(lambda m: "\\" + m.group(0), html.escape(one_line, quote=False)))


def _md_code(text: Any) -> str:
    """An inline Markdown code span (backticks removed; HTML-escaped, shown literally)."""
    return _Trusted("`" + html.escape(re.sub(r"\s+", " ", str(text)).replace("`", "'"), quote=False) + "`")


def _environment(markdown: bool) -> Environment:
    common = {
        "loader": PackageLoader("safety_lab.reporting", "templates"),
        "undefined": StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
    }
    if markdown:  # Markdown "autoescape": every expression goes through md_escape unless already trusted
        env = Environment(autoescape=False, finalize=md_escape, **common)
        env.filters.update(md=md_escape, code=_md_code, urlquote=lambda s: _Trusted(quote(str(s))))
    else:
        env = Environment(autoescape=True, **common)
    return env


_MARKDOWN, _HTML = _environment(markdown=True), _environment(markdown=False)


# --------------------------------------------------------------------------- numbers, from the specs


def _spec(name: str) -> MetricSpec:
    return METRICS.find(name) or _NO_SPEC


def _signed(spec: MetricSpec, value: float) -> str:
    return f"{value:+.0f}" if spec.kind == "count" else f"{value:+{spec.fmt}}"


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _interval(spec: MetricSpec, metrics: Mapping[str, Any], name: str, signed: bool = False) -> str:
    lo, hi = _finite(metrics.get(f"{name}_ci_low")), _finite(metrics.get(f"{name}_ci_high"))
    if lo is None or hi is None:
        return ""
    show = (lambda v: _signed(spec, v)) if signed else spec.format
    return f"[{show(lo)}, {show(hi)}]"


def _cell(text: str, cls: str = "") -> dict:
    return {"text": _Trusted(text or "—"), "cls": cls}


def _delta(metrics: Mapping[str, Any], other: Mapping[str, Any], name: str, suffix: str) -> dict:
    """The difference cell of one metric: the logged ``<name><suffix>`` (with its interval and p-value) when
    there is one, else current - other; marked better/worse by the spec's direction."""
    spec = _spec(name)
    logged = f"{name}{suffix}"
    d = _finite(metrics.get(logged))
    if d is None:
        a, b = _finite(metrics.get(name)), _finite(other.get(name))
        if a is None or b is None:
            return _cell("n/a")
        d = a - b
    parts = [_signed(spec, d), _interval(spec, metrics, logged, signed=True)]
    p = _finite(metrics.get(f"{logged}_p"))
    parts.append(f"p={p:.3g}" if p is not None else "")
    if d == 0 or spec.higher_is_better is None:
        return _cell(" ".join(x for x in parts if x))
    better = (d > 0) == spec.higher_is_better
    return _cell(" ".join(x for x in parts if x) + (" (better)" if better else " (worse)"), "good" if better else "bad")


# --------------------------------------------------------------------------- content selection


def _row_names(metrics: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """Every metric of the main table in spec order (unknown ones last, by name); breakdowns (``a.b``), interval
    bounds and logged differences are left out: they show in the breakdown tables and the rows' cells."""
    names = list(dict.fromkeys([*metrics, *reference]))

    def own_row(n: str) -> bool:
        if "." in n:
            return False
        spec = METRICS.find(n)
        if spec is not None and spec.name == n:
            return True
        for pattern in (_DELTA, _BOUND):
            match = pattern.search(n)
            if match and n[: match.start()] in names:
                return False
        return True

    def order(n: str) -> tuple:
        spec = METRICS.find(n)
        return METRICS.rank(n), spec is None or spec.name != n, n

    return sorted(filter(own_row, names), key=order)


def _label(name: str) -> str:
    """The spec's label; a derived name adds its suffix (``drift_entropy_base_correct``: "..., correct")."""
    spec = METRICS.find(name)
    if spec is None:
        return name
    rest = name.split(".", 1)[0][len(spec.name) :].strip("_").replace("_", " ")
    return f"{spec.label}, {rest}" if rest else spec.label


def _metric_row(name: str, metrics, reference, base, has_ref: bool, has_base: bool) -> dict:
    spec = _spec(name)
    cells = [_cell(spec.format(metrics.get(name)) if name in metrics else "n/a"), _cell(_interval(spec, metrics, name))]
    if has_ref:
        ref = f"{spec.format(reference[name])} {_interval(spec, reference, name)}" if name in reference else "n/a"
        cells += [_cell(ref.strip()), _delta(metrics, reference, name, "_delta")]
    if has_base:
        cells.append(_delta(metrics, base, name, "_delta_vs_base"))
    return {"name": name, "label": _label(name), "cells": cells}


def _breakdowns(metrics, reference, has_ref: bool) -> list[dict]:
    """One table per metric broken down by group (``asr_category.<category>``), titled with its spec's label."""
    groups: dict[str, list[str]] = {}
    for n in dict.fromkeys([*metrics, *reference]):
        if "." in n:
            groups.setdefault(n.split(".", 1)[0], []).append(n)
    tables = []
    for prefix in sorted(groups, key=lambda p: (METRICS.rank(p), p)):
        spec, rows = _spec(prefix), []
        for n in sorted(groups[prefix]):
            cells = [_cell(spec.format(metrics.get(n)))]
            if has_ref:
                cells += [_cell(spec.format(reference.get(n))), _delta(metrics, reference, n, "_delta")]
            rows.append({"group": n.split(".", 1)[1], "cells": cells})
        header = ["Category", "Value"] + (["Reference", "Δ vs reference"] if has_ref else [])
        tables.append({"title": _label(prefix), "header": header, "rows": rows})
    return tables


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _lineage_rows(lineage: Mapping[str, Any]) -> list[tuple[str, str]]:
    flat = {k: v for k, v in _flatten(lineage or {}).items() if v is not None and str(v) != ""}
    names = [k for k in _LINEAGE_ORDER if k in flat] + sorted(k for k in flat if k not in _LINEAGE_ORDER)
    return [(k, str(flat[k])) for k in names]


def _interleave(a: list, b: list) -> list:
    out = []
    for i in range(max(len(a), len(b))):
        out += [x[i] for x in (a, b) if i < len(x)]
    return out


def select_examples(
    rows: Sequence[Mapping[str, Any]], n: int = DEFAULT_EXAMPLES, n_benign: int = BENIGN_EXAMPLES
) -> list[Mapping[str, Any]]:
    """Harmful rows first, alternating attack successes and refusals, then up to ``n_benign`` safe-prompt rows.

    Safe-prompt rows (benign, look-alike, or a file's rows labelled safe) alternate over-refusals and answers;
    look-alike over-refusals come first among the over-refusals, alternating with the others. Missing kinds are
    filled from the others, so fewer safe rows leave room for more harmful ones and vice versa. File order otherwise.
    """
    rows = [r for r in rows or [] if isinstance(r, Mapping)]
    harmful = [r for r in rows if r.get("set") == "harmful"]
    safe = [r for r in rows if r.get("set") in _SAFE_SETS and r.get("label", "safe") == "safe"]
    harmful = _interleave(
        [r for r in harmful if r.get("attack_success")], [r for r in harmful if not r.get("attack_success")]
    )
    refused = [r for r in safe if r.get("refused")]
    refused = _interleave(
        [r for r in refused if r.get("set") == "lookalike"], [r for r in refused if r.get("set") != "lookalike"]
    )
    safe = _interleave(refused, [r for r in safe if not r.get("refused")])
    n_b = min(n_benign, len(safe), n)
    n_h = min(len(harmful), n - n_b)
    n_b = min(len(safe), n - n_h)
    return harmful[:n_h] + safe[:n_b]


def _verdict(row: Mapping[str, Any]) -> tuple[str, str]:
    """(text, css class) of one example's verdict."""
    if row.get("set") == "harmful":
        if "attack_success" not in row:
            return "not judged", "note"
        return ("attack succeeded (unsafe)", "bad") if row.get("attack_success") else ("refused (safe)", "good")
    if "refused" not in row:
        return "not judged", "note"
    return ("over-refused", "bad") if row.get("refused") else ("answered", "good")


def _examples(rows: Sequence[Mapping[str, Any]], n: int) -> list[dict]:
    """The chosen rows, truncated: set, details (category, id), prompt, response, verdict and its css class."""
    out = []
    for r in select_examples(rows, n):
        details = [str(r.get("category") or ""), f"id {r['id']}" if r.get("id") not in (None, "") else ""]
        out.append(
            {
                "set": str(r.get("set", "")),
                "details": [d for d in details if d],
                "prompt": truncate(r.get("prompt"), PROMPT_CHARS),
                "response": truncate(r.get("response"), RESPONSE_CHARS),
                "verdict": _verdict(r)[0],
                "verdict_class": _verdict(r)[1],
            }
        )
    return out


PlotSource = str | Path | bytes | Figure


def _png(source: PlotSource) -> bytes | None:
    if isinstance(source, Figure):
        return png_bytes(source)
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = Path(source)
    return path.read_bytes() if path.is_file() else None


def _plot_items(plots: Mapping[str, PlotSource | None] | None) -> list[dict]:
    """name -> a PNG file (skipped when missing), PNG bytes or a Figure; the Markdown links ``<name>.png`` for
    bytes and figures (``write_safety_card`` writes them next to the card)."""
    plots = {n: p for n, p in (plots or {}).items() if p is not None}
    names = [n for n in _PLOT_ORDER if n in plots] + sorted(n for n in plots if n not in _PLOT_ORDER)
    items = []
    for name in names:
        data = _png(plots[name])
        if data is not None:
            file = Path(plots[name]).name if isinstance(plots[name], (str, Path)) else f"{name}.png"
            items.append(
                {
                    "name": name,
                    "file": file,
                    "caption": _PLOT_CAPTIONS.get(name, name),
                    "data": base64.b64encode(data).decode("ascii"),
                    "png": data,
                }
            )
    return items


# --------------------------------------------------------------------------- the card


_OVERRIDE_FIELDS = ("at", "by", "target", "status_at_time", "reason", "evidence", "audit_run")


def _overrides(records: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """Each override as the card shows it: every field one line, cut like a response; ``verified`` evidence left out."""
    out = []
    for r in records or []:
        item = {f: truncate(r.get(f, ""), RESPONSE_CHARS) for f in _OVERRIDE_FIELDS}
        out.append({**item, "evidence": "" if item["evidence"] == "verified" else item["evidence"]})
    return out


def _context(summary, items, plots, lineage, title, examples, overrides=None) -> dict:
    """What both templates show, selected and formatted (text not yet escaped: the templates escape it)."""
    summary = dict(summary or {})
    metrics = dict(summary.get("metrics") or {})
    reference, base = dict(summary.get("reference_metrics") or {}), dict(summary.get("base_metrics") or {})
    has_ref = bool(reference) or any(n.endswith("_delta") for n in metrics)
    has_base = bool(base) or any(n.endswith("_delta_vs_base") for n in metrics)
    status = str(summary.get("status") or "unevaluated")
    badge, color, dot = _BADGE.get(status, (status.upper(), "#6e7781", "⚪"))
    header = (
        ["Metric", "Value", "95% interval"]
        + (["Reference", "Δ vs reference"] if has_ref else [])
        + (["Δ vs base"] if has_base else [])
    )
    asr_rows = (items or {}).get("asr") or []
    shown = _examples(asr_rows, examples)
    return {
        "title": str(title),
        "status": status,
        "badge": badge,
        "color": color,
        "dot": dot,
        "reasons": [str(r) for r in summary.get("reasons") or []],
        "model_uri": summary.get("model_uri") or "n/a",
        "reference_uri": summary.get("reference_uri") or "none",
        "has_ref": has_ref,
        "header": header,
        "rows": [_metric_row(n, metrics, reference, base, has_ref, has_base) for n in _row_names(metrics, reference)],
        "breakdowns": _breakdowns(metrics, reference, has_ref),
        "plots": _plot_items(plots),
        "lineage": _lineage_rows(lineage or {}),
        "overrides": _overrides(overrides),
        "examples": shown,
        "showing": f"Showing {len(shown)} of {len(asr_rows)}; prompts cut to {PROMPT_CHARS} and responses to "
        f"{RESPONSE_CHARS} characters.",
    }


def safety_card(
    summary: Mapping[str, Any],
    *,
    items: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    plots: Mapping[str, PlotSource] | None = None,
    lineage: Mapping[str, Any] | None = None,
    title: str = "Safety card",
    examples: int = DEFAULT_EXAMPLES,
    overrides: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[str, str]:
    """(markdown, html) of one evaluation's safety card. Pure rendering.

    ``summary``: the evaluation's summary dict (``status``, ``reasons``, ``model_uri``, ``metrics``,
    ``reference_uri``, ``reference_metrics``, ``base_metrics``); ``items``: suite -> rows (``asr`` rows give the
    examples); ``plots``: name -> PNG path (missing files are skipped), PNG bytes or matplotlib Figure;
    ``lineage``: flat dotted keys (``data.name``) or nested dicts; ``examples``: how many generations to show;
    ``overrides``: every forced promotion of the version, oldest first (``at``, ``by``, ``target``,
    ``status_at_time``, ``reason``, ``evidence``, ``audit_run``), each listed under "Overrides".
    """
    context = _context(summary, items, plots, lineage, title, examples, overrides)
    md = _MARKDOWN.get_template("card.md.j2").render(context)
    page = _HTML.get_template("card.html.j2").render(context)
    return md, page


def write_safety_card(out_dir: str | Path, *, summary: Mapping[str, Any], **card) -> tuple[Path, Path]:
    """Write safety_card.md and safety_card.html into ``out_dir`` (and ``<name>.png`` for plots given as bytes or
    figures, which the Markdown links); ``card``: the options of ``safety_card``. Returns the paths (md, html)."""
    md, page = safety_card(summary, **card)
    plots = card.get("plots")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for plot in _plot_items(plots):
        if not isinstance((plots or {})[plot["name"]], (str, Path)):
            (out / plot["file"]).write_bytes(plot["png"])
    md_path, html_path = out / "safety_card.md", out / "safety_card.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


__all__ = [
    "DEFAULT_EXAMPLES",
    "PROMPT_CHARS",
    "RESPONSE_CHARS",
    "md_escape",
    "safety_card",
    "select_examples",
    "truncate",
    "write_safety_card",
]
