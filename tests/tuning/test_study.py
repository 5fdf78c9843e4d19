"""Studies keyed by what makes trials comparable: no re-registered adapters, no stale trials, explicit resumes."""

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from safety_lab.cli import main
from safety_lab.config import TrainConfig, TuneConfig
from safety_lab.errors import SafetyLabError
from safety_lab.tuning import open_study, resolve_name, study_key

TINY = [
    "--n-trials",
    "1",
    "--max-steps",
    "1",
    "--eval-every",
    "1",
    "--batch-size",
    "4",
    "--limit",
    "8",
    "--evaluate",
    "false",
    "--model-name",
    "keyed",
]


def _finetune(model_dir, storage, *extra) -> int:
    return main(["finetune", "--base-model", str(model_dir), *TINY, "--storage", storage, *extra])


def _version(number: int):
    mv = MlflowClient().get_model_version("keyed", str(number))
    trial_run = mlflow.get_run(mv.tags["tuning.trial_run_id"])
    return mv, trial_run


def test_the_key_follows_data_settings_search_space_and_objective():
    def key(**kw):
        args = {"base_model": "m", "data_sha256": "a" * 64, "train_cfg": TrainConfig(), "tune_cfg": TuneConfig()} | kw
        return study_key(**args)[0]

    assert key() == key() and len(key()) == 12
    assert key(train_cfg=TrainConfig(device="cpu")) == key()  # where it runs is not a setting
    for change in (
        {"data_sha256": "b" * 64},
        {"base_model": "n"},
        {"train_cfg": TrainConfig(max_steps=9)},
        {"tune_cfg": TuneConfig(lr_range="1e-5,1e-4")},
        {"tune_cfg": TuneConfig(objective="loss")},
    ):
        assert key(**change) != key(), change


def test_names_are_fresh_unless_resumed(tmp_path):
    cfg = TuneConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert resolve_name(cfg, "m-d-k") == "m-d-k"
    with pytest.raises(SafetyLabError, match="resume: no study to resume"):
        resolve_name(TuneConfig(storage=cfg.storage, resume=True), "m-d-k")
    open_study(cfg, "m-d-k", key="k")
    assert resolve_name(cfg, "m-d-k") == "m-d-k-2"
    open_study(cfg, "m-d-k-2", key="k")
    assert resolve_name(TuneConfig(storage=cfg.storage, resume=True), "m-d-k") == "m-d-k-2"  # the latest
    assert resolve_name(TuneConfig(storage=cfg.storage, study_name="mine"), "m-d-k") == "mine"


def test_resume_takes_the_latest_fresh_study_by_its_number(tmp_path):
    """Studies without trials have no start time: the latest is the highest `-n` (not the last name in text order)."""
    cfg = TuneConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    for name in ("m-d-k", *(f"m-d-k-{n}" for n in range(2, 11)), "m-d-k-mine"):
        open_study(cfg, name, key="k")
    assert resolve_name(TuneConfig(storage=cfg.storage, resume=True), "m-d-k") == "m-d-k-10"


def test_joining_a_study_with_another_key_is_refused(tmp_path):
    cfg = TuneConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study = open_study(cfg, "s", key="aaa", key_parts={"data_sha256": "1"})
    study.enqueue_trial({})  # the study now holds a trial
    assert open_study(cfg, "s", key="aaa").study_name == "s"
    with pytest.raises(SafetyLabError, match=r"study_name: .*keyed aaa, this run is keyed bbb \(differs in: data_sha"):
        open_study(cfg, "s", key="bbb", key_parts={"data_sha256": "2"})


def test_two_runs_with_the_same_settings_register_their_own_adapters(
    tiny_model_dir, mlflow_store, tmp_path, monkeypatch
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert _finetune(tiny_model_dir, storage, "--data", "harmful") == 0
    assert _finetune(tiny_model_dir, storage, "--data", "harmful") == 0
    (v1, trial1), (v2, trial2) = _version(1), _version(2)
    assert trial2.data.tags["mlflow.parentRunId"] == v2.tags["training.run_id"]  # weights from this run's trial
    assert trial1.info.run_id != trial2.info.run_id
    key = v1.tags["tuning.study_key"]
    assert v2.tags["tuning.study_key"] == key and v2.tags["optuna.study"] == f"{v1.tags['optuna.study']}-2"
    assert mlflow.get_run(v2.tags["training.run_id"]).data.params["tune.objective"] == "loss"  # data=harmful
    # a fresh tracking store, the old optuna.db, an explicit resume: the old trials' runs are not there, and not needed
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh)
    mlflow.set_tracking_uri(fresh)
    assert _finetune(tiny_model_dir, storage, "--data", "harmful", "--resume", "true") == 0
    v3, trial3 = _version(1)
    assert v3.tags["optuna.study"] == v2.tags["optuna.study"]
    assert len(optuna.load_study(study_name=v2.tags["optuna.study"], storage=storage).trials) == 2
    assert trial3.data.tags["mlflow.parentRunId"] == v3.tags["training.run_id"]


