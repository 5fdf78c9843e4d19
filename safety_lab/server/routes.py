"""Which requests the gate looks at: the registry's and the runs' write endpoints, under /api and /ajax-api."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# (endpoint, method) -> what the request does
GATED: dict[tuple[str, str], str] = {
    ("model-versions/transition-stage", "POST"): "stage",
    ("registered-models/alias", "POST"): "set_alias",
    ("registered-models/alias", "DELETE"): "delete_alias",
    ("model-versions/set-tag", "POST"): "set_version_tag",
    ("model-versions/delete-tag", "DELETE"): "delete_version_tag",
    ("model-versions/create", "POST"): "create_version",
    ("runs/set-tag", "POST"): "set_run_tag",
    ("runs/delete-tag", "POST"): "delete_run_tag",
    ("runs/log-batch", "POST"): "log_batch",
}
# any static prefix, then /api/2.0/mlflow/<endpoint> or /ajax-api/2.0/mlflow/<endpoint>
_PATH = re.compile(r"/(?:api|ajax-api)/\d+\.\d+/mlflow/(?P<endpoint>[a-z-]+/[a-z-]+)/?$")


def action_of(path: str, method: str) -> str | None:
    """What a request does, when the gate must see it; None for every other request (those pass unchanged)."""
    if method not in ("POST", "DELETE"):
        return None
    match = _PATH.search(path)
    return GATED.get((match["endpoint"], method)) if match else None


def fields(args: Mapping[str, Any], body: Any) -> dict[str, Any]:
    """The request's fields: query arguments (how some clients send a DELETE), then the JSON body over them."""
    out: dict[str, Any] = dict(args)
    if isinstance(body, Mapping):
        out.update(body)
    return out


def tag_pairs(raw: Any) -> list[tuple[str, str]]:
    """[(key, value)] from MLflow's tag lists ([{"key": k, "value": v}, ...])."""
    if not isinstance(raw, list):
        return []
    return [(str(t.get("key", "")), str(t.get("value", ""))) for t in raw if isinstance(t, Mapping)]


def is_safety_key(key: str) -> bool:
    return str(key).startswith("safety.")
