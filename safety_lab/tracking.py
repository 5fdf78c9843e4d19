"""Tracking-store set-up: fail fast, naming the URI, when the store can't be reached."""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
from contextlib import contextmanager
from urllib.parse import urlparse

import mlflow
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from safety_lab.errors import SafetyLabError, first_line, interrupts_deferred


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
        raise SafetyLabError(
            "MLFLOW_TRACKING_URI", f"cannot reach {uri} ({exc.strerror or type(exc).__name__})"
        ) from None


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
        raise SafetyLabError("MLFLOW_TRACKING_URI", f"cannot use {tracking_uri()} ({first_line(exc)})") from None


@contextmanager
def tracked_run(**start_run):
    """`mlflow.start_run(**start_run)` as a context, whose closing (FINISHED, or FAILED on an exception) no signal
    interrupts: a SIGTERM that lands while the run is being ended is raised once it has ended."""
    active = mlflow.start_run(**start_run)
    try:
        yield active
    except BaseException:
        with interrupts_deferred():
            active.__exit__(*sys.exc_info())
        raise
    with interrupts_deferred():
        active.__exit__(None, None, None)


_USERINFO = re.compile(r"(//[^:/@\s]*):\S*@")  # greedy: a password may itself contain '@'
_SECRET_PARAM = re.compile(
    r"([?&;](?:password|passwd|pwd|pass|secret|token|api_?key|access_?key|secret_?key)=)[^&;#\s]*", re.IGNORECASE
)
CURRENT_USER = "/api/2.0/mlflow/users/current"  # the basic-auth app's "who am I"


def redact(url: str) -> str:
    """Storage URLs may carry passwords (postgresql://user:pw@host/db, scheme://:pw@host, ?password=...): never log
    or print them. When unsure (an '@' later in the URL), hide too much rather than too little."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1:***@", str(url)))


def actor(uri: str | None = None) -> str:
    """Who is acting, labelled by who vouches for it: `mlflow:<user>` as authenticated by a tracking server running
    the basic-auth app (MLFLOW_TRACKING_USERNAME/PASSWORD), else `os:<login>` (a claim, not a proof)."""
    uri = uri or tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        try:
            resp = http_request(
                get_default_host_creds(uri), CURRENT_USER, "GET", max_retries=0, timeout=10, raise_on_status=False
            )
        except Exception as exc:  # noqa: BLE001 - any transport failure is reported as one line
            raise SafetyLabError(
                "MLFLOW_TRACKING_URI", f"cannot ask {redact(uri)} who is acting ({type(exc).__name__})"
            ) from None
        if resp.status_code == 200:
            try:
                return f"mlflow:{resp.json()['user']['username']}"
            except (ValueError, KeyError, TypeError):
                pass  # not the auth app's answer (e.g. a UI page)
        if resp.status_code in (401, 403):
            raise SafetyLabError(
                "MLFLOW_TRACKING_USERNAME",
                f"{redact(uri)} requires authentication and refused these "
                "credentials (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)",
            )
        # 404 and the like: a server without the auth app; fall through to the OS user
    return f"os:{_os_user()}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (some containers)
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
