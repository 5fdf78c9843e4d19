"""The naming rules, each written once: registered model names, aliases, and stage names folded to MLflow's.

Each check returns the canonical form of the name or raises ``SafetyLabError`` naming the field.
"""

from __future__ import annotations

import re

from safety_lab.errors import SafetyLabError

STAGES: tuple[str, ...] = ("None", "Staging", "Production", "Archived")
MAX_LENGTH = 255  # MLflow's limit on a registered model name and on an alias

_MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # ASCII only: search filters built from a name cannot break
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED_ALIAS = re.compile(r"^[vV]\d+$")  # MLflow reads `v<number>` as a version
_FOLDED_STAGES = {s.lower(): s for s in STAGES}


def model_name(text: str, field: str = "model_name") -> str:
    """`text` when it is a registered model name: 1 to 255 ASCII letters, digits, '-', '_' and '.'."""
    if not isinstance(text, str) or not _MODEL_NAME.match(text) or len(text) > MAX_LENGTH:
        raise SafetyLabError(field, f"may hold letters, digits, '-', '_' and '.' only, got {text!r}")
    return text


def alias(text: str, field: str = "alias") -> str:
    """The alias named by `text` (surrounding spaces and one leading '@' dropped): ASCII letters, digits, '_' and
    '-', at most 255 characters, and not one MLflow reserves (``latest``, ``v<number>``)."""
    name = str(text).strip().removeprefix("@")
    if not _ALIAS.match(name):
        raise SafetyLabError(field, f"{name!r} is not a valid alias (letters, digits, '_' and '-' only)")
    if name.lower() == "latest" or _RESERVED_ALIAS.match(name):
        raise SafetyLabError(field, f"{name!r} is reserved by MLflow (latest, v<number>)")
    if len(name) > MAX_LENGTH:
        raise SafetyLabError(field, f"longer than {MAX_LENGTH} characters")
    return name


def folded_stage(text: object) -> str | None:
    """The stage `text` names, ignoring case and surrounding spaces ('production' -> 'Production'), else None."""
    return _FOLDED_STAGES.get(str(text).strip().lower())


def stage(text: object, field: str = "stage") -> str:
    """The stage `text` names (see ``folded_stage``); an unknown stage raises."""
    found = folded_stage(text)
    if found is None:
        raise SafetyLabError(field, f"unknown stage {text!r} (known: {', '.join(STAGES)})")
    return found
