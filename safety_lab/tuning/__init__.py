"""Optuna over LoRA hyperparameters: each trial a nested MLflow run `trial-<n>`, pruned on validation loss."""
from __future__ import annotations

import dataclasses
import time
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna

from safety_lab import distributed
from safety_lab.config import TrainConfig, TuneConfig, _floats
from safety_lab.errors import SafetyLabError
from safety_lab.tracking import redact
from safety_lab.training import train_lora

TRIAL_RUN_ID = "mlflow_run_id"


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    best_value: float
    best_trial: int
    best_run_id: str
    best_model: object | None  # the PEFT model when this worker trained the best trial, else None
    adapter_dir: Path  # the best trial's adapter, local


def suggest(trial: optuna.Trial, base: TrainConfig, space: TuneConfig) -> TrainConfig:
    """The search space: r, alpha (as a multiple of r), dropout, learning rate."""
    r = trial.suggest_categorical("lora_r", [int(v) for v in _floats(space.r_choices, "r_choices")])
    multiplier = trial.suggest_categorical("alpha_multiplier", _floats(space.alpha_multipliers, "alpha_multipliers"))
    lo, hi = _floats(space.dropout_range, "dropout_range")
    dropout = trial.suggest_float("lora_dropout", lo, hi)
    lo, hi = _floats(space.lr_range, "lr_range")
    lr = trial.suggest_float("learning_rate", lo, hi, log=True)
    return dataclasses.replace(base, lora_r=r, lora_alpha=float(r * multiplier), lora_dropout=dropout, learning_rate=lr)


def open_study(cfg: TuneConfig, study_name: str, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create or join a study; retried, because workers starting together race to create the schema."""
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            return optuna.create_study(
                study_name=study_name, storage=cfg.storage, direction="minimize", load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=2),
                pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
            )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, optuna.exceptions.DuplicatedStudyError) as exc:
            error = exc
            time.sleep(0.5 * 2 ** attempt)
        except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as exc:
            error = exc
            break
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    raise SafetyLabError("storage", f"cannot open Optuna storage {redact(cfg.storage)} ({redact(first)})") from None


def tune(model, tokenizer, train_rows, val_rows, train_cfg: TrainConfig, tune_cfg: TuneConfig, *, study_name: str,
         work_dir: Path, pruner=None, quiet: bool = False) -> TuneResult | None:
    """Run `n_trials` trials in the active MLflow run; return the study's best trial (from any worker).

    Under a multi-process launch every rank trains each trial (DDP); rank 0 alone opens the study and logs, and the
    other ranks return None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main = distributed.is_main()
    study = open_study(tune_cfg, study_name, pruner) if main else None
    kept: dict[int, object] = {}
    baseline: dict[str, float] = {}  # the untrained validation loss: measured by the first trial, reused after

    def objective(trial: optuna.Trial | None) -> float:
        shared = distributed.distributed_trial(trial)  # the same parameters and pruning decisions on every rank
        cfg = suggest(shared, train_cfg, tune_cfg)
        with (mlflow.start_run(run_name=f"trial-{shared.number}", nested=True) if main else nullcontext()) as run:
            if main:
                trial.set_user_attr(TRIAL_RUN_ID, run.info.run_id)
                mlflow.set_tags({"optuna.study": study_name, "optuna.trial": trial.number})
                mlflow.log_params({**trial.params, "lora_alpha": cfg.lora_alpha, "max_steps": cfg.max_steps,
                                   "batch_size": cfg.batch_size, "target_modules": cfg.target_modules})

            def on_eval(step: int, loss: float) -> None:
                if main:
                    mlflow.log_metric("val_loss", loss, step=step)
                shared.report(loss, step)
                if shared.should_prune():
                    raise optuna.TrialPruned(f"val_loss {loss:.4f} at step {step}")

            def on_log(step: int, logs: dict) -> None:
                if main and "loss" in logs:
                    mlflow.log_metric("train_loss", logs["loss"], step=step)

            try:
                result = train_lora(model, tokenizer, train_rows, val_rows, cfg, on_eval=on_eval, on_log=on_log,
                                    quiet=quiet or not main, initial_eval_loss=baseline.get("loss"))
            except optuna.TrialPruned as pruned:
                # A pruned trial is a normal outcome: the run finishes, tagged, and Optuna records PRUNED.
                if main:
                    mlflow.set_tags({"optuna.state": "PRUNED", "optuna.pruned_reason": str(pruned)})
                outcome = pruned
            else:
                baseline.setdefault("loss", result.initial_eval_loss)
                outcome = _finish_trial(trial, result, work_dir, study, kept) if main else result.final_eval_loss
        if isinstance(outcome, optuna.TrialPruned):
            raise outcome
        return outcome

    if main:
        study.optimize(objective, n_trials=tune_cfg.n_trials, gc_after_trial=True)
    else:
        for _ in range(tune_cfg.n_trials):
            try:
                objective(None)
            except optuna.TrialPruned:
                pass
    distributed.finish()
    if not main:
        return None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise SafetyLabError("n_trials", f"no trial of study {study_name!r} completed (all {len(study.trials)} pruned or failed)")
    best = study.best_trial
    run_id = best.user_attrs[TRIAL_RUN_ID]
    adapter = work_dir / f"trial-{best.number}"
    if not adapter.exists():  # another worker trained it
        adapter = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter", dst_path=str(work_dir / "best")))
    return TuneResult(study=study, best_params=best.params, best_value=float(best.value), best_trial=best.number,
                      best_run_id=run_id, best_model=kept.get(best.number), adapter_dir=adapter)


def _finish_trial(trial, result, work_dir: Path, study: optuna.Study, kept: dict) -> float:
    adapter = work_dir / f"trial-{trial.number}"
    result.model.save_pretrained(adapter)
    mlflow.log_artifacts(str(adapter), artifact_path="adapter")
    mlflow.log_metrics({"final_val_loss": result.final_eval_loss, "initial_val_loss": result.initial_eval_loss,
                        "train_seconds": result.seconds,
                        "train_tokens_per_second": result.train_tokens / max(result.seconds, 1e-9)})
    mlflow.set_tag("optuna.state", "COMPLETE")
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if result.final_eval_loss <= min((t.value for t in done), default=float("inf")):
        kept.clear()  # keep only the best model in memory
        kept[trial.number] = result.model
    return result.final_eval_loss


def log_study_plots(study: optuna.Study) -> list[str]:
    """Optuna's optimisation-history and parameter-importance plots, as PNG artifacts of the active run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logged = []
    plots = {"optuna_history.png": ovm.plot_optimization_history, "optuna_importance.png": ovm.plot_param_importances}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots.items():
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # importance needs 2+ complete trials that differ
                mlflow.set_tag(f"plot.{name}", f"skipped: {str(exc)[:200]}")
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.tight_layout()
            fig.savefig(Path(tmp) / name, dpi=100)
            plt.close(fig)
            mlflow.log_artifact(str(Path(tmp) / name), artifact_path="plots")
            logged.append(name)
    return logged
