"""A SIGTERM that lands while a run is being closed does not leave it RUNNING.

Under `accelerate launch`, when one rank dies the survivor's collective fails at once and it starts closing its runs
FAILED; a moment later the launcher sends it SIGTERM. Raised in the middle of MLflow's `end_run`, the interrupt used
to skip the write, and the trial's run stayed RUNNING for ever (seen in CI: `test_a_rank_killed_mid_trial...`).
"""

import os
import signal

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from safety_lab import cli, errors
from safety_lab.tracking import tracked_run


@pytest.fixture
def cli_signals():
    """The CLI's handlers (SIGTERM and SIGINT raise KeyboardInterrupt), restored afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    cli._sigterm_as_interrupt()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    errors.clear_interrupts()


@pytest.fixture
def sigterm_while_closing(monkeypatch):
    """The first run MLflow closes gets a SIGTERM sent to this process just before its status is written."""
    real = MlflowClient.set_terminated
    sent = []

    def set_terminated(self, run_id, status=None, end_time=None):
        if not sent:
            sent.append(run_id)
            os.kill(os.getpid(), signal.SIGTERM)  # the Python handler runs at the next bytecode: here
        return real(self, run_id, status, end_time)

    monkeypatch.setattr(MlflowClient, "set_terminated", set_terminated)
    return sent


def _statuses(store):
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {r.info.run_name: r.info.status for r in runs}


def _failing_trial():
    with tracked_run(run_name="finetune"), tracked_run(run_name="trial-0", nested=True):
        raise RuntimeError("Connection closed by peer")  # the dead rank's collective


def _finished_run():
    with tracked_run(run_name="evaluate"):
        pass


def _signalled_run(reached: list):
    with tracked_run(run_name="trial-1"):
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after the signal")  # pragma: no cover - never reached


def test_a_sigterm_while_a_failed_trial_is_closed_still_closes_it(mlflow_store, cli_signals, sigterm_while_closing):
    with pytest.raises(KeyboardInterrupt, match="signal 15"):  # the interrupt is not lost: raised once closed
        _failing_trial()
    assert sigterm_while_closing  # the signal did land inside the closing
    assert _statuses(mlflow_store) == {"finetune": "FAILED", "trial-0": "FAILED"}
    assert mlflow.active_run() is None


def test_a_sigterm_while_a_finished_run_is_closed_interrupts_after_it(mlflow_store, cli_signals, sigterm_while_closing):
    with pytest.raises(KeyboardInterrupt):
        _finished_run()
    assert _statuses(mlflow_store) == {"evaluate": "FINISHED"}  # what it finished stays finished


def test_a_sigterm_inside_the_run_interrupts_at_once(mlflow_store, cli_signals):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        _signalled_run(reached)
    assert not reached and _statuses(mlflow_store) == {"trial-1": "FAILED"}
