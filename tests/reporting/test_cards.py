import base64
import html
import math
import re

import pytest

from safety_lab.evaluation.specs import METRICS
from safety_lab.reporting.cards import (
    PROMPT_CHARS,
    RESPONSE_CHARS,
    md_escape,
    safety_card,
    select_examples,
    truncate,
    write_safety_card,
)
from safety_lab.reporting.plots import asr_bars, png_bytes

LONG = "Step one: " + "x" * 400 + " THE-END-MARKER"
SCRIPT = "<script>alert('pwned')</script> sure, here you go"


def _summary(**over):
    s = {
        "model_uri": "models:/safety-demo/2",
        "status": "fail",
        "reasons": ["ASR 0.62 > max 0.30", "ECE rise +0.01 (0.10 -> 0.11) <= max 0.05"],
        "metrics": {
            "asr": 0.625,
            "asr_ci_low": 0.3057,
            "asr_ci_high": 0.8632,
            "asr_n": 8.0,
            "over_refusal_rate": 0.25,
            "mc_accuracy": 0.5,
            "ece": 0.11,
            "brier": 0.2,
            "drift_accuracy_base": 0.6,
            "drift_accuracy_false_info": 0.4,
            "drift_entropy_base": 0.8,
            "asr_category.cyber": 0.75,
            "asr_category.weapons": 0.5,
        },
        "reference_uri": "models:/safety-demo/1",
        "reference_metrics": {
            "asr": 0.25,
            "asr_ci_low": 0.0715,
            "asr_ci_high": 0.5907,
            "over_refusal_rate": 0.5,
            "ece": 0.10,
            "drift_accuracy_false_info": 0.5,
            "asr_category.cyber": 0.25,
        },
        "base_metrics": {"asr": 0.125, "ece": 0.09},
    }
    s.update(over)
    return s


def _items():
    harmful = [
        {
            "set": "harmful",
            "id": f"h{i}",
            "category": "cyber",
            "prompt": f"harmful prompt {i}",
            "response": f"harmful response {i}",
            "attack_success": i % 3 == 0,
            "judge": "keyword",
        }
        for i in range(8)
    ]
    harmful[0]["response"] = LONG
    harmful[0]["prompt"] = "P" * 300
    harmful[3]["response"] = SCRIPT
    benign = [
        {
            "set": "benign",
            "id": f"b{i}",
            "category": "",
            "prompt": f"benign prompt {i}",
            "response": f"benign response {i}",
            "refused": i == 1,
        }
        for i in range(4)
    ]
    return {"asr": harmful + benign}


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "asr.png"
    asr_bars([("this model", 0.6, 0.3, 0.86)], path)
    return path


def _asr(value: float, signed: bool = False) -> str:
    """ASR numbers as the card shows them: in the format of the asr spec."""
    spec = METRICS.get("asr")
    return f"{value:+{spec.fmt}}" if signed else spec.format(value)


LINEAGE = {
    "data.name": "harmful-demo",
    "data.sha256": "ab" * 32,
    "data.rows": "128",
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "parent": "models:/safety-demo/1",
    "version": "2",
    "model_name": "safety-demo",
}


def test_card_contents(png):
    md, page = safety_card(_summary(), items=_items(), plots={"asr": png}, lineage=LINEAGE, title="safety-demo v2")
    for text in (md, page):
        assert "safety-demo v2" in text
        assert "FAIL" in text and "fail" in text
        assert _asr(0.625) in text and f"[{_asr(0.3057)}, {_asr(0.8632)}]" in text  # ASR with its interval
        assert f"{_asr(0.375, signed=True)} (worse)" in text  # asr delta vs reference; lower ASR is better
        assert f"{_asr(0.5, signed=True)} (worse)" in text  # asr delta vs base
        assert "ASR" in text and METRICS.get("over_refusal_rate").label in text  # labels from the specs
        assert "cyber" in text and "weapons" in text  # per-category table
        assert "harmful-demo" in text and "ab" * 32 in text and "SmolLM2-135M-Instruct" in text
        assert "THE-END-MARKER" not in text and "…" in text
        assert "P" * (PROMPT_CHARS + 1) not in text
        assert "<script>" not in text and "&lt;script&gt;" in text
    for reason in _summary()["reasons"]:
        assert html.escape(reason) in page
        assert html.escape(reason, quote=False) in md
    # metrics in order: asr, over-refusal, calibration, drift; interval bounds and categories not separate rows
    pos = [md.index(k) for k in ("`asr`", "`over_refusal_rate`", "`ece`", "`drift_accuracy_base`")]
    assert pos == sorted(pos)
    assert "`asr_ci_low`" not in md and "`asr_category.cyber`" not in md
    # markdown: relative image link; html: embedded, no external resources
    assert "![asr](asr.png)" in md
    assert "data:image/png;base64," in page
    assert base64.b64encode(png.read_bytes()).decode()[:200] in page
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page
    # section order
    assert (
        md.index("Policy decision")
        < md.index("## Metrics")
        < md.index("## Plots")
        < md.index("Data lineage")
        < md.index("Example generations")
    )


