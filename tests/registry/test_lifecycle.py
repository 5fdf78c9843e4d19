"""safety_lab.registry.lifecycle: the promotion gate, overrides + audit runs, lineage tree, report formats."""
from __future__ import annotations

import csv
import io
import json
import warnings

import pytest
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.registry.lifecycle import (
    AUDIT_EXPERIMENT,
    REPORT_COLUMNS,
    GateRefused,
    format_report,
    lineage_tree,
    promote,
    report_rows,
)


@pytest.fixture
def registry(mlflow_store, tmp_path):
    """A helper that adds a version of model 'm' with the given safety status and extra tags."""
    client = MlflowClient()
    dummy = tmp_path / "dummy"
    dummy.mkdir(exist_ok=True)
    client.create_registered_model("m")

    def add(status: str | None = "pass", name: str = "m", **extra) -> str:
        tags = {"data.name": extra.pop("data", "safe"), "base_model": "tiny", **extra}
        if status is not None:
            tags["safety.status"] = status
            tags.setdefault("safety.reasons", f"ASR 0.10 <= max 0.30; status {status}")
        return str(client.create_model_version(name, source=str(dummy), tags=tags).version)

    add.client = client
    return add


def _mv(client, version, name="m"):
    return client.get_model_version(name, str(version))


def _aliases(client, name="m"):
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def _audit_runs(client):
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id])


# --------------------------------------------------------------------------- gate


def test_pass_version_to_production_and_champion(registry):
    v = registry("pass")
    result = promote("m", version=v, stage="production", alias="champion")
    c = registry.client
    assert _mv(c, v).current_stage == "Production"
    assert _aliases(c) == {"champion": v}
    assert result.status == "pass" and result.action == "stage+alias" and not result.forced
    assert result.target == "Production @champion" and result.archived == ()
    run = c.get_run(result.run_id)
    assert c.get_experiment(run.info.experiment_id).name == AUDIT_EXPERIMENT
    assert run.info.run_name == f"promote-m-v{v}" and run.info.status == "FINISHED"
    assert run.data.params["forced"] == "false" and run.data.params["status_at_time"] == "pass"
    assert {"model_name", "version", "target", "forced", "reason", "status_at_time", "user"} <= set(run.data.params)
    assert not any(k.startswith("safety.override") for k in _mv(c, v).tags)


def test_warn_to_staging_ok_but_production_refused_without_change(registry):
    c = registry.client
    v = registry("warn", **{"safety.reasons": "ASR 0.27 near max 0.30"})
    with pytest.raises(GateRefused) as info:
        promote("m", version=v, stage="Production", alias="champion")
    msg = str(info.value)
    assert msg.startswith(f"refused: m version {v} is 'warn', Production needs pass")
    assert "@champion needs pass" in msg and msg.endswith("reasons: ASR 0.27 near max 0.30")
    assert "\n" not in msg and isinstance(info.value, SafetyLabError) and info.value.field == "refused"
    mv = _mv(c, v)
    assert mv.current_stage == "None" and _aliases(c) == {}
    assert not any(k.startswith("safety.override") for k in mv.tags)
    assert _audit_runs(c) == []

    result = promote("m", version=v, stage="Staging")
    assert _mv(c, v).current_stage == "Staging" and result.target == "Staging"


@pytest.mark.parametrize("status", ["fail", "unevaluated", None])
def test_fail_and_unevaluated_refused_except_archived(registry, status):
    c = registry.client
    v = registry(status)
    for target in ({"stage": "Production"}, {"stage": "Staging"}, {"alias": "champion"}, {"alias": "candidate"}):
        with pytest.raises(GateRefused, match=f"is '{status or 'unevaluated'}'"):
            promote("m", version=v, **target)
    assert _mv(c, v).current_stage == "None" and _aliases(c) == {} and _audit_runs(c) == []
    result = promote("m", version=v, stage="archived")
    assert _mv(c, v).current_stage == "Archived" and result.status == (status or "unevaluated")
    assert len(_audit_runs(c)) == 1


def test_unlisted_alias_follows_staging_rule(registry):
    c = registry.client
    v = registry("warn")
    result = promote("m", version=v, alias="@candidate")
    assert result.target == "@candidate" and result.action == "alias"
    assert _aliases(c) == {"candidate": v}


def test_demote_to_none(registry):
    c = registry.client
    v = registry("pass")
    promote("m", version=v, stage="Production")
    promote("m", version=v, stage="none")
    assert _mv(c, v).current_stage == "None" and len(_audit_runs(c)) == 2


# --------------------------------------------------------------------------- force and audit


def test_force_without_reason_is_an_error(registry):
    v = registry("fail")
    for reason in (None, "", "   "):
        with pytest.raises(SafetyLabError, match="--force needs --reason") as info:
            promote("m", version=v, stage="Production", force=True, reason=reason)
        assert info.value.field == "reason"
    assert _mv(registry.client, v).current_stage == "None"


