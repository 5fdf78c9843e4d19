"""Optuna over LoRA hyperparameters: each trial a nested MLflow run `trial-<n>`, pruned on validation loss.

Two objectives (TuneConfig.objective): `loss`, the paper's single-objective validation loss; `safety`, a
multi-objective study over ASR, over-refusal and knowledge retention on the tune split, from whose Pareto front the
registered trial is chosen by the tuning targets (see objectives.choose)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna

from safety_lab import distributed
from safety_lab.config import TrainConfig, TuneConfig, comma_floats
from safety_lab.errors import check, raise_if_interrupted
from safety_lab.training import train_lora
from safety_lab.tuning.objectives import (
    OBJECTIVES,
    Choice,
    Probe,
    SafetyObjectives,
    TuningTargets,
    choose,
    pareto_front,
)
from safety_lab.tuning.study import default_name, open_study, resolve_name, study_key

__all__ = [
    "TRIAL_RUN_ID",
    "Probe",
    "SafetyObjectives",
    "TuneResult",
    "TuningTargets",
    "default_name",
    "log_pareto_front",
    "log_study_plots",
    "open_study",
    "resolve_name",
    "select",
    "study_key",
    "suggest",
    "trial_table",
    "tune",
]

TRIAL_RUN_ID = "mlflow_run_id"  # trial user attrs written by rank 0
TUNE_RUN_ID = "tune_run_id"  # the MLflow run (finetune or worker) whose tune() call trained the trial
DATA_SHA = "data_sha256"
VAL_LOSS = "final_val_loss"


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    best_value: float  # the chosen trial's validation loss
    best_trial: int
    best_run_id: str
    best_model: object | None  # the PEFT model when still in memory, else None (rebuilt from adapter_dir)
    adapter_dir: Path  # the chosen trial's adapter, local
    objective: str = "loss"
    selection: str = "loss"  # loss | pass | compromise
    selection_reason: str = "lowest validation loss"
    objectives: dict = field(default_factory=dict)  # the chosen trial's tune-split values (safety objective)
    data_sha256: str = ""  # the data the chosen trial was trained on (from the trial itself)
    tune_run_id: str = ""  # the MLflow run whose tune() trained the chosen trial
    candidates: list = field(default_factory=list)  # the trial numbers the choice was made among
    targets: TuningTargets = field(default_factory=TuningTargets)


def suggest(trial: optuna.Trial, base: TrainConfig, space: TuneConfig) -> TrainConfig:
    """The search space: r, alpha (as a multiple of r), dropout, learning rate."""
    r = trial.suggest_categorical("lora_r", [int(v) for v in comma_floats(space.r_choices, "r_choices")])
    multiplier = trial.suggest_categorical(
        "alpha_multiplier", comma_floats(space.alpha_multipliers, "alpha_multipliers")
    )
    lo, hi = comma_floats(space.dropout_range, "dropout_range")
    dropout = trial.suggest_float("lora_dropout", lo, hi)
    lo, hi = comma_floats(space.lr_range, "lr_range")
    lr = trial.suggest_float("learning_rate", lo, hi, log=True)
    return dataclasses.replace(base, lora_r=r, lora_alpha=float(r * multiplier), lora_dropout=dropout, learning_rate=lr)


class ValLossMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule on the validation loss, for multi-objective studies (Optuna's own pruners read the single
    `study.direction`, and Trial.report refuses multi-objective studies)."""

    def __init__(self, n_startup_trials: int = 2, n_warmup_steps: int = 0):
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        others = [t.intermediate_values[step] for t in done if step in t.intermediate_values]
        return len(others) >= self.n_startup_trials and trial.intermediate_values[step] > statistics.median(others)


def default_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    if cfg.objective == "safety":
        return ValLossMedianPruner(n_startup_trials=2)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


