"""Evaluate a model version: run the suites, compare with its reference (parent or base), decide and tag its status."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
import hashlib
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from safety_lab.config import _Coerce, _help
from safety_lab.errors import check

SUITE_ORDER = ("asr", "calibration", "drift")


@dataclass
class EvalConfig(_Coerce):
    model_uri: str = field(default="base", **_help("models:/NAME/VERSION, models:/NAME@ALIAS, or base (the default base model)"))
    suites: str = field(default="asr,calibration,drift", **_help("comma list of asr, calibration, drift"))
    limit: int | None = field(default=100, **_help("items per suite (0 = all); 100 keeps the default evaluation near 2 min on 2 cores"))
    judge: str = field(default="keyword", **_help("ASR judge: keyword (offline default), gcg, llm"))
    judge_model: str | None = field(default=None, **_help("the llm judge's model: a local path or a hub id "
                                                           "(e.g. meta-llama/Llama-Guard-3-1B); only with judge=llm"))
    judge_style: str = field(default="llama_guard", **_help("llm judge prompt and verdict format: "
                                                            "llama_guard or harmbench"))
    harmful_prompts: str = field(default="builtin", **_help("builtin held-out requests, a HarmBench CSV, or JSONL with prompt"))
    qa: str = field(default="builtin", **_help("knowledge-drift items: builtin or a file in triviaqa_1000.json format"))
    mc: str = field(default="builtin", **_help("multiple-choice items: builtin or JSONL with question, choices, answer"))
    benign_prompts: str = field(default="builtin", **_help(
        "over-refusal prompts: builtin (held-out benign + look-alike) or a CSV/JSONL with a prompt column; "
        "an optional label column (safe/unsafe) is honoured"))
    drift_match: str = field(default="normalised", **_help("drift answer matching: normalised (word boundaries) or "
                                                            "paper (the paper's substring rule)"))
    sample_seed: int = field(default=0, **_help("seed of the stratified evaluation subsets (same seed = same items)"))
    max_new_tokens: int = field(default=48, **_help("tokens generated per ASR prompt"))
    batch_size: int = field(default=32, **_help("prompts per generation batch"))
    policy: str | None = field(default=None, **_help("safety policy YAML (default: the packaged one)"))
    device: str = field(default="auto", **_help("auto, cpu or cuda[:n]"))

    def __post_init__(self):
        from safety_lab.evaluation.judges import JUDGE_STYLES, JUDGES, check_llm_judge_options
        from safety_lab.evaluation.metrics import MATCH_MODES
        from safety_lab.evaluation.suites import load_benign_prompts, parse_suites
        from safety_lab.policy import load_policy

        self._coerce()
        if self.limit == 0:
            self.limit = None
        parse_suites(self.suites)
        JUDGES.get(self.judge)
        check(self.judge_style in JUDGE_STYLES, "judge_style",
              f"must be one of {', '.join(JUDGE_STYLES)}, got {self.judge_style!r}")
        if self.judge == "llm":
            check_llm_judge_options(self.judge_model, self.judge_style)
            hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(self.judge_model)) is not None
            check(Path(str(self.judge_model)).expanduser().is_dir() or hub_id, "judge_model",
                  f"no such model directory, and not a hub id (owner/name): {self.judge_model}")
        else:
            check(self.judge_model is None, "judge_model", f"only applies to judge=llm (judge is {self.judge!r})")
        check(self.drift_match in MATCH_MODES, "drift_match",
              f"must be one of {', '.join(MATCH_MODES)}, got {self.drift_match!r}")
        check(self.benign_prompts == "builtin" or Path(self.benign_prompts).is_file(), "benign_prompts",
              f"file not found: {self.benign_prompts}")
        load_benign_prompts(self.benign_prompts)  # a bad file fails before any model is loaded
        check(self.limit is None or self.limit >= 1, "limit", f"must be at least 1, got {self.limit}")
        check(1 <= self.max_new_tokens <= 4096, "max_new_tokens", f"must be in [1, 4096], got {self.max_new_tokens}")
        check(1 <= self.batch_size <= 1024, "batch_size", f"must be in [1, 1024], got {self.batch_size}")
        for name in ("harmful_prompts", "qa", "mc"):
            value = getattr(self, name)
            check(value == "builtin" or Path(value).is_file(), name, f"file not found: {value}")
        load_policy(self.policy)  # a bad policy fails before any model is loaded

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def suite_names(self) -> list[str]:
        from safety_lab.evaluation.suites import parse_suites

        return parse_suites(self.suites)

    def cache_key(self, model_identity: str) -> str:
        """Results depend on the model and on everything that shapes the suites (not on the policy)."""
        inputs = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model_uri", "policy", "batch_size", "device")}
        for name in ("harmful_prompts", "qa", "mc", "benign_prompts"):
            if inputs[name] != "builtin":
                inputs[name] = hashlib.sha256(Path(inputs[name]).read_bytes()).hexdigest()
        from safety_lab import __version__

        blob = json.dumps({"model": model_identity, "cfg": inputs, "code": __version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class EvalReport:
    model_uri: str
    metrics: dict[str, float]
    reference_uri: str | None
    reference_metrics: dict[str, float] = field(default_factory=dict)
    base_metrics: dict[str, float] = field(default_factory=dict)
    status: str = "unevaluated"
    reasons: tuple[str, ...] = ()
    summary: str = ""  # the failing/warning reasons only
    run_id: str | None = None

    def format(self) -> str:
        keys = ("asr", "asr_ci_low", "asr_ci_high", "over_refusal_rate", "mc_accuracy", "ece", "brier",
                "drift_accuracy_base", "drift_accuracy_false_info", "drift_accuracy_random_info")
        lines = [f"{self.model_uri}: safety.status={self.status}"]
        lines += [f"  {k:28s} {self.metrics[k]:.4f}" + (f"  (ref {self.reference_metrics[k]:.4f})" if k in self.reference_metrics else "")
                  for k in keys if k in self.metrics]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


# ---------------------------------------------------------------- running suites (with a results cache for references)
def _cache_file(key: str) -> Path:
    from safety_lab.models import cache_dir

    return cache_dir() / "eval" / f"{key}.json"


def run_suites(model_spec: str, cfg: EvalConfig, *, identity: str, use_cache: bool, timings=None) -> tuple[dict, dict]:
    """(metrics, {suite: SuiteResult-like dict}) for one model; cached on disk by model identity + suite config."""
    from safety_lab.evaluation.suites import SUITES
    from safety_lab.models import load_model

    path = _cache_file(cfg.cache_key(identity))
    if use_cache and path.is_file():
        cached = json.loads(path.read_text())
        return cached["metrics"], cached["suites"]
    loaded = load_model(model_spec, device=cfg.device)
    metrics, suites = {}, {}
    for name in cfg.suite_names():
        stage = timings.stage(f"eval_{name}") if timings is not None else nullcontext()
        with stage:
            result = SUITES.get(name)(loaded, cfg)
        metrics.update(result.metrics)
        suites[name] = {"metrics": result.metrics, "rows": result.rows}
        if name == "calibration":
            suites[name]["curve"] = [list(b) for b in result.extra["curve"]]
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(path)}")
        tmp.write_text(json.dumps({"metrics": metrics, "suites": suites}, default=float))
        tmp.replace(path)  # atomic: concurrent evaluations never read half a file
    return metrics, suites


def _reference_for(mv) -> tuple[str | None, str | None]:
    """(parent uri, original base spec) of a registered version."""
    tags = mv.tags or {}
    return tags.get("parent"), tags.get("base_model")


def _source_identity(spec: str) -> str:
    """What a cached result is keyed by: a registered version's immutable source, or the base spec."""
    if spec.startswith("models:/"):
        from safety_lab.registry import resolve_version

        mv = resolve_version(spec)
        return f"{mv.name}/{mv.version}/{mv.source}"
    return spec


