"""Team-setup fixtures: a REAL `mlflow server` (REST API + proxied artifacts) shared by the tests in tests/team.

The server runs for the whole session (one process group, killed at the end). Tests point MLflow at it
with `pointed_at()`, which also chdirs into a scratch directory and restores both afterwards, so nothing
leaks into the other test modules (they use their own SQLite stores).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MLFLOW = str(BIN / "mlflow") if (BIN / "mlflow").exists() else (shutil.which("mlflow") or "mlflow")
HEALTH_TIMEOUT_S = 90
ARTIFACTS = Path(
    os.environ.get("SAFETY_LAB_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "safety_lab-ui"
)  # screenshots

# Tiny settings shared by every test that trains: 2 trials of 2 steps on 12 rows of a 2-layer model.
TINY = ["--data", "harmful", "--max-steps", "2", "--eval-every", "1", "--batch-size", "4", "--limit", "12"]
TINY_EVAL = ["--eval-limit", "4", "--max-new-tokens", "6"]


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server (set SAFETY_LAB_PG_URL)")
    config.addinivalue_line("markers", "server: starts a real `mlflow server` subprocess")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound, then released, and checked to refuse connections)."""
    port = free_port()
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


@dataclass
class Server:
    url: str
    root: Path  # holds mlflow.db, artifacts/ and server.log
    proc: subprocess.Popen

    @property
    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def start_server(
    root: Path,
    *,
    backend: str | None = None,
    command: str = "server",
    timeout: float = HEALTH_TIMEOUT_S,
    workers: int = 1,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Server:
    """`mlflow server -w <workers> [args]` on a free port over `backend` (default: SQLite in root), with `env` added
    to the environment; waits for /health."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        MLFLOW,
        command,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend or f"sqlite:///{root / 'mlflow.db'}",
    ]
    if command == "server":
        cmd += ["-w", str(workers), "--artifacts-destination", str(root / "artifacts"), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(url=f"http://127.0.0.1:{port}", root=root, proc=proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{server.log}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s:\n{server.log}")
        time.sleep(0.5)


def stop_server(server: Server) -> None:
    """SIGTERM the whole process group (uvicorn + its worker), SIGKILL after 5 s (SQLite commits per request)."""
    if server.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)


@contextlib.contextmanager
def pointed_at(uri: str, cwd: Path):
    """MLFLOW_TRACKING_URI (env and mlflow's cached URI) -> uri, cwd -> cwd; both restored on exit."""
    import mlflow

    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def team():
    """This module's helpers (start_server, pointed_at, closed_port, TINY, ...): under --import-mode=importlib a
    conftest is not importable by name from the test modules."""
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Server:
    """One real tracking server for the session: SQLite backend, artifacts proxied through the server."""
    server = start_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    stop_server(server)


@pytest.fixture
def at_server(mlflow_server, tmp_path):
    """The calling test talks to the real server from a scratch working directory."""
    with pointed_at(mlflow_server.url, tmp_path / "work"):
        yield mlflow_server


@pytest.fixture(scope="session")
def team_version(mlflow_server, tiny_model_dir, tmp_path_factory):
    """A tiny finetune WITH evaluation, registered as model 'team' version 1 on the real server."""
    from mlflow.tracking import MlflowClient

    from safety_lab.cli import main

    with pointed_at(mlflow_server.url, tmp_path_factory.mktemp("team-finetune")):
        start = time.perf_counter()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(
                [
                    "finetune",
                    "--base-model",
                    str(tiny_model_dir),
                    *TINY,
                    "--n-trials",
                    "2",
                    "--model-name",
                    "team",
                    *TINY_EVAL,
                ]
            )
        sys.stderr.write(err.getvalue())
        assert code == 0, (
            f"finetune against {mlflow_server.url} exited {code}: "
            f"{err.getvalue().strip().splitlines()[-1:]}\nserver log:\n{mlflow_server.log[-1500:]}"
        )
        print(f"[team] finetune+evaluate against the server took {time.perf_counter() - start:.1f}s")
        return MlflowClient(tracking_uri=mlflow_server.url).get_model_version("team", "1")
