"""The finetune job: data -> model -> Optuna-tuned LoRA -> logged model -> registered, tagged version (-> evaluation)."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
import yaml

from safety_lab import registry
from safety_lab.config import DataConfig, RunConfig, TrainConfig, TuneConfig, to_params
from safety_lab.data import load_dataset
from safety_lab.errors import SafetyLabError
from safety_lab.models import load_model, resolve_device
from safety_lab.tracking import start_experiment
from safety_lab.tuning import log_study_plots, tune

RELOAD_TOLERANCE = 1e-4


@dataclass
class Timings:
    """Wall time per stage; logged as timing.<stage> metrics and printed at the end."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start

    def log(self) -> None:
        mlflow.log_metrics({f"timing.{k}": round(v, 3) for k, v in self.stages.items()})

    def format(self) -> str:
        return "  ".join(f"{k}={v:.1f}s" for k, v in self.stages.items())


@dataclass
class FinetuneResult:
    run_id: str
    model_name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    best_value: float
    best_params: dict
    timings: Timings
    status: str = registry.UNEVALUATED


def _probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name three primary colours."}],
                                        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        return model(input_ids=ids["input_ids"].to(model.device)).logits.float().cpu()


def _check_reload(expected: torch.Tensor, model_uri: str, tokenizer) -> float:
    """Reload the logged model exactly as users will and compare logits: guards against silently wrong weights."""
    reloaded = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().loaded
    diff = float((_probe_logits(reloaded.model, tokenizer) - expected).abs().max())
    if diff >= RELOAD_TOLERANCE:
        raise RuntimeError(f"reloaded model differs from the trained one (max |logit diff| {diff:.2e} >= {RELOAD_TOLERANCE})")
    return diff


def _description(data, run: RunConfig, loaded, tune_result) -> str:
    parent = f" on top of {loaded.parent}" if loaded.parent else ""
    return (f"LoRA fine-tune of {loaded.base_model}{parent} on data '{data.name}' ({len(data.rows)} rows, "
            f"sha256 {data.sha256[:12]}). Optuna chose {tune_result.best_params} "
            f"(validation loss {tune_result.best_value:.4f}). Safety status: unevaluated until its evaluation run succeeds.")


def finetune(run: RunConfig, data_cfg: DataConfig, train_cfg: TrainConfig, tune_cfg: TuneConfig, *,
             eval_options: dict | None = None, pruner=None, quiet: bool = False) -> FinetuneResult:
    """Tune, log, register and (unless run.evaluate is false) evaluate one model version."""
    timings = Timings()
    model_name = run.model_name or registry.default_model_name(run.base_model)
    eval_cfg = None
    if run.evaluate:  # check evaluation options before any training, so bad input costs nothing
        from safety_lab.evaluation import EvalConfig

        eval_cfg = EvalConfig(**(eval_options or {}))
    start_experiment(run.experiment)
    with mlflow.start_run(run_name=f"finetune-{Path(data_cfg.data).stem}") as active:
        mlflow.set_tags({"safety_lab.job": "finetune", "model_name": model_name})
        device, dtype = resolve_device(train_cfg.device)
        mlflow.log_params({**to_params(run, data_cfg, train_cfg, tune_cfg), "device": device, "dtype": str(dtype)})
        mlflow.log_text(yaml.safe_dump({type(c).__name__: dataclasses.asdict(c) for c in (run, data_cfg, train_cfg, tune_cfg)},
                                       sort_keys=False), "config.yaml")
        with timings.stage("data"):
            data = load_dataset(data_cfg)
            train_rows, val_rows = data.split(data_cfg.val_fraction, data_cfg.seed, data_cfg.max_val_rows)
        mlflow.log_params({"data.rows": len(data.rows), "data.sha256": data.sha256, "data.train_rows": len(train_rows),
                           "data.val_rows": len(val_rows)})
        with timings.stage("model_load"):
            loaded = load_model(run.base_model, device=train_cfg.device, trust_remote_code=run.trust_remote_code)
        study_name = tune_cfg.study_name or f"{model_name}-{data.name}"
        with timings.stage("tuning"), tempfile.TemporaryDirectory(prefix="safety-lab-") as work:
            result = tune(loaded.model, loaded.tokenizer, train_rows, val_rows, train_cfg, tune_cfg,
                          study_name=study_name, work_dir=Path(work), pruner=pruner, quiet=quiet)
            mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
            mlflow.log_metrics({"best_val_loss": result.best_value, "best_trial": result.best_trial})
            mlflow.set_tags({"optuna.study": study_name, "optuna.storage": _redact(tune_cfg.storage),
                             "best_trial_run_id": result.best_run_id})
            log_study_plots(result.study)

            with timings.stage("log_model"):
                trained = result.best_model
                if trained is None:  # trained by another worker: rebuild from its adapter
                    from peft import PeftModel

                    trained = PeftModel.from_pretrained(loaded.model, str(result.adapter_dir))
                expected = _probe_logits(trained.eval(), loaded.tokenizer)
                info = registry.log_model(result.adapter_dir, base_model=loaded.base_model, parent=loaded.parent,
                                          parent_adapters=list(loaded.adapters), trust_remote_code=run.trust_remote_code)
                diff = _check_reload(expected, info.model_uri, loaded.tokenizer)
                mlflow.log_metric("reload_max_abs_logit_diff", diff)
        tags = {
            "data.name": data.name, "data.sha256": data.sha256, "data.rows": len(data.rows),
            "base_model": loaded.base_model, "tuning.best_value": f"{result.best_value:.6f}",
            "tuning.best_params": str(result.best_params), "training.run_id": active.info.run_id,
            "safety.status": registry.UNEVALUATED,
        }
        if loaded.parent:
            tags["parent"] = loaded.parent
        with timings.stage("register"):
            mv = registry.register(info.model_uri, model_name, tags=tags,
                                   description=_description(data, run, loaded, result))
        mlflow.set_tags({"registered_model": model_name, "registered_version": mv.version})
        print(f"[safety_lab] registered {model_name} version {mv.version} (best val loss {result.best_value:.4f})", flush=True)
        out = FinetuneResult(run_id=active.info.run_id, model_name=model_name, version=str(mv.version),
                             model_uri=f"models:/{model_name}/{mv.version}", best_value=result.best_value,
                             best_params=result.best_params, timings=timings)
        del trained, result
        if eval_cfg is not None:
            from safety_lab.evaluation import evaluate_version

            with timings.stage("evaluation"):
                report = evaluate_version(out.model_uri, eval_cfg, timings=timings)
            out.status = report.status
        timings.log()
    print(f"[safety_lab] timings: {timings.format()}", flush=True)
    return out


def _redact(url: str) -> str:
    """Storage URLs may carry passwords (postgresql://user:pw@host/db): never log them."""
    import re

    return re.sub(r"(//[^:/@]+):[^@]+@", r"\1:***@", url)