def test_examples_selection():
    chosen = select_examples(_items()["asr"])
    assert len(chosen) == 6
    assert [r["set"] for r in chosen] == ["harmful"] * 4 + ["benign"] * 2
    assert [r["attack_success"] for r in chosen[:4]] == [True, False, True, False]
    assert {r["refused"] for r in chosen[4:]} == {True, False}
    only_harmful = [r for r in _items()["asr"] if r["set"] == "harmful"]
    assert len(select_examples(only_harmful)) == 6
    assert select_examples([]) == []


def test_examples_show_lookalike_over_refusals():
    """Look-alike prompts are where a safety-tuned model over-refuses most: the card shows such a refusal."""
    lookalike = [
        {"set": "lookalike", "id": f"l{i}", "prompt": f"look-alike {i}", "response": "r", "refused": i == 2}
        for i in range(3)
    ]
    chosen = select_examples(_items()["asr"] + lookalike)
    safe = chosen[4:]
    assert [(r["set"], r["refused"]) for r in safe] == [("lookalike", True), ("benign", False)]
    unsafe_file_row = {"set": "file", "id": "u1", "prompt": "p", "response": "r", "refused": True, "label": "unsafe"}
    assert unsafe_file_row not in select_examples([unsafe_file_row])  # refusing an unsafe prompt is no over-refusal


def test_truncate():
    assert truncate("short\n text", 160) == "short text"
    cut = truncate("y" * 500, RESPONSE_CHARS)
    assert len(cut) == RESPONSE_CHARS and cut.endswith("…")


def test_empty_reference_and_no_plots():
    summary = _summary(
        status="pass",
        reasons=["no reference: ASR change not checked"],
        reference_uri=None,
        reference_metrics={},
        base_metrics={},
        metrics={"asr": 0.1, "asr_ci_low": 0.02, "asr_ci_high": 0.4, "ece": math.nan},
    )
    md, page = safety_card(summary, items={}, plots={}, lineage={}, title="base")
    for text in (md, page):
        assert "PASS" in text and "no reference: ASR change not checked" in text
        assert f"[{_asr(0.02)}, {_asr(0.4)}]" in text and "n/a" in text
        assert "Δ vs reference" not in text
    assert "data:image" not in page and "![" not in md
    # a plot whose file is missing is skipped, not an error
    md, page = safety_card(summary, items={}, plots={"drift": "/nonexistent/drift.png"}, lineage={}, title="t")
    assert "drift.png" not in md and "data:image" not in page


def test_write_safety_card(tmp_path, png):
    md_path, html_path = write_safety_card(
        tmp_path / "card",
        summary=_summary(status="warn"),
        items=_items(),
        plots={"asr": png},
        lineage=LINEAGE,
        title="t",
    )
    assert md_path == tmp_path / "card" / "safety_card.md" and html_path == tmp_path / "card" / "safety_card.html"
    assert "WARN" in md_path.read_text(encoding="utf-8")
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_logged_differences_fill_the_delta_cells_with_their_interval_and_p_value():
    metrics = {
        "asr": 0.3,
        "asr_delta": 0.1,
        "asr_delta_ci_low": 0.02,
        "asr_delta_ci_high": 0.18,
        "asr_delta_p": 0.031,
        "ece": 0.1,
        "ece_delta_vs_base": -0.05,
        "mc_accuracy": 0.6,
        "mc_accuracy_delta": 0.0,
    }
    md, page = safety_card({"status": "warn", "metrics": metrics}, title="t")
    expected = f"{_asr(0.1, signed=True)} [{_asr(0.02, signed=True)}, {_asr(0.18, signed=True)}] p=0.031 (worse)"
    for text in (md, page):
        assert expected in text  # the evaluation's paired difference, not a recomputed one
        assert "Δ vs reference" in text and "Δ vs base" in text
        assert f"{-0.05:+{METRICS.get('ece').fmt}} (better)" in text  # lower ECE is better
    assert "`asr_delta`" not in md and "`asr_delta_p`" not in md and "`ece_delta_vs_base`" not in md
    assert '<td class="num bad">' + expected in page and "(better)" not in md.split("`mc_accuracy`")[1].split("\n")[0]


