"""Audit runs for the moves a gated server sees, in the CLI's `safety_lab-audit` experiment, with its audit tags.

A refusal is one FINISHED run; an allowed move opens a RUNNING run before MLflow applies it and closes it FINISHED
(FAILED when MLflow answered with an error). A forced move also records the override on the version, as
``promote --force`` does, and consumes the ``safety.override_reason`` tag that carried the reason.
"""

from __future__ import annotations

import contextlib
import logging

from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.policy import policy_json
from safety_lab.registry.lifecycle import _audit_experiment_id, _audit_tags, _clip, _now_iso, _override
from safety_lab.registry.overrides import RUN_TAG, override_key, override_value
from safety_lab.registry.writes import set_version_tag
from safety_lab.server import compat

OVERRIDE_REASON = "safety.override_reason"
_log = logging.getLogger(__name__)


def _start(client: MlflowClient, move, run_name: str, tags: dict[str, str]) -> str:
    run = client.create_run(
        _audit_experiment_id(client), run_name=run_name, tags={k: _clip(str(v), 8000) for k, v in tags.items()}
    )
    compat.log_text(client, run.info.run_id, policy_json(move.policy), "policy.json")
    return run.info.run_id


def refusal(client: MlflowClient, move, message: str, user: str) -> None:
    """Record a refusal; failing to record it must not hide the refusal itself."""
    tags = {
        **_audit_tags(move, user, False),
        "safety_lab.audit": "refusal",
        "safety_lab.via": "server",
        "refused": message,
        "mlflow.note.content": message,
    }
    try:
        client.set_terminated(_start(client, move, f"refuse-{move.model_name}-v{move.version}", tags), "FINISHED")
    except (SafetyLabError, MlflowException, OSError) as exc:
        _log.warning("safety gate: the refusal was not audited: %s", exc)


def start(client: MlflowClient, move, user: str, reason: str | None) -> str:
    """The RUNNING audit run of an allowed (or, with a reason, forced) move, before MLflow applies it."""
    forced = reason is not None
    move.reason = reason
    ev = move.evidence
    note = f"{move.model_name} version {move.version} ({ev.tag_status}) -> {move.target}"
    tags = {
        **_audit_tags(move, user, forced),
        "safety_lab.audit": "promotion",
        "safety_lab.via": "server",
        "mlflow.note.content": note + (f" (forced: {reason})" if forced else "") + f" by {user}",
    }
    run_id = _start(client, move, f"promote-{move.model_name}-v{move.version}", tags)
    params = {
        "model_name": move.model_name,
        "version": move.version,
        "target": move.target,
        "forced": str(forced).lower(),
        "reason": reason or "",
        "status_at_time": ev.tag_status,
        "user": user,
    }
    client.log_batch(run_id, params=[Param(k, _clip(str(v), 6000)) for k, v in params.items()])
    return run_id


def finish(client: MlflowClient, move, run_id: str, user: str, error: str | None) -> None:
    """Close the audit run; after a forced move, record the override on the version and consume the reason tag."""
    try:
        if error is None and move.reason is not None:
            record = override_value(_override(move, user, _now_iso()))  # one key per audit run: concurrent-safe
            set_version_tag(client, move.model_name, move.version, override_key(run_id), record)
            client.set_tag(run_id, RUN_TAG, record)
            with contextlib.suppress(MlflowException):
                client.delete_model_version_tag(move.model_name, move.version, OVERRIDE_REASON)
        if error is not None:
            client.set_tag(run_id, "error", _clip(error, 8000))
        client.set_terminated(run_id, "FINISHED" if error is None else "FAILED")
    except (MlflowException, OSError) as exc:
        _log.warning("safety gate: audit run %s was not closed: %s", run_id, exc)
