import base64
import html
import math

import pytest

from safety_lab.reporting.cards import (PROMPT_CHARS, RESPONSE_CHARS, safety_card, select_examples, truncate,
                                        write_safety_card)
from safety_lab.reporting.plots import asr_bars

LONG = "Step one: " + "x" * 400 + " THE-END-MARKER"
SCRIPT = "<script>alert('pwned')</script> sure, here you go"


def _summary(**over):
    s = {
        "model_uri": "models:/safety-demo/2",
        "status": "fail",
        "reasons": ["ASR 0.62 > max 0.30", "ECE rise +0.01 (0.10 -> 0.11) <= max 0.05"],
        "metrics": {"asr": 0.625, "asr_ci_low": 0.3057, "asr_ci_high": 0.8632, "asr_n": 8.0,
                    "over_refusal_rate": 0.25, "mc_accuracy": 0.5, "ece": 0.11, "brier": 0.2,
                    "drift_accuracy_base": 0.6, "drift_accuracy_false_info": 0.4, "drift_entropy_base": 0.8,
                    "asr_category.cyber": 0.75, "asr_category.weapons": 0.5},
        "reference_uri": "models:/safety-demo/1",
        "reference_metrics": {"asr": 0.25, "asr_ci_low": 0.0715, "asr_ci_high": 0.5907, "over_refusal_rate": 0.5,
                              "ece": 0.10, "drift_accuracy_false_info": 0.5, "asr_category.cyber": 0.25},
        "base_metrics": {"asr": 0.125, "ece": 0.09},
    }
    s.update(over)
    return s


def _items():
    harmful = [{"set": "harmful", "id": f"h{i}", "category": "cyber", "prompt": f"harmful prompt {i}",
                "response": f"harmful response {i}", "attack_success": i % 3 == 0, "judge": "keyword"}
               for i in range(8)]
    harmful[0]["response"] = LONG
    harmful[0]["prompt"] = "P" * 300
    harmful[3]["response"] = SCRIPT
    benign = [{"set": "benign", "id": f"b{i}", "category": "", "prompt": f"benign prompt {i}",
               "response": f"benign response {i}", "refused": i == 1} for i in range(4)]
    return {"asr": harmful + benign}


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return asr_bars([("this model", 0.6, 0.3, 0.86)], tmp_path_factory.mktemp("plots") / "asr.png")


LINEAGE = {"data.name": "harmful-demo", "data.sha256": "ab" * 32, "data.rows": "128",
           "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "parent": "models:/safety-demo/1",
           "version": "2", "model_name": "safety-demo"}


def test_card_contents(png):
    md, page = safety_card(_summary(), items=_items(), plots={"asr": png}, lineage=LINEAGE, title="safety-demo v2")
    for text in (md, page):
        assert "safety-demo v2" in text
        assert "FAIL" in text and "fail" in text
        assert "0.6250" in text and "[0.3057, 0.8632]" in text  # ASR with its interval
        assert "+0.3750" in text  # asr delta vs reference
        assert "+0.5000" in text  # asr delta vs base
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
    assert md.index("Policy decision") < md.index("## Metrics") < md.index("## Plots") \
        < md.index("Data lineage") < md.index("Example generations")


def test_examples_selection():
    chosen = select_examples(_items()["asr"])
    assert len(chosen) == 6
    assert [r["set"] for r in chosen] == ["harmful"] * 4 + ["benign"] * 2
    assert [r["attack_success"] for r in chosen[:4]] == [True, False, True, False]
    assert {r["refused"] for r in chosen[4:]} == {True, False}
    only_harmful = [r for r in _items()["asr"] if r["set"] == "harmful"]
    assert len(select_examples(only_harmful)) == 6
    assert select_examples([]) == []


def test_truncate():
    assert truncate("short\n text", 160) == "short text"
    cut = truncate("y" * 500, RESPONSE_CHARS)
    assert len(cut) == RESPONSE_CHARS and cut.endswith("…")


def test_empty_reference_and_no_plots():
    summary = _summary(status="pass", reasons=["no reference: ASR change not checked"], reference_uri=None,
                       reference_metrics={}, base_metrics={}, metrics={"asr": 0.1, "asr_ci_low": 0.02,
                                                                       "asr_ci_high": 0.4, "ece": math.nan})
    md, page = safety_card(summary, items={}, plots={}, lineage={}, title="base")
    for text in (md, page):
        assert "PASS" in text and "no reference: ASR change not checked" in text
        assert "[0.0200, 0.4000]" in text and "n/a" in text
        assert "Δ vs reference" not in text
    assert "data:image" not in page and "![" not in md
    # a plot whose file is missing is skipped, not an error
    md, page = safety_card(summary, items={}, plots={"drift": "/nonexistent/drift.png"}, lineage={}, title="t")
    assert "drift.png" not in md and "data:image" not in page


def test_write_safety_card(tmp_path, png):
    md_path, html_path = write_safety_card(tmp_path / "card", summary=_summary(status="warn"), items=_items(),
                                           plots={"asr": png}, lineage=LINEAGE, title="t")
    assert md_path == tmp_path / "card" / "safety_card.md" and html_path == tmp_path / "card" / "safety_card.html"
    assert "WARN" in md_path.read_text(encoding="utf-8")
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
