"""Under load, one real `mlflow server` (2 workers): 8 finetunes at once, then 24 `promote` calls at once.

Per version: one unforced move to Production, one forced move to Staging, one forced move onto the alias
`champion`. Every call must exit as its outcome says, the registry must show exactly what the calls that reported
success did, every override must be on its audit run and in the version's history, and no audit run of a move
that happened may be FAILED. The same over PostgreSQL where SAFETY_LAB_PG_URL is set (CI).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from safety_lab.registry.audit import AUDIT_EXPERIMENT
from safety_lab.registry.overrides import override_history

pytestmark = [pytest.mark.server, pytest.mark.slow]

VERSIONS = 8
MODEL = "crowd"
# As light as tests/faults/test_concurrency.py: one step, one trial, no evaluation (unevaluated: Production refuses).
FINETUNE = ["--data", "harmful", "--limit", "8", "--batch-size", "4", "--max-steps", "1", "--n-trials", "1"]
FINETUNE += ["--evaluate", "false"]
ROOT = Path(__file__).resolve().parents[2]  # the subprocesses import this checkout's safety_lab
AUDIT_RUN = re.compile(r"audit run ([0-9a-f]{32})")


def _all_at_once(commands: list[list[str]], url: str, cwd: Path) -> list[tuple[int, str, str]]:
    """Start every `python -m safety_lab` command, then wait for each: (exit code, stdout, stderr)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "safety_lab", *c], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for c in commands
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=1500)
        results.append((p.returncode, out.decode(errors="replace"), err.decode(errors="replace")))
    return results


def _outcome(call: dict, code: int, out: str, err: str) -> tuple[bool, str | None]:
    """(moved?, audit run id) read from what the call printed; each exit code allows one kind of message only."""
    text = (out + err).strip()
    if code == 0:
        assert "failed part-way" not in text and f"-> {call['target']}" in out, text
        return True, AUDIT_RUN.search(out).group(1)
    if code == 3:  # moved, its record not written: says so, and names the audit run that holds it
        assert f"moved to {call['target']}; " in err and "failed part-way" not in err, text
        return True, AUDIT_RUN.search(err).group(1)
    assert code == 2, text
    if "error: refused: " in err:
        assert not call["forced"], text  # a forced move is never refused
        return False, None
    assert "failed part-way (audit run " in err and "nothing moved" in err, text
    return False, AUDIT_RUN.search(err).group(1)


def _calls(versions: list[str]) -> list[dict]:
    calls = []
    for v in versions:
        calls.append({"version": v, "target": "Production", "forced": False, "args": ["--stage", "Production"]})
        calls.append({"version": v, "target": "Staging", "forced": True, "args": ["--stage", "Staging"]})
        calls.append({"version": v, "target": "@champion", "forced": True, "args": ["--alias", "champion"]})
    for call in calls:
        forced = ["--force", "--reason", f"load test {call['target']} v{call['version']}"] if call["forced"] else []
        call["argv"] = ["promote", "--model-name", MODEL, "--version", call["version"], *call["args"], *forced]
    return calls


def _check_registry(client: MlflowClient, calls: list[dict]) -> None:
    """Stage and alias of every version as the calls that reported success say; every override recorded twice."""
    holder = client.get_registered_model(MODEL).aliases.get("champion")
    champions = {c["version"] for c in calls if c["moved"] and c["target"] == "@champion"}
    assert (str(holder) in champions) if champions else holder is None, (holder, champions)
    for v in {c["version"] for c in calls}:
        mine = [c for c in calls if c["version"] == v]
        stages = [c["target"] for c in mine if c["moved"] and not c["target"].startswith("@")]
        mv = client.get_model_version(MODEL, v)
        assert mv.current_stage == (stages[0] if len(stages) == 1 else "None"), (v, mv.current_stage, stages)
        history = {h["audit_run"]: h for h in override_history(mv.tags)}
        for c in mine:
            if not (c["moved"] and c["forced"]):
                continue
            assert c["run"] in history, f"v{v}: the override of {c['target']} ({c['run']}) is not in its history"
            assert history[c["run"]]["target"] == c["target"]
            run = client.get_run(c["run"])
            on_run = json.loads(run.data.tags["safety.override"])
            assert on_run["target"] == c["target"] and on_run["reason"] == history[c["run"]]["reason"]


def _check_audit_runs(client: MlflowClient, calls: list[dict]) -> None:
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], max_results=1000)}
    for c in calls:
        if c["moved"]:
            assert runs[c["run"]].info.status == "FINISHED", (c["target"], c["version"], runs[c["run"]].data.tags)
        elif c["run"]:
            assert runs[c["run"]].info.status == "FAILED"
    refusals = [r for r in runs.values() if r.data.tags.get("safety_lab.audit") == "refusal"]
    assert len(refusals) == sum(1 for c in calls if not c["moved"] and not c["run"])
    promotions = {i for i, r in runs.items() if r.data.tags.get("safety_lab.audit") == "promotion"}
    assert promotions == {c["run"] for c in calls if c["run"]}


def _crowd(team, tiny_model_dir: Path, tmp_path: Path, backend: str | None) -> None:
    server = team.start_server(tmp_path / "server", backend=backend, workers=2, timeout=300)  # slow on 2 busy cores
    try:
        finetunes = [
            [
                "finetune",
                "--base-model",
                str(tiny_model_dir),
                *FINETUNE,
                "--model-name",
                MODEL,
                "--storage",
                f"sqlite:///{tmp_path}/optuna-{i}.db",
            ]
            for i in range(VERSIONS)
        ]
        for code, _out, err in _all_at_once(finetunes, server.url, tmp_path):
            assert code == 0, err[-1500:] + "\nserver log:\n" + server.log[-1500:]
        client = MlflowClient(tracking_uri=server.url)
        versions = sorted((str(mv.version) for mv in client.search_model_versions(f"name = '{MODEL}'")), key=int)
        assert versions == [str(i) for i in range(1, VERSIONS + 1)]
        calls = _calls(versions)
        for call, (code, out, err) in zip(calls, _all_at_once([c["argv"] for c in calls], server.url, tmp_path)):
            call["moved"], call["run"] = _outcome(call, code, out, err)
        _check_registry(client, calls)
        _check_audit_runs(client, calls)
        assert all(c["moved"] for c in calls if c["forced"]), [(c["target"], c["version"]) for c in calls]
    finally:
        team.stop_server(server)


def test_concurrent_promotions_on_sqlite(team, tiny_model_dir, tmp_path):
    _crowd(team, tiny_model_dir, tmp_path, None)


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("SAFETY_LAB_PG_URL"), reason="set SAFETY_LAB_PG_URL=postgresql://... to run")
@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="needs psycopg (the `test` extra)")
def test_concurrent_promotions_on_postgres(team, tiny_model_dir, tmp_path):
    """The same with MLflow's backend store in a fresh schema of the CI database (it holds Optuna's tables too)."""
    import sqlalchemy

    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", os.environ["SAFETY_LAB_PG_URL"])
    schema = f"mlflow_concur_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as con:
        con.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        sep = "&" if "?" in url else "?"
        _crowd(team, tiny_model_dir, tmp_path, f"{url}{sep}options=-csearch_path%3D{schema}")
    finally:
        with contextlib.suppress(Exception), engine.begin() as con:
            con.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