# ---------------------------------------------------------------- the evaluation run
def evaluate_version(model_uri: str, cfg: EvalConfig, *, timings=None) -> EvalReport:
    """Evaluate `model_uri` in its own MLflow run; for a registered version, tag the status the policy decides."""
    from safety_lab import registry
    from safety_lab.evaluation import metrics as M
    from safety_lab.models import DEFAULT_MODEL
    from safety_lab.policy import decide, load_policy, policy_summary
    from safety_lab.tracking import start_experiment

    cfg = dataclasses.replace(cfg, model_uri=model_uri)
    policy = load_policy(cfg.policy)
    mv = registry.resolve_version(model_uri) if model_uri.startswith("models:/") else None
    spec = f"models:/{mv.name}/{mv.version}" if mv else (DEFAULT_MODEL if model_uri == "base" else model_uri)
    parent, base = _reference_for(mv) if mv else (None, None)
    reference_uri = parent or base
    if not mlflow.active_run():
        start_experiment("safety_lab")
    run_name = f"evaluate-{mv.name}-v{mv.version}" if mv else f"evaluate-{Path(spec).name}"
    with mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"safety_lab.job": "evaluate", "model_uri": spec, "reference": reference_uri or "none"})
        mlflow.log_params({f"eval.{k}": v for k, v in dataclasses.asdict(cfg).items()})
        metrics, suites = run_suites(spec, cfg, identity=_source_identity(spec), use_cache=mv is None, timings=timings)
        report = EvalReport(model_uri=spec, metrics=metrics, reference_uri=reference_uri, run_id=run.info.run_id)
        ref_suites = {}
        stage = timings.stage("eval_reference") if timings is not None else nullcontext()
        with stage:
            if reference_uri:
                report.reference_metrics, ref_suites = run_suites(reference_uri, cfg, identity=_source_identity(reference_uri),
                                                                  use_cache=True)
            if parent and base:
                report.base_metrics, _ = run_suites(base, cfg, identity=_source_identity(base), use_cache=True)
        deltas = M.deltas(metrics, report.reference_metrics) if report.reference_metrics else {}
        if "drift" in suites and "drift" in ref_suites:
            deltas.update(M.drift_flips(suites["drift"]["rows"], ref_suites["drift"]["rows"]))
        base_deltas = {f"{k}_vs_base": v for k, v in M.deltas(metrics, report.base_metrics).items()} if report.base_metrics else {}
        model_id = mv.source.split("models:/", 1)[1] if mv and mv.source.startswith("models:/") else None
        finite = {k: float(v) for k, v in {**metrics, **deltas, **base_deltas}.items() if _finite(v)}
        mlflow.log_metrics(finite, model_id=model_id)
        decision = decide(metrics, report.reference_metrics or None, policy)
        report.status, report.reasons, report.summary = decision.status, tuple(decision.reasons), decision.summary
        lineage = {"model_name": mv.name, "version": str(mv.version), **{k: v for k, v in (mv.tags or {}).items()
                   if k in ("data.name", "data.sha256", "data.rows", "base_model", "parent")}} if mv else {"base_model": spec}
        _log_artifacts(report, suites, decision, lineage)
        mlflow.set_tags({"safety.status": decision.status, "safety.reasons": decision.summary[:4000],
                         "safety.checks": "; ".join(decision.reasons)[:4000]})
        if mv is not None:
            registry.tag_version(mv.name, mv.version, _version_tags(report, deltas, base_deltas, policy_summary(policy)))
            _describe(mv, report)
    return report


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v) -> str:
    return f"{v:.4f}" if _finite(v) else "n/a"


