"""The study's objective: one trial trained on every rank, pruned on validation loss, measured and logged by rank 0."""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna

from safety_lab import distributed
from safety_lab.compat import report_intermediate
from safety_lab.config import DpoConfig, TrainConfig, TuneConfig, refusal_tau_of
from safety_lab.errors import raise_if_interrupted
from safety_lab.models import refusal
from safety_lab.tracking import tracked_run
from safety_lab.training import train_lora
from safety_lab.training.preference import train_preference
from safety_lab.tuning.objectives import OBJECTIVES, SafetyObjectives, TuningTargets
from safety_lab.tuning.space import suggest, suggest_dpo

TRIAL_RUN_ID = "mlflow_run_id"  # trial user attrs written by rank 0
TUNE_RUN_ID = "tune_run_id"  # the MLflow run (finetune or worker) whose tune() call trained the trial
DATA_SHA = "data_sha256"
VAL_LOSS = "final_val_loss"
STAGES = "stages"  # trial user attr: the training stages, "sft" or "sft,dpo"
DPO_RUN_ID = "dpo_run_id"  # trial user attr: the preference stage's child run
DECISION = "refusal_decision"  # trial user attr: the refusal decision (tau, openers) its objectives were measured with


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one tune() call shares: the base model, the data, the settings and (safety objective) the
    per-trial measurement with the targets it is judged by."""

    model: object
    tokenizer: object
    train_rows: list
    val_rows: list
    train_cfg: TrainConfig
    tune_cfg: TuneConfig
    work_dir: Path
    quiet: bool = False
    objectives: SafetyObjectives | None = None
    targets: TuningTargets = field(default_factory=TuningTargets)
    data_sha256: str = ""
    dpo_cfg: DpoConfig | None = None  # the preference stage (off when None or 0 steps)
    pairs: tuple = ()  # its prompt/chosen/rejected rows (safety_lab.data.pairs)

    @property
    def multi(self) -> bool:
        return self.tune_cfg.objective == "safety"


@dataclass
class Trials:
    """The study's objective: trains one trial (on every rank), measures and logs it (rank 0, which holds `study`)."""

    setup: TrialSetup
    study: optuna.Study | None
    main: bool = field(default_factory=distributed.is_main)
    kept: dict = field(default_factory=dict)  # trial number -> model still in memory (loss objective: the best so far)
    numbers: list = field(default_factory=list)  # trials this call ran
    baseline: dict = field(default_factory=dict)  # the untrained validation loss: measured by the first trial
    current: tuple = (None, None)  # (rank 0's optuna trial, the trial every rank sees)

    def __call__(self, trial: optuna.Trial | None):
        raise_if_interrupted()
        setup = self.setup
        shared = distributed.distributed_trial(trial)  # the same parameters and pruning decisions on every rank
        self.current = (trial, shared)
        cfg = suggest(shared, setup.train_cfg, setup.tune_cfg)
        dpo = suggest_dpo(shared, setup.dpo_cfg, setup.tune_cfg)
        with tracked_run(run_name=f"trial-{shared.number}", nested=True) if self.main else nullcontext() as run:
            if self.main:
                self._start(trial, run, cfg)
            try:
                result = train_lora(
                    setup.model,
                    setup.tokenizer,
                    setup.train_rows,
                    setup.val_rows,
                    cfg,
                    on_eval=self.on_eval,
                    on_log=self.on_log,
                    quiet=setup.quiet or not self.main,
                    initial_eval_loss=self.baseline.get("loss"),
                    trials_after=self._trials_after() if self.main and not setup.quiet else None,
                )
            except optuna.TrialPruned as pruned:
                # A pruned trial is a normal outcome: the run finishes, tagged, and Optuna records PRUNED.
                if self.main:
                    mlflow.set_tags({"optuna.state": "PRUNED", "optuna.pruned_reason": str(pruned)})
                outcome = pruned
            else:
                self.baseline.setdefault("loss", result.initial_eval_loss)
                if dpo is not None:
                    result.model = self._preference(trial, result.model, dpo, cfg)
                elif self.main:
                    trial.set_user_attr(STAGES, "sft")
                outcome = self._finish(trial, result) if self.main else result.final_eval_loss
        if isinstance(outcome, optuna.TrialPruned):
            raise outcome
        return outcome

    def _preference(self, trial: optuna.Trial | None, model, dpo: DpoConfig, cfg: TrainConfig):
        """The preference stage on the trial's SFT adapter, logged as a child run of the trial's run."""
        setup = self.setup
        name = f"trial-{self.current[1].number}-preference"
        with tracked_run(run_name=name, nested=True) if self.main else nullcontext() as run:
            if self.main:
                mlflow.set_tags({"training.stage": "dpo", "optuna.trial": trial.number})
                mlflow.log_params({**dataclasses.asdict(dpo), "dpo_pairs": len(setup.pairs)})
            out = train_preference(
                model, setup.tokenizer, list(setup.pairs), dpo, cfg, on_log=self._log_dpo, quiet=setup.quiet
            )
            if self.main:
                mlflow.log_metrics(
                    {
                        "dpo_train_loss": out.loss,
                        "dpo_reward_margin": out.reward_margin,
                        "dpo_reward_accuracy": out.reward_accuracy,
                        "dpo_seconds": out.seconds,
                    }
                )
        if self.main:
            trial.set_user_attr(STAGES, "sft,dpo")
            trial.set_user_attr(DPO_RUN_ID, run.info.run_id)
            mlflow.set_tags({"training.stages": "sft,dpo", "training.dpo_run_id": run.info.run_id})
        return out.model

    def _decide(self, trial: optuna.Trial, model) -> None:
        """Attach the trial's refusal decision (``models.refusal``) before its objectives are measured: a fixed τ, or
        with `auto` the τ, on the whole tune split's opener masses, that keeps the most slack under both the ASR and
        the over-refusal target (``refusal.choose_tau``; the eval split measures it honestly)."""
        mode = refusal_tau_of(self.setup.tune_cfg.refusal_tau)
        if mode is None:
            return
        tokenizer = self.setup.tokenizer
        openers = refusal.default_openers(tokenizer)
        unsafe, safe = self.setup.objectives.opener_masses(model, tokenizer, openers)
        tau = mode
        if mode == "auto":
            targets = self.setup.targets
            tau = refusal.choose_tau(unsafe, safe, max_miss=targets.max_asr, max_over_refusal=targets.max_over_refusal)
        decision = refusal.RefusalDecision(float(tau), openers, self.setup.tune_cfg.refusal_answers)
        refusal.attach(model, decision)
        trial.set_user_attr(DECISION, decision.as_dict())
        mlflow.log_params({"refusal_tau": float(tau), "refusal_answers": decision.answers})
        for step, point in enumerate(refusal.decision_curve(unsafe, safe, refusal.CURVE_TAUS)):
            curve = {
                "tune_curve_harmful_refused": point["unsafe_refused"],
                "tune_curve_over_refused": point["safe_refused"],
            }
            mlflow.log_metrics(curve, step=step)

    def _log_dpo(self, step: int, logs: dict) -> None:
        raise_if_interrupted()
        if self.main:
            keep = ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
            mlflow.log_metrics({f"dpo_{k.replace('/', '_')}": logs[k] for k in keep if k in logs}, step=step)

    def _trials_after(self) -> int | None:
        """Trials this call still runs after the current one (only the first trial prints an estimate)."""
        if len(self.numbers) != 1:
            return None
        return max(int(self.setup.tune_cfg.n_trials) - 1, 0)

    def _start(self, trial: optuna.Trial, run, cfg: TrainConfig) -> None:
        self.numbers.append(trial.number)
        parent = mlflow.get_parent_run(run.info.run_id)
        trial.set_user_attr(TRIAL_RUN_ID, run.info.run_id)
        trial.set_user_attr(TUNE_RUN_ID, parent.info.run_id if parent else "")
        trial.set_user_attr(DATA_SHA, self.setup.data_sha256)
        mlflow.set_tags(
            {
                "optuna.study": self.study.study_name,
                "optuna.trial": trial.number,
                "tuning.objective": self.setup.tune_cfg.objective or "loss",
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
        if self.setup.multi:  # rank 0 decides from the study; every rank follows
            prune = distributed.agree(self._prune_on_val_loss(trial, step, loss) if self.main else None)
        else:
            shared.report(loss, step)
            prune = shared.should_prune()
        if prune:
            raise optuna.TrialPruned(f"val_loss {loss:.4f} at step {step}")

    def _prune_on_val_loss(self, trial: optuna.Trial, step: int, loss: float) -> bool:
        # Trial.report is single-objective only: the curve is stored as it would store it (pruner, dashboards).
        return self.study.pruner.prune(self.study, report_intermediate(self.study, trial, step, loss))

    def on_log(self, step: int, logs: dict) -> None:
        raise_if_interrupted()  # a Ctrl-C that a library caught and let pass still stops the study
        if self.main and "loss" in logs:
            mlflow.log_metric("train_loss", logs["loss"], step=step)

    def _finish(self, trial: optuna.Trial, result):
        adapter = self.setup.work_dir / f"trial-{trial.number}"
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
        if not self.setup.multi:
            trials = self.study.trials
            best = min((trials[n].user_attrs.get(VAL_LOSS, math.inf) for n in self.numbers), default=math.inf)
            if result.final_eval_loss <= best:
                self.kept.clear()  # keep only the best model in memory
                self.kept[trial.number] = result.model
            mlflow.set_tag("optuna.state", "COMPLETE")
            return result.final_eval_loss
        self._decide(trial, result.model)
        measured = self.setup.objectives(result.model, self.setup.tokenizer)
        values = tuple(float(measured[k]) for k in OBJECTIVES)
        trial.set_user_attr("objectives", measured)
        trial.set_user_attr("constraints", [v - t for v, t in zip(values, self.setup.targets.limits())])
        mlflow.log_metrics({f"tune_{k}": float(v) for k, v in measured.items()})
        # Optuna fails a trial whose objective is not a number (nothing to measure): the run says so too
        mlflow.set_tag("optuna.state", "COMPLETE" if all(math.isfinite(v) for v in values) else "FAIL")
        return values
