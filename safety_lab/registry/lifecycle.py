"""Registry lifecycle behind the safety gate: promote/demote/archive versions, the lineage tree, the report.

``promote`` moves one model version into a stage and/or onto an alias only when the evidence behind its
``safety.status`` tag holds (``verify_evidence``: the evaluation run named by ``safety.eval_run_id`` is FINISHED,
evaluated this very version, ran the suites the policy requires on enough items, and the policy applied to its
logged metrics gives the status on the tag) and the policy gate allows that status there. A status without
that evidence counts as ``unevaluated``. A refusal raises ``GateRefused`` before anything in the registry
changes, and is itself recorded as a run in the ``safety_lab-audit`` experiment. ``force=True`` (with a
``reason``) bypasses a refusal and records who/when/why on its audit run and on the version, under a tag of its
own (``safety.override.<audit run id>``, see ``overrides``). A policy more lenient than the packaged one is an
override too. Every promotion, demotion or archive is recorded as an audit run.

Concurrent moves of one version: every write a move makes commutes with every write of another move. The stage
and the alias are each one registry write (the later one wins, as in MLflow itself); the override goes under a
key no other move writes; the rest goes on the move's own audit run. A write that loses MLflow's read-then-insert
race is sent again (``writes.retried``). A move ends in exactly one of three ways: done (audit run FINISHED),
``failed part-way`` naming the targets it reached (FAILED), or moved but not recorded (``RecordNotWritten``,
FINISHED, the audit run holding the record).

Gate rules for aliases: an alias listed in the policy gate (e.g. ``champion``) uses its own rule (the strictest
entry that equals it ignoring case); any other alias, including one named like a stage, follows ``Staging``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError, first_line
from safety_lab.models import parse_uri
from safety_lab.policy import (
    STAGES,
    STATUSES,
    Decision,
    Policy,
    decide,
    fingerprint,
    gate_rule,
    lenient_changes,
    load_policy,
    policy_json,
    policy_summary,
    split_problem,
)
from safety_lab.registry import UNEVALUATED
from safety_lab.registry.overrides import RUN_TAG, describe, override_history, override_key, override_value
from safety_lab.registry.record import SafetyTags
from safety_lab.registry.writes import retried, set_version_tag
from safety_lab.reporting import tables
from safety_lab.reporting.tables import tagged_columns
from safety_lab.tracking import actor

AUDIT_EXPERIMENT = "safety_lab-audit"
ACTIVE_STAGES: tuple[str, ...] = ("Staging", "Production")
REPORT_COLUMNS: tuple[str, ...] = (
    "version",
    "data",
    "parent",
    "status",
    *(c.key for c in tagged_columns()),
    "stage",
    "aliases",
    "created",
)  # metric columns: the tagged headline specs
REPORT_FORMATS: tuple[str, ...] = tables.FORMATS

_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED_ALIAS = re.compile(r"^[vV]\d+$")
_MAX_PARAM = 6000  # MLflow's param value limit


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    version: str
    status: str
    action: str  # "stage" | "alias" | "stage+alias"
    target: str  # "Production", "@champion" or "Production @champion"
    forced: bool  # True only when --force bypassed a gate refusal or a lenient policy
    run_id: str  # the audit run in experiment "safety_lab-audit"
    archived: tuple[str, ...] = ()  # versions moved to Archived by archive_existing
    verified_status: str = ""  # the status the gate acted on (unevaluated when the evidence did not hold)
    evidence: str = "verified"  # or the one-line problem found with the evaluation behind the status


@dataclass(frozen=True)
class Evidence:
    """What the gate may act on: the tag's status once the evaluation behind it checks out, else unevaluated."""

    status: str  # the verified status ("unevaluated" when the evidence does not hold)
    tag_status: str  # what the version's safety.status tag says
    problem: str | None = None  # one line: 'tampered: ...', 'incomplete: ...', 'stale: ...' or 'unevaluated: ...'
    run_id: str | None = None  # the evaluation run named by safety.eval_run_id
    decision: Decision | None = None  # the gate policy applied to that run's logged metrics


