"""Audit runs for the moves a gated server sees, in the CLI's `safety_lab-audit` experiment, with its audit tags.

A refusal is one FINISHED run; an allowed move opens a RUNNING run before MLflow applies it and closes it FINISHED
(FAILED when MLflow answered with an error). A forced move also records the override on the version, as
``promote --force`` does, and consumes the ``safety.override_reason`` tag that carried the reason.
"""

from __future__ import annotations

import contextlib
import functools
import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab import compat
from safety_lab.errors import SafetyLabError
from safety_lab.registry import audit
from safety_lab.registry.moves import Move
from safety_lab.registry.overrides import RUN_TAG, override_key, override_value
from safety_lab.registry.writes import set_version_tag

OVERRIDE_REASON = "safety.override_reason"
_log = logging.getLogger(__name__)


def _start(client: MlflowClient, move: Move, kind: str, tags: dict[str, str]) -> str:
    """``audit.start_run``, writing policy.json also where the run's artifacts are served by this very server."""
    return audit.start_run(client, move, kind, tags, log_text=functools.partial(compat.log_text, client))


def refusal(client: MlflowClient, move: Move, message: str, user: str) -> None:
    """Record a refusal; failing to record it must not hide the refusal itself."""
    tags = {**audit.refusal_tags(move, message, user), "safety_lab.via": "server"}
    try:
        client.set_terminated(_start(client, move, "refuse", tags), "FINISHED")
    except (SafetyLabError, MlflowException, OSError) as exc:
        _log.warning("safety gate: the refusal was not audited: %s", exc)


def start(client: MlflowClient, move: Move, user: str, reason: str | None) -> str:
    """The RUNNING audit run of an allowed (or, with a reason, forced) move, before MLflow applies it."""
    forced = reason is not None
    move.reason = reason
    ev = move.evidence
    note = f"{move.model_name} version {move.version} ({ev.tag_status}) -> {move.target}"
    tags = {
        **audit.audit_tags(move, user, forced),
        "safety_lab.audit": "promotion",
        "safety_lab.via": "server",
        "mlflow.note.content": note + (f" (forced: {reason})" if forced else "") + f" by {user}",
    }
    run_id = _start(client, move, "promote", tags)
    client.log_batch(run_id, params=audit.audit_params(move, user, forced))
    return run_id


def finish(client: MlflowClient, move: Move, run_id: str, user: str, error: str | None) -> None:
    """Close the audit run; after a forced move, record the override on the version and consume the reason tag."""
    try:
        if error is None and move.reason is not None:
            record = override_value(audit.override_record(move, user, audit.now_iso()))  # one key per audit run
            set_version_tag(client, move.model_name, move.version, override_key(run_id), record)
            client.set_tag(run_id, RUN_TAG, record)
            with contextlib.suppress(MlflowException):
                client.delete_model_version_tag(move.model_name, move.version, OVERRIDE_REASON)
        if error is not None:
            client.set_tag(run_id, "error", audit.clip(error, audit.MAX_TAG))
        client.set_terminated(run_id, "FINISHED" if error is None else "FAILED")
    except (MlflowException, OSError) as exc:
        _log.warning("safety gate: audit run %s was not closed: %s", run_id, exc)
