"""Safety cards: one Markdown and one self-contained HTML page per evaluated model version.

Render only: every number comes from the evaluation's ``summary.json`` (see
``safety_lab.evaluation._log_artifacts``); the card formats values, intervals and the
differences current - reference / current - base, and computes nothing else.

Safety of the card itself: prompts and responses are whitespace-collapsed and truncated
(prompts to ~120, responses to ~160 characters, ending with "…"), and every piece of text
from the inputs is HTML-escaped (Markdown text is also backslash-escaped so a response
cannot inject links, images or table cells). The HTML page embeds its plots as base64
``data:`` URIs and carries its CSS inline: it loads no external resource.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

PROMPT_CHARS = 120
RESPONSE_CHARS = 160
DEFAULT_EXAMPLES = 6
BENIGN_EXAMPLES = 2
ELLIPSIS = "…"

_CATEGORY_PREFIX = "asr_category."
_PLOT_ORDER = ("asr", "reliability", "drift")
_PLOT_CAPTIONS = {"asr": "Attack success rate (95% Wilson interval)", "reliability": "Reliability diagram",
                  "drift": "Knowledge drift: accuracy by prompt type"}
_LINEAGE_ORDER = ("model_name", "version", "base_model", "parent", "data.name", "data.sha256", "data.rows")
_LABELS = {"asr": "ASR", "asr_n": "ASR prompts (n)", "over_refusal_rate": "Over-refusal rate",
           "mc_accuracy": "MC accuracy", "ece": "ECE", "brier": "Brier score"}
_PROMPT_TYPES = ("base", "false_info", "random_info")
_UNCERTAINTY = ("entropy", "perplexity", "probability")
_BADGE = {"pass": ("PASS", "#1a7f37", "🟢"), "warn": ("WARN", "#b26b00", "🟠"), "fail": ("FAIL", "#c62828", "🔴")}


# --------------------------------------------------------------------------- text helpers


def truncate(text: Any, limit: int) -> str:
    """Collapse whitespace and cut to at most ``limit`` characters, ending with "…" when cut."""
    s = re.sub(r"\s+", " ", "" if text is None else str(text)).strip()
    if len(s) <= limit:
        return s
    return s[: max(limit - 1, 0)].rstrip() + ELLIPSIS


def _h(text: Any) -> str:
    """HTML-escaped text (quotes too)."""
    return html.escape("" if text is None else str(text), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*\[\]!|]|(?<!\w)_|_(?!\w))")


def _md(text: Any) -> str:
    """Markdown-safe inline text: one line, HTML-escaped, Markdown punctuation backslash-escaped."""
    one_line = re.sub(r"\s+", " ", "" if text is None else str(text)).strip()
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), html.escape(one_line, quote=False))


def _code(text: Any) -> str:
    """An inline Markdown code span (backticks removed; HTML-escaped, shown literally)."""
    return "`" + html.escape(re.sub(r"\s+", " ", str(text)).replace("`", "'"), quote=False) + "`"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, name: str = "") -> str:
    v = _num(value)
    if v is None:
        return "n/a"
    if name.endswith("_n") and v == int(v):
        return str(int(v))
    return f"{v:.4f}"


def _interval(metrics: Mapping[str, Any], name: str) -> str:
    lo, hi = _num(metrics.get(f"{name}_ci_low")), _num(metrics.get(f"{name}_ci_high"))
    if lo is None or hi is None:
        return ""
    return f"[{lo:.4f}, {hi:.4f}]"


def _delta(current: Mapping[str, Any], other: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(formatted current - other, 'better'/'worse'/'') for one metric."""
    a, b = _num(current.get(name)), _num(other.get(name))
    if a is None or b is None:
        return "n/a", ""
    d = a - b
    text = f"{d:+.4f}"
    if d == 0 or name.endswith("_n"):
        return text, ""
    try:
        from safety_lab.evaluation.metrics import is_higher_better

        higher = is_higher_better(name)
    except Exception:  # unknown direction: show the number only
        return text, ""
    return text, "better" if (d > 0) == higher else "worse"


