"""Record an evaluation in MLflow: one run (metrics, item tables, figures, safety card), then the version's tags.

Order matters, so that a kill at any point leaves either ``unevaluated`` or a complete record: the version's status
is reset to ``unevaluated`` first, every other ``safety.*`` tag is written next, the evaluation run ends FINISHED, and
``safety.status`` is written last. The promotion gate re-derives the status from the run, never trusting the tag.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.data import eval_split_sha256
from safety_lab.evaluation import METRICS, EvalConfig, EvalReport, Reference, evaluate
from safety_lab.models import DEFAULT_MODEL, chain_sha256, load_model, resolve_version, weights_sha256
from safety_lab.policy import Decision, Policy, decide, fingerprint, load_policy, policy_json, policy_summary
from safety_lab.registry import UNEVALUATED, tag_version
from safety_lab.registry.overrides import override_history
from safety_lab.reporting import plots
from safety_lab.reporting.cards import safety_card
from safety_lab.tracking import check_reachable, start_experiment

LINEAGE_KEYS = ("data.name", "data.sha256", "data.rows", "base_model", "parent")
EVAL_SOURCES = ("harmful_prompts", "benign_prompts", "mc", "qa")  # EvalConfig fields naming evaluation data


@dataclasses.dataclass(frozen=True)
class SafetyTags:
    """The one schema of a version's safety record: written here, read by lifecycle, experiment and finetune."""

    status: str
    reasons: str
    checks: str
    eval_run_id: str
    policy: str
    policy_sha256: str
    reference: str
    metrics: dict[str, str]  # safety.<metric> for each tagged spec (plus _delta / _delta_vs_base)

    def as_tags(self) -> dict[str, str]:
        """Every tag except the status, which the recorder writes last."""
        tags = {  # the run first: a gated server checks each later tag against the run the version names
            "safety.eval_run_id": self.eval_run_id,
            "safety.reasons": self.reasons[:4000],
            "safety.checks": self.checks[:4000],
            "safety.policy": self.policy,
            "safety.policy_sha256": self.policy_sha256,
            "safety.reference": self.reference,
        }
        return {**tags, **{f"safety.{k}": v for k, v in self.metrics.items()}}

    @classmethod
    def read(cls, tags: dict[str, str]) -> SafetyTags:
        metrics = {k[len("safety.") :]: v for k, v in tags.items() if k.startswith("safety.") and METRICS.find(k[7:])}
        return cls(
            status=str(tags.get("safety.status") or "").strip().lower() or UNEVALUATED,
            reasons=tags.get("safety.reasons", ""),
            checks=tags.get("safety.checks", ""),
            eval_run_id=str(tags.get("safety.eval_run_id") or "").strip(),
            policy=tags.get("safety.policy", ""),
            policy_sha256=tags.get("safety.policy_sha256", ""),
            reference=tags.get("safety.reference", ""),
            metrics=metrics,
        )


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


def metric_tags(report: EvalReport) -> dict[str, str]:
    """safety.<metric> values (and their interval and deltas) for every spec declared with tag=True."""
    return metric_tags_of(report.all_metrics())


def metric_tags_of(values: dict[str, float]) -> dict[str, str]:
    """metric_tags from flat metric values, e.g. the metrics an evaluation run logged."""
    out = {}
    for spec in METRICS.tagged(values):
        out[spec.name] = spec.format(values[spec.name])
        if spec.interval and f"{spec.name}_ci_low" in values:
            out[f"{spec.name}_ci"] = (
                f"[{spec.format(values[spec.name + '_ci_low'])}, {spec.format(values[spec.name + '_ci_high'])}]"
            )
        for suffix in ("_delta", "_delta_vs_base"):
            if spec.name + suffix in values:
                out[spec.name + suffix] = f"{values[spec.name + suffix]:+.4f}"
    return out


# ---------------------------------------------------------------- the evaluation of a version (or of a base model)
def source_identity(spec: str) -> str:
    """What cached results are keyed by: the weights' content (a version's base + adapter chain, or a base model's
    files), never a name that may later point at other weights."""
    return f"chain:{chain_sha256(spec)}" if spec.startswith("models:/") else f"weights:{weights_sha256(spec)}"