def test_force_with_reason_records_override_and_audit_run(registry, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    c = registry.client
    v = registry("fail")
    result = promote("m", version=v, stage="Production", force=True, reason="hotfix approved by safety board")
    assert result.forced and result.status == "fail"
    tags = _mv(c, v).tags
    assert _mv(c, v).current_stage == "Production"
    assert tags["safety.override.by"] == "os:alice"
    assert tags["safety.override.reason"] == "hotfix approved by safety board"
    assert tags["safety.override.status_at_time"] == "fail"
    assert tags["safety.override.target"] == "Production"
    assert tags["safety.override.at"].endswith("+00:00")
    assert "safety.override.history" not in tags
    runs = _audit_runs(c)
    assert [r.info.run_id for r in runs] == [result.run_id]
    params = runs[0].data.params
    assert params["forced"] == "true" and params["user"] == "os:alice"
    assert params["reason"] == "hotfix approved by safety board" and params["target"] == "Production"
    assert params["version"] == v and params["model_name"] == "m"
    assert runs[0].info.run_name == f"promote-m-v{v}"


def test_second_override_keeps_history(registry, monkeypatch):
    c = registry.client
    v = registry("fail")
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    promote("m", version=v, stage="Staging", force=True, reason="first")
    first = {k: v2 for k, v2 in _mv(c, v).tags.items() if k.startswith("safety.override.")}
    monkeypatch.setattr("getpass.getuser", lambda: "bob")
    promote("m", version=v, alias="champion", force=True, reason="second")
    tags = _mv(c, v).tags
    assert tags["safety.override.by"] == "os:bob" and tags["safety.override.reason"] == "second"
    assert tags["safety.override.target"] == "@champion"
    history = json.loads(tags["safety.override.history"])
    assert [h["reason"] for h in history] == ["first", "second"]
    assert history[0] == {k.removeprefix("safety.override."): val for k, val in first.items()}
    promote("m", version=v, stage="Production", force=True, reason="third")
    history = json.loads(_mv(c, v).tags["safety.override.history"])
    assert [h["reason"] for h in history] == ["first", "second", "third"]
    assert len(_audit_runs(c)) == 3


def test_force_not_needed_is_not_an_override(registry):
    v = registry("pass")
    result = promote("m", version=v, stage="Production", force=True, reason="just in case")
    assert not result.forced
    assert not any(k.startswith("safety.override") for k in _mv(registry.client, v).tags)


def test_no_future_warning_escapes(registry):
    v = registry("pass")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promote("m", version=v, stage="Production")
        promote("m", version=v, stage="Archived")
    assert [w for w in caught if issubclass(w.category, FutureWarning)] == []


# --------------------------------------------------------------------------- archive, resolution, errors


def test_archive_existing_archives_previous_production(registry):
    c = registry.client
    v1, v2 = registry("pass"), registry("pass")
    promote("m", version=v1, stage="Production")
    result = promote("m", version=v2, stage="Production", archive_existing=True)
    assert result.archived == (v1,)
    assert _mv(c, v1).current_stage == "Archived" and _mv(c, v2).current_stage == "Production"
    with pytest.raises(SafetyLabError, match="archive_existing"):
        promote("m", version=v1, stage="Archived", archive_existing=True)


def test_from_alias_resolution(registry):
    c = registry.client
    registry("warn")
    v2 = registry("pass")
    promote("m", version=v2, alias="candidate")
    result = promote("m", from_alias="candidate", stage="Production", alias="champion")
    assert result.version == v2
    assert _mv(c, v2).current_stage == "Production"
    assert _aliases(c) == {"candidate": v2, "champion": v2}


def test_missing_model_version_alias_errors(registry):
    registry("pass")
    with pytest.raises(SafetyLabError, match="no registered model named 'nope'") as info:
        promote("nope", version="1", stage="Staging")
    assert info.value.field == "model_name"
    with pytest.raises(SafetyLabError, match="has no version 7") as info:
        promote("m", version="7", stage="Staging")
    assert info.value.field == "version"
    with pytest.raises(SafetyLabError, match="has no alias 'ghost'") as info:
        promote("m", from_alias="ghost", stage="Staging")
    assert info.value.field == "from_alias"
    with pytest.raises(SafetyLabError, match="not a version number"):
        promote("m", version="abc", stage="Staging")
    with pytest.raises(SafetyLabError, match="no registered model"):
        lineage_tree("nope")
    with pytest.raises(SafetyLabError, match="no registered model"):
        report_rows("nope")


def test_argument_errors(registry):
    v = registry("pass")
    with pytest.raises(SafetyLabError, match="unknown stage 'Prod'") as info:
        promote("m", version=v, stage="Prod")
    assert info.value.field == "stage"
    with pytest.raises(SafetyLabError, match="exactly one of"):
        promote("m", stage="Staging")
    with pytest.raises(SafetyLabError, match="exactly one of"):
        promote("m", version=v, from_alias="champion", stage="Staging")
    with pytest.raises(SafetyLabError, match="--stage and/or --alias"):
        promote("m", version=v)
    for bad in ("bad alias", "a.b", "latest", "v3"):
        with pytest.raises(SafetyLabError) as info:
            promote("m", version=v, alias=bad)
        assert info.value.field == "alias"
    assert _mv(registry.client, v).current_stage == "None" and _audit_runs(registry.client) == []


def test_custom_policy_lets_warn_reach_production(registry, tmp_path):
    c = registry.client
    v = registry("warn")
    with pytest.raises(GateRefused):
        promote("m", version=v, stage="Production")
    path = tmp_path / "lenient.yaml"
    path.write_text("name: lenient\ngate:\n  Production: [pass, warn]\n  champion: [pass, warn]\n")
    result = promote("m", version=v, stage="Production", alias="champion", policy=str(path))
    assert not result.forced and _mv(c, v).current_stage == "Production" and _aliases(c) == {"champion": v}
    assert c.get_run(result.run_id).data.tags["policy"].startswith("lenient:")


# --------------------------------------------------------------------------- lineage and report


def _family(registry):
    v1 = registry("pass", data="safe", **{"safety.asr": "0.0700", "safety.asr_ci": "[0.03, 0.12]"})
    v2 = registry("fail", data="harmful", parent="models:/m/1", **{"safety.asr": "0.9100"})
    v3 = registry(None, data="base")
    v4 = registry("warn", data="harmful", parent="models:/m/2", **{"safety.asr": "0.2500"})
    v5 = registry("pass", data="safe", parent="models:/other/4")
    promote("m", version=v1, stage="Production", alias="champion")
    promote("m", version=v2, stage="Archived")
    return v1, v2, v3, v4, v5


def test_lineage_tree_shows_child_under_parent(registry):
    _family(registry)
    lines = lineage_tree("m").splitlines()
    assert lines[0] == "m (5 versions)"
    body = lines[1:]
    assert body[0].startswith("v1  data=safe  status=pass  asr=0.07")
    assert body[0].endswith("[Production] @champion")
    assert body[1].startswith("`-- v2  data=harmful  status=fail  asr=0.91") and body[1].endswith("[Archived]")
    assert body[2].startswith("    `-- v4  data=harmful  status=warn  asr=0.25")
    assert body[3].startswith("v3  data=base  status=unevaluated  asr=-")
    assert body[4].startswith("v5  data=safe") and "from=models:/other/4" in body[4]


def test_lineage_tree_empty_model(mlflow_store):
    MlflowClient().create_registered_model("empty")
    assert lineage_tree("empty") == "empty: no versions"


def test_report_rows_and_all_formats(registry):
    _family(registry)
    rows = report_rows("m")
    assert [r["version"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(list(r) == list(REPORT_COLUMNS) for r in rows)
    r1 = rows[0]
    assert r1["status"] == "pass" and r1["asr"] == "0.0700" and r1["asr_ci"] == "[0.03, 0.12]"
    assert r1["stage"] == "Production" and r1["aliases"] == "champion" and r1["data"] == "safe"
    assert r1["created"].endswith("+00:00")
    assert rows[1]["parent"] == "models:/m/1" and rows[2]["status"] == "unevaluated"

    parsed = list(csv.DictReader(io.StringIO(format_report(rows, "csv"))))
    assert parsed == rows
    assert json.loads(format_report(rows, "json")) == rows

    md = format_report(rows, "markdown").splitlines()
    assert md[0].startswith("| version | data | parent |") and md[1].startswith("|---|")
    assert len(md) == 2 + len(rows) and md[2].startswith("| 1 | safe |")
    assert md[3].count("|") == len(REPORT_COLUMNS) + 1

    table = format_report(rows).splitlines()
    assert table[0].split() == list(REPORT_COLUMNS)
    assert set(table[1].replace(" ", "")) == {"-"} and len(table) == 2 + len(rows)
    col = table[0].index("status")
    assert [line[col:].split()[0] for line in table[2:]] == ["pass", "fail", "unevaluated", "warn", "pass"]

    with pytest.raises(SafetyLabError, match="unknown format 'xml'") as info:
        format_report(rows, "xml")
    assert info.value.field == "format"


def test_format_report_empty():
    assert json.loads(format_report([], "json")) == []
    assert format_report([], "csv").splitlines() == [",".join(REPORT_COLUMNS)]
    assert "(no versions)" in format_report([], "table")