@dataclass
class _Trials:
    """The study's objective: trains one trial (on every rank), measures and logs it (rank 0)."""

    model: object
    tokenizer: object
    train_rows: list
    val_rows: list
    train_cfg: TrainConfig
    tune_cfg: TuneConfig
    study: optuna.Study | None
    work_dir: Path
    quiet: bool
    objectives: SafetyObjectives | None
    targets: TuningTargets
    data_sha256: str
    main: bool = field(default_factory=distributed.is_main)
    kept: dict = field(default_factory=dict)  # trial number -> model still in memory (loss objective: the best so far)
    numbers: list = field(default_factory=list)  # trials this call ran
    baseline: dict = field(default_factory=dict)  # the untrained validation loss: measured by the first trial
    current: tuple = (None, None)  # (rank 0's optuna trial, the trial every rank sees)

    @property
    def multi(self) -> bool:
        return self.tune_cfg.objective == "safety"

    def __call__(self, trial: optuna.Trial | None):
        raise_if_interrupted()
        shared = distributed.distributed_trial(trial)  # the same parameters and pruning decisions on every rank
        self.current = (trial, shared)
        cfg = suggest(shared, self.train_cfg, self.tune_cfg)
        with mlflow.start_run(run_name=f"trial-{shared.number}", nested=True) if self.main else nullcontext() as run:
            if self.main:
                self._start(trial, run, cfg)
            try:
                result = train_lora(
                    self.model,
                    self.tokenizer,
                    self.train_rows,
                    self.val_rows,
                    cfg,
                    on_eval=self.on_eval,
                    on_log=self.on_log,
                    quiet=self.quiet or not self.main,
                    initial_eval_loss=self.baseline.get("loss"),
                )
            except optuna.TrialPruned as pruned:
                # A pruned trial is a normal outcome: the run finishes, tagged, and Optuna records PRUNED.
                if self.main:
                    mlflow.set_tags({"optuna.state": "PRUNED", "optuna.pruned_reason": str(pruned)})
                outcome = pruned
            else:
                self.baseline.setdefault("loss", result.initial_eval_loss)
                outcome = self._finish(trial, result) if self.main else result.final_eval_loss
        if isinstance(outcome, optuna.TrialPruned):
            raise outcome
        return outcome

    def _start(self, trial: optuna.Trial, run, cfg: TrainConfig) -> None:
        self.numbers.append(trial.number)
        parent = mlflow.get_parent_run(run.info.run_id)
        trial.set_user_attr(TRIAL_RUN_ID, run.info.run_id)
        trial.set_user_attr(TUNE_RUN_ID, parent.info.run_id if parent else "")
        trial.set_user_attr(DATA_SHA, self.data_sha256)
        mlflow.set_tags(
            {
                "optuna.study": self.study.study_name,
                "optuna.trial": trial.number,
                "tuning.objective": self.tune_cfg.objective or "loss",
            }
        )
        mlflow.log_params(
            {
                **trial.params,
                "lora_alpha": cfg.lora_alpha,
                "max_steps": cfg.max_steps,
                "batch_size": cfg.batch_size,
                "target_modules": cfg.target_modules,
                "lora_layer_share": cfg.lora_layer_share,
                "warmup_ratio": cfg.warmup_ratio,
                "lr_schedule": cfg.lr_schedule,
            }
        )

    def on_eval(self, step: int, loss: float) -> None:
        trial, shared = self.current
        if self.main:
            mlflow.log_metric("val_loss", loss, step=step)
        if self.multi:  # rank 0 decides from the study; every rank follows
            prune = distributed.agree(self._prune_on_val_loss(trial, step, loss) if self.main else None)
        else:
            shared.report(loss, step)
            prune = shared.should_prune()
        if prune:
            raise optuna.TrialPruned(f"val_loss {loss:.4f} at step {step}")

    def _prune_on_val_loss(self, trial: optuna.Trial, step: int, loss: float) -> bool:
        # Trial.report is single-objective only: the storage keeps the curve the same way (pruner, dashboards).
        storage = self.study._storage
        storage.set_trial_intermediate_value(trial._trial_id, step, loss)
        return self.study.pruner.prune(self.study, storage.get_trial(trial._trial_id))

    def on_log(self, step: int, logs: dict) -> None:
        raise_if_interrupted()  # a Ctrl-C that a library caught and let pass still stops the study
        if self.main and "loss" in logs:
            mlflow.log_metric("train_loss", logs["loss"], step=step)

    def _finish(self, trial: optuna.Trial, result):
        adapter = self.work_dir / f"trial-{trial.number}"
        result.model.save_pretrained(adapter)
        mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        mlflow.log_metrics(
            {
                VAL_LOSS: result.final_eval_loss,
                "initial_val_loss": result.initial_eval_loss,
                "train_seconds": result.seconds,
                "train_tokens_per_second": result.train_tokens / max(result.seconds, 1e-9),
            }
        )
        trial.set_user_attr(VAL_LOSS, result.final_eval_loss)
        if not self.multi:
            trials = self.study.trials
            best = min((trials[n].user_attrs.get(VAL_LOSS, math.inf) for n in self.numbers), default=math.inf)
            if result.final_eval_loss <= best:
                self.kept.clear()  # keep only the best model in memory
                self.kept[trial.number] = result.model
            mlflow.set_tag("optuna.state", "COMPLETE")
            return result.final_eval_loss
        measured = self.objectives(result.model, self.tokenizer)
        values = tuple(float(measured[k]) for k in OBJECTIVES)
        trial.set_user_attr("objectives", measured)
        trial.set_user_attr("constraints", [v - t for v, t in zip(values, self.targets.limits())])
        mlflow.log_metrics({f"tune_{k}": float(v) for k, v in measured.items()})
        # Optuna fails a trial whose objective is not a number (nothing to measure): the run says so too
        mlflow.set_tag("optuna.state", "COMPLETE" if all(math.isfinite(v) for v in values) else "FAIL")
        return values


