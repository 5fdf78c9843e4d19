"""Override records: what a forced promotion writes on the version and its audit run, and how the history is read.

Each override gets its own version tag, ``safety.override.<audit run id>``, holding one compact JSON object. No
two moves ever write the same key, so concurrent overrides of one version cannot overwrite each other and the
history is the set of those tags, whatever order they were written in. Versions tagged before this layout carry one
override in the single-slot tags ``safety.override.<field>`` and earlier ones in ``safety.override.history``; they
are read too.
"""

from __future__ import annotations

import json
from typing import Any

OVERRIDE_PREFIX = "safety.override."
OVERRIDE_FIELDS: tuple[str, ...] = (
    "by",
    "at",
    "reason",
    "status_at_time",
    "target",
    "evidence",
    "policy_sha256",
    "lenient",
)
LEGACY_HISTORY = "safety.override.history"  # read only
RUN_TAG = "safety.override"  # the same record on the audit run
_CLIP = {"reason": 2000, "evidence": 1000, "lenient": 2000}  # keeps a record inside a run tag's 8000 characters


def override_key(audit_run_id: str) -> str:
    """The version tag that holds the override recorded by one audit run."""
    return f"{OVERRIDE_PREFIX}{audit_run_id}"


def override_value(record: dict[str, str]) -> str:
    """One record as compact JSON, its free-text fields clipped so it fits a run tag."""
    clipped = {k: (v if len(v) <= _CLIP.get(k, len(v)) else v[: _CLIP[k] - 3] + "...") for k, v in record.items()}
    return json.dumps(clipped, ensure_ascii=False, separators=(",", ":"))


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _legacy(tags: dict[str, str]) -> list[dict[str, str]]:
    """The single-slot record and the JSON history list written by the earlier layout, oldest first."""
    out: list[dict[str, str]] = []
    raw = tags.get(LEGACY_HISTORY)
    if raw is not None:
        parsed = _parsed(raw)
        items = parsed if isinstance(parsed, list) else [parsed if isinstance(parsed, dict) else {"unparsed": raw}]
        out.extend({str(k): str(v) for k, v in item.items()} for item in items if isinstance(item, dict))
    slot = {f: tags[OVERRIDE_PREFIX + f] for f in OVERRIDE_FIELDS if OVERRIDE_PREFIX + f in tags}
    if slot and slot not in out:
        out.append(slot)
    return out


def override_history(tags: dict[str, str]) -> list[dict[str, str]]:
    """Every override recorded on a version, oldest first (by time, then audit run); each per-run record carries
    its ``audit_run``. A tag under the prefix that does not parse is kept as ``{"unparsed": ...}``."""
    records = _legacy(tags)
    legacy_keys = {LEGACY_HISTORY, *(OVERRIDE_PREFIX + f for f in OVERRIDE_FIELDS)}
    for key, value in tags.items():
        if not key.startswith(OVERRIDE_PREFIX) or key in legacy_keys:
            continue
        parsed = _parsed(value)
        record = {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {"unparsed": value}
        records.append({**record, "audit_run": key[len(OVERRIDE_PREFIX) :]})
    return sorted(records, key=lambda r: (r.get("at", ""), r.get("audit_run", "")))


def describe(record: dict[str, str]) -> str:
    """One line: when, who, where to, from which status, why, and the audit run."""
    if "unparsed" in record:
        return f"unreadable override record: {record['unparsed'][:200]}"
    parts = [
        record.get("at") or "?",
        f"by {record.get('by') or '?'}",
        f"-> {record.get('target') or '?'}",
        f"(was {record.get('status_at_time') or '?'})",
    ]
    if record.get("evidence") and record["evidence"] != "verified":
        parts.append(f"evidence: {record['evidence']}")
    if record.get("lenient"):
        parts.append(f"lenient policy: {record['lenient']}")
    parts.append(f"reason: {record.get('reason') or '-'}")
    if record.get("audit_run"):
        parts.append(f"audit run {record['audit_run']}")
    return " ".join(" ".join(parts).split())
