"""The MLflow side only: log an adapter chain as a pyfunc model, register it, tag it, load it back."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab import names
from safety_lab.errors import SafetyLabError, first_line
from safety_lab.models.base import resolve_precision
from safety_lab.models.generation import generate
from safety_lab.models.refusal import RefusalDecision
from safety_lab.models.registered import LINEAGE_FILE, load_chain, parse_uri
from safety_lab.registry.writes import set_version_tag

UNEVALUATED = "unevaluated"


MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # logged as code (models-from-code): no pickle
MAX_NEW_TOKENS = 128


class SafetyLabModel(mlflow.pyfunc.PythonModel):
    """Base model spec + LoRA adapters (oldest first), merged on load; predict() answers prompts with the chat template.

    Logged from the file MODEL_CODE, never pickled. Loading honours the loader's
    `model_config={"trust_remote_code": True}`, and only together with the lineage's; `model_config`'s
    `precision` and `device` (default auto) decide where and in which dtype the weights load."""

    def load_context(self, context):
        lineage_path = Path(context.artifacts["lineage"])
        lineage = json.loads(lineage_path.read_text())
        config = getattr(context, "model_config", None) or {}
        caller = bool(config.get("trust_remote_code", False))
        precision = resolve_precision(str(config.get("precision", "auto")), config.get("device"))
        self.loaded = load_chain(lineage, lineage_path.parent, precision=precision, trust_remote_code=caller)

    # Hinted DataFrame (what the explicit signature converts inputs to): a list[str] hint would make MLflow infer a
    # signature from it and drop the params schema, so max_new_tokens would be ignored.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        max_new_tokens = int((params or {}).get("max_new_tokens") or MAX_NEW_TOKENS)
        if not 0 < max_new_tokens <= 4096:
            raise SafetyLabError("max_new_tokens", f"must be in 1..4096, got {max_new_tokens}")
        return generate(self.loaded.model, self.loaded.tokenizer, _prompts(model_input), max_new_tokens=max_new_tokens)


def _prompts(model_input) -> list[str]:
    """A list/array of strings, a one-column DataFrame (what `mlflow models serve` passes), or one string."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # pandas
        model_input = model_input.iloc[:, 0].tolist()
    return [str(p) for p in list(model_input)]


def signature():
    """Prompts in, answers out; `max_new_tokens` as a param, so `predict(..., params=...)` and the server honour it."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]),
    )


def log_model(
    adapter_dir: Path,
    *,
    base_model: str,
    parent: str | None,
    parent_adapters: list[Path],
    trust_remote_code: bool = False,
    refusal_decision: dict | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the adapter chain (parent's first) under the active run; weights are safetensors adapters only. A
    refusal decision (``models.refusal``: tau, openers) is stored in the lineage, so every load of the version,
    `mlflow models serve` included, decodes with it."""
    chain = [*parent_adapters, adapter_dir]
    names = [f"adapter_{i}" for i in range(len(chain))]
    lineage = {"base_model": base_model, "adapters": names, "parent": parent, "trust_remote_code": trust_remote_code}
    if refusal_decision:
        lineage["refusal_decision"] = RefusalDecision.from_dict(refusal_decision).as_dict()
    with tempfile.TemporaryDirectory(prefix="lineage-") as tmp:
        lineage_path = Path(tmp) / LINEAGE_FILE
        lineage_path.write_text(json.dumps(lineage, indent=1))
        for name, path in zip(names, chain):  # pyfunc keeps directory names: give each its canonical one
            shutil.copytree(path, Path(tmp) / name)
        artifacts = {"lineage": str(lineage_path), **{n: str(Path(tmp) / n) for n in names}}
        with warnings.catch_warnings():  # the signature is explicit; an input example would load the model here
            warnings.filterwarnings("ignore", message=r".*(type hints to the `predict`|input example was not provided)")
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                signature=signature(),
                pip_requirements=requirements(),
            )


def requirements() -> list[str]:
    """Pins that pip can install from PyPI (no local `+cpu` label). safety_lab itself is not on an index: the
    serving environment installs it from the repository (`pip install .`); see docs/team.md."""
    from importlib.metadata import version

    return [
        f"{pkg}=={version(pkg).split('+', 1)[0]}" for pkg in ("torch", "transformers", "peft", "mlflow", "safetensors")
    ]


def register(model_uri: str, name: str, *, tags: dict[str, str], description: str):
    """Create the version with all its tags in one call; if the description can't be set, remove the version."""
    names.model_name(name)
    client = MlflowClient()
    _ensure_registered_model(client, name)
    model_id = model_uri.split("models:/", 1)[1] if model_uri.startswith("models:/m-") else None  # a server needs it
    mv = client.create_model_version(
        name,
        model_uri,
        tags={k: str(v) for k, v in tags.items()},
        run_id=mlflow.active_run().info.run_id if mlflow.active_run() else None,
        model_id=model_id,
    )
    try:
        client.update_model_version(name, mv.version, description=description)
    except BaseException:
        client.delete_model_version(name, mv.version)
        raise
    return client.get_model_version(name, mv.version)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create `name` unless it exists. Two processes may both find it missing: the loser's create fails with
    RESOURCE_ALREADY_EXISTS, which is the outcome it wanted."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(
            name, description="Fine-tuned with safety_lab; each version carries its safety status."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def find_versions(name: str, tags: dict[str, str]) -> list:
    """Versions of `name` carrying all of `tags` (e.g. one study's registration, to avoid duplicates). A lookup that
    fails raises: it is never read as "no versions" (a duplicate check would then pass on a server error)."""
    names.model_name(name)
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise SafetyLabError("model_name", f"could not list the versions of {name!r}: {first_line(exc)}") from None
    return [mv for mv in versions if all((mv.tags or {}).get(k) == v for k, v in tags.items())]


def tag_version(name: str, version: str, tags: dict[str, object]) -> None:
    """Set each tag on the version; a write that loses a concurrent uniqueness race is retried (``writes``)."""
    client = MlflowClient()
    for key, value in tags.items():
        set_version_tag(client, name, str(version), key, str(value))


def default_model_name(base_model: str) -> str:
    if base_model.startswith("models:/"):
        return parse_uri(base_model, "base_model")[0]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base_model).name if "/" in base_model else base_model).strip("-")
    return f"{slug or 'model'}-safety-lora"
