"""The private names of mlflow, optuna, trl and transformers that safety_lab uses, in one place.

Each has no public equivalent (said at each use). A minor release may rename any of them without notice, so
tests/test_compat.py pins the versions in CHECKED and checks every name still behaves as relied on; after an upgrade,
that test is the one to rerun. The libraries are imported lazily: importing this module loads none of them.
"""

from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

CHECKED = {
    "mlflow": (3, 17),
    "optuna": (5, 1),
    "trl": (1, 16),
    "transformers": (5, 25),
}  # major.minor each name was checked against


def report_intermediate(study, trial, step: int, value: float):
    """Store `value` at `step` on `trial` of a multi-objective `study` and return the trial as stored (FrozenTrial).

    Optuna's public `Trial.report` refuses multi-objective studies. The storage keeps the curve exactly as `report`
    would (FrozenTrial.intermediate_values), so pruners and Optuna's dashboard read it; reaching the storage needs
    `Study._storage` and `Trial._trial_id`."""
    storage = study._storage
    storage.set_trial_intermediate_value(trial._trial_id, step, value)
    return storage.get_trial(trial._trial_id)


@contextmanager
def fused_head_on_labelled_positions(cpu_head=None):
    """Within: TRL's fused LM head scores only the labelled positions, on every device; with `cpu_head` (a function
    of `ChunkedLogProbFunction.apply`'s signature and results), that function computes the head wherever TRL has
    no Triton kernel (the CPU), and TRL's kernel everywhere else.

    TRL (`trl.trainer.utils`) compacts the hidden states to the labelled positions only where its private
    `_use_triton(device)` says so (CUDA/XPU); there is no setting for it, nor for the kernel it calls
    (`_ChunkedLogProbFunction`). `mock.patch.object` raises if TRL renames either, so a rename fails loudly instead of
    going slow quietly."""
    from trl.trainer import utils as trl_utils

    chunked, has_triton = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton

    class _Head:
        @staticmethod
        def apply(hidden, *args):
            if cpu_head is not None and not has_triton(hidden.device):
                return cpu_head(hidden, *args)
            return chunked.apply(hidden, *args)

    with (
        mock.patch.object(trl_utils, "_use_triton", return_value=True),
        mock.patch.object(trl_utils, "_ChunkedLogProbFunction", _Head),
    ):
        yield


def in_place_layer(max_cache_len: int):
    """A transformers cache layer with K/V allocated once for `max_cache_len` positions and written in place
    (DynamicCache concatenates every step); attention reads only the filled part, as with a growing cache, so no empty
    slot is computed or masked. `keep_rows(mask)` drops batch rows.

    Built on `StaticLayer`, reading its undocumented fill counter `cumulative_length`."""
    return _in_place_layer_type()(max_cache_len=max_cache_len)


@functools.cache
def _in_place_layer_type():
    import torch
    from transformers.cache_utils import StaticLayer

    class InPlaceLayer(StaticLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            filled = int(self.cumulative_length)
            return keys[:, :, :filled], values[:, :, :filled]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return int(self.cumulative_length) + query_length, 0

        def keep_rows(self, rows: torch.Tensor) -> None:
            if self.is_initialized:
                self.keys, self.values = self.keys[rows], self.values[rows]

    return InPlaceLayer


# ---------------------------------------------------------------- the environment `mlflow server` hands its workers
# The gated server (safety_lab.server) runs inside `mlflow server`, which passes its stores to the app only through
# these private environment variables (mlflow.server.constants); tests/server/test_gate_unit.py checks the names.
BACKEND_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"  # mlflow.server.constants.BACKEND_STORE_URI_ENV_VAR
REGISTRY_STORE_ENV = "_MLFLOW_SERVER_REGISTRY_STORE"  # ... REGISTRY_STORE_URI_ENV_VAR
ARTIFACTS_DESTINATION_ENV = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"  # ... ARTIFACTS_DESTINATION_ENV_VAR
SGI_ENV = "_MLFLOW_SGI_NAME"  # "uvicorn" when `mlflow server` runs the FastAPI wrapper


def store_client():
    """A client on the server's own stores (not over HTTP: the gate must not pass through itself)."""
    from mlflow.tracking import MlflowClient

    backend = os.environ.get(BACKEND_STORE_ENV) or "sqlite:///mlflow.db"
    return MlflowClient(tracking_uri=backend, registry_uri=os.environ.get(REGISTRY_STORE_ENV) or backend)


def uses_uvicorn() -> bool:
    return os.environ.get(SGI_ENV) == "uvicorn"


def log_text(client, run_id: str, text: str, name: str) -> None:
    """client.log_text, also for a run whose artifacts live under `mlflow-artifacts:/` (served by this very server,
    so resolved against its artifacts destination rather than over HTTP)."""
    uri = client.get_run(run_id).info.artifact_uri
    if not uri.startswith("mlflow-artifacts:"):
        client.log_text(run_id, text, name)
        return
    destination = os.environ.get(ARTIFACTS_DESTINATION_ENV) or "mlartifacts"
    local = str(Path(destination).absolute()) if "://" not in destination else destination
    target = local.rstrip("/") + "/" + urlparse(uri).path.lstrip("/")
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="safety-gate-") as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        get_artifact_repository(target).log_artifact(str(path))
