"""The MLflow writes of an evaluation, in order: one run (metrics, item tables, figures, summary, safety card), then
the version's tags. ``safety_lab.evaluations.evaluate_version`` runs the evaluation, renders what reporting draws
and calls these in turn; the registry renders nothing itself.

Order matters, so that a kill at any point leaves either ``unevaluated`` or a complete record: the version's status
is reset to ``unevaluated`` first (``start_record``), every other ``safety.*`` tag is written next (``end_record``),
the evaluation run ends FINISHED, and ``safety.status`` is written last (``claim_status``). The promotion gate
re-derives the status from the run, never trusting the tag.
"""

from __future__ import annotations

import dataclasses
import json
import os

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.data import eval_split_sha256
from safety_lab.evaluation import METRICS, EvalConfig, EvalReport, Reference
from safety_lab.models import chain_sha256, weights_sha256
from safety_lab.policy import Decision, Policy, fingerprint, policy_json, policy_summary
from safety_lab.registry import UNEVALUATED, tag_version
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


def eval_split_of(cfg: EvalConfig) -> str:
    """What the run logs as data.eval_split_sha256: the built-in split's hash, or which sources were files."""
    custom = [name for name in EVAL_SOURCES if getattr(cfg, name) != "builtin"]
    return f"custom:{','.join(custom)}" if custom else eval_split_sha256()


def start_record(mv, spec: str, reference: Reference | None, cfg: EvalConfig, policy: Policy) -> None:
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


def log_results(report: EvalReport, mv) -> None:
    """The run's metrics (linked to the version's logged model) and each suite's item table."""
    model_id = mv.source.split("models:/", 1)[1] if mv and mv.source.startswith("models:/") else None
    mlflow.log_metrics(report.all_metrics(), model_id=model_id)
    for name, result in report.suites.items():
        if result.rows:
            frame = pd.DataFrame(result.rows).map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
            mlflow.log_table(frame, artifact_file=f"evaluation/{name}_items.json")


def lineage_of(mv, report: EvalReport) -> dict:
    """What the safety card shows as lineage: the version's name, number and lineage tags (or the base model)."""
    if mv is None:
        return {"base_model": report.model_uri}
    tags = {k: v for k, v in (mv.tags or {}).items() if k in LINEAGE_KEYS}
    return {"model_name": mv.name, "version": str(mv.version), **tags}


def summary_of(report: EvalReport, decision: Decision) -> dict:
    """evaluation/summary.json: the status, its reasons and every metric (this model's, the reference's, the base's)."""
    return {
        "model_uri": report.model_uri,
        "status": decision.status,
        "reasons": list(decision.reasons),
        "metrics": report.all_metrics(),
        "reference_uri": report.reference_uri,
        "reference_metrics": report.reference_metrics,
        "base_metrics": report.base_metrics,
    }


def log_card(figures: dict, summary: dict, markdown: str, page: str) -> None:
    """The rendered evidence under evaluation/: each figure as <name>.png, summary.json, the safety card (Markdown,
    then HTML)."""
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"evaluation/{name}.png")
    mlflow.log_dict(summary, "evaluation/summary.json")
    mlflow.log_text(markdown, "evaluation/safety_card.md")
    mlflow.log_text(page, "evaluation/safety_card.html")


def end_record(mv, report: EvalReport, decision: Decision, policy: Policy, run_id: str) -> None:
    """Inside the still-RUNNING run: its reasons, the version's safety.* tags (all but the status) and description,
    then the run's own safety.status. ``claim_status`` writes the version's status once the run has ended."""
    mlflow.set_tags(
        {
            "safety.reasons": decision.summary[:4000],
            "safety.checks": "; ".join(decision.reasons)[:4000],
            **report.weights_tags(),
        }
    )
    tags = SafetyTags(
        status=decision.status,
        reasons=decision.summary,
        checks="; ".join(decision.reasons),
        eval_run_id=run_id,
        policy=policy_summary(policy),
        policy_sha256=fingerprint(policy),
        reference=report.reference_uri or "none",
        metrics=metric_tags(report),
    )
    if mv is not None:
        tag_version(mv.name, mv.version, tags.as_tags())
        _describe(mv, report, decision, run_id)
    mlflow.set_tag("safety.status", decision.status)


def claim_status(mv, status: str) -> None:
    """The version's safety.status, written last: only once its evaluation run is FINISHED."""
    tag_version(mv.name, mv.version, {"safety.status": status})


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
