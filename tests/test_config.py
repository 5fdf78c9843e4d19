"""Stage configs and the one parser path built from them (dataclass fields -> flags -> `before` -> checks)."""

import argparse
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import Field

from safety_lab import cli
from safety_lab.config import (
    DataConfig,
    DpoConfig,
    Group,
    RunConfig,
    Stage,
    TrainConfig,
    TuneConfig,
    add_arguments,
    before,
    from_args,
    param_key,
    stage,
    to_params,
)
from safety_lab.errors import SafetyLabError
from safety_lab.evaluation import EvalConfig

ROOT = Path(__file__).resolve().parents[1]


def test_strings_from_mlflow_parameters_are_coerced():
    cfg = TrainConfig(max_steps="8.0", lora_r="16", learning_rate="1e-3")
    assert (cfg.max_steps, cfg.lora_r, cfg.learning_rate) == (8, 16, 1e-3)
    assert DataConfig(limit="").limit is None
    assert TuneConfig(n_trials="4", study_name="").study_name is None


@pytest.mark.parametrize(
    "cls, field, value, message",
    [
        (TuneConfig, "n_trials", "four", "n_trials: must be a number"),
        (TuneConfig, "n_trials", 0, "n_trials: must be in"),
        (TrainConfig, "max_steps", 2.5, "max_steps: must be an integer"),
        (TrainConfig, "lora_r", -1, "lora_r: must be in"),
        (TrainConfig, "lora_alpha", 0, "lora_alpha: must be positive"),
        (TrainConfig, "lora_dropout", 1.5, "lora_dropout: must be in"),
        (TrainConfig, "learning_rate", "nan", "learning_rate: must be a finite number"),
        (DataConfig, "limit", 1, "limit: must be at least 2"),
        (TuneConfig, "lr_range", "1e-2,1e-4", "lr_range"),
    ],
)
def test_bad_parameters_name_the_field(cls, field, value, message):
    with pytest.raises(SafetyLabError) as info:
        cls(**{field: value})
    assert message in str(info.value)


# ---------------------------------------------------------------- one parser path: dataclass fields -> flags


def _parse(*argv: str) -> dict:
    return {k: v for k, v in vars(cli.build_parser().parse_args(list(argv))).items() if k not in ("func", "command")}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--force"], True),
        (["--force", "true"], True),
        (["--force", "false"], False),
        (["--force", "yes"], True),
        (["--force", "--reason", "hotfix"], True),
        ([], False),
    ],
)
def test_boolean_flags_work_bare_and_with_a_value(argv, expected):
    opts = from_args(cli.PromoteOptions, _parse("promote", "--model-name", "m", "--version", "1", *argv))
    assert opts.force is expected and opts.version == "1"


def test_mlflow_float_integers_and_empty_values_reach_the_stage_defaults():
    args = _parse(
        "finetune",
        "--n-trials",
        "4.0",
        "--max-steps",
        "2.0",
        "--limit",
        "",
        "--study-name",
        "",
        "--eval-limit",
        "",
        "--evaluate",
        "false",
        "--register",
    )
    data, train, tune = (from_args(cls, args) for cls in (DataConfig, TrainConfig, TuneConfig))
    assert (tune.n_trials, train.max_steps, data.limit, tune.study_name) == (4, 2, None, None)
    run = from_args(cli.RunConfig, args)
    assert (run.evaluate, run.register) == (False, True)
    assert cli.EVAL_AFTER_TRAINING.values(args) == {}  # "" = not set: the evaluation keeps its default (all items)


def test_a_flag_shared_by_stages_is_declared_once_and_sets_each_stage():
    args = _parse(
        "finetune",
        "--seed",
        "7",
        "--batch-size",
        "4",
        "--eval-batch-size",
        "16",
        "--limit",
        "12",
        "--eval-limit",
        "5",
        "--device",
        "cpu",
    )
    assert {from_args(cls, args).seed for cls in (DataConfig, TrainConfig, TuneConfig)} == {7}
    assert from_args(TrainConfig, args).batch_size == 4 and from_args(DataConfig, args).limit == 12
    assert cli.EVAL_AFTER_TRAINING.values(args) == {"limit": "5", "batch_size": "16"}
    assert EvalConfig(**cli.EVAL_AFTER_TRAINING.values(args)).device == "auto"  # --device is the training one
    flags = [a.option_strings[0] for a in _subparser("finetune")._actions if a.option_strings]
    assert len(flags) == len(set(flags)) and "--model-uri" not in flags


def _subparser(name: str):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def test_every_field_of_every_stage_is_a_flag():
    for name, (_, _, groups) in cli.COMMANDS.items():
        flags = {a.dest for a in _subparser(name)._actions}
        for group in groups:
            group = group if isinstance(group, Group) else Group(group)
            assert set(group.dests().values()) <= flags, name


@stage
class _Toy(Stage):
    """A stage as another module would extend it: new fields become flags and are coerced with no parser edit."""

    precision: Literal["fp32", "bf16", "int8"] = Field("fp32", description="weights at 100%")
    resume: bool = Field(False, description="continue a study")
    budget: int | None = Field(None, description="trial budget")
    weight: float = 1.0
    ratio: str = "int"  # a str field stays a string (no matching of type-hint text)
    anything: int | str = "x"