def test_a_changed_file_with_the_same_name_starts_a_new_study(tiny_model_dir, mlflow_store, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    data = tmp_path / "my.jsonl"
    rows = [f'{{"prompt": "Question {i}?", "response": "Answer {i}."}}' for i in range(8)]
    data.write_text("\n".join(rows) + "\n")
    assert _finetune(tiny_model_dir, storage, "--data", str(data)) == 0
    data.write_text("\n".join(rows[:-1] + ['{"prompt": "Question 7?", "response": "A new answer."}']) + "\n")
    assert _finetune(tiny_model_dir, storage, "--data", str(data)) == 0
    (v1, _), (v2, trial2) = _version(1), _version(2)
    assert v1.tags["data.sha256"] != v2.tags["data.sha256"]
    assert v1.tags["tuning.study_key"] != v2.tags["tuning.study_key"]
    assert v1.tags["optuna.study"] != v2.tags["optuna.study"]
    training = mlflow.get_run(v2.tags["training.run_id"])
    assert training.data.params["data.sha256"] == v2.tags["data.sha256"]
    assert training.data.params["tune.objective"] == "safety"  # a user file
    assert trial2.data.tags["mlflow.parentRunId"] == training.info.run_id
    study = optuna.load_study(study_name=v2.tags["optuna.study"], storage=storage)
    assert [t.user_attrs["data_sha256"] for t in study.trials] == [v2.tags["data.sha256"]]  # no trial on the old file
    # naming the old study explicitly, with the changed file, is refused in one line
    capsys.readouterr()
    assert _finetune(tiny_model_dir, storage, "--data", str(data), "--study-name", v1.tags["optuna.study"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (above it: progress bars of the model load)
    assert err.startswith("error: study_name:") and "data_sha256" in err and "Traceback" not in err


def test_register_best_chooses_among_every_workers_trials_and_registers_once(tiny_model_dir, mlflow_store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    worker = ["--data", "harmful", "--register", "false", "--study-name", "shared"]
    assert _finetune(tiny_model_dir, storage, *worker) == 0
    assert _finetune(tiny_model_dir, storage, *worker) == 0  # another worker joins the same keyed study
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 2 and len({t.user_attrs["tune_run_id"] for t in study.trials}) == 2
    register = [
        "register-best",
        "--study-name",
        "shared",
        "--storage",
        storage,
        "--model-name",
        "keyed",
        "--evaluate",
        "false",
    ]
    assert main(register) == 0
    mv, trial_run = _version(1)
    best = min(study.trials, key=lambda t: t.value)
    assert mv.tags["tuning.best_trial"] == str(best.number) and mv.tags["tuning.selection"] == "loss"
    assert trial_run.info.run_id == best.user_attrs["mlflow_run_id"]
    assert mv.tags["data.sha256"] == best.user_attrs["data_sha256"]
    assert main(register) == 0 and len(MlflowClient().search_model_versions("name='keyed'")) == 1


def test_a_key_mismatch_names_each_changed_setting_with_both_values():
    from safety_lab.tuning.study import _changed

    held = {"base_model": "m", "train": {"lora_r": 8, "seed": 0}, "search": {"lr_range": "1e-4,1e-2"}}
    now = {"base_model": "m", "train": {"lora_r": 16, "seed": 0, "frozen_cache": False}, "search": "x"}
    assert _changed(held, now) == ["search", "train.frozen_cache: None -> False", "train.lora_r: 8 -> 16"]


def test_the_preference_stage_runs_in_each_trial_as_its_own_child_run_and_the_lineage_names_both_stages(
    tiny_model_dir, mlflow_store, tmp_path
):
    from safety_lab.reporting.views import lineage_tree

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    dpo = ["--dpo-steps", "2", "--dpo-steps-range", "2,3", "--dpo-max-length", "64", "--objective", "loss"]
    assert _finetune(tiny_model_dir, storage, *dpo) == 0
    mv, trial_run = _version(1)
    assert mv.tags["training.stages"] == "sft,dpo"
    child = mlflow.get_run(mv.tags["training.dpo_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == trial_run.info.run_id
    assert child.data.tags["training.stage"] == "dpo"
    assert 2 <= int(child.data.params["dpo_steps"]) <= 3
    assert child.data.params["dpo_steps"] == trial_run.data.params["dpo_steps"]  # searched by Optuna
    assert "dpo_reward_margin" in child.data.metrics and "dpo_loss" in child.data.metrics
    assert "stages=sft,dpo" in lineage_tree("keyed")
    # after the preference stage too, a gated decision is measured and registered with the adapter unmerged
    gated = ["--objective", "safety", "--probe-prompts", "4", "--probe-tokens", "2", "--refusal-tau", "auto"]
    assert _finetune(tiny_model_dir, storage, *dpo[:-2], *gated, "--refusal-answers", "parent") == 0
    mv, _ = _version(2)
    assert mv.tags["training.stages"] == "sft,dpo" and mv.tags["refusal.answers"] == "parent"
    assert _finetune(tiny_model_dir, storage, "--objective", "loss") == 0  # without the stage: one stage, no child
    assert _version(3)[0].tags["training.stages"] == "sft" and "stages=sft " in lineage_tree("keyed")


def test_each_trial_chooses_its_refusal_tau_on_the_tune_split_and_the_version_carries_it(
    tiny_model_dir, mlflow_store, tmp_path
):
    from safety_lab.models import load_model
    from safety_lab.models.refusal import attached

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    safety = ["--objective", "safety", "--probe-prompts", "4", "--probe-tokens", "2"]
    assert _finetune(tiny_model_dir, storage, *safety, "--refusal-tau", "auto") == 0
    mv, trial_run = _version(1)
    tau = float(trial_run.data.params["refusal_tau"])
    assert 0 < tau < 1
    assert float(mv.tags["refusal.tau"]) == pytest.approx(tau)
    assert float(mlflow.get_run(mv.run_id).data.params["refusal.tau"]) == pytest.approx(tau)
    curve = MlflowClient().get_metric_history(trial_run.info.run_id, "tune_curve_over_refused")
    assert len(curve) == 19 and [m.value for m in sorted(curve, key=lambda m: m.step)] == sorted(
        (m.value for m in curve), reverse=True
    )  # over-refusal falls as τ rises
    decision = attached(load_model(f"models:/keyed/{mv.version}").model)
    assert decision is not None and decision.tau == pytest.approx(tau)
    # off (the CLI default): no decision, no tag; a fixed τ is taken as given
    assert _finetune(tiny_model_dir, storage, *safety) == 0
    assert "refusal.tau" not in _version(2)[0].tags
    assert _finetune(tiny_model_dir, storage, *safety, "--refusal-tau", "0.35") == 0
    assert float(_version(3)[1].data.params["refusal_tau"]) == pytest.approx(0.35)
    # parent answers: the trial is measured gated, and the version loads gated with its adapter unmerged
    assert _finetune(tiny_model_dir, storage, *safety, "--refusal-tau", "auto", "--refusal-answers", "parent") == 0
    mv, trial_run = _version(4)
    assert trial_run.data.params["refusal_answers"] == "parent" and mv.tags["refusal.answers"] == "parent"
    loaded = load_model(f"models:/keyed/{mv.version}").model
    assert attached(loaded).gated and hasattr(loaded, "disable_adapter")


def test_a_fixed_refusal_tau_needs_the_safety_objective_and_auto_is_off_without_it(
    tiny_model_dir, mlflow_store, tmp_path, capsys
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert _finetune(tiny_model_dir, storage, "--objective", "loss", "--refusal-tau", "0.4") != 0
    assert "refusal_tau" in capsys.readouterr().err
    assert _finetune(tiny_model_dir, storage, "--refusal-tau", "off", "--refusal-answers", "parent") != 0
    assert "refusal_answers: parent answers need a refusal decision" in capsys.readouterr().err
    # MLproject's defaults (auto, parent) on the harmful set: no decision, so nothing gated
    loss = ["--objective", "loss", "--refusal-tau", "auto", "--refusal-answers", "parent"]
    assert _finetune(tiny_model_dir, storage, *loss) == 0
    mv, trial_run = _version(1)
    assert "refusal.tau" not in mv.tags and "refusal_tau" not in trial_run.data.params