class GateRefused(SafetyLabError):
    """The gate refused the promotion; nothing in the registry was changed (the refusal is audited)."""

    def __init__(
        self,
        model_name: str,
        version: str,
        message: str,
        *,
        status: str = UNEVALUATED,
        evidence: Evidence | None = None,
        refusals: list[tuple[str, tuple[str, ...]]] | None = None,
        lenient: tuple[str, ...] = (),
    ):
        self.model_name, self.version, self.status = model_name, version, status
        self.evidence, self.refusals, self.lenient = evidence, refusals or [], lenient
        super().__init__("refused", message)


class RecordNotWritten(SafetyLabError):
    """The version moved, but the record of the move (its override tag, or its audit run) could not be written."""

    def __init__(self, message: str, result: PromotionResult):
        self.result = result
        super().__init__("record", message)


@dataclass
class _Move:
    """One promotion request, resolved: the version, the policy, the evidence and the gate's answer."""

    model_name: str
    mv: Any
    rm: Any
    stage: str | None
    alias: str | None
    from_alias: str | None
    archive_existing: bool
    reason: str | None
    policy: Policy
    evidence: Evidence
    lenient: tuple[str, ...] = ()
    refusals: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rules: dict[str, str] | None = None

    @property
    def version(self) -> str:
        return str(self.mv.version)

    @property
    def targets(self) -> list[tuple[str, bool]]:
        return ([(self.stage, False)] if self.stage else []) + ([(self.alias, True)] if self.alias else [])

    @property
    def target(self) -> str:
        return " ".join(f"@{n}" if a else n for n, a in self.targets)

    @property
    def action(self) -> str:
        return "stage+alias" if self.stage and self.alias else ("stage" if self.stage else "alias")


# --------------------------------------------------------------------------- small helpers


def _or_list(statuses: Iterable[str]) -> str:
    items = list(statuses)
    if not items:
        return "nothing (no status is allowed)"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _mlflow_problem(exc: Exception) -> str:
    return first_line(exc, 200)


def _error_code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _user() -> str:
    return actor()  # mlflow:<user> when the tracking server authenticates, else os:<login>


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")  # orders overrides made within one second


