"""Registry moves behind the safety gate: ``promote`` moves a version into a stage and/or onto an alias.

``promote`` moves one model version only when the evidence behind its ``safety.status`` tag holds (``evidence``)
and the policy gate allows that status there (``moves.check_move``). A status without that evidence counts as
``unevaluated``. A refusal raises ``GateRefused`` before anything in the registry changes, and is itself recorded
as a run in the ``safety_lab-audit`` experiment (``audit``). ``force=True`` (with a ``reason``) bypasses a refusal
and records who/when/why on its audit run and on the version, under a tag of its own
(``safety.override.<audit run id>``, see ``overrides``). A policy more lenient than the packaged one is an override
too. Every promotion, demotion or archive is recorded as an audit run.

Concurrent moves of one version: every write a move makes commutes with every write of another move. The stage
and the alias are each one registry write (the later one wins, as in MLflow itself); the override goes under a
key no other move writes; the rest goes on the move's own audit run. A write that loses MLflow's read-then-insert
race is sent again (``writes.retried``). A move ends in exactly one of three ways: done (audit run FINISHED),
``failed part-way`` naming the targets it reached (FAILED), or moved but not recorded (``RecordNotWritten``,
FINISHED, the audit run holding the record).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab import names
from safety_lab.errors import SafetyLabError
from safety_lab.policy import Policy, load_policy
from safety_lab.registry import audit
from safety_lab.registry.audit import AUDIT_EXPERIMENT
from safety_lab.registry.moves import GateRefused, Move, check_move, refusal
from safety_lab.registry.overrides import RUN_TAG, override_key, override_value
from safety_lab.registry.versions import aliases_by_version, all_versions, error_code, mlflow_problem, registered_model
from safety_lab.registry.writes import retried, set_version_tag
from safety_lab.tracking import actor

ACTIVE_STAGES: tuple[str, ...] = ("Staging", "Production")


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


class RecordNotWritten(SafetyLabError):
    """The version moved, but the record of the move (its override tag, or its audit run) could not be written."""

    def __init__(self, message: str, result: PromotionResult):
        self.result = result
        super().__init__("record", message)


def _user() -> str:
    return actor()  # mlflow:<user> when the tracking server authenticates, else os:<login>


def _client() -> MlflowClient:
    return MlflowClient()


# --------------------------------------------------------------------------- audit runs


def _start_audit(client: MlflowClient, move: Move, kind: str, tags: dict[str, str]) -> str:
    """An audit run (RUNNING) carrying the request and the full policy (policy.json); a one-line error if not."""
    try:
        return audit.start_run(client, move, kind, tags)
    except MlflowException as exc:
        raise SafetyLabError(
            "audit", f"cannot record the audit run in {AUDIT_EXPERIMENT!r}: {mlflow_problem(exc)}"
        ) from None


def _audit_refusal(client: MlflowClient, move: Move, refused: GateRefused) -> None:
    """A refusal is recorded too; failing to record it must not hide the refusal itself."""
    try:
        run_id = _start_audit(client, move, "refuse", audit.refusal_tags(move, str(refused), _user()))
        client.set_terminated(run_id, "FINISHED")
    except (SafetyLabError, MlflowException) as exc:
        warnings.warn(f"the refusal was not audited: {mlflow_problem(exc)}", stacklevel=3)


# --------------------------------------------------------------------------- the move and its record


def _move_targets(client: MlflowClient, move: Move) -> None:
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


def _in_place(client: MlflowClient, move: Move) -> list[str] | None:
    """The targets the version holds now, read back from the registry; None when it cannot be read."""
    try:
        stage = client.get_model_version(move.model_name, move.version).current_stage or "None"
        aliases = aliases_by_version(client.get_registered_model(move.model_name)).get(move.version, [])
    except MlflowException:
        return None
    return [t for t in move.labels if t == stage or (t.startswith("@") and t[1:] in aliases)]


def _to_archive(client: MlflowClient, move: Move) -> tuple[str, ...]:
    """The other versions now in the target stage, when --archive-existing asks to move them out."""
    if not (move.archive_existing and move.stage):
        return ()
    return tuple(
        str(v.version)
        for v in all_versions(client, move.model_name)
        if (v.current_stage or "None") == move.stage and str(v.version) != move.version
    )


def _failed_part_way(client: MlflowClient, move: Move, run_id: str, exc: BaseException, done: list[str] | None) -> None:
    """The move did not complete: the audit run ends FAILED (KILLED on Ctrl-C) naming the targets it did reach, and
    an error becomes one line saying the same. A KeyboardInterrupt is left to propagate."""
    if done is None:
        what = "could not read back what moved"
    elif not done:
        what = "nothing moved"
    else:
        what = f"moved to {' '.join(done)}, not to {' '.join(t for t in move.labels if t not in done)}"
    problem = f"{type(exc).__name__}: {mlflow_problem(exc)}"
    note = f"{move.model_name} version {move.version} -> {move.target} failed part-way: {what}: {problem}"
    interrupted = isinstance(exc, KeyboardInterrupt)
    audit.close_run(client, run_id, "KILLED" if interrupted else "FAILED", {"error": problem, "outcome": note})
    if not interrupted:
        raise SafetyLabError(
            "registry",
            f"{move.model_name} version {move.version} -> {move.target} failed "
            f"part-way (audit run {run_id}): {what}: {mlflow_problem(exc)}",
        ) from None


def _record_move(
    client: MlflowClient, move: Move, run_id: str, record: dict[str, str] | None, to_archive: tuple[str, ...]
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
        return (), f"{missing} ({mlflow_problem(exc)})"
    return archived, None


def _execute(client: MlflowClient, move: Move, forced: bool) -> PromotionResult:
    """Audit run first (RUNNING, carrying any override), then the registry changes, then their record and FINISHED.

    A move that did not reach every target ends FAILED and raises "failed part-way"; a move that did, but whose
    record could not be written, ends FINISHED and raises RecordNotWritten saying exactly that."""
    user, at, ev = _user(), audit.now_iso(), move.evidence
    holders = {a: v for v, held in aliases_by_version(move.rm).items() for a in held}
    forced_note = f" (forced: {move.reason or ''})" if forced else ""
    note = f"{move.model_name} version {move.version} ({ev.tag_status}) -> {move.target}{forced_note} by {user} at {at}"
    record = audit.override_record(move, user, at) if forced else None
    tags = {
        **audit.audit_tags(move, user, forced),
        "safety_lab.audit": "promotion",
        "mlflow.note.content": note,
        "alias_previous_version": holders.get(move.alias, "") if move.alias else "",
        **({RUN_TAG: override_value(record)} if record is not None else {}),
    }
    run_id = _start_audit(client, move, "promote", tags)
    try:
        retried(client.log_batch, run_id, params=audit.audit_params(move, user, forced))
        to_archive = _to_archive(client, move)
    except BaseException as exc:
        _failed_part_way(client, move, run_id, exc, [])
        raise
    try:
        _move_targets(client, move)
    except BaseException as exc:  # an error after the write committed still moved it: read back what holds
        done = _in_place(client, move)
        if isinstance(exc, KeyboardInterrupt) or done != move.labels:
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
        audit.close_run(client, run_id, "FINISHED", {"outcome": text, "record_written": "false"})
        raise RecordNotWritten(text, result)
    return result


# --------------------------------------------------------------------------- promote


def _norm_version(version: str) -> str:
    text = str(version).strip()
    if text.startswith(("v", "V")) and text[1:].isdigit():
        text = text[1:]
    if not text.isdigit() or int(text) < 1:
        raise SafetyLabError("version", f"{version!r} is not a version number (1, 2, ...)")
    return str(int(text))


def _which_version(model_name, version, from_alias) -> tuple[str, str | None, str | None]:
    """(model_name, version, from_alias) normalised: exactly one of version / from_alias; else a one-line error."""
    model_name = (model_name or "").strip()
    if not model_name:
        raise SafetyLabError("model_name", "is required")
    version = None if version is None or not str(version).strip() else _norm_version(version)
    from_alias = None if from_alias is None or not str(from_alias).strip() else str(from_alias)
    if (version is None) == (from_alias is None):
        raise SafetyLabError(
            "version" if version is None else "from_alias", "give exactly one of --version or --from-alias"
        )
    return model_name, version, from_alias


def _which_targets(stage, alias, archive_existing, force, reason) -> tuple[str | None, str | None, str | None]:
    """(stage, alias, reason) normalised: at least one of stage / alias; else a one-line error."""
    stage = None if stage is None or not str(stage).strip() else names.stage(stage)
    alias = None if alias is None or not str(alias).strip() else names.alias(alias)
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
    return stage, alias, reason


def _find_version(client: MlflowClient, model_name: str, version: str | None, from_alias: str | None):
    if version is not None:
        try:
            return client.get_model_version(model_name, version)
        except MlflowException as exc:
            raise SafetyLabError(
                "version",
                f"model {model_name!r} has no version {version}"
                if error_code(exc) == "RESOURCE_DOES_NOT_EXIST"
                else mlflow_problem(exc),
            ) from None
    source_alias = names.alias(from_alias, "from_alias")
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
    model_name, version, from_alias = _which_version(model_name, version, from_alias)
    stage, alias, reason = _which_targets(stage, alias, archive_existing, force, reason)
    policy_obj = policy if isinstance(policy, Policy) else load_policy(policy)
    client = _client()
    rm = registered_model(client, model_name)
    mv = _find_version(client, model_name, version, from_alias)
    move = check_move(mv, rm, stage=stage, alias=alias, policy=policy_obj, client=client)
    move = replace(move, from_alias=from_alias, archive_existing=bool(archive_existing), reason=reason)
    if (move.refusals or move.lenient) and not force:
        refused = refusal(move)
        _audit_refusal(client, move, refused)
        raise refused
    return _execute(client, move, forced=bool(move.refusals or move.lenient))


__all__ = [
    "ACTIVE_STAGES",
    "GateRefused",
    "PromotionResult",
    "RecordNotWritten",
    "promote",
]
