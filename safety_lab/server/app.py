"""`mlflow server --app-name safety-gate`: MLflow's server app (and basic-auth, when configured) behind the gate.

Flask runs ``before_request`` hooks in the order they were added, so basic-auth (when on) authenticates and checks
permissions first; the gate then decides the registry writes it sees (``routes.GATED``) and lets every other request
through untouched. A refusal is answered in MLflow's error format (``error_code``, ``message``), which the UI shows
as it shows any API error.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode

from safety_lab import compat
from safety_lab.policy import load_policy
from safety_lab.server import audit
from safety_lab.server.config import GateConfig, load_config
from safety_lab.server.gate import Gate, Verdict, is_missing
from safety_lab.server.routes import action_of, fields

_log = logging.getLogger(__name__)


def _user(config: GateConfig) -> str | None:
    """The account basic-auth authenticated for this request (its hook ran first), else None."""
    auth = request.authorization if config.basic_auth else None
    return auth.username if auth is not None and auth.username else None


def _label(user: str | None) -> str:
    """Who acted, as the audit records it: the authenticated account, else the caller's address."""
    return f"mlflow:{user}" if user else f"unauthenticated:{request.remote_addr or 'unknown'}"


def _error(message: str, error_code: str) -> Response:
    exc = MlflowException(message, error_code=ErrorCode.Value(error_code))
    return Response(exc.serialize_as_json(), status=exc.get_http_status_code(), mimetype="application/json")


def _rewrite(body, verdict: Verdict) -> None:
    """Replace request fields in the parsed JSON body MLflow's handler will read (Flask caches it per request)."""
    if isinstance(body, dict):
        body.update(verdict.rewrite)


def install(app: Flask, config: GateConfig) -> Gate:
    """Put the gate in front of `app`'s registry writes (after any hook already installed, such as basic-auth)."""
    gate = Gate(config, load_policy(config.policy), compat.store_client())

    def before() -> Response | None:
        action = action_of(request.path, request.method)
        if action is None:
            return None
        body = request.get_json(force=True, silent=True)  # cached: the handler reads this same object
        user = _user(config)
        try:
            verdict = gate.decide(action, fields(request.args, body), user)
        except MlflowException as exc:
            if is_missing(exc):
                return None  # MLflow's handler answers for what does not exist
            return _error(f"safety gate: cannot check the request: {exc.message}", "INTERNAL_ERROR")
        if verdict.refusal:
            if verdict.move is not None:
                audit.refusal(gate.client, verdict.move, verdict.refusal, _label(user))
            return _error(verdict.refusal, verdict.error_code)
        _rewrite(body, verdict)
        if verdict.move is not None:
            g.safety_gate = (verdict.move, audit.start(gate.client, verdict.move, _label(user), verdict.reason))
        return None

    def after(response: Response) -> Response:
        pending = g.pop("safety_gate", None)
        if pending is not None:
            move, run_id = pending
            error = None if response.status_code < 400 else response.get_data(as_text=True)[:2000]
            audit.finish(gate.client, move, run_id, _label(_user(config)), error)
        return response

    app.before_request(before)
    app.after_request(after)
    return gate


def create_app(app: Flask | None = None):
    """The `mlflow.app` entry point: MLflow's app, basic-auth around it when configured, the gate in front."""
    from mlflow.server import app as mlflow_app

    app = app or mlflow_app
    config = load_config()
    if config.basic_auth:
        from mlflow.server.auth import create_app as basic_auth

        wrapped = basic_auth(app)  # its hooks first; under uvicorn it returns the FastAPI wrapper
        install(app, config)
        return wrapped
    install(app, config)
    if compat.uses_uvicorn():
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