def references_of(mv) -> tuple[Reference | None, Reference | None]:
    """(reference, original base) of a registered version: the parent when there is one, else the base."""
    tags = mv.tags or {}
    base = Reference(tags["base_model"], source_identity(tags["base_model"])) if tags.get("base_model") else None
    parent = tags.get("parent")
    return (Reference(parent, source_identity(parent)) if parent else base), base


def use_experiment_of(mv) -> None:
    """Evaluate a version in the experiment that holds its training run, so all the evidence about one version is
    in one experiment whichever entry point made each run; the `safety_lab` experiment for anything else."""
    check_reachable()
    run_id = (mv.tags or {}).get("training.run_id") if mv is not None else None
    if run_id and not os.environ.get("MLFLOW_RUN_ID"):
        try:
            experiment_id = MlflowClient().get_run(run_id).info.experiment_id
        except MlflowException:
            experiment_id = None  # the training run was deleted: fall back to the default experiment
        if experiment_id is not None:
            mlflow.set_experiment(experiment_id=experiment_id)
            return
    start_experiment("safety_lab")


def evaluate_version(model_uri: str, cfg: EvalConfig, *, loaded=None, timings=None) -> Recorded:
    """Evaluate ``model_uri`` (a registered version or a base spec) in its own run; tag a version with its status.

    ``loaded``: the model already in memory (finetune passes the reloaded version), else it is loaded here."""
    policy = load_policy(cfg.policy)  # a bad policy or input file fails before any model is loaded
    cfg.check_files()
    cfg = dataclasses.replace(cfg, model_uri=model_uri)
    mv = resolve_version(model_uri) if model_uri.startswith("models:/") else None
    spec = f"models:/{mv.name}/{mv.version}" if mv else (DEFAULT_MODEL if model_uri == "base" else model_uri)
    reference, base = references_of(mv) if mv else (None, None)
    if not mlflow.active_run():
        use_experiment_of(mv)
    run_name = f"evaluate-{mv.name}-v{mv.version}" if mv else f"evaluate-{Path(spec).name}"
    with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None) as run:
        _start_record(mv, spec, reference, cfg, policy)
        loaded = loaded if loaded is not None else load_model(spec, precision=cfg.resolved_precision())
        loaded.spec = spec
        report = evaluate(loaded, cfg, reference=reference, base=base, timings=timings)
        decision = decide(report.all_metrics(), policy, references=mv is not None, eval_split=eval_split_of(cfg))
        _log_run(report, decision, mv)
        tags = SafetyTags(
            status=decision.status,
            reasons=decision.summary,
            checks="; ".join(decision.reasons),
            eval_run_id=run.info.run_id,
            policy=policy_summary(policy),
            policy_sha256=fingerprint(policy),
            reference=report.reference_uri or "none",
            metrics=metric_tags(report),
        )
        if mv is not None:
            tag_version(mv.name, mv.version, tags.as_tags())
            _describe(mv, report, decision, run.info.run_id)
        mlflow.set_tag("safety.status", decision.status)
    if mv is not None:  # the run is FINISHED: only now may the version claim its status
        tag_version(mv.name, mv.version, {"safety.status": decision.status})
    return Recorded(report, decision, run.info.run_id)


def eval_split_of(cfg: EvalConfig) -> str:
    """What the run logs as data.eval_split_sha256: the built-in split's hash, or which sources were files."""
    custom = [name for name in EVAL_SOURCES if getattr(cfg, name) != "builtin"]
    return f"custom:{','.join(custom)}" if custom else eval_split_sha256()


def _start_record(mv, spec: str, reference: Reference | None, cfg: EvalConfig, policy: Policy) -> None:
    if mv is not None:  # from here until the end a kill leaves the version unevaluated, never half-recorded
        tag_version(mv.name, mv.version, {"safety.status": UNEVALUATED})
    mlflow.set_tags(
        {
            "safety_lab.job": "evaluate",
            "model_uri": spec,
            "reference": reference.uri if reference else "none",
            "safety.policy_sha256": fingerprint(policy),
            "data.eval_split_sha256": eval_split_of(cfg),
            **(
                {
                    "safety.model_name": mv.name,
                    "safety.model_version": str(mv.version),
                    "safety.model_source": mv.source,
                }
                if mv
                else {}
            ),
        }
    )
    mlflow.log_params({f"eval.{k}": v for k, v in dataclasses.asdict(cfg).items()})
    mlflow.log_text(policy_json(policy), "policy.json")


