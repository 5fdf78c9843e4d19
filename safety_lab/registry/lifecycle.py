"""Registry lifecycle behind the safety gate: promote/demote/archive versions, the lineage tree, the report.

``promote`` moves one model version into a stage and/or onto an alias only when its ``safety.status``
tag is allowed there by the policy gate (``safety_lab.policy.allowed``). A refusal raises
``GateRefused`` before anything in the registry changes. ``force=True`` (with a ``reason``) bypasses a
refusal and records who/when/why on the version's ``safety.override.*`` tags, keeping every earlier
override in ``safety.override.history``. Every promotion, demotion or archive is also recorded as a
run in the ``safety_lab-audit`` experiment.

Gate rules for aliases: an alias listed in the policy gate (e.g. ``champion``; case-insensitive, or a
``*`` wildcard entry) uses its own rule; an alias the gate does not list follows the ``Staging`` rule.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.policy import STATUSES, Policy, allowed, load_policy, policy_summary
from safety_lab.registry import UNEVALUATED, parse_uri
from safety_lab.reporting import tables
from safety_lab.reporting.tables import tagged_columns
from safety_lab.tracking import actor

AUDIT_EXPERIMENT = "safety_lab-audit"
STAGES: tuple[str, ...] = ("None", "Staging", "Production", "Archived")
ACTIVE_STAGES: tuple[str, ...] = ("Staging", "Production")
UNLISTED_ALIAS_RULE = "Staging"
OVERRIDE_PREFIX = "safety.override."
OVERRIDE_FIELDS: tuple[str, ...] = ("by", "at", "reason", "status_at_time", "target")
OVERRIDE_HISTORY = "safety.override.history"
REPORT_COLUMNS: tuple[str, ...] = ("version", "data", "parent", "status", *(c.key for c in tagged_columns()),
                                   "stage", "aliases", "created")  # metric columns: the tagged headline specs
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
    forced: bool  # True only when --force bypassed a gate refusal
    run_id: str  # the audit run in experiment "safety_lab-audit"
    archived: tuple[str, ...] = ()  # versions moved to Archived by archive_existing


class GateRefused(SafetyLabError):
    """The policy gate refused the promotion; nothing in the registry was changed."""

    def __init__(self, model_name: str, version: str, status: str, refusals: list[tuple[str, tuple[str, ...]]],
                 reasons: str):
        self.model_name, self.version, self.status = model_name, version, status
        self.refusals = refusals
        needs = " and ".join(f"{target} needs {_or_list(rule)}" for target, rule in refusals)
        super().__init__("refused", f"{model_name} version {version} is '{status}', {needs}; reasons: {reasons}")


# --------------------------------------------------------------------------- small helpers


def _or_list(statuses: Iterable[str]) -> str:
    items = list(statuses)
    if not items:
        return "nothing (no status is allowed)"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _mlflow_problem(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _error_code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _user() -> str:
    return actor()  # mlflow:<user> when the server authenticates, else os:<login>


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _ms_iso(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).isoformat(timespec="seconds")
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
    if alias.startswith("@"):
        alias = alias[1:]
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
    raw = (mv.tags or {}).get("safety.status")
    status = str(raw).strip().lower() if raw is not None else ""
    return status or UNEVALUATED


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


# --------------------------------------------------------------------------- gate


def _gate_rule(policy: Policy, target: str) -> tuple[str, ...] | None:
    """The statuses the gate allows into `target`, resolved like policy.allowed(); None when unlisted."""
    gate = policy.gate
    if target in gate:
        return tuple(gate[target])
    folded = {str(k).lower(): v for k, v in gate.items()}
    if target.lower() in folded:
        return tuple(folded[target.lower()])
    if "*" in gate:
        return tuple(gate["*"])
    return None


def _check(policy: Policy, target: str, gate_status: str, *, is_alias: bool) -> tuple[bool, tuple[str, ...], str]:
    """(allowed?, allowed statuses, rule used). Unlisted aliases follow the Staging rule."""
    rule_target = target
    if is_alias and _gate_rule(policy, target) is None:
        rule_target = UNLISTED_ALIAS_RULE
    rule = _gate_rule(policy, rule_target)
    if rule is None:  # only possible for a stage the policy has no rule for
        raise SafetyLabError("policy", f"policy {policy.name!r} has no gate rule for {target!r} "
                             f"(known: {', '.join(map(str, policy.gate))})")
    return allowed(policy, rule_target, gate_status), rule, rule_target


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


def _override_record(tags: dict[str, str]) -> dict[str, str] | None:
    record = {f: tags[OVERRIDE_PREFIX + f] for f in OVERRIDE_FIELDS if OVERRIDE_PREFIX + f in tags}
    return record or None


def _override_tags(tags: dict[str, str], record: dict[str, str]) -> dict[str, str]:
    """New safety.override.* tags; earlier overrides are kept, oldest first, in safety.override.history."""
    out = {OVERRIDE_PREFIX + k: v for k, v in record.items()}
    previous = _override_record(tags)
    raw_history = tags.get(OVERRIDE_HISTORY)
    if previous is None and raw_history is None:
        return out
    history: list[Any] = []
    if raw_history is not None:
        try:
            parsed = json.loads(raw_history)
            history = parsed if isinstance(parsed, list) else [parsed]
        except ValueError:
            history = [{"unparsed": raw_history}]
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)
    history.append(record)
    out[OVERRIDE_HISTORY] = json.dumps(history, ensure_ascii=False)
    return out


# --------------------------------------------------------------------------- promote


def promote(model_name: str, *, version: str | None = None, from_alias: str | None = None, stage: str | None = None,
            alias: str | None = None, archive_existing: bool = False, force: bool = False, reason: str | None = None,
            policy: str | None = None) -> PromotionResult:
    """Move one version into `stage` and/or onto `alias` if the policy gate allows its safety status.

    Exactly one of `version` / `from_alias` picks the version; at least one of `stage` / `alias` is the
    target. A refusal raises GateRefused before any registry change unless `force` (which needs a
    `reason`). Returns the outcome, including the id of the audit run in experiment "safety_lab-audit".
    """
    model_name = (model_name or "").strip()
    if not model_name:
        raise SafetyLabError("model_name", "is required")
    version = None if version is None or not str(version).strip() else str(version)
    from_alias = None if from_alias is None or not str(from_alias).strip() else str(from_alias)
    if (version is None) == (from_alias is None):
        raise SafetyLabError("version" if version is None else "from_alias",
                             "give exactly one of --version or --from-alias")
    stage = None if stage is None or not str(stage).strip() else _norm_stage(stage)
    alias = None if alias is None or not str(alias).strip() else _norm_alias(alias)
    if stage is None and alias is None:
        raise SafetyLabError("stage", "give --stage and/or --alias")
    if archive_existing and stage not in ACTIVE_STAGES:
        raise SafetyLabError("archive_existing", f"only applies with --stage {' or '.join(ACTIVE_STAGES)}"
                             f"{'' if stage is None else f', not {stage}'}")
    reason = (reason or "").strip() or None
    if force and not reason:
        raise SafetyLabError("reason", "--force needs --reason")
    policy_obj = load_policy(policy)

    client = _client()
    rm = _registered_model(client, model_name)
    if version is not None:
        version = _norm_version(version)
        try:
            mv = client.get_model_version(model_name, version)
        except MlflowException as exc:
            raise SafetyLabError("version", f"model {model_name!r} has no version {version}"
                                 if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST" else _mlflow_problem(exc)) from None
    else:
        source_alias = from_alias.strip().lstrip("@")
        if not _ALIAS.match(source_alias):
            raise SafetyLabError("from_alias", f"{from_alias!r} is not a valid alias (letters, digits, '_' and '-' only)")
        try:
            mv = client.get_model_version_by_alias(model_name, source_alias)
        except MlflowException:
            raise SafetyLabError("from_alias", f"model {model_name!r} has no alias {source_alias!r}") from None
    version = str(mv.version)

    # ---- gate (read-only)
    tags = dict(mv.tags or {})
    status = _status_of(mv)
    gate_status = status if status in STATUSES else UNEVALUATED  # an unknown tag value is treated as unevaluated
    targets = ([(stage, False)] if stage else []) + ([(alias, True)] if alias else [])
    refusals: list[tuple[str, tuple[str, ...]]] = []
    rules: dict[str, str] = {}
    for name, is_alias in targets:
        ok, rule, rule_target = _check(policy_obj, name, gate_status, is_alias=is_alias)
        label = f"@{name}" if is_alias else name
        rules[label] = rule_target
        if not ok:
            refusals.append((label, rule))
    if refusals and not force:
        raise GateRefused(model_name, version, status, refusals, _reasons_of(mv, status))
    forced = bool(refusals)

    action = "stage+alias" if stage and alias else ("stage" if stage else "alias")
    target = " ".join(f"@{n}" if a else n for n, a in targets)
    user = _user()
    at = _now_iso()
    from_stage = mv.current_stage or "None"
    holders = {a: v for v, names in _aliases_by_version(rm).items() for a in names}
    alias_previous = holders.get(alias, "") if alias else ""
    to_archive: tuple[str, ...] = ()
    if archive_existing and stage:
        to_archive = tuple(str(v.version) for v in _all_versions(client, model_name)
                           if (v.current_stage or "None") == stage and str(v.version) != version)

    # ---- audit run first (status RUNNING), then the registry changes, then FINISHED / FAILED
    try:
        experiment_id = _audit_experiment_id(client)
        run_tags = {
            "safety_lab.audit": "promotion",
            "mlflow.user": user,
            "model_name": model_name,
            "version": version,
            "action": action,
            "target": target,
            "stage": stage or "",
            "alias": alias or "",
            "from_stage": from_stage,
            "alias_previous_version": alias_previous,
            "from_alias": from_alias or "",
            "status_at_time": status,
            "forced": str(forced).lower(),
            "gate_rules": json.dumps(rules),
            "policy": policy_summary(policy_obj),
            "archive_existing": str(bool(archive_existing)).lower(),
            "mlflow.note.content": f"{model_name} version {version} ({status}) -> {target}"
                                   f"{' (forced: ' + reason + ')' if forced else ''} by {user} at {at}",
        }
        if os.environ.get("MLFLOW_RUN_ID"):
            run_tags["safety_lab.invoked_from_run"] = os.environ["MLFLOW_RUN_ID"]
        run = client.create_run(experiment_id, run_name=f"promote-{model_name}-v{version}",
                                tags={k: _clip(str(v), 8000) for k, v in run_tags.items()})
    except MlflowException as exc:
        raise SafetyLabError("audit", f"cannot record the audit run in {AUDIT_EXPERIMENT!r}: "
                             f"{_mlflow_problem(exc)}") from None
    run_id = run.info.run_id
    params = {"model_name": model_name, "version": version, "target": target, "forced": str(forced).lower(),
              "reason": reason or "", "status_at_time": status, "user": user}

    try:
        client.log_batch(run_id, params=[Param(k, _clip(str(v), _MAX_PARAM)) for k, v in params.items()])
        if stage:
            with warnings.catch_warnings():  # stages are deprecated in MLflow 3; the feature is kept
                warnings.simplefilter("ignore", FutureWarning)
                client.transition_model_version_stage(model_name, version, stage,
                                                      archive_existing_versions=bool(archive_existing))
        if alias:
            client.set_registered_model_alias(model_name, alias, version)
        if forced:
            record = {"by": user, "at": at, "reason": reason or "", "status_at_time": status, "target": target}
            for key, value in _override_tags(tags, record).items():
                client.set_model_version_tag(model_name, version, key, value)
        archived: tuple[str, ...] = ()
        if to_archive:
            archived = tuple(v for v in to_archive
                             if (client.get_model_version(model_name, v).current_stage or "") == "Archived")
        client.log_batch(run_id, tags=[RunTag("archived", ",".join(archived))])
    except BaseException as exc:
        try:
            client.set_tag(run_id, "error", _clip(f"{type(exc).__name__}: {_mlflow_problem(exc)}", 8000))
            client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except Exception:
            pass
        if isinstance(exc, MlflowException):
            raise SafetyLabError("registry", f"{model_name} version {version} -> {target} failed part-way "
                                 f"(audit run {run_id}): {_mlflow_problem(exc)}") from None
        raise
    client.set_terminated(run_id, "FINISHED")
    return PromotionResult(model_name=model_name, version=version, status=status, action=action, target=target,
                           forced=forced, run_id=run_id, archived=archived)


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
    """The versions of a model as a tree: each fine-tuned version under the version it started from."""
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
        parts = [f"v{mv.version}", f"data={tags.get('data.name') or '-'}", f"status={_status_of(mv)}",
                 f"asr={_fmt_num(tags.get('safety.asr'))}"]
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
        rows.append({
            "version": str(mv.version),
            "data": tags.get("data.name", ""),
            "parent": tags.get("parent", ""),
            "status": _status_of(mv),
            **{c.key: c.tag_cell(tags) for c in metric_columns},
            "stage": mv.current_stage or "None",
            "aliases": ",".join(aliases.get(str(mv.version), [])),
            "created": _ms_iso(mv.creation_timestamp),
        })
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


__all__ = ["AUDIT_EXPERIMENT", "GateRefused", "PromotionResult", "REPORT_COLUMNS", "REPORT_FORMATS", "format_report",
           "lineage_tree", "promote", "report_rows"]
