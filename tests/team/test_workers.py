"""Several tuning workers share one Optuna study and one tracking server; `register-best` registers the winner once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from safety_lab.cli import main

pytestmark = pytest.mark.server

WORKER_TIMEOUT_S = 600


def _start_worker(
    team, base_model: Path, storage: str, study: str, url: str, cwd: Path, log: Path, experiment: str
) -> subprocess.Popen:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [
        sys.executable,
        "-m",
        "safety_lab",
        "finetune",
        "--register",
        "false",
        "--storage",
        storage,
        "--study-name",
        study,
        "--n-trials",
        "2",
        "--base-model",
        str(base_model),
        *team.TINY,
        "--model-name",
        "shared-model",
        "--evaluate",
        "false",
        "--experiment",
        experiment,
    ]
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _run_workers(
    team, tiny_model_dir, storage: str, study: str, server, root: Path, experiment: str, n: int = 2
) -> None:
    """n workers started at once. `experiment` should be new: the workers then race to create it, as a team's do."""
    procs, logs = [], []
    for i in range(n):
        logs.append(root / f"worker-{i}.log")
        procs.append(
            _start_worker(team, tiny_model_dir, storage, study, server.url, root / f"worker-{i}", logs[-1], experiment)
        )
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, f"worker exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"


def _check_shared_study(
    server, storage: str, study_name: str, model_name: str, experiment: str, register_args: list[str]
):
    client = MlflowClient(tracking_uri=server.url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4, [t.state for t in trials]
    assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)

    # all runs of both workers in THEIR experiment (a lost experiment-creation race must not send one to "Default")
    workers = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`safety_lab.job` = 'finetune' AND tags.`optuna.study` = '{study_name}'",
    )
    assert len(workers) == 2 and all(w.info.status == "FINISHED" for w in workers)
    expected = client.get_experiment_by_name(experiment).experiment_id
    assert [w.info.experiment_id for w in workers] == [expected, expected]
    worker_ids = {w.info.run_id for w in workers}
    parents = []
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.experiment_id == expected
        assert run.data.tags["optuna.study"] == study_name and run.data.tags["optuna.trial"] == str(t.number)
        assert run.info.run_name == f"trial-{t.number}"
        parents.append(run.data.tags["mlflow.parentRunId"])
    assert set(parents) == worker_ids  # every trial hangs under a worker, and both workers contributed
    assert sorted(parents.count(w) for w in worker_ids) == [2, 2]
    assert all(not w.data.tags.get("registered_model") for w in workers)  # workers register nothing

    for _ in range(2):  # idempotent: the second call finds the first call's version
        assert (
            main(
                [
                    "register-best",
                    "--study-name",
                    study_name,
                    "--storage",
                    storage,
                    "--model-name",
                    model_name,
                    *register_args,
                ]
            )
            == 0
        ), f"register-best failed; server log:\n{server.log}"
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert len(versions) == 1
    mv = versions[0]
    assert mv.tags["optuna.study"] == study_name and mv.tags["tuning.best_trial"] == str(study.best_trial.number)
    assert mv.tags["safety.status"] == "unevaluated"
    assert float(mv.tags["tuning.best_value"]) == pytest.approx(study.best_value, abs=1e-5)
    assert mv.tags["data.name"] == "harmful"
    return mv


def test_two_workers_share_a_sqlite_study_and_register_best_once(team, mlflow_server, tiny_model_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    start = time.perf_counter()
    _run_workers(team, tiny_model_dir, storage, "shared", mlflow_server, tmp_path, "team-workers")
    print(f"[team] two workers took {time.perf_counter() - start:.1f}s")
    with team.pointed_at(mlflow_server.url, tmp_path / "register"):
        _check_shared_study(
            mlflow_server,
            storage,
            "shared",
            "shared-model",
            "team-workers",
            ["--evaluate", "false", "--experiment", "team-workers"],
        )


def test_a_storage_password_is_never_printed_or_logged(team, at_server, tiny_model_dir, capsys):
    """A team's shared storage URL carries credentials: not in stderr, not in the run's params/tags on the server."""
    secret = "s3cret-pw"
    storage = f"postgresql+pg8000://worker:{secret}@127.0.0.1:{team.closed_port()}/optuna"  # driver absent or db down
    code = main(
        [
            "finetune",
            "--base-model",
            str(tiny_model_dir),
            *team.TINY,
            "--n-trials",
            "1",
            "--register",
            "false",
            "--evaluate",
            "false",
            "--storage",
            storage,
            "--study-name",
            "leak-check",
            "--experiment",
            "leak-check",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0, err
    assert secret not in err
    client = MlflowClient(tracking_uri=at_server.url)
    runs = client.search_runs([client.get_experiment_by_name("leak-check").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)
    for run in runs:
        logged = {**run.data.params, **run.data.tags}
        assert not [k for k, v in logged.items() if secret in str(v)], f"password logged in {sorted(logged)}"


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("SAFETY_LAB_PG_URL"), reason="set SAFETY_LAB_PG_URL=postgresql://... to run")
def test_two_workers_share_a_postgres_study(team, mlflow_server, tiny_model_dir, tmp_path):
    """The same over PostgreSQL (optuna storage; MLflow itself stays on the session's server)."""
    storage = os.environ["SAFETY_LAB_PG_URL"]
    study = f"shared-pg-{os.getpid()}-{int(time.time())}"  # a fresh study even on a reused database
    _run_workers(team, tiny_model_dir, storage, study, mlflow_server, tmp_path, f"{study}-workers")
    with team.pointed_at(mlflow_server.url, tmp_path / "register"):
        _check_shared_study(
            mlflow_server,
            storage,
            study,
            f"{study}-model",
            f"{study}-workers",
            ["--evaluate", "false", "--experiment", f"{study}-workers"],
        )