def _log_run(report: EvalReport, decision: Decision, mv) -> None:
    model_id = mv.source.split("models:/", 1)[1] if mv and mv.source.startswith("models:/") else None
    mlflow.log_metrics(report.all_metrics(), model_id=model_id)
    for name, result in report.suites.items():
        if result.rows:
            frame = pd.DataFrame(result.rows).map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
            mlflow.log_table(frame, artifact_file=f"evaluation/{name}_items.json")
    lineage = (
        {
            "model_name": mv.name,
            "version": str(mv.version),
            **{k: v for k, v in (mv.tags or {}).items() if k in LINEAGE_KEYS},
        }
        if mv
        else {"base_model": report.model_uri}
    )
    _log_card(report, decision, lineage, override_history(mv.tags or {}) if mv else [])
    mlflow.set_tags({"safety.reasons": decision.summary[:4000], "safety.checks": "; ".join(decision.reasons)[:4000]})


def _describe(mv, report: EvalReport, decision: Decision, run_id: str) -> None:
    """The version's description: what finetune wrote (its first paragraph) plus this evaluation's summary."""
    client = MlflowClient()
    first = (client.get_model_version(mv.name, mv.version).description or "").split("\n\n", 1)[0]
    asr = report.metrics.get("asr")
    summary = (
        f"\n\nSafety evaluation: status **{decision.status}** (run {run_id}). "
        f"ASR {METRICS.get('asr').format(asr) if asr is not None else 'n/a'} against reference "
        f"{report.reference_uri or 'none'}. Reasons: {decision.summary}."
    )
    client.update_model_version(mv.name, mv.version, description=(first + summary)[:5000])


def _figures(report: EvalReport) -> dict:
    """name -> matplotlib Figure: ASR with its interval, the reliability diagram, drift accuracy by prompt type."""
    m, r, figures = report.metrics, report.reference_metrics, {}
    if "asr" in m:
        entries = [("this model", m["asr"], m["asr_ci_low"], m["asr_ci_high"])]
        if "asr" in r:
            entries.append(("reference", r["asr"], r["asr_ci_low"], r["asr_ci_high"]))
        figures["asr"] = plots.asr_bars(entries)
    if "calibration" in report.suites:
        ece = METRICS.get("ece").format(m.get("ece"))
        figures["reliability"] = plots.reliability_diagram(
            report.suites["calibration"].extra["curve"], title=f"ECE {ece}"
        )
    if "drift" in report.suites:
        bars = {"this model": m, **({"reference": r} if any(k.startswith("drift_") for k in r) else {})}
        figures["drift"] = plots.drift_bars(bars)
    return figures


def _log_card(report: EvalReport, decision: Decision, lineage: dict, overrides: list[dict]) -> None:
    """Figures (mlflow.log_figure), summary.json and the safety card (Markdown + HTML) under evaluation/; the card
    lists the version's overrides recorded so far."""
    figures = _figures(report)
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"evaluation/{name}.png")
    summary = {
        "model_uri": report.model_uri,
        "status": decision.status,
        "reasons": list(decision.reasons),
        "metrics": report.all_metrics(),
        "reference_uri": report.reference_uri,
        "reference_metrics": report.reference_metrics,
        "base_metrics": report.base_metrics,
    }
    mlflow.log_dict(summary, "evaluation/summary.json")
    title = f"{lineage['model_name']} v{lineage['version']}" if "version" in lineage else report.model_uri
    markdown, page = safety_card(
        summary,
        items={k: v.rows for k, v in report.suites.items()},
        plots=figures,
        lineage=lineage,
        title=f"Safety card: {title}",
        overrides=overrides,
    )
    mlflow.log_text(markdown, "evaluation/safety_card.md")
    mlflow.log_text(page, "evaluation/safety_card.html")
