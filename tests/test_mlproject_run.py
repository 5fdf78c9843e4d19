"""`mlflow run` logs each entry point's parameters on the run before the command starts; the command then resumes
that run (MLFLOW_RUN_ID) and must not log another value under any of those names."""

from pathlib import Path

import mlflow
import yaml

from safety_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_finetune_under_mlflow_run_logs_no_param_that_the_entry_point_already_holds(
    tiny_model_dir, mlflow_store, tmp_path, monkeypatch
):
    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["finetune"]["parameters"]
    given = {name: str(p.get("default", "")) for name, p in spec.items()}
    given.update(base_model=str(tiny_model_dir), n_trials="1", max_steps="1", limit="8", evaluate="false")
    mlflow.set_experiment("safety_lab")
    with mlflow.start_run() as run:  # what `mlflow run` does before it starts the command
        mlflow.log_params(given)
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    argv = ["finetune", "--base-model", str(tiny_model_dir), "--n-trials", "1", "--max-steps", "1"]
    argv += ["--eval-every", "1", "--batch-size", "4", "--limit", "8", "--evaluate", "false"]
    argv += ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--precision", given["precision"]]
    assert main(argv) == 0
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["precision"] == given["precision"] and "precision.chosen" in params