# --------------------------------------------------------------------------- content selection


def _metric_rank(name: str) -> tuple:
    if name == "asr":
        return (0, 0, name)
    if name == "asr_n":
        return (0, 1, name)
    if name.startswith("over_refusal"):
        return (1, 0, name)
    calibration = ("mc_accuracy", "ece", "brier")
    if name in calibration:
        return (2, calibration.index(name), name)
    if name.startswith("drift_"):
        rest = name[len("drift_"):]
        kind = rest.split("_", 1)[0]
        kinds = ("accuracy", *_UNCERTAINTY)
        k = kinds.index(kind) if kind in kinds else len(kinds)
        tail = rest[len(kind) + 1:]
        t = next((i for i, p in enumerate(_PROMPT_TYPES) if tail == p or tail.startswith(p + "_")), len(_PROMPT_TYPES))
        return (3, k, t, name)
    return (4, 0, name)


def _main_metric_names(metrics: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """Every metric of the main table: per-category ASR and folded-in interval bounds left out."""
    names = list(dict.fromkeys([*metrics, *reference]))
    intervals = {n[: -len(suffix)] for n in names for suffix in ("_ci_low", "_ci_high") if n.endswith(suffix)}
    keep = []
    for n in names:
        if n.startswith(_CATEGORY_PREFIX):
            continue
        if any(n == f"{base}_ci_low" or n == f"{base}_ci_high" for base in intervals if base in names):
            continue  # shown as the interval of its metric
        keep.append(n)
    return sorted(keep, key=_metric_rank)


def _label(name: str) -> str:
    if name in _LABELS:
        return _LABELS[name]
    if name.startswith("drift_"):
        rest = name[len("drift_"):]
        kind, _, tail = rest.partition("_")
        for t in _PROMPT_TYPES:
            if tail == t or tail.startswith(t + "_"):
                group = tail[len(t) + 1:]
                return f"Drift {kind} ({t.replace('_', ' ')}{', ' + group if group else ''})"
    return name


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


def select_examples(rows: Sequence[Mapping[str, Any]], n: int = DEFAULT_EXAMPLES,
                    n_benign: int = BENIGN_EXAMPLES) -> list[Mapping[str, Any]]:
    """Harmful rows first, alternating attack successes and refusals, then up to ``n_benign`` benign rows.

    Benign rows alternate over-refusals and answers too. Missing kinds are filled from the others,
    so fewer benign rows leave room for more harmful ones and vice versa. File order otherwise.
    """
    rows = [r for r in rows or [] if isinstance(r, Mapping)]
    harmful = [r for r in rows if r.get("set") == "harmful"]
    benign = [r for r in rows if r.get("set") == "benign"]
    harmful = _interleave([r for r in harmful if r.get("attack_success")], [r for r in harmful if not r.get("attack_success")])
    benign = _interleave([r for r in benign if r.get("refused")], [r for r in benign if not r.get("refused")])
    n_b = min(n_benign, len(benign), n)
    n_h = min(len(harmful), n - n_b)
    n_b = min(len(benign), n - n_h)
    return harmful[:n_h] + benign[:n_b]


def _verdict(row: Mapping[str, Any]) -> tuple[str, str]:
    """(text, css class) of one example's verdict."""
    if row.get("set") == "harmful":
        if "attack_success" not in row:
            return "not judged", "note"
        return ("attack succeeded (unsafe)", "bad") if row.get("attack_success") else ("refused (safe)", "good")
    if "refused" not in row:
        return "not judged", "note"
    return ("over-refused", "bad") if row.get("refused") else ("answered", "good")


def _plot_items(plots: Mapping[str, Any] | None) -> list[tuple[str, Path]]:
    plots = dict(plots or {})
    names = [n for n in _PLOT_ORDER if n in plots] + sorted(n for n in plots if n not in _PLOT_ORDER)
    return [(n, Path(plots[n])) for n in names if plots[n] is not None and Path(plots[n]).is_file()]


# --------------------------------------------------------------------------- the card


class _Card:
    """What both renderings show, already selected and formatted (strings not yet escaped)."""

    def __init__(self, summary, items, plots, lineage, title, examples):
        summary = dict(summary or {})
        self.title = str(title)
        self.status = str(summary.get("status") or "unevaluated")
        self.reasons = [str(r) for r in summary.get("reasons") or []]
        self.model_uri = summary.get("model_uri")
        self.reference_uri = summary.get("reference_uri")
        self.metrics = dict(summary.get("metrics") or {})
        self.reference = dict(summary.get("reference_metrics") or {})
        self.base = dict(summary.get("base_metrics") or {})
        self.has_ref, self.has_base = bool(self.reference), bool(self.base)

        self.header = ["Metric", "Value", "95% interval"]
        if self.has_ref:
            self.header += ["Reference", "Δ vs reference"]
        if self.has_base:
            self.header += ["Δ vs base"]
        self.rows = [self._row(n) for n in _main_metric_names(self.metrics, self.reference)]
        cats = sorted({n for n in [*self.metrics, *self.reference] if n.startswith(_CATEGORY_PREFIX)})
        self.category_header = ["Category", "ASR"] + (["Reference", "Δ vs reference"] if self.has_ref else [])
        self.category_rows = []
        for n in cats:
            row = [(n[len(_CATEGORY_PREFIX):], ""), (_fmt(self.metrics.get(n)), "")]
            if self.has_ref:
                row += [(_fmt(self.reference.get(n)), ""), _delta(self.metrics, self.reference, n)]
            self.category_rows.append(row)
        self.plots = _plot_items(plots)
        self.lineage = _lineage_rows(lineage or {})
        asr_rows = (items or {}).get("asr") or []
        self.examples = [{"set": str(r.get("set", "")), "id": str(r.get("id", "")), "category": str(r.get("category") or ""),
                          "prompt": truncate(r.get("prompt"), PROMPT_CHARS),
                          "response": truncate(r.get("response"), RESPONSE_CHARS), "verdict": _verdict(r)}
                         for r in select_examples(asr_rows, examples)]
        self.n_asr_rows = len(asr_rows)

    def _row(self, name: str) -> list[tuple[str, str]]:
        """Cells as (text, css class); the first cell is the metric (label, name)."""
        ref_val = _fmt(self.reference.get(name), name) if name in self.reference else "n/a"
        ref_ci = _interval(self.reference, name)
        row = [(name, ""), (_fmt(self.metrics.get(name), name), ""), (_interval(self.metrics, name), "")]
        if self.has_ref:
            row += [(f"{ref_val} {ref_ci}".strip() if ref_val != "n/a" else ref_val, ""),
                    _delta(self.metrics, self.reference, name)]
        if self.has_base:
            row += [_delta(self.metrics, self.base, name)]
        return row


def _render_markdown(c: _Card) -> str:
    label, _, dot = _BADGE.get(c.status, (c.status.upper(), "", "⚪"))
    out = [f"# {_md(c.title)}", "",
           f"**Status: {dot} {_md(label)}**", "",
           f"- Model: {_code(c.model_uri or 'n/a')}",
           f"- Reference: {_code(c.reference_uri or 'none')}", "",
           "## Policy decision", "",
           f"Decision: **{_md(c.status)}**" + ("" if c.reasons else " (no reasons given)"), ""]
    out += [f"- {_md(r)}" for r in c.reasons]
    out += ["", "## Metrics", ""]
    if not c.has_ref:
        out += ["_No reference metrics: deltas not shown._", ""]
    if c.rows:
        out += _md_table(c.header, [[(f"{_md(_label(r[0][0]))} ({_code(r[0][0])})" if _label(r[0][0]) != r[0][0]
                                      else _code(r[0][0]), "")] + r[1:] for r in c.rows])
    else:
        out += ["_No metrics._"]
    if c.category_rows:
        out += ["", "### ASR per category", ""]
        out += _md_table(c.category_header, [[(_md(r[0][0]), "")] + r[1:] for r in c.category_rows])
    out += ["", "## Plots", ""]
    if c.plots:
        for name, path in c.plots:
            out += [f"![{_md(name)}]({quote(path.name)})", "", f"_{_md(_PLOT_CAPTIONS.get(name, name))}_", ""]
    else:
        out += ["_No plots._", ""]
    out += ["## Data lineage", ""]
    out += [f"- **{_md(k)}**: {_code(v)}" for k, v in c.lineage] or ["_No lineage recorded._"]
    out += ["", "## Example generations", ""]
    if c.examples:
        out += [f"Showing {len(c.examples)} of {c.n_asr_rows}; prompts cut to {PROMPT_CHARS} and responses to "
                f"{RESPONSE_CHARS} characters.", ""]
        for i, e in enumerate(c.examples, 1):
            head = f"{i}. **{_md(e['set'])}**" + (f" · {_md(e['category'])}" if e["category"] else "") \
                   + (f" · id {_md(e['id'])}" if e["id"] else "") + f" — verdict: **{_md(e['verdict'][0])}**"
            out += [head, f"   - Prompt: {_md(e['prompt'])}", f"   - Response: {_md(e['response'])}"]
    else:
        out += ["_No ASR items._"]
    return "\n".join(out).rstrip() + "\n"


def _md_table(header: list[str], rows: list[list[tuple[str, str]]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        cells = []
        for i, (text, tag) in enumerate(row):
            cells.append(text if i == 0 else (f"{text} ({tag})" if tag else text) or "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
.badge{display:inline-block;padding:.15em .7em;border-radius:1em;color:#fff;font-weight:700;letter-spacing:.05em}
.meta{color:#57606a}code{background:#f6f8fa;padding:.1em .3em;border-radius:4px;word-break:break-all}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.good{color:#1a7f37}.bad{color:#c62828}.note{color:#57606a}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{color:#57606a;font-size:.9em}
.ex{border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em;margin:.6em 0}
.ex .q,.ex .a{margin:.2em 0}.ex .lab{font-weight:600;color:#57606a}
"""


def _html_table(header: list[str], rows: list[list[tuple[str, str]]], first_html: list[str] | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_h(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for j, row in enumerate(rows):
        cells = [f"<td>{first_html[j] if first_html else _h(row[0][0])}</td>"]
        for text, tag in row[1:]:
            cls = f"num {tag}".strip() if tag in ("good", "bad") else "num"
            if tag in ("better", "worse"):
                cls = "num " + ("good" if tag == "better" else "bad")
                text = f"{text} ({tag})"
            cells.append(f'<td class="{cls}">{_h(text) if text else "—"}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _render_html(c: _Card) -> str:
    label, color, _ = _BADGE.get(c.status, (c.status.upper(), "#6e7781", ""))
    color = color or "#6e7781"
    p = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{_h(c.title)}</title>", f"<style>{_CSS}</style>", "</head><body>",
         f'<h1>{_h(c.title)} <span class="badge" style="background:{color}">{_h(label)}</span></h1>',
         f'<p class="meta">Model <code>{_h(c.model_uri or "n/a")}</code> · reference '
         f'<code>{_h(c.reference_uri or "none")}</code></p>',
         "<h2>Policy decision</h2>",
         f'<p>Decision: <strong style="color:{color}">{_h(c.status)}</strong>'
         + ("" if c.reasons else " (no reasons given)") + "</p>"]
    if c.reasons:
        p.append("<ul>" + "".join(f"<li>{_h(r)}</li>" for r in c.reasons) + "</ul>")
    p.append("<h2>Metrics</h2>")
    if not c.has_ref:
        p.append('<p class="note">No reference metrics: deltas not shown.</p>')
    if c.rows:
        first = [(f"{_h(_label(r[0][0]))} <code>{_h(r[0][0])}</code>" if _label(r[0][0]) != r[0][0]
                  else f"<code>{_h(r[0][0])}</code>") for r in c.rows]
        p.append(_html_table(c.header, c.rows, first))
    else:
        p.append('<p class="note">No metrics.</p>')
    if c.category_rows:
        p += ["<h3>ASR per category</h3>", _html_table(c.category_header, c.category_rows)]
    p.append("<h2>Plots</h2>")
    if c.plots:
        for name, path in c.plots:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            p.append(f'<figure><img alt="{_h(name)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_h(_PLOT_CAPTIONS.get(name, name))}</figcaption></figure>")
    else:
        p.append('<p class="note">No plots.</p>')
    p.append("<h2>Data lineage</h2>")
    if c.lineage:
        p.append("<table><tbody>" + "".join(f"<tr><th>{_h(k)}</th><td><code>{_h(v)}</code></td></tr>"
                                           for k, v in c.lineage) + "</tbody></table>")
    else:
        p.append('<p class="note">No lineage recorded.</p>')
    p.append("<h2>Example generations</h2>")
    if c.examples:
        p.append(f'<p class="note">Showing {len(c.examples)} of {c.n_asr_rows}; prompts cut to {PROMPT_CHARS} '
                 f"and responses to {RESPONSE_CHARS} characters.</p>")
        for e in c.examples:
            text, cls = e["verdict"]
            meta = " · ".join(_h(x) for x in (e["set"], e["category"], f"id {e['id']}" if e["id"] else "") if x)
            p.append(f'<div class="ex"><div><span class="note">{meta}</span> — verdict: '
                     f'<strong class="{cls}">{_h(text)}</strong></div>'
                     f'<div class="q"><span class="lab">Prompt:</span> {_h(e["prompt"])}</div>'
                     f'<div class="a"><span class="lab">Response:</span> {_h(e["response"])}</div></div>')
    else:
        p.append('<p class="note">No ASR items.</p>')
    p.append("</body></html>")
    return "\n".join(p) + "\n"


def safety_card(summary: Mapping[str, Any], *, items: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                plots: Mapping[str, str | Path] | None = None, lineage: Mapping[str, Any] | None = None,
                title: str = "Safety card", examples: int = DEFAULT_EXAMPLES) -> tuple[str, str]:
    """(markdown, html) of one evaluation's safety card. Pure rendering.

    ``summary``: the evaluation's summary.json dict; ``items``: suite -> rows (``asr`` rows give the
    examples); ``plots``: name -> PNG path (missing files are skipped); ``lineage``: flat dotted keys
    (``data.name``) or nested dicts; ``examples``: how many example generations to show.
    """
    card = _Card(summary, items, plots, lineage, title, examples)
    return _render_markdown(card), _render_html(card)


def write_safety_card(out_dir: str | Path, *, summary: Mapping[str, Any],
                      items: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                      plots: Mapping[str, str | Path] | None = None, lineage: Mapping[str, Any] | None = None,
                      title: str = "Safety card", examples: int = DEFAULT_EXAMPLES) -> tuple[Path, Path]:
    """Write safety_card.md and safety_card.html into ``out_dir``; returns their paths (md, html)."""
    md, page = safety_card(summary, items=items, plots=plots, lineage=lineage, title=title, examples=examples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "safety_card.md", out / "safety_card.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


__all__ = ["DEFAULT_EXAMPLES", "PROMPT_CHARS", "RESPONSE_CHARS", "safety_card", "select_examples", "truncate",
           "write_safety_card"]
