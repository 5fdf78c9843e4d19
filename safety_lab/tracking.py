"""Tracking-store set-up: fail fast, naming the URI, when the store can't be reached."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import mlflow

from safety_lab.errors import SafetyLabError


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> None:
    """An HTTP store must accept a TCP connection within `timeout` s; MLflow's own retries take minutes."""
    uri = uri or tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise SafetyLabError("MLFLOW_TRACKING_URI", f"cannot reach {uri} ({exc.strerror or type(exc).__name__})") from None


def start_experiment(name: str) -> None:
    """Use (or create) the experiment, unless `mlflow run` already chose one for the active run."""
    check_reachable()
    if os.environ.get("MLFLOW_RUN_ID") or mlflow.active_run():
        return
    try:
        # Set twice: when two workers create it at once, MLflow lets the loser return without activating it.
        experiment = mlflow.set_experiment(name)
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
    except mlflow.exceptions.MlflowException as exc:
        raise SafetyLabError("MLFLOW_TRACKING_URI", f"cannot use {tracking_uri()} ({str(exc).splitlines()[0][:160]})") from None


def redact(url: str) -> str:
    """Storage URLs may carry passwords (postgresql://user:pw@host/db): never log or print them."""
    import re

    return re.sub(r"(//[^:/@]+):[^@]+@", r"\1:***@", url)
