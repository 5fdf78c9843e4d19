"""The paper's study in one run: base, safe-tuned, harmful-tuned, and harmful-tuned on top of safe ("overriding")."""

from __future__ import annotations

import dataclasses

import mlflow

from safety_lab import registry
from safety_lab.config import DataConfig, DpoConfig, RunConfig, TrainConfig, TuneConfig
from safety_lab.evaluation import EvalConfig
from safety_lab.evaluations import evaluate_version
from safety_lab.finetune import finetune
from safety_lab.reporting import plots
from safety_lab.reporting.tables import headline_columns, metric_cells, render
from safety_lab.tracking import start_experiment, tracked_run

ID_COLUMNS = ("model", "uri", "status")


def columns() -> tuple[str, ...]:
    """The comparison table's columns: the model, then every headline metric (and its interval) from the specs."""
    return (*ID_COLUMNS, *(c.key for c in headline_columns()))


def _row(label: str, uri: str, status: str, m: dict) -> dict:
    return {"model": label, "uri": uri, "status": status, **metric_cells(m)}


def run_experiment(
    run: RunConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    dpo_cfg: DpoConfig = DpoConfig(),  # noqa: B008 (never mutated: the stage off)
    *,
    eval_options: dict | None = None,
) -> str:
    """Evaluate the base, then fine-tune safe, harmful, and safe->harmful; every version registered and evaluated.

    `eval_options` (EvalConfig fields: judge, harmful_prompts, qa, drift_match, limit, ...) apply to every
    model's evaluation alike, the base's included."""
    eval_options = dict(eval_options or {})
    eval_cfg = EvalConfig(**eval_options)  # checked (policy and files included) before anything trains
    eval_cfg.check_files()
    model_name = run.model_name or registry.default_model_name(run.base_model).replace("-safety-lora", "-experiment")
    start_experiment(run.experiment)
    with tracked_run(run_name="experiment-overriding-safety") as parent:
        mlflow.set_tags({"safety_lab.job": "experiment", "model_name": model_name})
        tag = parent.info.run_id[:8]
        base_report = evaluate_version(
            "base" if run.base_model == "smollm2-135m-instruct" else run.base_model, eval_cfg
        )
        rows = [_row("base", base_report.report.model_uri, base_report.status, base_report.report.all_metrics())]
        metrics = {"base": base_report.report.all_metrics()}

        def tuned(label: str, data: str, base_model: str):
            step_run = dataclasses.replace(
                run, base_model=base_model, model_name=model_name, evaluate=True, register=True
            )
            step_tune = dataclasses.replace(tune_cfg, study_name=f"{model_name}-{label}-{tag}")
            result = finetune(
                step_run,
                dataclasses.replace(data_cfg, data=data),
                train_cfg,
                step_tune,
                dpo_cfg,
                eval_options=eval_options,
            )
            values = result.evaluation.report.all_metrics()  # the report finetune returns: nothing read back
            rows.append(_row(label, result.model_uri, result.status, values))
            metrics[label] = values
            return result

        safe = tuned("safe", "safe", run.base_model)
        tuned("harmful", "harmful", run.base_model)
        tuned("safe->harmful", "harmful", safe.model_uri)

        table = render(rows, "markdown", columns())
        mlflow.log_text(table, "comparison.md")
        mlflow.log_text(render(rows, "csv", columns()) + "\n", "comparison.csv")
        _log_plots(metrics)
        for label, m in metrics.items():
            if "asr" in m:
                mlflow.log_metric(f"asr.{label.replace('->', '_then_')}", m["asr"])
    return table


def _log_plots(metrics: dict[str, dict]) -> None:
    """The comparison figures, from each model's metric floats, logged with mlflow.log_figure under plots/."""
    entries = [
        (label, m["asr"], m["asr_ci_low"], m["asr_ci_high"])
        for label, m in metrics.items()
        if {"asr", "asr_ci_low", "asr_ci_high"} <= m.keys()
    ]
    if entries:
        mlflow.log_figure(plots.asr_bars(entries), "plots/asr_by_model.png")
    drift = {label: {k: v for k, v in m.items() if k.startswith("drift_accuracy")} for label, m in metrics.items()}
    if any(drift.values()):
        mlflow.log_figure(plots.drift_bars(drift), "plots/drift_by_model.png")
    if any(k.endswith("_incorrect") for m in metrics.values() for k in m):
        for measure in ("entropy", "perplexity", "probability"):
            fig = plots.uncertainty_bars(metrics, measure=measure)
            mlflow.log_figure(fig, f"plots/drift_{measure}_by_correctness.png")
