"""A registered model's versions as a lineage tree (``lineage_tree``) and as a report table (``report_rows``,
``format_report``), read from their registry tags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.models import parse_uri
from safety_lab.registry.overrides import describe, override_history
from safety_lab.registry.versions import aliases_by_version, all_versions, registered_model, status_of
from safety_lab.reporting import tables
from safety_lab.reporting.tables import tagged_columns

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
    client = MlflowClient()
    rm = registered_model(client, model_name)
    versions = all_versions(client, model_name)
    if not versions:
        return f"{model_name}: no versions"
    aliases = aliases_by_version(rm)
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
            f"stages={tags.get('training.stages') or '-'}",
            f"status={status_of(mv)}",
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


def _ms_iso(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def report_rows(model_name: str) -> list[dict]:
    """One dict per version (ascending), values as strings ('' when not recorded). Keys: the version's identity
    and status, then one column per tagged headline metric spec read from its ``safety.<key>`` tag (``asr``,
    ``asr_ci``, ``over_refusal_rate``, ...), then stage, aliases and creation time."""
    model_name = (model_name or "").strip()
    if not model_name:
        raise SafetyLabError("model_name", "is required")
    client = MlflowClient()
    rm = registered_model(client, model_name)
    aliases = aliases_by_version(rm)
    metric_columns = tagged_columns()
    rows = []
    for mv in all_versions(client, model_name):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                "data": tags.get("data.name", ""),
                "parent": tags.get("parent", ""),
                "status": status_of(mv),
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