def _version_tags(report: EvalReport, deltas: dict, base_deltas: dict, policy: str) -> dict[str, str]:
    m = report.metrics
    tags = {
        "safety.status": report.status,
        "safety.reasons": report.summary[:4000],
        "safety.checks": "; ".join(report.reasons)[:4000],
        "safety.eval_run_id": report.run_id,
        "safety.policy": policy,
        "safety.reference": report.reference_uri or "none",
    }
    if "asr" in m:
        tags.update({"safety.asr": _fmt(m["asr"]), "safety.asr_ci": f"[{_fmt(m['asr_ci_low'])}, {_fmt(m['asr_ci_high'])}]",
                     "safety.asr_delta": _fmt(deltas.get("asr_delta")),
                     "safety.over_refusal_rate": _fmt(m.get("over_refusal_rate"))})
        if base_deltas:  # fine-tuned from a parent: also show the change against the original base
            tags["safety.asr_delta_vs_base"] = _fmt(base_deltas.get("asr_delta_vs_base"))
    if "ece" in m:
        tags["safety.ece"] = _fmt(m["ece"])
    if "drift_accuracy_false_info" in m:
        tags["safety.drift_accuracy_false_info_delta"] = _fmt(deltas.get("drift_accuracy_false_info_delta"))
        if base_deltas:
            tags["safety.drift_accuracy_false_info_delta_vs_base"] = _fmt(base_deltas.get("drift_accuracy_false_info_delta_vs_base"))
    return tags


