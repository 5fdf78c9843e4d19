"""The MLflow server internals the gate relies on, in one place: the environment `mlflow server` hands its workers.

Pinned by tests/server/test_gate_unit.py::test_mlflow_server_names_are_the_pinned_ones (MLflow 3.17).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

BACKEND_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"  # mlflow.server.constants.BACKEND_STORE_URI_ENV_VAR
REGISTRY_STORE_ENV = "_MLFLOW_SERVER_REGISTRY_STORE"  # ... REGISTRY_STORE_URI_ENV_VAR
ARTIFACTS_DESTINATION_ENV = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"  # ... ARTIFACTS_DESTINATION_ENV_VAR
SGI_ENV = "_MLFLOW_SGI_NAME"  # "uvicorn" when `mlflow server` runs the FastAPI wrapper


def store_client() -> MlflowClient:
    """A client on the server's own stores (not over HTTP: the gate must not pass through itself)."""
    backend = os.environ.get(BACKEND_STORE_ENV) or "sqlite:///mlflow.db"
    return MlflowClient(tracking_uri=backend, registry_uri=os.environ.get(REGISTRY_STORE_ENV) or backend)


def uses_uvicorn() -> bool:
    return os.environ.get(SGI_ENV) == "uvicorn"


def log_text(client: MlflowClient, run_id: str, text: str, name: str) -> None:
    """client.log_text, also for a run whose artifacts live under `mlflow-artifacts:/` (served by this very server,
    so resolved against its artifacts destination rather than over HTTP)."""
    uri = client.get_run(run_id).info.artifact_uri
    if not uri.startswith("mlflow-artifacts:"):
        client.log_text(run_id, text, name)
        return
    destination = os.environ.get(ARTIFACTS_DESTINATION_ENV) or "mlartifacts"
    local = str(Path(destination).absolute()) if "://" not in destination else destination
    target = local.rstrip("/") + "/" + urlparse(uri).path.lstrip("/")
    with tempfile.TemporaryDirectory(prefix="safety-gate-") as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        get_artifact_repository(target).log_artifact(str(path))