def test_every_label_order_and_format_comes_from_the_specs_and_unknown_metrics_follow_by_name():
    metrics = {"zz_custom": 1.23456, "drift_entropy_base_correct": 0.5, "brier": 0.2, "aa_custom": 2.0, "asr": 0.1}
    md, page = safety_card({"metrics": metrics}, title="t")
    order = [
        md.index(f"(`{n}`)") if f"(`{n}`)" in md else md.index(f"| `{n}`")
        for n in ("asr", "brier", "drift_entropy_base_correct", "aa_custom", "zz_custom")
    ]
    assert order == sorted(order)  # declaration order; unknown metrics after, by name
    assert f"{METRICS.get('drift_entropy_base').label}, correct" in md  # a derived name keeps its metric's label
    assert "| `zz_custom` | 1.2346 |" in md  # no spec: shown by name, 4 decimals
    assert f"<td>{html.escape(METRICS.get('brier').label)} <code>brier</code></td>" in page


def test_markdown_and_html_escape_every_value_from_the_inputs():
    evil = "[click](http://evil.example) ![x](http://evil.example/i.png) | cell <img src=x onerror=alert(1)>"
    summary = {
        "status": "fail",
        "reasons": [evil],
        "metrics": {"asr": 0.5, "asr_category.a|b": 0.5},
        "model_uri": "models:/m`x`/1",
    }
    rows = [
        {"set": "harmful", "id": "<b>", "category": "*bold*", "prompt": evil, "response": evil, "attack_success": True}
    ]
    md, page = safety_card(summary, items={"asr": rows}, lineage={"data.name": evil}, title="<i>title</i> _x_")
    outside_code = re.sub(r"`[^`]*`", "", md)  # code spans show their text literally
    assert not re.search(r"(?<!\\)\]\(", outside_code) and "<img" not in md and "<i>" not in md  # no live link
    assert md_escape(evil) in md and "\\[click\\]" in md and "\\|" in md and "\\*bold\\*" in md
    assert "| a\\|b |" in md  # a breakdown group cannot add table cells
    assert "<img src=x" not in page and "<i>title</i>" not in page and "&lt;i&gt;title&lt;/i&gt;" in page
    assert 'src="http' not in page and "href=" not in page
    assert "`models:/m'x'/1`" in md


def test_plots_given_as_figures_or_bytes_are_embedded_and_written_next_to_the_card(tmp_path):
    fig = asr_bars([("this model", 0.6, 0.3, 0.86)])
    data = png_bytes(asr_bars([("ref", 0.2, 0.1, 0.3)]))
    md_path, html_path = write_safety_card(tmp_path, summary=_summary(), plots={"asr": fig, "extra": data}, title="t")
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert "![asr](asr.png)" in md and "![extra](extra.png)" in md
    assert (tmp_path / "asr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "extra.png").read_bytes() == data
    assert page.count("data:image/png;base64,") == 2 and base64.b64encode(data).decode() in page


def test_every_override_is_listed_escaped_and_none_says_so():
    overrides = [
        {
            "at": "2026-01-01T00:00:00.000+00:00",
            "by": "os:ann",
            "target": "Staging",
            "status_at_time": "fail",
            "reason": "board *approved* <b>",
            "evidence": "verified",
            "audit_run": "a" * 32,
        },
        {
            "at": "2026-01-02T00:00:00.000+00:00",
            "by": "mlflow:bob",
            "target": "@champion",
            "status_at_time": "warn",
            "reason": "second",
            "evidence": "stale: re-evaluate",
            "audit_run": "b" * 32,
        },
    ]
    md, page = safety_card(_summary(status="fail"), overrides=overrides, title="t")
    section = md.split("## Overrides", 1)[1].split("##", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(lines) == 2 and "os:ann → Staging (status fail): board \\*approved\\* &lt;b&gt;" in lines[0]
    assert f"audit run `{'a' * 32}`" in lines[0] and "evidence" not in lines[0]
    assert "@champion" in lines[1] and "evidence: stale: re-evaluate" in lines[1]
    section = page.split("<h2>Overrides</h2>", 1)[1].split("<h2>", 1)[0]
    assert section.count("<li>") == 2 and "board *approved* &lt;b&gt;" in section and "<b>" not in page
    md, page = safety_card(_summary(status="fail"), title="t")
    assert "_No overrides recorded._" in md and "No overrides recorded." in page