def _describe(mv, report: EvalReport) -> None:
    from mlflow.tracking import MlflowClient

    current = MlflowClient().get_model_version(mv.name, mv.version).description or ""
    current = current.split("\n\nSafety evaluation:", 1)[0].replace(
        " Safety status: unevaluated until its evaluation run succeeds.", "")
    summary = (f"\n\nSafety evaluation: status **{report.status}** (run {report.run_id}). "
               f"ASR {_fmt(report.metrics.get('asr'))} against reference {report.reference_uri or 'none'}. "
               f"Reasons: {report.summary}. Checks: {'; '.join(report.reasons)}")
    MlflowClient().update_model_version(mv.name, mv.version, description=(current + summary)[:5000])


def _log_artifacts(report: EvalReport, suites: dict, decision, lineage: dict) -> None:
    from safety_lab.reporting import plots
    from safety_lab.reporting.cards import write_safety_card

    with tempfile.TemporaryDirectory(prefix="eval-") as tmp:
        out = Path(tmp)
        for name, suite in suites.items():
            with open(out / f"{name}_items.jsonl", "w", encoding="utf-8") as f:
                for row in suite["rows"]:
                    f.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
        m, r = report.metrics, report.reference_metrics
        if "asr" in m:
            entries = [("this model", m["asr"], m["asr_ci_low"], m["asr_ci_high"])]
            if "asr" in r:
                entries.append((f"reference", r["asr"], r["asr_ci_low"], r["asr_ci_high"]))
            plots.asr_bars(entries, out / "asr.png")
        if "calibration" in suites:
            plots.reliability_diagram(suites["calibration"]["curve"], out / "reliability.png",
                                      title=f"ECE {_fmt(m.get('ece'))}")
        if "drift" in suites:
            bars = {"this model": m}
            if any(k.startswith("drift_") for k in r):
                bars["reference"] = r
            plots.drift_bars(bars, out / "drift.png")
        summary = {"model_uri": report.model_uri, "status": decision.status, "reasons": list(decision.reasons),
                   "metrics": m, "reference_uri": report.reference_uri, "reference_metrics": r,
                   "base_metrics": report.base_metrics}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
        title = f"{lineage['model_name']} v{lineage['version']}" if "version" in lineage else report.model_uri
        write_safety_card(out, summary=summary, items={k: v["rows"] for k, v in suites.items()},
                          plots={p.stem: p for p in out.glob("*.png")}, lineage=lineage, title=f"Safety card: {title}")
        mlflow.log_artifacts(str(out), artifact_path="evaluation")
