"""The MLflow side only: log an adapter chain as a pyfunc model, register it, tag it, load it back."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError

LINEAGE_FILE = "lineage.json"
UNEVALUATED = "unevaluated"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


class SafetyLabModel(mlflow.pyfunc.PythonModel):
    """Base model spec + LoRA adapters (oldest first), merged on load; predict() answers prompts with the chat template."""

    def load_context(self, context):
        lineage = json.loads(Path(context.artifacts["lineage"]).read_text())
        self.loaded = load_chain(lineage, context.artifacts, device=None)

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        from safety_lab.models.generation import generate

        prompts = [str(p) for p in model_input]
        max_new_tokens = int((params or {}).get("max_new_tokens", 128))
        return generate(self.loaded.model, self.loaded.tokenizer, prompts, max_new_tokens=max_new_tokens)


def load_chain(lineage: dict, artifacts: dict[str, str], *, device: str | None, trust_remote_code: bool = False):
    from safety_lab.models import apply_adapters, load_model

    loaded = load_model(lineage["base_model"], device=device, trust_remote_code=lineage.get("trust_remote_code", trust_remote_code))
    loaded = apply_adapters(loaded, [Path(artifacts[name]) for name in lineage["adapters"]])
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


def load_registered(uri: str, *, device: str | None = None, trust_remote_code: bool = False, field: str = "base_model"):
    """Load a registered version: its base model with every adapter in its chain merged; records it as the parent."""
    mv = resolve_version(uri, field)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source))
    lineage = json.loads((root / "artifacts" / LINEAGE_FILE).read_text())
    artifacts = {name: str(root / "artifacts" / name) for name in lineage["adapters"]}
    loaded = load_chain(lineage, artifacts, device=device, trust_remote_code=trust_remote_code)
    loaded.spec = f"models:/{mv.name}/{mv.version}"
    loaded.parent = loaded.spec
    loaded.base_model = lineage["base_model"]
    return loaded


def log_model(adapter_dir: Path, *, base_model: str, parent: str | None, parent_adapters: list[Path],
              trust_remote_code: bool = False) -> mlflow.models.model.ModelInfo:
    """Log the adapter chain (parent's first) under the active run; weights are safetensors adapters only."""
    chain = [*parent_adapters, adapter_dir]
    names = [f"adapter_{i}" for i in range(len(chain))]
    lineage = {"base_model": base_model, "adapters": names, "parent": parent, "trust_remote_code": trust_remote_code}
    with tempfile.TemporaryDirectory(prefix="lineage-") as tmp:
        lineage_path = Path(tmp) / LINEAGE_FILE
        lineage_path.write_text(json.dumps(lineage, indent=1))
        for name, path in zip(names, chain):  # pyfunc keeps directory names: give each its canonical one
            shutil.copytree(path, Path(tmp) / name)
        artifacts = {"lineage": str(lineage_path), **{n: str(Path(tmp) / n) for n in names}}
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=SafetyLabModel(),
            artifacts=artifacts,
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("torch", "transformers", "peft", "mlflow", "safetensors")] + ["safety-lab"]


def register(model_uri: str, name: str, *, tags: dict[str, str], description: str):
    """Create the version with all its tags in one call; if the description can't be set, remove the version."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Fine-tuned with safety_lab; each version carries its safety status.")
    model_id = model_uri.split("models:/", 1)[1] if model_uri.startswith("models:/m-") else None  # a server needs it
    mv = client.create_model_version(name, model_uri, tags={k: str(v) for k, v in tags.items()},
                                     run_id=mlflow.active_run().info.run_id if mlflow.active_run() else None,
                                     model_id=model_id)
    try:
        client.update_model_version(name, mv.version, description=description)
    except BaseException:
        client.delete_model_version(name, mv.version)
        raise
    return client.get_model_version(name, mv.version)


def find_versions(name: str, tags: dict[str, str]) -> list:
    """Versions of `name` carrying all of `tags` (e.g. one study's registration, to avoid duplicates)."""
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return [mv for mv in versions if all((mv.tags or {}).get(k) == v for k, v in tags.items())]


def tag_version(name: str, version: str, tags: dict[str, object]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def default_model_name(base_model: str) -> str:
    if base_model.startswith("models:/"):
        return parse_uri(base_model, "base_model")[0]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base_model).name if "/" in base_model else base_model).strip("-")
    return f"{slug or 'model'}-safety-lora"
