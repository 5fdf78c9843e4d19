"""Audit runs: every promotion, refusal and override, from the CLI or a gated server, recorded as a run in the
``safety_lab-audit`` experiment with the same tags, params and ``policy.json``, and what a forced move records."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.policy import fingerprint, policy_json, policy_summary
from safety_lab.registry.moves import Move
from safety_lab.registry.versions import error_code
from safety_lab.registry.writes import retried

AUDIT_EXPERIMENT = "safety_lab-audit"
MAX_PARAM = 6000  # MLflow's limit on a param value
MAX_TAG = 8000  # ... on a run tag value


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")  # orders overrides made within one second


def clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def experiment_id(client: MlflowClient) -> str:
    """The audit experiment's id, created (or restored) when needed."""
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        try:
            return client.create_experiment(AUDIT_EXPERIMENT, tags={"safety_lab.kind": "audit"})
        except MlflowException as exc:  # created concurrently
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def run_name(kind: str, move: Move) -> str:
    """'promote-<model>-v<version>' or 'refuse-<model>-v<version>'."""
    return f"{kind}-{move.model_name}-v{move.version}"


def audit_tags(move: Move, user: str, forced: bool) -> dict[str, str]:
    """The request, the evidence, the gate's rules and the policy: the tags every audit run of `move` carries."""
    ev = move.evidence
    tags = {
        "mlflow.user": user,
        "model_name": move.model_name,
        "version": move.version,
        "action": move.action,
        "target": move.target,
        "stage": move.stage or "",
        "alias": move.alias or "",
        "from_stage": move.mv.current_stage or "None",
        "from_alias": move.from_alias or "",
        "status_at_time": ev.tag_status,
        "verified_status": ev.status,
        "evidence": ev.problem or "verified",
        "evaluation_run_id": ev.run_id or "",
        "forced": str(forced).lower(),
        "gate_rules": json.dumps(move.rules or {}),
        "policy": policy_summary(move.policy),
        "policy_sha256": fingerprint(move.policy),
        "policy_lenient": "; ".join(move.lenient),
        "archive_existing": str(move.archive_existing).lower(),
    }
    if os.environ.get("MLFLOW_RUN_ID"):
        tags["safety_lab.invoked_from_run"] = os.environ["MLFLOW_RUN_ID"]
    return tags


def refusal_tags(move: Move, message: str, user: str) -> dict[str, str]:
    """The tags of the audit run that records a refused move."""
    return {
        **audit_tags(move, user, False),
        "safety_lab.audit": "refusal",
        "refused": message,
        "mlflow.note.content": message,
    }


def audit_params(move: Move, user: str, forced: bool) -> list[Param]:
    """The params of a promotion's audit run."""
    params = {
        "model_name": move.model_name,
        "version": move.version,
        "target": move.target,
        "forced": str(forced).lower(),
        "reason": move.reason or "",
        "status_at_time": move.evidence.tag_status,
        "user": user,
    }
    return [Param(k, clip(str(v), MAX_PARAM)) for k, v in params.items()]


def override_record(move: Move, user: str, at: str) -> dict[str, str]:
    """What a forced promotion records on the version: who, when, why, and what the gate found."""
    ev = move.evidence
    return {
        "by": user,
        "at": at,
        "reason": move.reason or "",
        "status_at_time": ev.tag_status,
        "target": move.target,
        "evidence": ev.problem or "verified",
        "policy_sha256": fingerprint(move.policy),
        "lenient": "; ".join(move.lenient),
    }


def start_run(
    client: MlflowClient,
    move: Move,
    kind: str,
    tags: dict[str, str],
    *,
    log_text: Callable[[str, str, str], None] | None = None,
) -> str:
    """An audit run (RUNNING) carrying `tags` and the full policy as ``policy.json``; returns its id. `log_text`
    (run id, text, artifact name) writes the artifact; default ``client.log_text``. MLflow's errors propagate."""
    run = client.create_run(
        experiment_id(client), run_name=run_name(kind, move), tags={k: clip(str(v), MAX_TAG) for k, v in tags.items()}
    )
    (log_text or client.log_text)(run.info.run_id, policy_json(move.policy), "policy.json")
    return run.info.run_id


def close_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Best effort: the outcome tags on the audit run, then its end status."""
    with contextlib.suppress(Exception):
        retried(client.log_batch, run_id, tags=[RunTag(k, clip(v, MAX_TAG)) for k, v in tags.items()])
    with contextlib.suppress(Exception):
        retried(client.set_terminated, run_id, status)
