"""Whether the evidence behind a version's ``safety.status`` holds: the evaluation run it names is FINISHED, evaluated
this very version under the policy shown on its tags, used the evaluation split the policy seals, and the policy
applied to its logged metrics gives the status on the tag. A status without that evidence counts as unevaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.policy import STATUSES, Decision, Policy, decide, fingerprint, split_problem
from safety_lab.registry import UNEVALUATED
from safety_lab.registry.record import SafetyTags
from safety_lab.registry.versions import status_of


@dataclass(frozen=True)
class Evidence:
    """What the gate may act on: the tag's status once the evaluation behind it checks out, else unevaluated."""

    status: str  # the verified status ("unevaluated" when the evidence does not hold)
    tag_status: str  # what the version's safety.status tag says
    problem: str | None = None  # one line: 'tampered: ...', 'incomplete: ...', 'stale: ...' or 'unevaluated: ...'
    run_id: str | None = None  # the evaluation run named by safety.eval_run_id
    decision: Decision | None = None  # the gate policy applied to that run's logged metrics


def _evidence_run(client: MlflowClient, run_id: str) -> tuple[Any, str | None]:
    """(the evaluation run, None) or (None, why it cannot be used)."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None, f"tampered: its evaluation run {run_id} does not exist"
    if run.info.lifecycle_stage == "deleted":
        return None, f"stale: its evaluation run {run_id} was deleted"
    if run.info.status != "FINISHED":
        return None, f"incomplete: its evaluation run {run_id} is {run.info.status}, not FINISHED"
    return run, None


def _record_problem(run, mv, tag_status: str) -> str | None:
    """Does the run belong to this version, and does it record the status and policy that the tags show?"""
    rt, tags, run_id = run.data.tags, SafetyTags.read(mv.tags or {}), run.info.run_id
    uri = f"models:/{mv.name}/{mv.version}"
    if "safety.model_name" not in rt or not tags.policy_sha256:
        return (
            f"stale: evaluation run {run_id} predates evidence records (no version or policy fingerprint); re-evaluate"
        )
    attached = (rt.get("safety.model_name"), rt.get("safety.model_version")) == (mv.name, str(mv.version))
    if rt.get("model_uri") != uri or not attached:
        return f"tampered: evaluation run {run_id} evaluated {rt.get('model_uri') or 'another model'}, not {uri}"
    if rt.get("safety.model_source") != mv.source:
        return f"tampered: evaluation run {run_id} evaluated {rt.get('safety.model_source')}, not {mv.source}"
    if rt.get("safety.status") != tag_status:
        return f"tampered: the tag says '{tag_status}' but evaluation run {run_id} recorded '{rt.get('safety.status')}'"
    if rt.get("safety.policy_sha256") != tags.policy_sha256:
        return f"tampered: the policy fingerprint on the tag differs from evaluation run {run_id}'s"
    return None


def _precision_problem(run) -> str | None:
    """A comparison with a reference holds only between runs in the same dtype (bf16 and fp32 answers differ)."""
    rt, run_id = run.data.tags, run.info.run_id
    if rt.get("reference", "none") == "none":
        return None
    ours = rt.get("safety.weights")
    theirs = {rt[t] for t in ("safety.reference_weights", "safety.base_weights") if t in rt}
    if ours is None or not theirs:
        return f"stale: evaluation run {run_id} predates precision records (safety.weights); re-evaluate"
    if theirs != {ours}:
        return f"tampered: evaluation run {run_id} compares a {ours} evaluation with a {'/'.join(sorted(theirs))} one"
    return None


def _decision_problem(run, tag_status: str, policy: Policy) -> tuple[Decision, str | None]:
    """The gate policy applied to the run's logged metrics, and how it disagrees with the tag."""
    decision = decide(run.data.metrics, policy)
    run_id = run.info.run_id
    if decision.status == tag_status:
        return decision, None
    incomplete = [r for r in decision.flagged if r.startswith("incomplete: ")]
    if incomplete:
        return decision, f"incomplete: evaluation run {run_id}: {incomplete[0].removeprefix('incomplete: ')}"
    same_policy = run.data.tags.get("safety.policy_sha256") == fingerprint(policy)
    what = "tampered" if same_policy else "stale"
    because = "" if same_policy else " (it was decided under another policy)"
    return decision, (
        f"{what}: the tag says '{tag_status}' but policy '{policy.name}' decides '{decision.status}' "
        f"from evaluation run {run_id}{because}: {decision.summary}"
    )


def verify_evidence(mv, policy: Policy, *, client: MlflowClient | None = None) -> Evidence:
    """Check the evaluation behind a version's safety.status (its record, the evaluation split the policy seals,
    the policy's decision); never raises for a bad record, reports it."""
    client = client or MlflowClient()
    tag_status = status_of(mv)
    if tag_status == UNEVALUATED:
        return Evidence(UNEVALUATED, tag_status)
    if tag_status not in STATUSES:
        return Evidence(UNEVALUATED, tag_status, f"tampered: unknown status {tag_status!r}")
    run_id = SafetyTags.read(mv.tags or {}).eval_run_id
    if not run_id:
        return Evidence(UNEVALUATED, tag_status, "unevaluated: no evaluation run is recorded (safety.eval_run_id)")
    run, problem = _evidence_run(client, run_id)
    if run is None:
        return Evidence(UNEVALUATED, tag_status, problem, run_id)
    problem = _record_problem(run, mv, tag_status) or _precision_problem(run)
    sealed = split_problem(policy, run.data.tags.get("data.eval_split_sha256"))
    problem = problem or (f"stale: evaluation run {run_id}: {sealed}" if sealed else None)
    if problem:
        return Evidence(UNEVALUATED, tag_status, problem, run_id)
    decision, problem = _decision_problem(run, tag_status, policy)
    return Evidence(UNEVALUATED if problem else tag_status, tag_status, problem, run_id, decision)