def tune(
    model,
    tokenizer,
    train_rows,
    val_rows,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    *,
    study_name: str,
    work_dir: Path,
    pruner=None,
    quiet: bool = False,
    objectives: SafetyObjectives | None = None,
    targets: TuningTargets | None = None,
    key: str | None = None,
    key_parts: dict | None = None,
    data_sha256: str = "",
) -> TuneResult | None:
    """Run `n_trials` trials in the active MLflow run; return the trial chosen among *this call's* trials.

    `objective=safety` needs `objectives` (the per-trial measurement). Under a multi-process launch every rank trains
    each trial (DDP); rank 0 alone opens the study, measures and logs, and the other ranks return None."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main = distributed.is_main()
    multi = tune_cfg.objective == "safety"
    check(
        not (main and multi) or objectives is not None,
        "objective",
        "safety tuning needs the tune-split prompts to measure",
    )
    pruner = pruner or default_pruner(tune_cfg)
    study = open_study(tune_cfg, study_name, pruner, key=key, key_parts=key_parts) if main else None
    trials = _Trials(
        model,
        tokenizer,
        train_rows,
        val_rows,
        train_cfg,
        tune_cfg,
        study,
        work_dir,
        quiet,
        objectives,
        targets or TuningTargets(),
        data_sha256,
    )
    if main and multi:
        base = objectives.calibrate(model, tokenizer)  # the base model's answers: the knowledge reference
        mlflow.log_metrics({f"base_tune_{k}": float(v) for k, v in base.items()})
    if main:
        study.optimize(trials, n_trials=tune_cfg.n_trials, gc_after_trial=True)
    else:
        for _ in range(tune_cfg.n_trials):
            with contextlib.suppress(optuna.TrialPruned):
                trials(None)
    distributed.finish()
    if not main:
        return None
    return select(study, tune_cfg, work_dir, targets=trials.targets, numbers=trials.numbers, kept=trials.kept)


def select(
    study: optuna.Study,
    tune_cfg: TuneConfig,
    work_dir: Path,
    *,
    targets: TuningTargets | None = None,
    numbers: list[int] | None = None,
    kept: dict | None = None,
) -> TuneResult:
    """The trial to register, among the study's completed trials in `numbers` (None: all), as a TuneResult.

    Shared by tune() (this call's trials) and register-best (every worker's trials): one rule, one result shape."""
    pool = {
        t.number: t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if numbers is None or t.number in numbers
    }
    check(
        bool(pool),
        "n_trials",
        f"no trial of study {study.study_name!r} from this run completed "
        f"({len(numbers) if numbers is not None else len(study.trials)} pruned or failed)",
    )
    losses = {
        n: float(t.user_attrs.get(VAL_LOSS, t.values[0] if len(t.values) == 1 else math.nan)) for n, t in pool.items()
    }
    if len(study.directions) > 1:
        choice = choose({n: tuple(t.values) for n, t in pool.items()}, losses, targets or TuningTargets())
    else:
        choice = Choice(min(pool, key=lambda n: pool[n].values[0]), "loss", "lowest validation loss")
    best = pool[choice.number]
    run_id = best.user_attrs[TRIAL_RUN_ID]
    adapter = work_dir / f"trial-{best.number}"
    if not adapter.exists():  # trained by another worker, or by an earlier call
        adapter = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="adapter", dst_path=str(work_dir / f"best-{best.number}")
            )
        )
    return TuneResult(
        study=study,
        best_params=best.params,
        best_value=losses[best.number],
        best_trial=best.number,
        best_run_id=run_id,
        best_model=(kept or {}).get(best.number),
        adapter_dir=adapter,
        objective=tune_cfg.objective or "loss",
        selection=choice.rule,
        selection_reason=choice.reason,
        objectives=dict(best.user_attrs.get("objectives", {})),
        data_sha256=best.user_attrs.get(DATA_SHA, ""),
        tune_run_id=best.user_attrs.get(TUNE_RUN_ID, ""),
        candidates=sorted(pool),
        targets=targets or TuningTargets(),
    )


def trial_table(study: optuna.Study, numbers: list[int] | None = None) -> list[dict]:
    """One row per completed trial: number, parameters, validation loss and the tune-split objective values."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if numbers is None or t.number in numbers:
            rows.append(
                {
                    "trial": t.number,
                    **t.params,
                    VAL_LOSS: t.user_attrs.get(VAL_LOSS),
                    **{k: v for k, v in t.user_attrs.get("objectives", {}).items()},
                }
            )
    return rows


