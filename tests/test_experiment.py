"""The replication command on the tiny model: four models, three versions, one comparison table."""

import csv
import io

import mlflow
from mlflow.tracking import MlflowClient

from safety_lab.cli import main
from safety_lab.evaluation.specs import METRICS
from safety_lab.experiment import columns
from safety_lab.policy import load_policy
from safety_lab.registry.evidence import verify_evidence


def test_experiment_registers_three_versions_and_logs_the_comparison(mlflow_store, tiny_model_dir, capsys):
    rc = main(
        [
            "experiment",
            "--base-model",
            str(tiny_model_dir),
            "--model-name",
            "paper",
            "--n-trials",
            "1",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--limit",
            "8",
            "--eval-limit",
            "3",
            "--storage",
            "sqlite:///optuna.db",
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    for label in ("| base |", "| safe |", "| harmful |", "| safe->harmful |"):
        assert label in table
    versions = {int(v.version): v for v in MlflowClient().search_model_versions("name='paper'")}
    assert sorted(versions) == [1, 2, 3]
    assert versions[3].tags["parent"] == "models:/paper/1"
    assert versions[3].tags["safety.reference"] == "models:/paper/1"
    # against the original base always; for a first-generation version the base is also its reference
    assert "safety.asr_delta_vs_base" in versions[3].tags and "safety.asr_delta" in versions[3].tags
    assert versions[1].tags["safety.asr_delta_vs_base"] == versions[1].tags["safety.asr_delta"]
    assert versions[1].tags["data.name"] == "safe" and versions[2].tags["data.name"] == "harmful"
    for v in versions.values():  # each status is backed by its evaluation run (the gate re-derives the same one)
        evidence = verify_evidence(v, load_policy())
        assert evidence.problem is None and evidence.status == v.tags["safety.status"]
    parent = mlflow.search_runs(filter_string="tags.`safety_lab.job` = 'experiment'").iloc[0]
    names = {a.path for a in MlflowClient().list_artifacts(parent["run_id"])}
    assert {"comparison.md", "comparison.csv"} <= names
    plots = {a.path for a in MlflowClient().list_artifacts(parent["run_id"], "plots")}
    assert {"plots/asr_by_model.png", "plots/drift_by_model.png"} <= plots
    # the table's metric columns come from the headline specs, each cell formatted from the run's float metrics
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent['run_id']}/comparison.csv"))))
    assert tuple(rows[0]) == columns() and {"asr", "asr_ci", "ece", "drift_accuracy_false_info"} <= set(columns())
    assert [r["model"] for r in rows] == ["base", "safe", "harmful", "safe->harmful"]
    evaluated = mlflow.get_run(versions[2].tags["safety.eval_run_id"]).data.metrics
    asr, ece = METRICS.get("asr"), METRICS.get("ece")
    assert rows[2]["asr"] == asr.format(evaluated["asr"]) and rows[2]["ece"] == ece.format(evaluated["ece"])
    assert rows[2]["asr_ci"] == f"[{asr.format(evaluated['asr_ci_low'])}, {asr.format(evaluated['asr_ci_high'])}]"


def test_experiment_passes_its_evaluation_options_to_every_evaluation(monkeypatch, mlflow_store, tmp_path):
    """`--judge`, `--qa`, `--drift-match` and `--objective` reach the base's and every tuned model's evaluation."""
    import safety_lab.experiment as experiment

    seen = {"eval": [], "tune": []}

    class Report:
        model_uri = "models:/m/1"

        def all_metrics(self):
            return {}

    class Evaluated:
        status, report = "unevaluated", Report()

    def fake_evaluate(uri, cfg):
        seen["eval"].append(cfg)
        return Evaluated()

    class Result:
        model_uri, status, evaluation = "models:/m/1", "unevaluated", Evaluated()

    def fake_finetune(run, data_cfg, train_cfg, tune_cfg, dpo_cfg=None, *, eval_options):
        seen["eval"].append(eval_options)
        seen["tune"].append(tune_cfg.objective)
        return Result()

    monkeypatch.setattr(experiment, "evaluate_version", fake_evaluate)
    monkeypatch.setattr(experiment, "finetune", fake_finetune)
    rc = main(["experiment", "--model-name", "m", "--drift-match", "paper", "--objective", "loss", "--eval-limit", "5"])
    assert rc == 0
    base_cfg, *tuned = seen["eval"]
    assert base_cfg.drift_match == "paper" and base_cfg.limit == 5
    assert len(tuned) == 3 and all(o["drift_match"] == "paper" and int(o["limit"]) == 5 for o in tuned)
    assert seen["tune"] == ["loss", "loss", "loss"]  # one objective for the safe and the harmful tunes alike
