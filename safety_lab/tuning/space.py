"""The search space (LoRA r, alpha, dropout, learning rate; the preference stage's steps, beta and learning rate when
it is on) and the pruner on the validation loss."""

from __future__ import annotations

import dataclasses
import statistics

import optuna

from safety_lab.config import DpoConfig, TrainConfig, TuneConfig, comma_floats


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


def suggest_dpo(trial: optuna.Trial, base: DpoConfig | None, space: TuneConfig) -> DpoConfig | None:
    """The preference stage's steps, beta (log) and learning rate (log); None when the stage is off."""
    if base is None or base.dpo_steps == 0:
        return None
    lo, hi = comma_floats(space.dpo_steps_range, "dpo_steps_range")
    steps = trial.suggest_int("dpo_steps", int(lo), int(hi))
    lo, hi = comma_floats(space.dpo_beta_range, "dpo_beta_range")
    beta = trial.suggest_float("dpo_beta", lo, hi, log=True)
    lo, hi = comma_floats(space.dpo_lr_range, "dpo_lr_range")
    lr = trial.suggest_float("dpo_learning_rate", lo, hi, log=True)
    return dataclasses.replace(base, dpo_steps=steps, dpo_beta=beta, dpo_learning_rate=lr)


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
