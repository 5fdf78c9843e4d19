"""safety_lab.reporting.tables: the one table renderer and the metric columns built from the specs."""

import csv
import io
import json

import pytest

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation.specs import METRICS
from safety_lab.reporting.tables import (
    FORMATS,
    headline_columns,
    metric_cells,
    render,
    tagged_columns,
)

ROWS = [{"model": "base", "asr": "0.100", "note": "two\nlines | pipe"}, {"model": "safe->harmful", "asr": ""}]


def test_render_every_format():
    table = render(ROWS).splitlines()
    assert table[0].split() == ["model", "asr", "note"] and set(table[1].replace(" ", "")) == {"-"}
    assert table[2].index("0.100") == table[0].index("asr")  # aligned columns
    assert table[2].endswith("two lines | pipe")  # one line per row
    md = render(ROWS, "md").splitlines()
    assert md[:2] == ["| model | asr | note |", "|---|---|---|"]
    assert md[2] == "| base | 0.100 | two lines \\| pipe |" and md[3] == "| safe->harmful |  |  |"
    assert list(csv.DictReader(io.StringIO(render(ROWS, "csv")))) == [
        {"model": "base", "asr": "0.100", "note": "two\nlines | pipe"},
        {"model": "safe->harmful", "asr": "", "note": ""},
    ]
    assert json.loads(render(ROWS, "json", columns=["asr", "model"])) == [
        {"asr": "0.100", "model": "base"},
        {"asr": "", "model": "safe->harmful"},
    ]
    assert render([], "table", ["a", "b"], empty="(none)").splitlines()[-1] == "(none)"
    assert render([], "csv", ["a", "b"]) == "a,b"
    assert FORMATS == ("table", "csv", "json", "markdown")


def test_render_unknown_format_is_a_one_line_error():
    with pytest.raises(SafetyLabError, match="unknown format 'xml'") as info:
        render(ROWS, "xml")
    assert info.value.field == "format"


def test_headline_columns_follow_the_specs():
    columns = headline_columns()
    keys = [c.key for c in columns]
    headline = [s.name for s in METRICS if s.headline]
    assert [k for k in keys if not k.endswith("_ci")] == headline  # every headline spec, in declaration order
    assert [k for k in keys if k.endswith("_ci")] == [f"{s.name}_ci" for s in METRICS if s.headline and s.interval]
    assert keys.index("asr_ci") == keys.index("asr") + 1
    assert "asr_n" not in keys and "drift_perplexity_base" not in keys  # not headline
    assert [c.key for c in headline_columns({"ece": 0.1, "asr": 0.2})] == ["asr", "asr_ci", "ece"]
    assert {c.spec.name for c in tagged_columns()} == {s.name for s in METRICS if s.tag and s.headline}


def test_metric_cells_format_floats_with_the_spec():
    m = {"asr": 0.24, "asr_ci_low": 0.16, "asr_ci_high": 0.352, "mc_accuracy": 0.5}
    cells = metric_cells(m)
    fmt = METRICS.get("asr").format
    assert cells["asr"] == fmt(0.24) and cells["asr_ci"] == f"[{fmt(0.16)}, {fmt(0.352)}]"
    assert cells["mc_accuracy"] == METRICS.get("mc_accuracy").format(0.5)
    assert cells["ece"] == "" and cells["over_refusal_rate_ci"] == ""  # absent metric: empty cell


def test_tag_cells_read_a_versions_safety_tags():
    by_key = {c.key: c for c in tagged_columns()}
    tags = {
        "safety.asr": "0.0700",
        "safety.asr_ci": "[0.03, 0.12]",
        "safety.over_refusal_rate_ci_low": "0.1",
        "safety.over_refusal_rate_ci_high": "0.4",
    }
    assert by_key["asr"].tag_cell(tags) == "0.0700" and by_key["asr_ci"].tag_cell(tags) == "[0.03, 0.12]"
    assert by_key["over_refusal_rate_ci"].tag_cell(tags) == "[0.1, 0.4]"  # bounds written as two tags
    assert by_key["ece"].tag_cell(tags) == ""