def test_new_dataclass_fields_become_flags_and_are_coerced_by_type():
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Toy)
    toy = from_args(
        _Toy,
        vars(
            parser.parse_args(
                [
                    "--precision",
                    "int8",
                    "--resume",
                    "--budget",
                    "3.0",
                    "--weight",
                    "2",
                    "--ratio",
                    "7",
                    "--anything",
                    "5",
                ]
            )
        ),
    )
    assert (toy.precision, toy.resume, toy.budget, toy.weight, toy.ratio, toy.anything) == (
        "int8",
        True,
        3,
        2.0,
        "7",
        "5",
    )
    assert "weights at 100%" in parser.format_help()
    with pytest.raises(SafetyLabError, match="^precision: must be fp32, bf16 or int8, got 'fp8'$"):
        from_args(_Toy, vars(parser.parse_args(["--precision", "fp8"])))
    assert _Toy(budget="").budget is None and _Toy(precision="int8").precision == "int8"


@pytest.mark.parametrize(
    "value, hint, expected",
    [
        ("4.0", int, 4),
        (4.0, int, 4),
        ("0.5", float, 0.5),
        ("false", bool, False),
        ("", int | None, None),
        ("none", str | None, None),
        ("int8", Literal["int8"], "int8"),
        ("12", str, "12"),
    ],
)
def test_one_before_validator(value, hint, expected):
    assert before(value, "x", hint) == expected and type(before(value, "x", hint)) is type(expected)


def test_bare_bool_rejects_a_non_boolean_value():
    with pytest.raises(SafetyLabError, match="force: must be true or false"):
        from_args(cli.PromoteOptions, _parse("promote", "--model-name", "m", "--force", "maybe"))


def _mlproject_argv(entry: dict) -> list[str]:
    values = {k: "" if spec.get("default") is None else str(spec["default"]) for k, spec in entry["parameters"].items()}
    values = {k: v or ("study" if k == "study_name" else "m" if k == "model_name" else v) for k, v in values.items()}
    values["version"] = "1"
    command = shlex.split(entry["command"].format(**{k: shlex.quote(v) for k, v in values.items()}))
    assert command[:3] == ["python", "-m", "safety_lab"]
    return command[3:]  # "<command> --flag value ..."


@pytest.mark.parametrize("entry", ["finetune", "register_best", "evaluate", "promote", "experiment"])
def test_mlproject_commands_parse_with_their_defaults(entry):
    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][entry]
    command = entry.replace("_", "-")
    argv = _mlproject_argv(spec)
    assert argv[0] == command
    assert {f"--{name.replace('_', '-')}" for name in spec["parameters"]} == {a for a in argv if a.startswith("--")}
    args = _parse(*argv)
    for group in cli.COMMANDS[command][2]:
        group = group if isinstance(group, Group) else Group(group)
        if group.cls is EvalConfig and group.prefix:
            EvalConfig(**group.values(args))
        else:
            built = group.build(args)
            assert dataclasses.is_dataclass(built)
    if entry == "finetune":
        assert from_args(TuneConfig, args).n_trials == 2 and from_args(DataConfig, args).limit is None


def test_debug_is_accepted_before_or_after_the_command():
    assert cli.build_parser().parse_args(["--debug", "lineage", "--model-name", "m"]).debug is True
    assert cli.build_parser().parse_args(["lineage", "--model-name", "m", "--debug"]).debug is True
    assert cli.build_parser().parse_args(["lineage", "--model-name", "m"]).debug is False


def test_the_entry_points_run_the_package_with_no_shim_scripts():
    out = subprocess.run([sys.executable, "-m", "safety_lab", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert all(name in out.stdout for name in cli.COMMANDS)
    assert not list((ROOT / "pipelines").glob("*.py"))


def test_stage_errors_are_one_line_naming_the_field():
    with pytest.raises(SafetyLabError, match="^target_modules: input should be a valid string, got 5$"):
        TrainConfig(target_modules=5)
    with pytest.raises(SafetyLabError, match="^model_name: is required$"):
        cli.ModelOptions()
    with pytest.raises(SafetyLabError, match=r"^val_fraction: must be in \(0, 0.9\), got 1.0$"):
        DataConfig(val_fraction=1)
    assert to_params(RunConfig())[param_key(RunConfig, "base_model")] == "smollm2-135m-instruct"
    assert param_key(EvalConfig, "limit") == "eval.limit"  # each stage names its prefix; none is derived


@pytest.mark.parametrize("cls", [TrainConfig, DataConfig, EvalConfig, RunConfig, DpoConfig])
def test_an_unknown_option_is_an_error_not_silently_dropped(cls):
    with pytest.raises(SafetyLabError, match=f"^lora_rank: is not an option of {cls.__name__}$"):
        cls(lora_rank=4)  # a misspelling of lora_r would otherwise train with the default
    with pytest.raises(SafetyLabError, match="^lora_rank: is not an option"):
        dataclasses.replace(cls(), lora_rank=4)


def test_the_eval_config_reads_no_file_its_users_do(tmp_path):
    bad = tmp_path / "benign.csv"
    bad.write_text("id,text\n1,hello\n")
    cfg = EvalConfig(benign_prompts=str(bad))  # the constructor checks that the file exists, and reads nothing
    with pytest.raises(SafetyLabError, match="needs a non-empty 'prompt'"):
        cfg.check_files()  # what evaluate, finetune and experiment call before any model loads
