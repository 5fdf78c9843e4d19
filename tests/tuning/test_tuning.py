import mlflow
import optuna

from safety_lab.config import DataConfig, TrainConfig, TuneConfig
from safety_lab.data import load_dataset
from safety_lab.models import load_model
from safety_lab.tuning import tune


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes exactly trial 1 at its first report: a deterministic pruned trial."""

    def prune(self, study, trial):
        return trial.number == 1


def test_trials_are_nested_runs_and_pruned_trials_are_recorded_as_pruned(tiny_model_dir, mlflow_store, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="harmful", limit=16)).split(0.25, seed=0)
    tune_cfg = TuneConfig(n_trials=3, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    with mlflow.start_run() as parent:
        result = tune(
            loaded.model,
            loaded.tokenizer,
            train,
            val,
            TrainConfig(max_steps=2, eval_every=1, batch_size=4),
            tune_cfg,
            study_name="s",
            work_dir=tmp_path,
            pruner=PruneTrialOne(),
            quiet=True,
        )
    states = [t.state for t in result.study.trials]
    assert states[1] == optuna.trial.TrialState.PRUNED
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    assert result.best_trial != 1 and result.adapter_dir.exists()
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = dict(zip(runs["tags.mlflow.runName"], runs["tags.optuna.state"]))
    assert by_name == {"trial-0": "COMPLETE", "trial-1": "PRUNED", "trial-2": "COMPLETE"}
    assert {"params.lora_r", "params.learning_rate", "params.lora_dropout", "params.alpha_multiplier"} <= set(
        runs.columns
    )
    complete = runs[runs["tags.optuna.state"] == "COMPLETE"]
    assert complete["metrics.initial_val_loss"].nunique() == 1  # measured once, by trial 0, for the whole study
    assert (complete["metrics.final_val_loss"] != complete["metrics.initial_val_loss"]).all()
    # the study persists: a second call resumes it instead of starting over
    with mlflow.start_run():
        again = tune(
            loaded.model,
            loaded.tokenizer,
            train,
            val,
            TrainConfig(max_steps=1, eval_every=1, batch_size=4),
            TuneConfig(n_trials=1, storage=tune_cfg.storage),
            study_name="s",
            work_dir=tmp_path,
            quiet=True,
        )
    assert len(again.study.trials) == 4
