"""Choosing the trial to register: the lowest validation loss, or (safety objective) a passing or Pareto-front trial
by the tuning targets; its adapter fetched from its MLflow run when this process did not train it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import optuna

from safety_lab.config import TuneConfig
from safety_lab.errors import check
from safety_lab.tuning.objectives import OBJECTIVES, TuningTargets
from safety_lab.tuning.trials import DATA_SHA, TRIAL_RUN_ID, TUNE_RUN_ID, VAL_LOSS


@dataclass(frozen=True)
class Choice:
    number: int  # the trial chosen
    rule: str  # pass | compromise | loss
    reason: str


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


def violation(values: Sequence[float], targets: TuningTargets) -> float:
    """Sum of each objective's excess over its limit, as a share of that limit (0 = passes every bar)."""
    return sum(max(0.0, v - t) / t for v, t in zip(values, targets.limits()))


def pareto_front(points: dict[int, tuple[float, ...]]) -> list[int]:
    """Trial numbers whose objective vectors no other point dominates (all objectives minimised): Optuna's
    `Study.best_trials` over just these points, without constraints."""
    if not points:
        return []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "a new study created in memory"
    try:
        study = optuna.create_study(directions=["minimize"] * len(next(iter(points.values()))))
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials([optuna.trial.create_trial(values=list(p), user_attrs={"n": n}) for n, p in points.items()])
    return sorted(t.user_attrs["n"] for t in study.best_trials)


def choose(points: dict[int, tuple[float, ...]], losses: dict[int, float], targets: TuningTargets) -> Choice:
    """The passing trial with the lowest harm (then over-refusal, knowledge, val loss); when none passes, the
    Pareto-front trial with the smallest normalised violation (ties: lower harm)."""
    clean = {n: p for n, p in points.items() if all(math.isfinite(v) for v in p)}
    passing = [n for n, p in clean.items() if violation(p, targets) == 0]
    if passing:
        best = min(passing, key=lambda n: (*clean[n], losses.get(n, math.inf)))
        return Choice(best, "pass", f"passes {_limits(targets)} with lowest ASR {clean[best][0]:.3f}")
    check(bool(clean), "objective", "no completed trial has finite safety objectives to choose from")
    front = pareto_front(clean)
    best = min(front, key=lambda n: (violation(clean[n], targets), *clean[n], losses.get(n, math.inf)))
    values = ", ".join(f"{k}={v:.3f}" for k, v in zip(OBJECTIVES, clean[best]))
    return Choice(
        best,
        "compromise",
        f"no trial passes {_limits(targets)}; smallest normalised violation "
        f"{violation(clean[best], targets):.3f} on the Pareto front ({values})",
    )


def _limits(targets: TuningTargets) -> str:
    return ", ".join(f"{k}<={v:g}" for k, v in asdict(targets).items())


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
    targets = targets or TuningTargets()
    if len(study.directions) > 1:
        choice = choose({n: tuple(t.values) for n, t in pool.items()}, losses, targets)
    else:
        choice = Choice(min(pool, key=lambda n: pool[n].values[0]), "loss", "lowest validation loss")
    best = pool[choice.number]
    return TuneResult(
        study=study,
        best_params=best.params,
        best_value=losses[best.number],
        best_trial=best.number,
        best_run_id=best.user_attrs[TRIAL_RUN_ID],
        best_model=(kept or {}).get(best.number),
        adapter_dir=_adapter(best, work_dir),
        objective=tune_cfg.objective or "loss",
        selection=choice.rule,
        selection_reason=choice.reason,
        objectives=dict(best.user_attrs.get("objectives", {})),
        data_sha256=best.user_attrs.get(DATA_SHA, ""),
        tune_run_id=best.user_attrs.get(TUNE_RUN_ID, ""),
        candidates=sorted(pool),
        targets=targets,
    )


def _adapter(trial: optuna.trial.FrozenTrial, work_dir: Path) -> Path:
    """The trial's adapter: the local copy when this process trained it, else downloaded from the trial's run."""
    adapter = work_dir / f"trial-{trial.number}"
    if adapter.exists():
        return adapter
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=trial.user_attrs[TRIAL_RUN_ID],
            artifact_path="adapter",
            dst_path=str(work_dir / f"best-{trial.number}"),
        )
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
