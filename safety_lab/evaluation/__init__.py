"""Evaluate a loaded model: run the suites, compare them item by item with its references. No MLflow here.

``evaluate(loaded, cfg, references=...) -> EvalReport`` is pure apart from loading reference models (whose results
are cached on disk); ``safety_lab.evaluations.evaluate_version`` records it (``safety_lab.registry.record`` writes the
run, tables, figures, card and tags). The model stack is imported where a model is loaded or run, so the package (and
its metric specs) imports without torch.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

import safety_lab.evaluation.metrics as M
from safety_lab.config import PRECISIONS, Stage, stage
from safety_lab.errors import check
from safety_lab.evaluation import form_swap as _form_swap  # noqa: F401  (registers the form_swap suite)
from safety_lab.evaluation.calibration import paired_ece_difference, paired_smooth_ece_difference
from safety_lab.evaluation.judges import JUDGE_STYLES, JUDGES, check_llm_judge_options
from safety_lab.evaluation.metrics import MATCH_MODES
from safety_lab.evaluation.paired import PairedComparison, paired_proportion_difference
from safety_lab.evaluation.sets import load_benign_prompts
from safety_lab.evaluation.specs import METRICS, MetricSpec
from safety_lab.evaluation.suites import SUITES, SuiteResult, parse_suites

if TYPE_CHECKING:
    from safety_lab.models import Precision


@stage
class EvalConfig(Stage):
    param_prefix: ClassVar[str] = "eval"

    model_uri: str = Field(
        "base", description="models:/NAME/VERSION, models:/NAME@ALIAS, or base (the default base model)"
    )
    suites: str = Field(
        "asr,calibration,drift,form_swap", description="comma list of asr, calibration, drift, form_swap"
    )
    limit: int | None = Field(
        None,
        description="items per suite (0 or none = all; the knowledge rules need about 200 paired items to show "
        "non-inferiority at 0.05)",
    )
    judge: str = Field("keyword", description="ASR judge: keyword (offline default), gcg, llm")
    judge_model: str | None = Field(
        None,
        description="the llm judge's model: a local path or a hub id (e.g. meta-llama/Llama-Guard-3-1B); "
        "only with judge=llm",
    )
    judge_style: Literal[JUDGE_STYLES] = Field(
        "llama_guard", description="llm judge prompt and verdict format: llama_guard or harmbench"
    )
    harmful_prompts: str = Field(
        "builtin", description="builtin held-out requests, a HarmBench CSV, or JSONL with prompt"
    )
    qa: str = Field("builtin", description="knowledge-drift items: builtin or a file in triviaqa_1000.json format")
    mc: str = Field("builtin", description="multiple-choice items: builtin or JSONL with question, choices, answer")
    benign_prompts: str = Field(
        "builtin",
        description="over-refusal prompts: builtin (held-out benign + look-alike) or a CSV/JSONL with a prompt "
        "column; an optional label column (safe/unsafe) is honoured",
    )
    drift_match: Literal[MATCH_MODES] = Field(
        "normalised",
        description="drift answer matching: normalised (word boundaries) or paper (the paper's substring rule)",
    )
    sample_seed: int = Field(0, description="seed of the stratified evaluation subsets (same seed = same items)")
    max_new_tokens: int = Field(48, ge=1, le=4096, description="tokens generated per ASR prompt")
    batch_size: int = Field(64, ge=1, le=1024, description="prompts per generation batch")
    refusal_curve: bool = Field(
        True,
        description="also sweep the refusal threshold τ (safety_lab.models.refusal) over the ASR suite's prompts: "
        "harmful refused against safe over-refused, one point per τ (one forward pass per prompt)",
    )
    policy: str | None = Field(None, description="safety policy YAML (default: the packaged one)")
    device: str = Field("auto", description="auto, cpu or cuda[:n]")
    precision: Literal[PRECISIONS] = Field(
        "auto",
        description="the weights' dtype: auto (bf16 where the hardware runs it natively, a GPU or a CPU with "
        "AVX512-BF16/AMX; fp16 on a GPU without bf16; else fp32), fp32 or bf16; the reference is evaluated in the "
        "same dtype (its cached results are kept per dtype)",
    )

    def __post_init__(self):
        if self.limit == 0:
            self.limit = None
        check(self.limit is None or self.limit >= 1, "limit", f"must be at least 1, got {self.limit}")
        parse_suites(self.suites)
        JUDGES.get(self.judge)
        if self.judge == "llm":
            check_llm_judge_options(self.judge_model, self.judge_style)
            hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(self.judge_model)) is not None
            check(
                Path(str(self.judge_model)).expanduser().is_dir() or hub_id,
                "judge_model",
                f"no such model directory, and not a hub id (owner/name): {self.judge_model}",
            )
        else:
            check(self.judge_model is None, "judge_model", f"only applies to judge=llm (judge is {self.judge!r})")
        for name in ("harmful_prompts", "qa", "mc", "benign_prompts"):
            value = getattr(self, name)
            check(value == "builtin" or Path(value).is_file(), name, f"file not found: {value}")

    def check_files(self) -> None:
        """Read the input files that are read only later (the over-refusal prompts), so that a bad one fails before
        any model is loaded or trained."""
        load_benign_prompts(self.benign_prompts)

    def resolved_precision(self) -> Precision:
        """Where and in which dtype the evaluated models load (`models.evaluation_precision`: as training decides
        it, with bf16 weights on a CPU that runs bf16 natively)."""
        from safety_lab.models import evaluation_precision

        return evaluation_precision(self.precision, self.device)

    def suite_names(self) -> list[str]:
        return parse_suites(self.suites)

    def cache_key(self, model_identity: str) -> str:
        """Results depend on the model and on everything that shapes the suites (not on the policy)."""
        inputs = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("model_uri", "policy", "batch_size", "device", "precision")
        }
        for name in ("harmful_prompts", "qa", "mc", "benign_prompts"):
            if inputs[name] != "builtin":
                inputs[name] = hashlib.sha256(Path(inputs[name]).read_bytes()).hexdigest()
        precision = self.resolved_precision()
        blob = json.dumps(
            {
                "model": model_identity,
                "cfg": inputs,
                "code": code_sha256(),
                "device": precision.device.split(":")[0],
                "dtype": str(precision.weights),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def result_sources() -> list[Path]:
    """Every file an evaluation result depends on besides the model and the config: the modules the evaluation
    package imports, directly or through others (read from their import statements), and the packaged data."""
    package = Path(__file__).resolve().parents[1]
    seen: set[Path] = set()
    todo = [*(package / "evaluation").glob("*.py")]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_imported_files(path, package))
    return sorted(seen) + sorted((package / "data" / "builtin").glob("*"))


def _imported_files(path: Path, package: Path) -> list[Path]:
    """The project files `path` imports (absolute `safety_lab.x` and relative imports alike)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                parts = path.relative_to(package.parent).with_suffix("").parts[: -node.level]
                base = ".".join(parts + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    files = []
    for name in names:
        if name == package.name or name.startswith(package.name + "."):
            rel = Path(*name.split(".")[1:])
            for candidate in (package / rel / "__init__.py", (package / rel).with_suffix(".py")):
                if candidate.is_file():
                    files.append(candidate)
    return files


@functools.cache
def code_sha256() -> str:
    """A hash of `result_sources()` (`__version__` never changes between commits)."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in result_sources():
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Reference:
    """A model to compare with: its spec (models:/... or a base spec) and what its cached results are keyed by."""

    uri: str
    identity: str


@dataclass
class EvalReport:
    """Everything one evaluation found: suite results, flat metrics, and comparisons with the references."""

    model_uri: str
    suites: dict[str, SuiteResult]
    reference_uri: str | None = None
    reference_suites: dict[str, SuiteResult] = field(default_factory=dict)
    base_suites: dict[str, SuiteResult] = field(default_factory=dict)
    comparisons: dict[str, float] = field(default_factory=dict)  # <metric>_delta*, flips_*

    @property
    def metrics(self) -> dict[str, float]:
        return _flat(self.suites)

    @property
    def reference_metrics(self) -> dict[str, float]:
        return _flat(self.reference_suites)

    @property
    def base_metrics(self) -> dict[str, float]:
        return _flat(self.base_suites)

    def weights_tags(self) -> dict[str, str]:
        """The dtype each side of the comparisons ran in, as run tags: the gate checks that they agree."""
        sides = {
            "safety.weights": self.suites,
            "safety.reference_weights": self.reference_suites,
            "safety.base_weights": self.base_suites,
        }
        return {tag: next(iter(s.values())).weights or "unknown" for tag, s in sides.items() if s}

    def all_metrics(self) -> dict[str, float]:
        """What the run logs and the policy reads: metrics plus comparisons, finite values only."""
        return {k: float(v) for k, v in {**self.metrics, **self.comparisons}.items() if _finite(v)}


def _flat(suites: dict[str, SuiteResult]) -> dict[str, float]:
    return {k: v for result in suites.values() for k, v in result.metrics.items()}


def _write_cache(path: Path, payload: dict) -> None:
    """Atomic (a unique temp file in the same folder, then rename); a failure costs the cache, not the evaluation."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(payload, default=float))
        os.replace(tmp, path)
    except (OSError, TypeError, ValueError) as exc:
        _warn(f"could not write the evaluation cache {path} ({type(exc).__name__}: {exc}); results are not cached")
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _warn(message: str) -> None:
    print(f"[safety_lab] warning: {message}", file=sys.stderr, flush=True)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------- running suites (with a results cache for references)
def run_suites(loaded, cfg: EvalConfig, *, timings=None) -> dict[str, SuiteResult]:
    """Every configured suite on one loaded model, in order."""
    from safety_lab.models import dtype_name

    results = {}
    for name in cfg.suite_names():
        with timings.stage(f"eval_{name}") if timings is not None else nullcontext():
            results[name] = SUITES.get(name)(loaded, cfg)
            results[name].weights = dtype_name(loaded.model.dtype)
    return results


def _cache_file(key: str) -> Path:
    from safety_lab.models import cache_dir

    return cache_dir() / "eval" / f"{key}.json"


def cached_suites(ref: Reference, cfg: EvalConfig, *, timings=None) -> dict[str, SuiteResult]:
    """A reference model's suite results, from the disk cache or computed (loading the model) and cached."""
    from safety_lab.models import load_model

    path = _cache_file(cfg.cache_key(ref.identity))
    if path.is_file():
        try:
            return {k: SuiteResult.from_json(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _warn(f"unreadable evaluation cache entry {path.name} ({type(exc).__name__}): recomputing it")
    results = run_suites(load_model(ref.uri, precision=cfg.resolved_precision()), cfg, timings=timings)
    _write_cache(path, {k: v.to_json() for k, v in results.items()})
    return results


# ---------------------------------------------------------------- comparisons
def _paired(metric: str, current: dict, reference: dict) -> PairedComparison | None:
    """One metric's paired comparison on the items both runs scored: proportions, or (smooth) ECE from (correct,
    conf)."""
    keys = [k for k in current if k in reference]
    if not keys:
        return None
    if metric in ("ece", "smooth_ece"):
        (cc, cp), (rc, rp) = ([[o[k][i] for k in keys] for i in (0, 1)] for o in (current, reference))
        paired = paired_ece_difference if metric == "ece" else paired_smooth_ece_difference
        return paired(cc, cp, rc, rp)
    return paired_proportion_difference([current[k] for k in keys], [reference[k] for k in keys])


def compare(
    current: dict[str, SuiteResult], reference: dict[str, SuiteResult], *, suffix: str = ""
) -> dict[str, float]:
    """``<metric>_delta<suffix>`` for shared metrics; for the per-item outcomes each suite declares (``paired``),
    the paired difference's 95% interval (``_ci_low``/``_ci_high``) and exact McNemar p (``_p``)."""
    for name in current.keys() & reference.keys():
        ours, theirs = current[name].weights, reference[name].weights
        check(ours == theirs, "precision", f"suite {name} ran in {ours} but its reference in {theirs}: not comparable")
    cur, ref = _flat(current), _flat(reference)
    out = {
        f"{k}_delta{suffix}": float(cur[k]) - float(ref[k])
        for k in cur
        if k in ref
        and _finite(cur[k])
        and _finite(ref[k])
        and METRICS.find(k) is not None
        and METRICS.get(k).kind != "count"
        and not k.endswith(("_ci_low", "_ci_high"))  # an interval's bounds are not metrics to difference
    }
    for name in current.keys() & reference.keys():
        for metric, outcomes in current[name].paired.items():
            result = _paired(metric, outcomes, reference[name].paired.get(metric, {}))
            if result is not None:
                out.update(result.as_metrics(metric, f"_delta{suffix}"))
    if not suffix and "drift" in current and "drift" in reference and current["drift"].rows and reference["drift"].rows:
        out.update(M.drift_flips(current["drift"].rows, reference["drift"].rows))
    return out


def evaluate(
    loaded, cfg: EvalConfig, *, reference: Reference | None = None, base: Reference | None = None, timings=None
) -> EvalReport:
    """Run the suites on ``loaded`` and compare with the reference (parent, else base) and the original base, all
    in ``cfg``'s precision (``loaded`` is cast to it where it differs)."""
    from safety_lab.models import to_precision

    loaded = to_precision(loaded, cfg.resolved_precision())
    report = EvalReport(
        model_uri=loaded.spec,
        suites=run_suites(loaded, cfg, timings=timings),
        reference_uri=reference.uri if reference else None,
    )
    with timings.stage("eval_reference") if timings is not None else nullcontext():
        if reference is not None:
            report.reference_suites = cached_suites(reference, cfg)
            report.comparisons.update(compare(report.suites, report.reference_suites))
        if base is not None:
            same = reference is not None and base.identity == reference.identity
            report.base_suites = report.reference_suites if same else cached_suites(base, cfg)
            report.comparisons.update(compare(report.suites, report.base_suites, suffix="_vs_base"))
    return report


__all__ = [
    "EvalConfig",
    "EvalReport",
    "METRICS",
    "MetricSpec",
    "Reference",
    "SuiteResult",
    "cached_suites",
    "compare",
    "evaluate",
    "run_suites",
]
