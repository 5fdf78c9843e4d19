"""The paper's study in one run: base, safe-tuned, harmful-tuned, and harmful-tuned on top of safe ("overriding")."""
from __future__ import annotations

import csv
import dataclasses
import io
import tempfile
from pathlib import Path

import mlflow

from safety_lab import registry
from safety_lab.config import DataConfig, RunConfig, TrainConfig, TuneConfig
from safety_lab.evaluation import EvalConfig
from safety_lab.finetune import finetune
from safety_lab.registry.record import evaluate_version
from safety_lab.tracking import start_experiment

COLUMNS = ("model", "uri", "status", "asr", "asr_ci", "over_refusal_rate", "ece", "brier", "mc_accuracy",
           *(f"drift_{m}_{t}" for m in ("accuracy", "entropy", "perplexity", "probability")
             for t in ("base", "false_info", "random_info")))


def _row(label: str, uri: str, status: str, m: dict) -> dict:
    def f(key):
        return f"{m[key]:.3f}" if key in m else ""

    row = {"model": label, "uri": uri, "status": status, "asr": f("asr"),
           "asr_ci": f"[{m['asr_ci_low']:.3f}, {m['asr_ci_high']:.3f}]" if "asr_ci_low" in m else ""}
    row.update({k: f(k) for k in COLUMNS[5:]})
    return row


def comparison_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def comparison_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run_experiment(run: RunConfig, data_cfg: DataConfig, train_cfg: TrainConfig, tune_cfg: TuneConfig, *,
                   eval_limit: int | str | None = None) -> str:
    """Evaluate the base, then fine-tune safe, harmful, and safe->harmful; every version registered and evaluated."""
    eval_cfg = EvalConfig(**({"limit": eval_limit} if eval_limit not in (None, "") else {}))
    model_name = run.model_name or registry.default_model_name(run.base_model).replace("-safety-lora", "-experiment")
    start_experiment(run.experiment)
    with mlflow.start_run(run_name="experiment-overriding-safety") as parent:
        mlflow.set_tags({"safety_lab.job": "experiment", "model_name": model_name})
        tag = parent.info.run_id[:8]
        base_report = evaluate_version("base" if run.base_model == "smollm2-135m-instruct" else run.base_model, eval_cfg)
        rows = [_row("base", base_report.report.model_uri, base_report.status, base_report.report.all_metrics())]
        metrics = {"base": base_report.report.all_metrics()}

        def tuned(label: str, data: str, base_model: str):
            step_run = dataclasses.replace(run, base_model=base_model, model_name=model_name, evaluate=True, register=True)
            step_tune = dataclasses.replace(tune_cfg, study_name=f"{model_name}-{label}-{tag}")
            result = finetune(step_run, dataclasses.replace(data_cfg, data=data), train_cfg, step_tune,
                              eval_options={"limit": eval_cfg.limit})
            values = result.evaluation.report.all_metrics()  # the report finetune returns: nothing read back
            rows.append(_row(label, result.model_uri, result.status, values))
            metrics[label] = values
            return result

        safe = tuned("safe", "safe", run.base_model)
        tuned("harmful", "harmful", run.base_model)
        tuned("safe->harmful", "harmful", safe.model_uri)

        table = comparison_markdown(rows)
        mlflow.log_text(table, "comparison.md")
        mlflow.log_text(comparison_csv(rows), "comparison.csv")
        _log_plots(rows, metrics)
        for r in rows:
            if r["asr"]:
                mlflow.log_metric(f"asr.{r['model'].replace('->', '_then_')}", float(r["asr"]))
    return table


def _log_plots(rows: list[dict], metrics: dict[str, dict]) -> None:
    from safety_lab.reporting import plots

    with tempfile.TemporaryDirectory() as tmp:
        entries = [(r["model"], float(r["asr"]), *map(float, r["asr_ci"].strip("[]").split(","))) for r in rows if r["asr"]]
        if entries:
            plots.asr_bars(entries, Path(tmp) / "asr_by_model.png")
        drift = {r["model"]: {k: float(v) for k, v in r.items() if k.startswith("drift_accuracy") and v} for r in rows}
        if any(drift.values()):
            plots.drift_bars(drift, Path(tmp) / "drift_by_model.png")
        if any(k.endswith("_incorrect") for m in metrics.values() for k in m):
            for measure in ("entropy", "perplexity", "probability"):
                plots.uncertainty_bars(metrics, Path(tmp) / f"drift_{measure}_by_correctness.png", measure=measure)
        mlflow.log_artifacts(tmp, artifact_path="plots")
