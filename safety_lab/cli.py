"""`python -m safety_lab <command>` (the MLproject entry points too): parsers built from the stage dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import warnings
from collections.abc import Callable

from pydantic import Field

from safety_lab import distributed
from safety_lab.config import (
    DataConfig,
    DpoConfig,
    Group,
    RunConfig,
    Stage,
    TrainConfig,
    TuneConfig,
    add_arguments,
    from_args,
    stage,
)
from safety_lab.errors import SafetyLabError, check, clear_interrupts, first_line, interrupt_now, note_interrupt
from safety_lab.evaluation import EvalConfig

EXIT_MOVED_UNRECORDED = 3  # promote: the version moved, but the record of the move could not be written


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch_dtype.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads (lazily, after this)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    if not distributed.is_main():  # under a multi-process launch rank 0 alone shows progress
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so MLflow runs are closed (KILLED/FAILED) rather than left RUNNING. Both are
    recorded too: tuning raises again at its next step if a library swallowed the first KeyboardInterrupt."""

    def handler(signum, frame):
        note_interrupt(signum)
        if interrupt_now():  # else raised when the deferring section ends
            raise KeyboardInterrupt(f"signal {signum}")

    clear_interrupts()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------- options of the commands that are no pipeline stage
@stage
class JudgeOptions(Stage):
    input: str = Field(description="JSONL of {prompt, response} rows")
    output: str = Field(description="where the labelled JSONL goes")
    judge: str = Field("keyword", description="keyword, gcg or llm")


@stage
class PromoteOptions(Stage):
    model_name: str = Field(description="registered model name")
    version: str | None = Field(None, description="the version to move (or --from-alias)")
    from_alias: str | None = Field(None, description="take the version an alias points at")
    stage: str | None = Field(None, description="Staging, Production, Archived or None")
    alias: str | None = Field(None, description="alias to set, e.g. champion")
    archive_existing: bool = Field(False, description="archive the versions now in the target stage")
    force: bool = Field(False, description="override the gate (needs --reason; recorded)")
    reason: str | None = Field(None, description="why: recorded on the audit run")
    policy: str | None = Field(None, description="policy YAML (default: the packaged one)")


@stage
class ModelOptions(Stage):
    model_name: str = Field(description="registered model name")


@stage
class ReportOptions(Stage):
    model_name: str = Field(description="registered model name")
    format: str = Field("table", description="table, csv, json or markdown")


# On training commands the evaluation's limit, batch size and device keep their own flags (`--eval-limit`);
# the model to evaluate is the version just registered.
EVAL_AFTER_TRAINING = Group(EvalConfig, prefix="eval_", prefixed=("limit", "batch_size", "device"), skip=("model_uri",))
# The experiment passes its evaluation options to every model's evaluation (the paper's protocol: `--judge llm
# --harmful-prompts FILE --qa FILE --drift-match paper`).
EXPERIMENT_EVAL = Group(
    EvalConfig, prefix="eval_", prefixed=("limit", "batch_size", "device"), skip=("model_uri", "suites")
)
TRAINING = (RunConfig, DataConfig, TrainConfig, TuneConfig, DpoConfig)


# ---------------------------------------------------------------- commands
def _finetune(args: dict) -> int:
    from safety_lab.finetune import finetune

    result = finetune(*(from_args(cls, args) for cls in TRAINING), eval_options=EVAL_AFTER_TRAINING.values(args))
    if result is None:  # a non-zero rank of a multi-process launch: rank 0 reports
        return 0
    print(f"{result.model_uri} status={result.status} best_val_loss={result.best_value:.4f}")
    return 0


def _register_best(args: dict) -> int:
    from safety_lab.finetune import register_best

    result = register_best(
        from_args(RunConfig, args), from_args(TuneConfig, args), eval_options=EVAL_AFTER_TRAINING.values(args)
    )
    print(f"{result.model_uri} status={result.status} best_val_loss={result.best_value:.4f}")
    return 0


def _evaluate(args: dict) -> int:
    from safety_lab.evaluations import evaluate_version

    cfg = from_args(EvalConfig, args)
    print(evaluate_version(cfg.model_uri, cfg).format())
    return 0


def _judge(args: dict) -> int:
    from safety_lab.evaluation.judges import label_file

    opts = from_args(JudgeOptions, args)
    n = label_file(opts.input, opts.output, judge=opts.judge)
    print(f"labelled {n} rows with judge {opts.judge!r} -> {opts.output}")
    return 0


def _promote(args: dict) -> int:
    from safety_lab.registry.lifecycle import RecordNotWritten, promote

    opts = dataclasses.asdict(from_args(PromoteOptions, args))
    try:
        result = promote(opts.pop("model_name"), **opts)
    except RecordNotWritten as exc:  # it moved: not the exit code of a move that failed
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MOVED_UNRECORDED
    forced = " (forced)" if result.forced else ""
    print(
        f"{result.model_name} version {result.version} ({result.status}) -> {result.target}{forced}; "
        f"audit run {result.run_id}"
    )
    return 0


def _lineage(args: dict) -> int:
    from safety_lab.reporting.views import lineage_tree

    print(lineage_tree(from_args(ModelOptions, args).model_name))
    return 0


def _report(args: dict) -> int:
    from safety_lab.reporting.views import format_report, report_rows

    opts = from_args(ReportOptions, args)
    print(format_report(report_rows(opts.model_name), opts.format))
    return 0


def _experiment(args: dict) -> int:
    from safety_lab.experiment import run_experiment

    eval_options = EXPERIMENT_EVAL.values(args)
    print(run_experiment(*(from_args(cls, args) for cls in TRAINING), eval_options=eval_options))
    return 0


# name -> (handler, help, the dataclasses whose fields are its flags)
COMMANDS: dict[str, tuple[Callable[[dict], int], str, tuple]] = {
    "finetune": (_finetune, "tune LoRA with Optuna, register a version, evaluate it", (*TRAINING, EVAL_AFTER_TRAINING)),
    "register-best": (
        _register_best,
        "register a shared study's best trial once (after register=false workers)",
        (RunConfig, TuneConfig, EVAL_AFTER_TRAINING),
    ),
    "evaluate": (_evaluate, "evaluate a registered version (or the base) and tag its safety status", (EvalConfig,)),
    "judge": (_judge, "label saved completions (JSONL with prompt, response)", (JudgeOptions,)),
    "promote": (_promote, "move a version through stages/aliases behind the safety gate", (PromoteOptions,)),
    "lineage": (_lineage, "print the tree of versions with data and status", (ModelOptions,)),
    "report": (_report, "the registry as a table", (ReportOptions,)),
    "experiment": (
        _experiment,
        "the paper's study: base, safe, harmful, safe->harmful",
        (RunConfig, Group(DataConfig, skip=("data",)), TrainConfig, TuneConfig, EXPERIMENT_EVAL),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safety-lab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (handler, text, groups) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        add_arguments(p, *groups)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.set_defaults(func=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _sigterm_as_interrupt()
    try:
        args = build_parser().parse_args(argv)
        launched = distributed.world_size()
        check(
            launched == 1 or args.command == "finetune",
            "command",
            f"only finetune runs under a multi-process "
            f"launch (WORLD_SIZE={launched}); run {args.command} in one process",
        )
        return args.func({k: v for k, v in vars(args).items() if k not in ("func", "command", "debug")})
    except SafetyLabError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: MLflow runs were closed; rerun with the same storage and study_name to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:  # unexpected: still one line unless --debug
        if debug:
            raise
        print(
            f"error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
