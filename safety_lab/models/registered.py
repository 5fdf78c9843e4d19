"""Registered versions as models: resolve a models:/ URI, check its lineage, load its base + adapter chain."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.models.base import Precision, apply_adapters, dir_sha256, load_base, weights_sha256
from safety_lab.models.refusal import RefusalDecision, attach

LINEAGE_FILE = "lineage.json"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_ADAPTER = re.compile(r"^adapter_\d+$")


def check_lineage(lineage: dict, root: Path) -> list[Path]:
    """The adapter folders of a version's lineage, refusing what would load anything outside its own artifacts."""
    base = lineage.get("base_model")
    if not isinstance(base, str) or not base.strip():
        raise SafetyLabError("lineage", "has no base_model")
    if base.strip().startswith("models:/"):
        raise SafetyLabError(
            "lineage", f"base_model {base!r} is another registry URI (a lineage names the root base model)"
        )
    names = lineage.get("adapters")
    if not isinstance(names, list) or not names:
        raise SafetyLabError("lineage", "has no adapters")
    root = root.resolve()
    paths = []
    for name in names:
        path = (root / str(name)).resolve()
        if not (isinstance(name, str) and _ADAPTER.match(name)) or path.parent != root:
            raise SafetyLabError("lineage", f"adapter name {name!r} is not adapter_<n> inside the version's artifacts")
        if not path.is_dir():
            raise SafetyLabError("lineage", f"adapter {name!r} is missing from the version's artifacts")
        paths.append(path)
    return paths


def chain_sha256(uri: str) -> str:
    """Content hash of a registered version's weights: its base model's files and each adapter of its chain."""
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolve_version(uri).source)) / "artifacts"
    lineage = _read_lineage(root, uri)
    parts = [
        weights_sha256(lineage["base_model"]),
        *(f"{p.name}:{dir_sha256(p)}" for p in check_lineage(lineage, root)),
    ]
    if lineage.get("refusal_decision"):  # the same weights decoded with another decision are another model
        parts.append(f"refusal_decision:{json.dumps(lineage['refusal_decision'], sort_keys=True)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read_lineage(root: Path, uri: str, field: str = "model_uri") -> dict:
    try:
        lineage = json.loads((root / LINEAGE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise SafetyLabError(field, f"{uri}: unreadable {LINEAGE_FILE} ({type(exc).__name__})") from None
    if not isinstance(lineage, dict):
        raise SafetyLabError(field, f"{uri}: {LINEAGE_FILE} is not an object")
    return lineage


def load_chain(lineage: dict, root: Path, *, precision: Precision | None = None, trust_remote_code: bool = False):
    """Base model + the lineage's adapters from `root`, with the lineage's refusal decision attached (see
    ``models.refusal``); remote code runs only if the caller AND the lineage allow it. With a gated decision (the
    parent answers) the version's own adapter stays unmerged, so the parent's weights remain in the model."""
    adapters = check_lineage(lineage, Path(root))
    decision = RefusalDecision.from_dict(lineage.get("refusal_decision"))
    trust = bool(trust_remote_code) and lineage.get("trust_remote_code") is True
    loaded = load_base(lineage["base_model"], precision=precision, trust_remote_code=trust)
    gated = decision is not None and decision.gated and bool(adapters)
    loaded = apply_adapters(loaded, adapters, keep_last=gated)
    attach(loaded.model, decision)
    loaded.parent = lineage.get("parent")
    return loaded


def parse_uri(uri: str, field: str = "model_uri") -> tuple[str, str | None, str | None]:
    match = _URI.match(uri.strip())
    if not match:
        raise SafetyLabError(field, f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    return match["name"], match["version"], match["alias"]


def resolve_version(uri: str, field: str = "model_uri"):
    """models:/NAME/VERSION or models:/NAME@ALIAS -> the ModelVersion, or a one-line error."""
    name, version, alias = parse_uri(uri, field)
    client = MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        what = f"alias {alias!r}" if alias else f"version {version}"
        try:
            client.get_registered_model(name)
        except MlflowException:
            raise SafetyLabError(field, f"no registered model named {name!r}") from None
        raise SafetyLabError(field, f"model {name!r} has no {what}") from exc


def load_registered(
    uri: str, *, precision: Precision | None = None, trust_remote_code: bool = False, field: str = "base_model"
):
    """Load a registered version: its base model with every adapter in its chain merged; records it as the parent."""
    mv = resolve_version(uri, field)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source))
    lineage = _read_lineage(root / "artifacts", uri, field)
    loaded = load_chain(lineage, root / "artifacts", precision=precision, trust_remote_code=trust_remote_code)
    loaded.spec = f"models:/{mv.name}/{mv.version}"
    loaded.parent = loaded.spec
    loaded.base_model = lineage["base_model"]
    return loaded
