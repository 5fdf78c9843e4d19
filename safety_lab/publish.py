"""Publishing a tuned adapter: log the adapter chain as an MLflow model, prove it reloads to the trained logits, and
register the version with its data, tuning and (unevaluated) safety tags."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
import torch

from safety_lab import registry
from safety_lab.config import RunConfig
from safety_lab.models import Precision
from safety_lab.tuning import TuneResult
from safety_lab.tuning.study import KEY_ATTR
from safety_lab.tuning.trials import DECISION, DPO_RUN_ID, STAGES

# Merging adapters into the weights moves logits by float rounding (measured 1.1e-4 on SmolLM2 with a 2-adapter
# chain); weights that silently failed to load move them by whole units. Tests hold the tiny model to 1e-4.
RELOAD_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Published:
    """A registered version, and its logged model as reloaded by the check (the evaluation reuses it)."""

    version: str
    model_uri: str
    reloaded: object = field(repr=False)


def _probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three primary colours."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        return model(input_ids=ids["input_ids"].to(model.device)).logits.float().cpu()


def _check_reload(expected: torch.Tensor, model_uri: str, tokenizer, precision: Precision):
    """Reload the logged model as users will, with the trained model's precision decision, and compare logits:
    guards against silently wrong weights.

    Returns (the reloaded model, the difference): the evaluation then uses this model, so weights load once."""
    config = {"precision": precision.requested, "device": precision.device}
    reloaded = mlflow.pyfunc.load_model(model_uri, model_config=config).unwrap_python_model().loaded
    diff = float((_probe_logits(reloaded.model, tokenizer) - expected).abs().max())
    if diff >= RELOAD_TOLERANCE:
        raise RuntimeError(
            f"reloaded model differs from the trained one (max |logit diff| {diff:.2e} >= {RELOAD_TOLERANCE})"
        )
    return reloaded, diff


def _description(data_name: str, data_rows, data_sha: str, loaded, best_params: dict, best_value: float) -> str:
    parent = f" on top of {loaded.parent}" if loaded.parent else ""
    return (
        f"LoRA fine-tune of {loaded.base_model}{parent} on data '{data_name}' ({data_rows} rows, "
        f"sha256 {data_sha[:12]}). Optuna chose {best_params} "
        f"(validation loss {best_value:.4f}). Safety status: unevaluated until its evaluation run succeeds."
    )


def publish(
    loaded, result: TuneResult, data_tags: dict, run: RunConfig, *, model_name: str, run_id: str, timings
) -> Published:
    """Log the adapter chain, prove it reloads to the same logits, then register the version (trained by run
    `run_id`) as `model_name` with all its tags."""
    with timings.stage("log_model"):
        trained = result.best_model
        if trained is None:  # trained by another worker: rebuild from its adapter
            from peft import PeftModel

            trained = PeftModel.from_pretrained(loaded.model, str(result.adapter_dir))
        expected = _probe_logits(trained.eval(), loaded.tokenizer)
        decision = _chosen(result).get(DECISION)
        if decision:
            mlflow.log_params({"refusal.tau": decision["tau"], "refusal.answers": decision.get("answers", "tuned")})
        info = registry.log_model(
            result.adapter_dir,
            base_model=loaded.base_model,
            parent=loaded.parent,
            parent_adapters=list(loaded.adapters),
            trust_remote_code=run.trust_remote_code,
            refusal_decision=decision,
        )
        reloaded, diff = _check_reload(expected, info.model_uri, loaded.tokenizer, loaded.precision)
        mlflow.log_metric("reload_max_abs_logit_diff", diff)
    tags = _tags(loaded, result, data_tags, run_id)
    with timings.stage("register"):
        mv = registry.register(
            info.model_uri,
            model_name,
            tags=tags,
            description=_description(
                str(data_tags.get("data.name")),
                data_tags.get("data.rows"),
                str(data_tags.get("data.sha256", "")),
                loaded,
                result.best_params,
                result.best_value,
            ),
        )
    mlflow.set_tags({"registered_model": model_name, "registered_version": mv.version})
    print(
        f"[safety_lab] registered {model_name} version {mv.version} (trial {result.best_trial}, "
        f"{result.selection}: {result.selection_reason}; val loss {result.best_value:.4f})",
        flush=True,
    )
    return Published(str(mv.version), f"models:/{model_name}/{mv.version}", reloaded)


def _chosen(result: TuneResult) -> dict:
    """The chosen trial's user attrs (its stages, its refusal decision...)."""
    return next((t.user_attrs for t in result.study.trials if t.number == result.best_trial), {})


def _tags(loaded, result: TuneResult, data_tags: dict, run_id: str) -> dict:
    """The version's tags: its data, base model and parent, the tuning choice and its values, an unevaluated status."""
    tags = {
        **data_tags,
        "base_model": loaded.base_model,
        "tuning.best_value": f"{result.best_value:.6f}",
        "tuning.best_params": str(result.best_params),
        "tuning.best_trial": str(result.best_trial),
        "optuna.study": result.study.study_name,
        "training.run_id": run_id,
        "safety.status": registry.UNEVALUATED,
        "tuning.objective": result.objective,
        "tuning.selection": result.selection,
        "tuning.selection_reason": result.selection_reason[:4000],
        "tuning.trial_run_id": result.best_run_id,
        **{f"tuning.{k}": f"{float(v):.4f}" for k, v in result.objectives.items() if k != "objective_seconds"},
    }
    chosen = _chosen(result)
    if chosen.get(DECISION):
        tags["refusal.tau"] = str(chosen[DECISION]["tau"])
        tags["refusal.answers"] = chosen[DECISION].get("answers", "tuned")
    tags["training.stages"] = chosen.get(STAGES, "sft")  # sft, or sft,dpo: the preference stage ran on the adapter
    if chosen.get(DPO_RUN_ID):
        tags["training.dpo_run_id"] = chosen[DPO_RUN_ID]
    if result.study.user_attrs.get(KEY_ATTR):
        tags["tuning.study_key"] = result.study.user_attrs[KEY_ATTR]
    if loaded.parent:
        tags["parent"] = loaded.parent
    return tags
