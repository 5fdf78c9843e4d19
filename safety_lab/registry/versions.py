"""Reading a registered model back: the model, every version (paged), the aliases each holds, MLflow's error text."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError, first_line
from safety_lab.registry.record import SafetyTags


def mlflow_problem(exc: BaseException) -> str:
    """The first non-empty line of an MLflow error's message (its type name when empty), cut to 200 characters."""
    return first_line(exc, 200)


def error_code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def status_of(mv) -> str:
    """The safety status on a version's tags (``unevaluated`` when it has none)."""
    return SafetyTags.read(mv.tags or {}).status


def registered_model(client: MlflowClient, model_name: str):
    """The registered model, or a one-line error naming model_name."""
    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise SafetyLabError("model_name", f"no registered model named {model_name!r}") from None
        raise SafetyLabError("model_name", f"cannot read model {model_name!r}: {mlflow_problem(exc)}") from None


def all_versions(client: MlflowClient, model_name: str) -> list:
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


def aliases_by_version(rm) -> dict[str, list[str]]:
    """Version -> its aliases, sorted, from the registered model (search_model_versions() leaves them out)."""
    raw = getattr(rm, "aliases", None) or {}
    pairs = raw.items() if isinstance(raw, dict) else ((a.alias, a.version) for a in raw)
    out: dict[str, list[str]] = {}
    for alias, version in pairs:
        out.setdefault(str(version), []).append(str(alias))
    return {v: sorted(a) for v, a in out.items()}
