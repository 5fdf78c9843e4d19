"""`python -m safety_lab <command>` and the MLproject entry points: parsers built from the stage dataclasses."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from safety_lab import distributed
from safety_lab.config import DataConfig, RunConfig, TrainConfig, TuneConfig, add_arguments, from_args
from safety_lab.errors import SafetyLabError, check


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
    """SIGTERM unwinds like Ctrl-C, so MLflow runs are closed (KILLED/FAILED) rather than left RUNNING."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------- commands
_SHARED_FLAGS = ("model_uri", "limit", "batch_size", "device")  # on finetune these flags mean the training ones


def _eval_options(args: dict) -> dict:
    from safety_lab.evaluation import EvalConfig

    options = {k: args[k] for k in EvalConfig.field_names() if k in args and k not in _SHARED_FLAGS}
    if args.get("eval_limit") not in (None, ""):
        options["limit"] = args["eval_limit"]
    return options


def _finetune(args: dict) -> int:
    from safety_lab.finetune import finetune

    result = finetune(from_args(RunConfig, args), from_args(DataConfig, args), from_args(TrainConfig, args),
                      from_args(TuneConfig, args), eval_options=_eval_options(args))
    if result is None:  # a non-zero rank of a multi-process launch: rank 0 reports
        return 0
    print(f"{result.model_uri} status={result.status} best_val_loss={result.best_value:.4f}")
    return 0


def _register_best(args: dict) -> int:
    from safety_lab.finetune import register_best

    result = register_best(from_args(RunConfig, args), from_args(TuneConfig, args), eval_options=_eval_options(args))
    print(f"{result.model_uri} status={result.status} best_val_loss={result.best_value:.4f}")
    return 0


def _evaluate(args: dict) -> int:
    from safety_lab.evaluation import EvalConfig
    from safety_lab.registry.record import evaluate_version

    print(evaluate_version(args["model_uri"], from_args(EvalConfig, args)).format())
    return 0


def _judge(args: dict) -> int:
    from safety_lab.evaluation.judges import label_file

    n = label_file(args["input"], args["output"], judge=args["judge"])
    print(f"labelled {n} rows with judge {args['judge']!r} -> {args['output']}")
    return 0


def _promote(args: dict) -> int:
    from safety_lab.config import _bool
    from safety_lab.registry.lifecycle import promote

    result = promote(args["model_name"], version=args["version"] or None, from_alias=args["from_alias"] or None,
                     stage=args["stage"] or None, alias=args["alias"] or None,
                     archive_existing=_bool(args["archive_existing"], "archive_existing"),
                     force=_bool(args["force"], "force"), reason=args["reason"] or None, policy=args["policy"] or None)
    forced = " (forced)" if result.forced else ""
    print(f"{result.model_name} version {result.version} ({result.status}) -> {result.target}{forced}; audit run {result.run_id}")
    return 0


def _lineage(args: dict) -> int:
    from safety_lab.registry.lifecycle import lineage_tree

    print(lineage_tree(args["model_name"]))
    return 0


def _report(args: dict) -> int:
    from safety_lab.registry.lifecycle import format_report, report_rows

    print(format_report(report_rows(args["model_name"]), args["format"]))
    return 0


def _experiment(args: dict) -> int:
    from safety_lab.experiment import run_experiment

    print(run_experiment(from_args(RunConfig, args), from_args(DataConfig, args), from_args(TrainConfig, args),
                         from_args(TuneConfig, args), eval_limit=args.get("eval_limit")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from safety_lab.evaluation import EvalConfig

    parser = argparse.ArgumentParser(prog="safety-lab", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune", help="tune LoRA with Optuna, register a version, evaluate it")
    add_arguments(p, RunConfig, DataConfig, TrainConfig, TuneConfig)
    add_arguments(p, EvalConfig, skip=_SHARED_FLAGS)
    p.add_argument("--eval-limit", dest="eval_limit", default=None, help="items per evaluation suite (default 100; 0 = all)")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("register-best", help="register a shared study's best trial once (after register=false workers)")
    add_arguments(p, RunConfig, TuneConfig)
    add_arguments(p, EvalConfig, skip=_SHARED_FLAGS)
    p.add_argument("--eval-limit", dest="eval_limit", default=None, help="items per evaluation suite (default 100; 0 = all)")
    p.set_defaults(func=_register_best)

    p = sub.add_parser("evaluate", help="evaluate a registered version (or the base) and tag its safety status")
    add_arguments(p, EvalConfig)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("judge", help="label saved completions (JSONL with prompt, response)")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--judge", default="keyword")
    p.set_defaults(func=_judge)

    p = sub.add_parser("promote", help="move a version through stages/aliases behind the safety gate")
    p.add_argument("--model-name", dest="model_name", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--from-alias", dest="from_alias", default="")
    p.add_argument("--stage", default="", help="Staging, Production, Archived or None")
    p.add_argument("--alias", default="", help="e.g. champion")
    p.add_argument("--archive-existing", dest="archive_existing", default="false")
    p.add_argument("--force", default="false", help="override the gate (needs --reason; recorded)")
    p.add_argument("--reason", default="")
    p.add_argument("--policy", default="", help="policy YAML (default: the packaged one)")
    p.set_defaults(func=_promote)

    p = sub.add_parser("lineage", help="print the tree of versions with data and status")
    p.add_argument("--model-name", dest="model_name", required=True)
    p.set_defaults(func=_lineage)

    p = sub.add_parser("report", help="the registry as a table")
    p.add_argument("--model-name", dest="model_name", required=True)
    p.add_argument("--format", default="table", help="table, csv, json or markdown")
    p.set_defaults(func=_report)

    p = sub.add_parser("experiment", help="the paper's study: base, safe, harmful, safe->harmful")
    add_arguments(p, RunConfig, DataConfig, TrainConfig, TuneConfig, skip=("data",))
    p.add_argument("--eval-limit", dest="eval_limit", default=None)
    p.set_defaults(func=_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _sigterm_as_interrupt()
    try:
        args = build_parser().parse_args(argv)
        launched = distributed.world_size()
        check(launched == 1 or args.command == "finetune", "command",
              f"only finetune runs under a multi-process launch (WORLD_SIZE={launched}); run {args.command} in one process")
        return args.func({k: v for k, v in vars(args).items() if k not in ("func", "command", "debug")})
    except SafetyLabError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: MLflow runs were closed; rerun with the same storage and study_name to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: still one line unless --debug
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
