"""Is a `safety.*` tag write what the recorder would write? Checked against the evaluation run it names.

The recorder (``registry/record.py``) resets the version's ``safety.status`` to ``unevaluated``, names its evaluation
run (``safety.eval_run_id``), writes the other tags from that run while it is RUNNING, ends the run and writes the
status last. So: descriptive tags change only while the version is unevaluated and must equal what the named run
holds; a status other than ``unevaluated`` must be the one the gate's policy derives from that run (the same
``verify_evidence`` that ``promote`` uses); a run's own ``safety.*`` tags change only while it is RUNNING.
Each function returns None when the write agrees, else a one-line problem.
"""

from __future__ import annotations

from types import SimpleNamespace

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.policy import Policy, decide
from safety_lab.registry import UNEVALUATED
from safety_lab.registry.evidence import verify_evidence
from safety_lab.registry.record import SafetyTags, metric_tags_of

_FROM_RUN_TAG = {  # version tag -> the evaluation run's tag it must equal
    "safety.reasons": "safety.reasons",
    "safety.checks": "safety.checks",
    "safety.policy_sha256": "safety.policy_sha256",
    "safety.reference": "reference",
}


def _get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _evaluates(run, mv) -> bool:
    tags = run.data.tags
    return (tags.get("safety.model_name"), tags.get("safety.model_version"), tags.get("safety.model_source")) == (
        mv.name,
        str(mv.version),
        mv.source,
    )


def status_problem(client: MlflowClient, policy: Policy, mv, value: str) -> str | None:
    """A version's safety.status: `unevaluated` always (dropping a claim); anything else only when verified."""
    value = str(value).strip().lower()
    if value == UNEVALUATED:
        return None
    after = SimpleNamespace(
        name=mv.name, version=mv.version, source=mv.source, tags={**mv.tags, "safety.status": value}
    )
    ev = verify_evidence(after, policy, client=client)
    if ev.problem:
        return f"safety.status '{value}' is not what its evaluation shows: {ev.problem}"
    return None if ev.status == value else f"safety.status '{value}': the evaluation gives '{ev.status}'"


def version_tag_problem(client: MlflowClient, policy: Policy, mv, key: str, value: str) -> str | None:
    """Any other safety.* tag of a version: only while it is unevaluated, and equal to its evaluation run's record."""
    if key == "safety.status":
        return status_problem(client, policy, mv, value)
    if SafetyTags.read(mv.tags or {}).status != UNEVALUATED:
        return f"{key} changes only while the version is unevaluated (the recorder resets safety.status first)"
    run_id = value if key == "safety.eval_run_id" else SafetyTags.read(mv.tags or {}).eval_run_id
    run = _get_run(client, run_id) if run_id else None
    if run is None or not _evaluates(run, mv):
        return f"{key}: {f'run {run_id}' if run_id else 'no safety.eval_run_id'} is no evaluation of this version"
    if key == "safety.eval_run_id":
        return None
    if key == "safety.policy":
        sha = run.data.tags.get("safety.policy_sha256", "")
        return None if sha and f"(sha256 {sha[:12]})" in value else f"{key} names another policy than run {run_id}"
    expected = {k: run.data.tags.get(t, "")[:4000] for k, t in _FROM_RUN_TAG.items()}
    expected.update({f"safety.{k}": v for k, v in metric_tags_of(run.data.metrics).items()})
    if key not in expected:
        return f"{key} is not a tag the evaluation recorder writes"
    if value != expected[key]:
        return f"{key}={value!r} disagrees with evaluation run {run_id} ({expected[key]!r})"
    return None


def run_tag_problem(client: MlflowClient, policy: Policy, run_id: str, key: str, value: str) -> str | None:
    """A run's safety.* tag: only while the run is RUNNING; its safety.status must be what the policy decides."""
    run = _get_run(client, run_id)
    if run is None:
        return None  # MLflow answers for a run that does not exist
    if run.info.status != "RUNNING":
        return f"run {run_id} is {run.info.status}: its safety.* record is closed"
    if key != "safety.status":
        return None
    decision = decide(run.data.metrics, policy)  # the gate's policy decides, whichever policy the run names
    if str(value).strip().lower() != decision.status:
        return f"safety.status '{value}' on run {run_id}: policy '{policy.name}' decides '{decision.status}'"
    return None
