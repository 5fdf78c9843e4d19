"""The pipeline against a REAL `mlflow server` (REST store + proxied artifacts), as a team would run it."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.tracking import MlflowClient

from safety_lab.cli import main
from safety_lab.registry.overrides import override_history

pytestmark = pytest.mark.server


def _client(server) -> MlflowClient:
    return MlflowClient(tracking_uri=server.url)


def test_finetune_registers_and_evaluates_a_version_on_the_server(team_version, mlflow_server):
    client = _client(mlflow_server)
    mv = client.get_model_version("team", "1")
    assert mv.status == "READY"
    assert mv.tags["safety.status"] in ("pass", "warn", "fail")
    assert mv.tags["data.name"] == "harmful" and mv.tags["optuna.study"]
    run = client.get_run(mv.tags["safety.eval_run_id"])
    assert run.info.status == "FINISHED" and "asr" in run.data.metrics
    training = client.get_run(mv.tags["training.run_id"])
    assert training.info.status == "FINISHED"
    # artifacts went through the server's proxy, not to a local ./mlruns
    assert training.info.artifact_uri.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/summary.json" in names
    assert (mlflow_server.root / "artifacts").is_dir()


def test_promote_and_report_against_the_server(team_version, at_server, capsys):
    client = _client(at_server)
    assert main(["promote", "--model-name", "team", "--version", "1", "--stage", "Archived"]) == 0
    assert client.get_model_version("team", "1").current_stage == "Archived"

    status = team_version.tags["safety.status"]
    assert (
        main(
            [
                "promote",
                "--model-name",
                "team",
                "--version",
                "1",
                "--alias",
                "champion",
                "--force",
                "true",
                "--reason",
                "test",
            ]
        )
        == 0
    )
    assert client.get_model_version_by_alias("team", "champion").version == "1"
    overrides = override_history(client.get_model_version("team", "1").tags)
    if status == "pass":  # the gate allowed it: nothing to override
        assert overrides == []
    else:
        (override,) = overrides
        assert override["reason"] == "test" and override["status_at_time"] == status
        assert override["target"] == "@champion" and override["by"] and override["at"] and override["audit_run"]
    audit = client.get_experiment_by_name("safety_lab-audit")
    runs = client.search_runs([audit.experiment_id])
    assert sorted(r.data.tags["target"] for r in runs) == ["@champion", "Archived"]
    assert {r.data.tags["forced"] for r in runs if r.data.tags["target"] == "@champion"} == {
        str(status != "pass").lower()
    }
    assert all(r.info.status == "FINISHED" for r in runs)

    capsys.readouterr()
    assert main(["report", "--model-name", "team", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert row["version"] == "1" and row["status"] == status and row["data"] == "harmful"
    assert row["stage"] == "Archived" and row["aliases"] == "champion"
    assert row["asr"] == team_version.tags["safety.asr"]


def test_unreachable_server_fails_fast_naming_the_uri(team, tiny_model_dir, tmp_path, capsys):
    uri = f"http://127.0.0.1:{team.closed_port()}"
    with team.pointed_at(uri, tmp_path):
        start = time.perf_counter()
        code = main(
            ["finetune", "--base-model", str(tiny_model_dir), *team.TINY, "--n-trials", "1", "--evaluate", "false"]
        )
        elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert uri in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
