"""Optuna over LoRA hyperparameters: each trial a nested MLflow run `trial-<n>`, pruned on validation loss.

Two objectives (TuneConfig.objective): `loss`, the paper's single-objective validation loss; `safety`, a
multi-objective study over ASR, over-refusal and knowledge retention on the tune split, from whose Pareto front the
registered trial is chosen by the tuning targets (see selection.choose).

space: the search space and pruner; trials: the objective (training, DDP lockstep, per-trial logging);
selection: the choice and its adapter; study: opening studies by key; objectives: the per-trial safety measurement."""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlflow
import optuna

from safety_lab import distributed
from safety_lab.config import DpoConfig, TrainConfig, TuneConfig, refusal_tau_of
from safety_lab.errors import check
from safety_lab.tuning.objectives import Probe, SafetyObjectives, TuningTargets
from safety_lab.tuning.selection import TuneResult, select, trial_table
from safety_lab.tuning.space import default_pruner, suggest
from safety_lab.tuning.study import default_name, open_study, resolve_name, study_key
from safety_lab.tuning.trials import TRIAL_RUN_ID, Trials, TrialSetup

__all__ = [
    "TRIAL_RUN_ID",
    "Probe",
    "SafetyObjectives",
    "TuneResult",
    "TuningTargets",
    "default_name",
    "open_study",
    "resolve_name",
    "select",
    "study_key",
    "suggest",
    "trial_table",
    "tune",
]


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
    dpo_cfg: DpoConfig | None = None,
    pairs: tuple = (),
) -> TuneResult | None:
    """Run `n_trials` trials in the active MLflow run; return the trial chosen among *this call's* trials.

    `objective=safety` needs `objectives` (the per-trial measurement). Under a multi-process launch every rank trains
    each trial (DDP); rank 0 alone opens the study, measures and logs, and the other ranks return None.
    `dpo_cfg` with steps > 0 adds the preference stage to every trial, on `pairs`, after SFT."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main = distributed.is_main()
    multi = tune_cfg.objective == "safety"
    _check_inputs(tune_cfg, main, objectives, dpo_cfg, pairs)
    pruner = pruner or default_pruner(tune_cfg)
    study = open_study(tune_cfg, study_name, pruner, key=key, key_parts=key_parts) if main else None
    setup = TrialSetup(
        model=model,
        tokenizer=tokenizer,
        train_rows=train_rows,
        val_rows=val_rows,
        train_cfg=train_cfg,
        tune_cfg=tune_cfg,
        work_dir=work_dir,
        quiet=quiet,
        objectives=objectives,
        targets=targets or TuningTargets(),
        data_sha256=data_sha256,
        dpo_cfg=dpo_cfg,
        pairs=tuple(pairs),
    )
    trials = Trials(setup, study)
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
    return select(study, tune_cfg, work_dir, targets=setup.targets, numbers=trials.numbers, kept=trials.kept)


def _check_inputs(tune_cfg: TuneConfig, main: bool, objectives, dpo_cfg: DpoConfig | None, pairs) -> None:
    """What the trials need before any trains: the safety measurement where this rank measures, pairs for DPO, the
    safety objective for a fixed refusal τ (`auto` is off under the loss objective: nothing measures a trial)."""
    multi = tune_cfg.objective == "safety"
    check(
        multi or refusal_tau_of(tune_cfg.refusal_tau) in (None, "auto"),
        "refusal_tau",
        "a fixed τ is measured by the safety objective: use --objective safety, or auto/off",
    )
    check(
        tune_cfg.refusal_answers == "tuned" or refusal_tau_of(tune_cfg.refusal_tau) is not None,
        "refusal_answers",
        "parent answers need a refusal decision: --refusal-tau auto or a fixed τ",
    )
    needs = main and multi
    check(not needs or objectives is not None, "objective", "safety tuning needs the tune-split prompts to measure")
    check(
        dpo_cfg is None or dpo_cfg.dpo_steps == 0 or bool(pairs),
        "dpo_steps",
        "the preference stage needs preference pairs (safety_lab.data.pairs.preference_pairs)",
    )
