"""The production setup of docs/team.md: `mlflow server --app-name basic-auth`, a service account for the gate and
users who can read but not move stages or aliases; overrides record who the server authenticated."""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.tracking import actor

pytestmark = pytest.mark.server

START_TIMEOUT_S = 120
ADMIN, GATE, READER = "admin", "gate-bot", "reader"


def _ini(root, admin_password: str) -> str:
    path = root / "basic_auth.ini"
    path.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def auth_server(team, tmp_path_factory):
    """A basic-auth tracking server on loopback (bounded start, process group killed at the end)."""
    try:
        port = team.free_port()
    except OSError as exc:
        print(f"[auth] skipped: cannot bind a loopback port ({exc})")
        pytest.skip(f"cannot bind a loopback port ({exc})")
    root = tmp_path_factory.mktemp("auth-server")
    passwords = {user: secrets.token_urlsafe(18) for user in (ADMIN, GATE, READER)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=_ini(root, passwords[ADMIN]),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        PYTHONUNBUFFERED="1",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    cmd = [
        team.MLFLOW,
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-w",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = team.Server(url=f"http://127.0.0.1:{port}", root=root, proc=proc)
    try:
        _wait_healthy(server)
        server.passwords = passwords
        with _as(ADMIN, passwords[ADMIN]):
            users = get_app_client("basic-auth", tracking_uri=server.url)
            for user in (GATE, READER):
                users.create_user(user, passwords[user])
        yield server
    finally:
        team.stop_server(server)


def _wait_healthy(server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"basic-auth server exited with {server.proc.returncode}:\n{server.log}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError:
            return  # it answers (even if it wants credentials)
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"basic-auth server not healthy after {START_TIMEOUT_S}s:\n{server.log}")
        time.sleep(0.5)


@contextlib.contextmanager
def _as(user: str | None, password: str | None = None):
    """MLflow's client reads the credentials from the environment at each request."""
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    for key, value in zip(old, (user, password)):
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def guarded(auth_server, team, tmp_path):
    """Model 'guarded' version 1, created by the gate's service account (which therefore manages it)."""
    with team.pointed_at(auth_server.url, tmp_path), _as(GATE, auth_server.passwords[GATE]):
        client = MlflowClient()
        experiment = mlflow.set_experiment(f"auth-{tmp_path.name}")
        run = client.create_run(experiment.experiment_id)
        client.create_registered_model("guarded")
        client.create_model_version("guarded", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_terminated(run.info.run_id)
        yield auth_server
        with contextlib.suppress(MlflowException):
            client.delete_registered_model("guarded")


def test_a_reader_cannot_move_a_stage_or_an_alias_and_the_gate_account_can(guarded, team, tmp_path):
    with team.pointed_at(guarded.url, tmp_path), _as(READER, guarded.passwords[READER]):
        client = MlflowClient()
        assert client.get_model_version("guarded", "1").current_stage == "None"  # reading is allowed
        for move in (
            lambda: client.transition_model_version_stage("guarded", "1", "Production"),
            lambda: client.set_registered_model_alias("guarded", "champion", "1"),
            lambda: client.set_model_version_tag("guarded", "1", "safety.status", "pass"),
        ):
            with pytest.raises(MlflowException) as refused:
                move()
            assert refused.value.error_code == "PERMISSION_DENIED", refused.value
        assert actor() == f"mlflow:{READER}"
    with team.pointed_at(guarded.url, tmp_path), _as(GATE, guarded.passwords[GATE]):
        client = MlflowClient()
        mv = client.get_model_version("guarded", "1")
        assert mv.current_stage == "None" and "safety.status" not in (mv.tags or {})
        assert client.get_registered_model("guarded").aliases == {}
        client.transition_model_version_stage("guarded", "1", "Production")
        client.set_registered_model_alias("guarded", "champion", "1")
        assert client.get_model_version_by_alias("guarded", "champion").current_stage == "Production"
        assert actor() == f"mlflow:{GATE}"


def test_the_actor_is_the_authenticated_user_never_a_claimed_one(auth_server, mlflow_server, monkeypatch):
    monkeypatch.setenv("USER", "someone-else")
    with _as(GATE, "not-the-password"), pytest.raises(SafetyLabError, match="^MLFLOW_TRACKING_USERNAME: .*refused"):
        actor(auth_server.url)
    with _as(None), pytest.raises(SafetyLabError, match="^MLFLOW_TRACKING_USERNAME: "):
        actor(auth_server.url)
    with _as(GATE, auth_server.passwords[GATE]):
        assert actor(auth_server.url) == f"mlflow:{GATE}"
        assert actor(mlflow_server.url) == f"os:{getpass.getuser()}"  # a server without auth vouches for nobody
    assert actor("sqlite:///x.db") == "os:someone-else"