def _ms_iso(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _norm_stage(stage: str) -> str:
    folded = {s.lower(): s for s in STAGES}
    key = str(stage).strip().lower()
    if key not in folded:
        raise SafetyLabError("stage", f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return folded[key]


def _norm_alias(alias: str) -> str:
    alias = str(alias).strip()
    alias = alias.removeprefix("@")
    if not _ALIAS.match(alias):
        raise SafetyLabError("alias", f"{alias!r} is not a valid alias (letters, digits, '_' and '-' only)")
    if alias.lower() == "latest" or _RESERVED_ALIAS.match(alias):
        raise SafetyLabError("alias", f"{alias!r} is reserved by MLflow (latest, v<number>)")
    if len(alias) > 255:
        raise SafetyLabError("alias", "longer than 255 characters")
    return alias


def _norm_version(version: str) -> str:
    text = str(version).strip()
    if text.startswith(("v", "V")) and text[1:].isdigit():
        text = text[1:]
    if not text.isdigit() or int(text) < 1:
        raise SafetyLabError("version", f"{version!r} is not a version number (1, 2, ...)")
    return str(int(text))


def _status_of(mv) -> str:
    return SafetyTags.read(mv.tags or {}).status


def _reasons_of(mv, status: str) -> str:
    raw = (mv.tags or {}).get("safety.reasons")
    if raw is None or not str(raw).strip():
        return "not evaluated" if status == UNEVALUATED else "none recorded"
    text = str(raw).strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return _one_line("; ".join(str(p) for p in parsed)) or "none recorded"
    return "; ".join(_one_line(line) for line in text.splitlines() if line.strip())


def _client() -> MlflowClient:
    return MlflowClient()


def _registered_model(client: MlflowClient, model_name: str):
    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise SafetyLabError("model_name", f"no registered model named {model_name!r}") from None
        raise SafetyLabError("model_name", f"cannot read model {model_name!r}: {_mlflow_problem(exc)}") from None


def _all_versions(client: MlflowClient, model_name: str) -> list:
    """Every version of the model (paged), ascending by version number."""
    quote = '"' if "'" in model_name else "'"
    flt = f"name = {quote}{model_name}{quote}"
    versions, token = [], None
    while True:
        page = client.search_model_versions(flt, max_results=1000, page_token=token)
        versions.extend(mv for mv in page if mv.name == model_name)
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(versions, key=lambda mv: int(mv.version))


def _aliases_by_version(rm) -> dict[str, list[str]]:
    """search_model_versions() does not fill ModelVersion.aliases; the registered model has them all."""
    raw = getattr(rm, "aliases", None) or {}
    pairs = raw.items() if isinstance(raw, dict) else ((a.alias, a.version) for a in raw)
    out: dict[str, list[str]] = {}
    for alias, version in pairs:
        out.setdefault(str(version), []).append(str(alias))
    return {v: sorted(a) for v, a in out.items()}


# --------------------------------------------------------------------------- evidence


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
    client = client or _client()
    tag_status = _status_of(mv)
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
    problem = _record_problem(run, mv, tag_status)
    sealed = split_problem(policy, run.data.tags.get("data.eval_split_sha256"))
    problem = problem or (f"stale: evaluation run {run_id}: {sealed}" if sealed else None)
    if problem:
        return Evidence(UNEVALUATED, tag_status, problem, run_id)
    decision, problem = _decision_problem(run, tag_status, policy)
    return Evidence(UNEVALUATED if problem else tag_status, tag_status, problem, run_id, decision)


# --------------------------------------------------------------------------- gate


def _gate(move: _Move) -> None:
    """Fill in which rule each target used and which targets refuse the verified status."""
    refusals, rules = [], {}
    for name, is_alias in move.targets:
        rule, entry = gate_rule(move.policy, name, alias=is_alias)
        label = f"@{name}" if is_alias else name
        rules[label] = entry
        if move.evidence.status not in rule:
            refusals.append((label, rule))
    move.refusals, move.rules = tuple(refusals), rules


def _refusal(move: _Move) -> GateRefused:
    head = f"{move.model_name} version {move.version}"
    ev = move.evidence
    if move.lenient:
        text = (
            f"{head}: policy '{move.policy.name}' (sha256 {fingerprint(move.policy)[:12]}) is more lenient than "
            f"the packaged policy ({'; '.join(move.lenient)}); a lenient policy is an override: "
            "give --force and --reason"
        )
    else:
        needs = " and ".join(f"{target} needs {_or_list(rule)}" for target, rule in move.refusals)
        if ev.problem:
            text = f"{head} is '{ev.tag_status}' on its tag, but {ev.problem}; so it counts as unevaluated: {needs}"
        else:
            text = f"{head} is '{ev.status}', {needs}; reasons: {_reasons_of(move.mv, ev.status)}"
    return GateRefused(
        move.model_name,
        move.version,
        _one_line(text),
        status=ev.tag_status,
        evidence=ev,
        refusals=list(move.refusals),
        lenient=move.lenient,
    )


def check_move(mv, rm, *, stage: str | None = None, alias: str | None = None, policy: Policy, client=None) -> _Move:
    """The gate's answer for moving version `mv` (of registered model `rm`) into `stage` and/or onto `alias`,
    changing nothing: the move with its verified evidence, the rule each target used, and the refusals (none =
    allowed) and leniency that ``promote`` would act on. The tracking server's gate calls this too."""
    client = client or _client()
    stage = _norm_stage(stage) if stage else None
    alias = _norm_alias(alias) if alias else None
    move = _Move(
        str(mv.name),
        mv,
        rm,
        stage,
        alias,
        None,
        False,
        None,
        policy,
        verify_evidence(mv, policy, client=client),
        tuple(lenient_changes(policy)),
    )
    _gate(move)
    return move


def refusal_message(move: _Move) -> str:
    """The one-line refusal ``promote`` raises for `move` (whose refusals or leniency are not empty)."""
    return _refusal(move).problem


# --------------------------------------------------------------------------- audit


def _audit_experiment_id(client: MlflowClient) -> str:
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        try:
            return client.create_experiment(AUDIT_EXPERIMENT, tags={"safety_lab.kind": "audit"})
        except MlflowException as exc:  # created concurrently
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _audit_tags(move: _Move, user: str, forced: bool) -> dict[str, str]:
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


def _start_audit(client: MlflowClient, move: _Move, run_name: str, tags: dict[str, str]) -> str:
    """An audit run (RUNNING) carrying the request and the full policy (policy.json)."""
    try:
        experiment_id = _audit_experiment_id(client)
        run = client.create_run(
            experiment_id, run_name=run_name, tags={k: _clip(str(v), 8000) for k, v in tags.items()}
        )
        client.log_text(run.info.run_id, policy_json(move.policy), "policy.json")
    except MlflowException as exc:
        raise SafetyLabError(
            "audit", f"cannot record the audit run in {AUDIT_EXPERIMENT!r}: {_mlflow_problem(exc)}"
        ) from None
    return run.info.run_id


def _audit_refusal(client: MlflowClient, move: _Move, refused: GateRefused) -> None:
    """A refusal is recorded too; failing to record it must not hide the refusal itself."""
    tags = {
        **_audit_tags(move, _user(), False),
        "safety_lab.audit": "refusal",
        "refused": str(refused),
        "mlflow.note.content": str(refused),
    }
    try:
        run_id = _start_audit(client, move, f"refuse-{move.model_name}-v{move.version}", tags)
        client.set_terminated(run_id, "FINISHED")
    except (SafetyLabError, MlflowException) as exc:
        warnings.warn(f"the refusal was not audited: {_mlflow_problem(exc)}", stacklevel=3)


def _move_targets(client: MlflowClient, move: _Move) -> None:
    """The registry changes themselves: the stage, then the alias; each is one write, retried on a conflict."""
    name, version = move.model_name, move.version
    if move.stage:
        with warnings.catch_warnings():  # stages are deprecated in MLflow 3; the feature is kept
            warnings.simplefilter("ignore", FutureWarning)
            retried(
                client.transition_model_version_stage,
                name,
                version,
                move.stage,
                archive_existing_versions=move.archive_existing,
            )
    if move.alias:
        retried(client.set_registered_model_alias, name, move.alias, version)


def _labels(move: _Move) -> list[str]:
    return [f"@{n}" if a else n for n, a in move.targets]


def _in_place(client: MlflowClient, move: _Move) -> list[str] | None:
    """The targets the version holds now, read back from the registry; None when it cannot be read."""
    try:
        stage = client.get_model_version(move.model_name, move.version).current_stage or "None"
        aliases = _aliases_by_version(client.get_registered_model(move.model_name)).get(move.version, [])
    except MlflowException:
        return None
    return [t for t in _labels(move) if t == stage or (t.startswith("@") and t[1:] in aliases)]


def _to_archive(client: MlflowClient, move: _Move) -> tuple[str, ...]:
    """The other versions now in the target stage, when --archive-existing asks to move them out."""
    if not (move.archive_existing and move.stage):
        return ()
    return tuple(
        str(v.version)
        for v in _all_versions(client, move.model_name)
        if (v.current_stage or "None") == move.stage and str(v.version) != move.version
    )


def _override(move: _Move, user: str, at: str) -> dict[str, str]:
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


def _close_audit(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Best effort: the outcome tags on the audit run, then its end status."""
    with contextlib.suppress(Exception):
        retried(client.log_batch, run_id, tags=[RunTag(k, _clip(v, 8000)) for k, v in tags.items()])
    with contextlib.suppress(Exception):
        retried(client.set_terminated, run_id, status)


def _failed_part_way(
    client: MlflowClient, move: _Move, run_id: str, exc: BaseException, done: list[str] | None
) -> None:
    """The move did not complete: the audit run ends FAILED (KILLED on Ctrl-C) naming the targets it did reach, and
    an error becomes one line saying the same. A KeyboardInterrupt is left to propagate."""
    if done is None:
        what = "could not read back what moved"
    elif not done:
        what = "nothing moved"
    else:
        what = f"moved to {' '.join(done)}, not to {' '.join(t for t in _labels(move) if t not in done)}"
    problem = f"{type(exc).__name__}: {_mlflow_problem(exc)}"
    note = f"{move.model_name} version {move.version} -> {move.target} failed part-way: {what}: {problem}"
    interrupted = isinstance(exc, KeyboardInterrupt)
    _close_audit(client, run_id, "KILLED" if interrupted else "FAILED", {"error": problem, "outcome": note})
    if not interrupted:
        raise SafetyLabError(
            "registry",
            f"{move.model_name} version {move.version} -> {move.target} failed "
            f"part-way (audit run {run_id}): {what}: {_mlflow_problem(exc)}",
        ) from None


def _record_move(
    client: MlflowClient, move: _Move, run_id: str, record: dict[str, str] | None, to_archive: tuple[str, ...]
) -> tuple[tuple[str, ...], str | None]:
    """After the move: the override on the version (under a key only this audit run writes), the archived versions
    and FINISHED on the audit run. Returns (archived, None), or ((), what could not be written)."""
    missing = f"the override record could not be written: audit run {run_id} holds it"
    try:
        if record is not None:
            set_version_tag(client, move.model_name, move.version, override_key(run_id), override_value(record))
        missing = f"its audit run {run_id} could not be completed"
        name = move.model_name
        archived = tuple(v for v in to_archive if (client.get_model_version(name, v).current_stage or "") == "Archived")
        outcome = f"moved to {move.target}"
        retried(client.log_batch, run_id, tags=[RunTag("archived", ",".join(archived)), RunTag("outcome", outcome)])
        retried(client.set_terminated, run_id, "FINISHED")
    except Exception as exc:
        return (), f"{missing} ({_mlflow_problem(exc)})"
    return archived, None


def _execute(client: MlflowClient, move: _Move, forced: bool) -> PromotionResult:
    """Audit run first (RUNNING, carrying any override), then the registry changes, then their record and FINISHED.

    A move that did not reach every target ends FAILED and raises "failed part-way"; a move that did, but whose
    record could not be written, ends FINISHED and raises RecordNotWritten saying exactly that."""
    user, at, ev = _user(), _now_iso(), move.evidence
    holders = {a: v for v, names in _aliases_by_version(move.rm).items() for a in names}
    forced_note = f" (forced: {move.reason or ''})" if forced else ""
    note = f"{move.model_name} version {move.version} ({ev.tag_status}) -> {move.target}{forced_note} by {user} at {at}"
    record = _override(move, user, at) if forced else None
    tags = {
        **_audit_tags(move, user, forced),
        "safety_lab.audit": "promotion",
        "mlflow.note.content": note,
        "alias_previous_version": holders.get(move.alias, "") if move.alias else "",
        **({RUN_TAG: override_value(record)} if record is not None else {}),
    }
    run_id = _start_audit(client, move, f"promote-{move.model_name}-v{move.version}", tags)
    params = {
        "model_name": move.model_name,
        "version": move.version,
        "target": move.target,
        "forced": str(forced).lower(),
        "reason": move.reason or "",
        "status_at_time": ev.tag_status,
        "user": user,
    }
    try:
        retried(client.log_batch, run_id, params=[Param(k, _clip(str(v), _MAX_PARAM)) for k, v in params.items()])
        to_archive = _to_archive(client, move)
    except BaseException as exc:
        _failed_part_way(client, move, run_id, exc, [])
        raise
    try:
        _move_targets(client, move)
    except BaseException as exc:  # an error after the write committed still moved it: read back what holds
        done = _in_place(client, move)
        if isinstance(exc, KeyboardInterrupt) or done != _labels(move):
            _failed_part_way(client, move, run_id, exc, done)
            raise
    archived, missing = _record_move(client, move, run_id, record, to_archive)
    result = PromotionResult(
        model_name=move.model_name,
        version=move.version,
        status=ev.tag_status,
        action=move.action,
        target=move.target,
        forced=forced,
        run_id=run_id,
        archived=archived,
        verified_status=ev.status,
        evidence=ev.problem or "verified",
    )
    if missing:
        text = f"{move.model_name} version {move.version} moved to {move.target}; {missing}"
        _close_audit(client, run_id, "FINISHED", {"outcome": text, "record_written": "false"})
        raise RecordNotWritten(text, result)
    return result


# --------------------------------------------------------------------------- promote


def _request(model_name, version, from_alias, stage, alias, archive_existing, force, reason) -> tuple:
    """Normalised (model_name, version, from_alias, stage, alias, reason), or a one-line error."""
    model_name = (model_name or "").strip()
    if not model_name:
        raise SafetyLabError("model_name", "is required")
    version = None if version is None or not str(version).strip() else _norm_version(version)
    from_alias = None if from_alias is None or not str(from_alias).strip() else str(from_alias)
    if (version is None) == (from_alias is None):
        raise SafetyLabError(
            "version" if version is None else "from_alias", "give exactly one of --version or --from-alias"
        )
    stage = None if stage is None or not str(stage).strip() else _norm_stage(stage)
    alias = None if alias is None or not str(alias).strip() else _norm_alias(alias)
    if stage is None and alias is None:
        raise SafetyLabError("stage", "give --stage and/or --alias")
    if archive_existing and stage not in ACTIVE_STAGES:
        raise SafetyLabError(
            "archive_existing",
            f"only applies with --stage {' or '.join(ACTIVE_STAGES)}{'' if stage is None else f', not {stage}'}",
        )
    reason = (reason or "").strip() or None
    if force and not reason:
        raise SafetyLabError("reason", "--force needs --reason")
    return model_name, version, from_alias, stage, alias, reason


def _find_version(client: MlflowClient, model_name: str, version: str | None, from_alias: str | None):
    if version is not None:
        try:
            return client.get_model_version(model_name, version)
        except MlflowException as exc:
            raise SafetyLabError(
                "version",
                f"model {model_name!r} has no version {version}"
                if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"
                else _mlflow_problem(exc),
            ) from None
    source_alias = from_alias.strip().lstrip("@")
    if not _ALIAS.match(source_alias):
        raise SafetyLabError("from_alias", f"{from_alias!r} is not a valid alias (letters, digits, '_' and '-' only)")
    try:
        return client.get_model_version_by_alias(model_name, source_alias)
    except MlflowException:
        raise SafetyLabError("from_alias", f"model {model_name!r} has no alias {source_alias!r}") from None


def promote(
    model_name: str,
    *,
    version: str | None = None,
    from_alias: str | None = None,
    stage: str | None = None,
    alias: str | None = None,
    archive_existing: bool = False,
    force: bool = False,
    reason: str | None = None,
    policy: str | Policy | None = None,
) -> PromotionResult:
    """Move one version into `stage` and/or onto `alias` if its verified safety status is allowed there.

    Exactly one of `version` / `from_alias` picks the version; at least one of `stage` / `alias` is the target.
    `policy` is a YAML path or a Policy (default: the packaged one); one more lenient than the packaged policy
    is an override. A refusal raises GateRefused, audited, before any registry change unless `force` (which
    needs a `reason`). Returns the outcome, including the id of the audit run in experiment "safety_lab-audit".
    A move that did not reach its targets raises SafetyLabError("registry", "... failed part-way ..."); one that
    did, but whose record could not be written, raises RecordNotWritten (its ``result`` is the outcome).
    """
    model_name, version, from_alias, stage, alias, reason = _request(
        model_name, version, from_alias, stage, alias, archive_existing, force, reason
    )
    policy_obj = policy if isinstance(policy, Policy) else load_policy(policy)
    client = _client()
    rm = _registered_model(client, model_name)
    mv = _find_version(client, model_name, version, from_alias)
    move = _Move(
        model_name,
        mv,
        rm,
        stage,
        alias,
        from_alias,
        bool(archive_existing),
        reason,
        policy_obj,
        verify_evidence(mv, policy_obj, client=client),
        tuple(lenient_changes(policy_obj)),
    )
    _gate(move)
    if (move.refusals or move.lenient) and not force:
        refused = _refusal(move)
        _audit_refusal(client, move, refused)
        raise refused
    return _execute(client, move, forced=bool(move.refusals or move.lenient))


# --------------------------------------------------------------------------- lineage


def _fmt_num(value: Any) -> str:
    if value is None or str(value).strip() == "":
        return "-"
    try:
        return f"{float(value):.2f}"
    except ValueError:
        return str(value).strip()


def _parent_version(mv, model_name: str) -> tuple[str | None, str | None]:
    """(parent version in this model, or None; the raw parent tag for parents elsewhere)."""
    raw = (mv.tags or {}).get("parent")
    if raw is None or not str(raw).strip():
        return None, None
    try:
        name, version, _alias = parse_uri(str(raw), "parent")
    except SafetyLabError:
        return None, str(raw).strip()
    if name == model_name and version is not None:
        return str(int(version)), str(raw).strip()
    return None, str(raw).strip()


def lineage_tree(model_name: str) -> str:
    """The versions of a model as a tree: each fine-tuned version under the version it started from, every override
    of a version on its own line below it, oldest first."""
    model_name = (model_name or "").strip()
    if not model_name:
        raise SafetyLabError("model_name", "is required")
    client = _client()
    rm = _registered_model(client, model_name)
    versions = _all_versions(client, model_name)
    if not versions:
        return f"{model_name}: no versions"
    aliases = _aliases_by_version(rm)
    by_version = {str(mv.version): mv for mv in versions}
    children: dict[str | None, list] = {}
    external: dict[str, str] = {}
    for mv in versions:
        parent, raw = _parent_version(mv, model_name)
        # a parent must be an earlier, existing version of this model (also rules out cycles)
        if parent is not None and (parent not in by_version or int(parent) >= int(mv.version)):
            external[str(mv.version)] = f"{raw} (missing)" if parent not in by_version else str(raw)
            parent = None
        elif parent is None and raw:
            external[str(mv.version)] = raw
        children.setdefault(parent, []).append(mv)

    def line(mv) -> str:
        tags = mv.tags or {}
        parts = [
            f"v{mv.version}",
            f"data={tags.get('data.name') or '-'}",
            f"status={_status_of(mv)}",
            f"asr={_fmt_num(tags.get('safety.asr'))}",
        ]
        if str(mv.version) in external:
            parts.append(f"from={external[str(mv.version)]}")
        elif "parent" not in tags and tags.get("base_model"):
            parts.append(f"base={tags['base_model']}")
        text = "  ".join(parts)
        stage = mv.current_stage or "None"
        marks = ([f"[{stage}]"] if stage != "None" else []) + [f"@{a}" for a in aliases.get(str(mv.version), [])]
        return text + ("  " + " ".join(marks) if marks else "")

    out = [f"{model_name} ({len(versions)} version{'s' if len(versions) != 1 else ''})"]

    def walk(mv, prefix: str, connector: str, child_prefix: str) -> None:
        out.append(prefix + connector + line(mv))
        kids = children.get(str(mv.version), [])
        under = prefix + child_prefix + ("|   " if kids else "    ")
        out.extend(f"{under}override: {describe(r)}" for r in override_history(mv.tags or {}))
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            walk(kid, prefix + child_prefix, "`-- " if last else "|-- ", "    " if last else "|   ")

    for root in children.get(None, []):
        walk(root, "", "", "")
    return "\n".join(out)


# --------------------------------------------------------------------------- report


def report_rows(model_name: str) -> list[dict]:
    """One dict per version (ascending), values as strings ('' when not recorded). Keys: the version's identity
    and status, then one column per tagged headline metric spec read from its ``safety.<key>`` tag (``asr``,
    ``asr_ci``, ``over_refusal_rate``, ...), then stage, aliases and creation time."""
    model_name = (model_name or "").strip()
    if not model_name:
        raise SafetyLabError("model_name", "is required")
    client = _client()
    rm = _registered_model(client, model_name)
    aliases = _aliases_by_version(rm)
    metric_columns = tagged_columns()
    rows = []
    for mv in _all_versions(client, model_name):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                "data": tags.get("data.name", ""),
                "parent": tags.get("parent", ""),
                "status": _status_of(mv),
                **{c.key: c.tag_cell(tags) for c in metric_columns},
                "stage": mv.current_stage or "None",
                "aliases": ",".join(aliases.get(str(mv.version), [])),
                "created": _ms_iso(mv.creation_timestamp),
            }
        )
    return rows


def _columns(rows: list[dict]) -> list[str]:
    cols = list(REPORT_COLUMNS)
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def format_report(rows: list[dict], fmt: str = "table") -> str:
    """rows from report_rows() as 'table' (aligned columns), 'csv', 'json' or 'markdown' (tables.render)."""
    rows = list(rows)
    return tables.render(rows, fmt, _columns(rows), empty="(no versions)")


__all__ = [
    "AUDIT_EXPERIMENT",
    "REPORT_COLUMNS",
    "REPORT_FORMATS",
    "Evidence",
    "GateRefused",
    "check_move",
    "PromotionResult",
    "RecordNotWritten",
    "format_report",
    "lineage_tree",
    "promote",
    "refusal_message",
    "report_rows",
    "verify_evidence",
]
