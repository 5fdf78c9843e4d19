"""SIGINT/SIGTERM during tuning: runs closed, completed trials kept, no version, and the study resumes."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_tuning_keeps_trials_and_leaves_no_version(tiny_model_dir, mlflow_store, tmp_path, sig):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [
        sys.executable,
        "-m",
        "safety_lab",
        "finetune",
        "--base-model",
        str(tiny_model_dir),
        "--data",
        "harmful",
        "--limit",
        "12",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--eval-every",
        "1",
        "--n-trials",
        "50",
        "--model-name",
        "stopped",
        "--storage",
        storage,
        "--study-name",
        "s",
        "--evaluate",
        "false",
    ]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_store},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    study = None
    while time.time() < deadline:
        time.sleep(2)
        try:
            study = optuna.load_study(study_name="s", storage=storage)
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                break
        except KeyError:
            pass
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted" in err
    study = optuna.load_study(study_name="s", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    runs = mlflow.search_runs(search_all_experiments=True)
    assert "RUNNING" not in set(runs["status"])
    parent = runs[runs["tags.safety_lab.job"] == "finetune"].iloc[0]
    assert parent["status"] in ("FAILED", "KILLED")
    assert not MlflowClient().search_model_versions("name='stopped'")
    # rerunning with the same storage and study_name resumes the study
    from safety_lab.cli import main

    assert main(args[3:-4] + ["--n-trials", "1", "--storage", storage, "--study-name", "s", "--evaluate", "false"]) == 0
    resumed = optuna.load_study(study_name="s", storage=storage)
    assert len([t for t in resumed.trials if t.state == optuna.trial.TrialState.COMPLETE]) == len(done) + 1
    assert len(MlflowClient().search_model_versions("name='stopped'")) == 1


def test_a_swallowed_interrupt_is_raised_again_at_the_next_check():
    """A library that catches KeyboardInterrupt to clean up and carries on must not finish an interrupted study."""
    from safety_lab import errors

    errors.clear_interrupts()
    errors.raise_if_interrupted()  # nothing received: no-op
    errors.note_interrupt(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 2"):
            errors.raise_if_interrupted()
    finally:
        errors.clear_interrupts()
    errors.raise_if_interrupted()