def log_pareto_front(result: TuneResult) -> None:
    """ASR against over-refusal for each completed trial (colour: knowledge NLL delta), the front, the limits and the
    chosen trial, as `plots/pareto_front.png`; the trials as the `tuning/trials.json` table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, targets = trial_table(result.study, result.candidates), result.targets
    mlflow.log_table(data={k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file="tuning/trials.json")
    points = {r["trial"]: tuple(r[k] for k in OBJECTIVES) for r in rows if all(k in r for k in OBJECTIVES)}
    if not points:
        return
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    dots = ax.scatter(
        [p[0] for p in points.values()],
        [p[1] for p in points.values()],
        c=[p[2] for p in points.values()],
        cmap="viridis",
        s=[70 if n in front else 30 for n in points],
    )
    fig.colorbar(dots, ax=ax, label="knowledge NLL delta (nats/token)")
    for n, p in points.items():
        ax.annotate(
            f"{n}{' *' if n == result.best_trial else ''}", (p[0], p[1]), textcoords="offset points", xytext=(4, 4)
        )
    ax.axvline(targets.max_asr, ls="--", c="grey")
    ax.axhline(targets.max_over_refusal, ls="--", c="grey")
    ax.set(
        xlabel="ASR (tune split)",
        ylabel="over-refusal (benign + look-alike)",
        title=f"Pareto front (large); * chosen: {result.selection}",
    )
    fig.tight_layout()
    mlflow.log_figure(fig, "plots/pareto_front.png")
    plt.close(fig)


def log_study_plots(study: optuna.Study) -> list[str]:
    """Optuna's optimisation-history and parameter-importance plots (on ASR for a safety study), as PNG artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    target = {} if len(study.directions) == 1 else {"target": lambda t: t.values[0], "target_name": "asr"}
    logged = []
    plots = {"optuna_history.png": ovm.plot_optimization_history, "optuna_importance.png": ovm.plot_param_importances}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots.items():
            try:
                ax = plot(study, **target)
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
