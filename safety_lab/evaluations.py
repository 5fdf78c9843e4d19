"""Evaluate a registered version (or a base model) and record it: evaluate, render the figures and the safety card,
and have ``registry.record`` write them in its order (run, tables, figures, card, then the version's tags).

Above both the registry and reporting: the registry writes what this module rendered and imports no renderer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow

from safety_lab.evaluation import METRICS, EvalConfig, EvalReport, evaluate
from safety_lab.models import DEFAULT_MODEL, load_model, resolve_version
from safety_lab.policy import Decision, decide, load_policy
from safety_lab.registry import record
from safety_lab.registry.overrides import override_history
from safety_lab.reporting import plots
from safety_lab.reporting.cards import safety_card
from safety_lab.tracking import tracked_run


@dataclasses.dataclass
class Recorded:
    """An evaluation as recorded: the report, the policy's decision and the run that holds the evidence."""

    report: EvalReport
    decision: Decision
    run_id: str

    @property
    def status(self) -> str:
        return self.decision.status

    @property
    def summary(self) -> str:
        """The reasons that decided the status."""
        return self.decision.summary

    def format(self) -> str:
        values = self.report.all_metrics()
        lines = [f"{self.report.model_uri}: safety.status={self.status}"]
        for spec in METRICS.headline(values):
            ref = self.report.reference_metrics.get(spec.name)
            lines.append(
                f"  {spec.label:32s} {spec.format(values[spec.name])}"
                + (f"  (reference {spec.format(ref)})" if ref is not None else "")
            )
        return "\n".join(lines + [f"  - {r}" for r in self.decision.reasons])


def evaluate_version(model_uri: str, cfg: EvalConfig, *, loaded=None, timings=None) -> Recorded:
    """Evaluate ``model_uri`` (a registered version or a base spec) in its own run; tag a version with its status.

    ``loaded``: the model already in memory (finetune passes the reloaded version), else it is loaded here."""
    policy = load_policy(cfg.policy)  # a bad policy or input file fails before any model is loaded
    cfg.check_files()
    cfg = dataclasses.replace(cfg, model_uri=model_uri)
    mv = resolve_version(model_uri) if model_uri.startswith("models:/") else None
    spec = f"models:/{mv.name}/{mv.version}" if mv else (DEFAULT_MODEL if model_uri == "base" else model_uri)
    reference, base = record.references_of(mv) if mv else (None, None)
    if not mlflow.active_run():
        record.use_experiment_of(mv)
    run_name = f"evaluate-{mv.name}-v{mv.version}" if mv else f"evaluate-{Path(spec).name}"
    with tracked_run(run_name=run_name, nested=mlflow.active_run() is not None) as run:
        record.start_record(mv, spec, reference, cfg, policy)
        loaded = loaded if loaded is not None else load_model(spec, precision=cfg.resolved_precision())
        loaded.spec = spec
        report = evaluate(loaded, cfg, reference=reference, base=base, timings=timings)
        split = record.eval_split_of(cfg)
        decision = decide(report.all_metrics(), policy, references=mv is not None, eval_split=split)
        record.log_results(report, mv)
        _log_card(report, decision, mv)
        record.end_record(mv, report, decision, policy, run.info.run_id)
    if mv is not None:  # the run is FINISHED: only now may the version claim its status
        record.claim_status(mv, decision.status)
    return Recorded(report, decision, run.info.run_id)


def _figures(report: EvalReport) -> dict:
    """name -> matplotlib Figure: ASR with its interval, the reliability diagram, drift accuracy by prompt type."""
    m, r, figures = report.metrics, report.reference_metrics, {}
    if "asr" in m:
        entries = [("this model", m["asr"], m["asr_ci_low"], m["asr_ci_high"])]
        if "asr" in r:
            entries.append(("reference", r["asr"], r["asr_ci_low"], r["asr_ci_high"]))
        figures["asr"] = plots.asr_bars(entries)
    curve = report.suites["asr"].extra.get("refusal_curve") if "asr" in report.suites else None
    if curve:
        figures["refusal_curve"] = plots.refusal_curve(curve["points"], chosen=curve["chosen"])
    if "calibration" in report.suites:
        ece = METRICS.get("ece").format(m.get("ece"))
        figures["reliability"] = plots.reliability_diagram(
            report.suites["calibration"].extra["curve"], title=f"ECE {ece}"
        )
    if "drift" in report.suites:
        bars = {"this model": m, **({"reference": r} if any(k.startswith("drift_") for k in r) else {})}
        figures["drift"] = plots.drift_bars(bars)
    return figures


def _log_card(report: EvalReport, decision: Decision, mv) -> None:
    """Render the figures and the safety card (Markdown + HTML, listing the version's overrides recorded so far);
    ``record.log_card`` writes them with summary.json under evaluation/."""
    figures = _figures(report)
    summary = record.summary_of(report, decision)
    lineage = record.lineage_of(mv, report)
    title = f"{lineage['model_name']} v{lineage['version']}" if "version" in lineage else report.model_uri
    markdown, page = safety_card(
        summary,
        items={k: v.rows for k, v in report.suites.items()},
        plots=figures,
        lineage=lineage,
        title=f"Safety card: {title}",
        overrides=override_history(mv.tags or {}) if mv else [],
    )
    record.log_card(figures, summary, markdown, page)
