"""End to end on the tiny model: finetune -> register -> evaluate, and bad input that must leave nothing behind."""

import json
import os

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from safety_lab.cli import main
from safety_lab.data import split_forms
from safety_lab.models import load_model

FAKE_TOKEN = "hf_FAKEsecretTOKEN0123456789"
EVAL_METRICS = {
    "asr",
    "asr_ci_low",
    "asr_ci_high",
    "over_refusal_rate",
    "ece",
    "brier",
    "mc_accuracy",
    "drift_accuracy_base",
    "drift_accuracy_false_info",
    "drift_accuracy_random_info",
    "drift_entropy_base",
    "drift_perplexity_false_info",
    "drift_probability_random_info",
    "asr_delta",
    "ece_delta",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["HF_TOKEN"] = FAKE_TOKEN  # must never reach params, tags or artifacts
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield root
    os.chdir(old_cwd)
    os.environ.pop("HF_TOKEN", None)
    if old_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_uri
    mlflow.set_tracking_uri(None)


def _finetune(tiny_model_dir, *extra):
    return main(
        [
            "finetune",
            "--base-model",
            str(tiny_model_dir),
            "--data",
            "harmful",
            "--n-trials",
            "2",
            "--max-steps",
            "2",
            "--eval-every",
            "1",
            "--batch-size",
            "4",
            "--limit",
            "12",
            "--model-name",
            "quick",
            "--eval-limit",
            "4",
            "--max-new-tokens",
            "6",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def version(store, tiny_model_dir):
    assert _finetune(tiny_model_dir) == 0
    return MlflowClient().get_model_version("quick", "1")


def test_version_carries_data_tuning_and_safety_tags(version):
    tags = version.tags
    assert tags["data.name"] == "harmful" and tags["data.rows"] == "12" and len(tags["data.sha256"]) == 64
    assert float(tags["tuning.best_value"]) > 0 and "parent" not in tags
    assert tags["safety.status"] in ("pass", "warn", "fail")
    assert {
        "safety.asr",
        "safety.asr_ci",
        "safety.asr_delta",
        "safety.ece",
        "safety.over_refusal_rate",
        "safety.drift_accuracy_false_info_delta",
        "safety.over_refusal_rate_instruction",
        "safety.over_refusal_form_gap",
        "safety.policy",
        "safety.reasons",
        "safety.eval_run_id",
    } <= set(tags)
    assert "harmful" in version.description and "Safety evaluation" in version.description
    training = mlflow.get_run(tags["training.run_id"])
    assert training.info.status == "FINISHED" and training.data.metrics["reload_max_abs_logit_diff"] < 1e-4
    assert "best_lora_r" in training.data.params
    # data=harmful keeps the paper's protocol: one objective, the validation loss; the three-way split is logged
    assert training.data.params["tune.objective"] == "loss" and tags["tuning.selection"] == "loss"
    assert {"split.harmful_train", "split.harmful_tune", "split.harmful_eval", "split.lookalike_tune"} <= set(
        training.data.params
    )
    assert training.data.metrics["form.lookalike.eval.question"] == split_forms()["form.lookalike.eval.question"]
    assert tags["tuning.study_key"] in tags["optuna.study"]
    trial = mlflow.get_run(tags["tuning.trial_run_id"])
    assert trial.data.tags["mlflow.parentRunId"] == training.info.run_id
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{training.info.run_id}'")
    assert {"trial-0", "trial-1"} <= set(children["tags.mlflow.runName"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(training.info.run_id, "plots")}
    assert "plots/optuna_history.png" in artifacts


def test_evaluation_run_logs_the_metric_names_and_links_them_to_the_model(version):
    run = mlflow.get_run(version.tags["safety.eval_run_id"])
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= EVAL_METRICS
    assert 0 <= run.data.metrics["asr"] <= 1 and run.data.metrics["asr_ci_low"] <= run.data.metrics["asr"]
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {
        "evaluation/summary.json",
        "evaluation/asr_items.json",  # mlflow.log_table
        "evaluation/form_swap_items.json",  # each request as written and restated in the other form
        "evaluation/reliability.png",
        "evaluation/refusal_curve.png",  # the refusal decision over τ
        "evaluation/safety_card.md",
        "evaluation/safety_card.html",
    } <= names
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/safety_card.md")
    assert version.tags["safety.status"] in card and version.tags["data.sha256"][:12] in card
    model_id = version.source.split("models:/", 1)[1]
    linked = {m.key for m in mlflow.get_logged_model(model_id).metrics or []}
    assert "asr" in linked


def test_reload_reproduces_the_trained_logits(version, tiny_model_dir):
    from peft import PeftModel

    training = mlflow.get_run(version.tags["training.run_id"])
    adapter = mlflow.artifacts.download_artifacts(
        run_id=training.data.tags["best_trial_run_id"], artifact_path="adapter"
    )
    trained = PeftModel.from_pretrained(load_model(str(tiny_model_dir)).model, adapter).eval()
    reloaded = load_model("models:/quick/1")
    ids = torch.tensor([[1, 42, 7, 99, 1000, 5]])
    with torch.inference_mode():
        diff = (trained(input_ids=ids).logits - reloaded.model(input_ids=ids).logits).abs().max()
    assert diff < 1e-4
    assert reloaded.parent == "models:/quick/1"


def test_finetune_from_a_registered_version_records_its_parent(version, tiny_model_dir):
    assert (
        main(
            [
                "finetune",
                "--base-model",
                "models:/quick/1",
                "--data",
                "safe",
                "--n-trials",
                "1",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--limit",
                "8",
                "--evaluate",
                "false",
            ]
        )
        == 0
    )
    child = MlflowClient().get_model_version("quick", "2")
    assert child.tags["parent"] == "models:/quick/1"
    assert child.tags["base_model"] == str(tiny_model_dir)
    assert child.tags["safety.status"] == "unevaluated"
    # data=safe: the safety objective, chosen from the Pareto front, with the choice and its reason on the version
    assert child.tags["tuning.objective"] == "safety" and child.tags["tuning.selection"] in ("pass", "compromise")
    assert child.tags["tuning.selection_reason"] and {"tuning.asr", "tuning.over_refusal"} <= set(child.tags)
    plots = {a.path for a in MlflowClient().list_artifacts(child.tags["training.run_id"], "plots")}
    assert "plots/pareto_front.png" in plots


def _versions():
    try:
        return len(MlflowClient().search_model_versions("name='quick'"))
    except Exception:
        return 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nope.jsonl"], "data: file not found"),
        (["--data", "saef"], "did you mean 'safe'"),
        (["--n-trials", "x"], "n_trials: must be a number"),
        (["--lora-r", "0"], "lora_r: must be in"),
        (["--judge", "nobody"], "judge: unknown name"),
        (["--suites", "asr,vibes"], "suite: unknown name 'vibes'"),
        (["--base-model", "./no/such/dir"], "base_model: './no/such/dir' is not"),
        (["--base-model", "models:/missing/3"], "no registered model named 'missing'"),
    ],
)
def test_bad_input_fails_in_one_line_with_no_new_version(version, tiny_model_dir, capsys, args, message):
    before = _versions()
    base = ["--base-model", str(tiny_model_dir)] if "--base-model" not in args else []
    assert main(["finetune", *base, "--data", "harmful", "--limit", "8", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _versions() == before
    runs = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], max_results=1)
    assert runs.iloc[0]["status"] in (
        "FAILED",
        "FINISHED",
    )  # a run that started is marked FAILED; most fail before one starts
    if runs.iloc[0]["tags.safety_lab.job"] == "finetune" and runs.iloc[0]["status"] != "FINISHED":
        assert runs.iloc[0]["status"] == "FAILED"


def test_a_bad_file_marks_the_started_run_failed(version, tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    assert main(["finetune", "--base-model", str(tiny_model_dir), "--data", str(bad), "--evaluate", "false"]) == 2
    assert "line 2 is not valid JSON" in capsys.readouterr().err
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], max_results=1).iloc[
        0
    ]
    assert run["tags.safety_lab.job"] == "finetune" and run["status"] == "FAILED"


def test_secrets_never_reach_params_tags_or_artifacts(version, store):
    runs = mlflow.search_runs(search_all_experiments=True)
    assert not any(FAKE_TOKEN in str(v) for v in runs.to_numpy().ravel())
    assert FAKE_TOKEN not in str(version.tags) + str(version.description)
    text_files = [
        p
        for p in store.rglob("*")
        if p.is_file() and p.suffix in ("", ".yaml", ".json", ".txt", ".jsonl", ".md", ".html")
    ]
    assert text_files and not any(FAKE_TOKEN in p.read_text(errors="ignore") for p in text_files)


def test_trust_remote_code_is_off_and_logged(version):
    params = mlflow.get_run(version.tags["training.run_id"]).data.params
    assert params["run.trust_remote_code"] == "False"


def test_distilled_benign_answers_come_from_the_model_being_tuned(version, tiny_model_dir):
    """`--benign-answers distilled` used to stop at the dataset check (nothing passed the model's answers in)."""
    from safety_lab.data import benign_pool, benign_prompts
    from safety_lab.models import cache_dir

    args = ["--data", "safe", "--n-trials", "1", "--max-steps", "1", "--evaluate", "false"]
    assert _finetune(tiny_model_dir, *args, "--model-name", "distilled", "--benign-answers", "distilled") == 0
    v = MlflowClient().get_model_version("distilled", "1")
    run = MlflowClient().get_run(v.tags["training.run_id"])
    assert run.data.params["data.benign_answers"] == "distilled"
    files = list((cache_dir() / "distilled").glob("*.json"))
    assert len(files) == 1
    answers = json.loads(files[0].read_text())["answers"]
    written = {b["prompt"]: b["response"] for b in benign_pool()}
    assert set(answers) == set(benign_prompts()) == set(written)  # every prompt a built-in set may mix in
    assert sum(answers[p] != written[p] for p in answers) > len(answers) / 2  # the tiny model's, not the written ones
