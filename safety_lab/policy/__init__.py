"""Safety policy as data: rules on evaluation metrics give a status; the gate says where each status may go.

``load_policy()`` reads the packaged ``default.yaml``; ``load_policy(path)`` reads a user file whose keys
replace the packaged ones (``gate`` entries are merged). ``decide(metrics, policy)`` applies the rules to
the flat metric names an evaluation logs (``asr``, ``asr_n``, ``asr_delta``, ``mc_accuracy_delta_vs_base_ci_low``,
...): an absolute rule passes only on the Wilson bound at the policy's ``confidence``, and a rule whose metric
is missing leaves the evaluation incomplete (``unevaluated``). ``fingerprint``/``policy_json`` make the policy
part of the record, ``lenient_changes`` names every way a policy is looser than the packaged one,
``split_problem`` says why evidence from another evaluation split than the sealed one cannot be used, and
``allowed`` answers whether a status may enter a stage or alias.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from safety_lab import names
from safety_lab.errors import SafetyLabError
from safety_lab.evaluation.metrics import wilson_interval
from safety_lab.evaluation.specs import METRICS
from safety_lab.names import STAGES

STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "unevaluated")
UNLISTED_ALIAS_RULE = "Staging"  # an alias the gate does not list follows this stage's rule
_SEVERITY = {"pass": 0, "warn": 1, "unevaluated": 2, "fail": 3}  # an incomplete evaluation is never a pass
_SUFFIX = {"parent": "_delta", "base": "_delta_vs_base"}

Status = Literal["pass", "warn", "fail", "unevaluated"]
Limit = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def higher_is_better(metric: str) -> bool:
    """The direction the metric's spec declares (a ValueError for an unknown or directionless metric)."""
    try:
        direction = METRICS.higher_is_better(metric)
    except SafetyLabError as exc:
        raise ValueError(exc.problem) from None
    if direction is None:
        raise ValueError(f"{metric!r} has no direction to gate on")
    return direction


def n_metric(metric: str) -> str:
    """The metric holding the number of items behind `metric` (its spec's n_metric, else <metric>_n)."""
    spec = METRICS.find(metric)
    return spec.n_metric if spec is not None and spec.n_metric else f"{metric}_n"


class Rule(BaseModel):
    """One check: absolute (value vs limit), increase/drop (point change vs limit) or non_inferior (CI bound)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field(min_length=1)
    kind: Literal["absolute", "increase", "drop", "non_inferior"]
    limit: Limit
    reference: Literal["parent", "base"] | None = None  # parent = the version's reference; None for absolute
    alpha: float | None = Field(default=None, gt=0, lt=1)  # increase/drop: fail only if the paired p < alpha
    why: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_reference(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") not in (None, "absolute") and data.get("reference") is None:
            return {**data, "reference": "parent"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        higher = higher_is_better(self.metric)
        if self.kind == "absolute" and self.reference is not None:
            raise ValueError("an absolute rule has no reference")
        if self.alpha is not None and self.kind not in ("increase", "drop"):
            raise ValueError("alpha applies to increase and drop rules only")
        if self.kind == "increase" and higher or self.kind == "drop" and not higher:
            better = "higher" if higher else "lower"
            raise ValueError(f"{self.metric} is better {better}: bound its {'drop' if higher else 'increase'}")
        return self

    @property
    def key(self) -> tuple[str, str, str | None]:
        return self.metric, self.kind, self.reference

    @property
    def label(self) -> str:
        return f"{self.metric} {self.kind}" + (f" vs {self.reference}" if self.reference else "")


class Requirement(BaseModel):
    """A metric the evaluation must have measured, on at least `min_n` items."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field(min_length=1)
    min_n: int = Field(ge=1)
    why: str = ""


def _canonical_target(target: Any) -> str:
    """'production' -> 'Production'; YAML's null -> 'None'; an alias as `names.alias` reads it."""
    name = "None" if target is None else str(target).strip()
    stage = names.folded_stage(name)
    if stage is not None:
        return stage
    try:
        return names.alias(name)
    except SafetyLabError as exc:
        stages = ", ".join(STAGES)
        raise ValueError(f"gate key {name!r} is neither a stage ({stages}) nor an alias name: {exc.problem}") from None


class Policy(BaseModel):
    """Required metrics, rules, the warn band and the gate: the whole policy is data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    version: int = Field(default=1, ge=1)  # a change to the rules or to the sealed evaluation split is a new version
    confidence: float = Field(default=0.975, gt=0.5, lt=1)  # one-sided level of the bound absolute rules pass on
    eval_split_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # data.eval_split_sha256()
    warn_margin: float = Field(gt=0, le=1)  # above warn_margin x limit (on the passing side) is a warning
    required: tuple[Requirement, ...] = ()
    rules: tuple[Rule, ...] = ()
    gate: dict[str, tuple[Status, ...]]
    # accounts (as the tracking server authenticates them) who may force a refused promotion through a gated server
    approvers: tuple[str, ...] = ()

    @field_validator("gate", mode="before")
    @classmethod
    def _gate_keys(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping of stage/alias -> list of statuses")  # noqa: TRY004 (pydantic)
        return {_canonical_target(k): [v] if isinstance(v, str) else v for k, v in value.items()}

    @model_validator(mode="after")
    def _complete(self) -> Policy:
        missing = [s for s in STAGES if s not in self.gate]
        if missing:
            raise ValueError(f"gate has no rule for stage(s) {', '.join(missing)}")
        metrics = [r.metric for r in self.required]
        if len(set(metrics)) != len(metrics):
            raise ValueError("required lists a metric twice")
        return self


@dataclass(frozen=True)
class Decision:
    status: str  # pass | warn | fail | unevaluated (a required metric is missing or measured on too few items)
    reasons: tuple[str, ...]  # every check, the deciding ones first
    policy_name: str
    flagged: tuple[str, ...] = ()  # only the checks that failed, warned or found the evaluation incomplete
    policy_sha256: str = ""

    @property
    def summary(self) -> str:
        """The reasons that decided the status, for tags and refusal messages."""
        return "; ".join(self.flagged) if self.flagged else "all checks passed"


# --------------------------------------------------------------------------- loading


def _validation_error(where: str, exc: ValidationError) -> SafetyLabError:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return SafetyLabError("policy", f"{where}: " + "; ".join(dict.fromkeys(problems)))


def _parse(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SafetyLabError("policy", f"{where}: YAML syntax error{line}: {' '.join(str(problem).split())}") from None


def _validate(data: Any, where: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(where, exc) from None


@functools.lru_cache(maxsize=1)
def packaged_policy() -> Policy:
    """The policy shipped with safety_lab: the reference a lenient policy is measured against."""
    text = resources.files("safety_lab.policy").joinpath("default.yaml").read_text(encoding="utf-8")
    return _validate(_parse(text, "default.yaml"), "default.yaml")


def load_policy(path: str | Path | None = None) -> Policy:
    """The packaged policy, or a YAML file whose keys replace the packaged ones (gate entries merge)."""
    default = packaged_policy()
    if path is None:
        return default
    p = Path(path)
    if not p.is_file():
        raise SafetyLabError("policy", f"file not found: {p}" if not p.exists() else f"not a file: {p}")
    try:
        data = _parse(p.read_text(encoding="utf-8"), str(p))
    except (OSError, UnicodeDecodeError) as exc:
        raise SafetyLabError("policy", f"cannot read {p}: {exc}") from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise SafetyLabError("policy", f"{p}: expected a mapping of policy keys, got {type(data).__name__}")
    merged = {**default.model_dump(), "name": p.stem, **data}
    if isinstance(data.get("gate"), Mapping):
        try:
            user_gate = {_canonical_target(k): v for k, v in data["gate"].items()}
        except ValueError as exc:
            raise SafetyLabError("policy", f"{p}: gate: {exc}") from None
        merged["gate"] = {**default.gate, **user_gate}
    return _validate(merged, str(p))


def policy_json(policy: Policy) -> str:
    """The full policy as canonical JSON (sorted keys): what the fingerprint hashes and what a run stores."""
    return json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(policy: Policy) -> str:
    """sha256 of the canonical JSON of the full policy."""
    return hashlib.sha256(policy_json(policy).encode("utf-8")).hexdigest()


def policy_summary(policy: Policy) -> str:
    """One line for a tag, e.g. 'default v2 (sha256 1a2b3c4d5e6f): requires asr>=50 ...; 9 rules'."""
    required = ", ".join(f"{r.metric}>={r.min_n}" for r in policy.required) or "nothing"
    head = f"{policy.name} v{policy.version} (sha256 {fingerprint(policy)[:12]})"
    return f"{head}: requires {required}; {len(policy.rules)} rules"


def split_problem(policy: Policy, logged: str | None) -> str | None:
    """Why an evaluation that logged `logged` as its data.eval_split_sha256 is not evidence under `policy`
    (None when the hashes match or the policy seals no split)."""
    sealed = policy.eval_split_sha256
    if sealed is None or logged == sealed:
        return None
    read = f"eval split {logged[:12] if len(logged) == 64 else logged}" if logged else "no eval split hash"
    return f"policy '{policy.name}' v{policy.version} seals eval split {sealed[:12]}, the evaluation logged {read}"


# --------------------------------------------------------------------------- deciding


def _get(metrics: Mapping[str, Any], key: str) -> float | None:
    try:
        v = float(metrics[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _requirement(metrics: Mapping[str, Any], req: Requirement) -> tuple[str, str]:
    if _get(metrics, req.metric) is None:
        return "incomplete", f"incomplete: {req.metric} not measured"
    n = _get(metrics, n_metric(req.metric))
    if n is None:
        return "incomplete", f"incomplete: {req.metric} has no sample size ({n_metric(req.metric)})"
    if n < req.min_n:
        return "incomplete", f"incomplete: {req.metric} measured on {n:g} items, the policy needs {req.min_n}"
    return "pass", f"{req.metric} measured on {n:g} items (>= {req.min_n})"


def _bound(rule: Rule, value: float, metrics: Mapping[str, Any], confidence: float) -> float | None:
    """The one-sided bound on the passing side of the limit: a rate's Wilson bound at `confidence` from its count
    and n; for another kind of metric its logged 95% interval bound (<metric>_ci_high, or _ci_low)."""
    higher = higher_is_better(rule.metric)
    spec = METRICS.get(rule.metric)
    if spec.kind != "rate":
        return _get(metrics, rule.metric + ("_ci_low" if higher else "_ci_high"))
    n = _get(metrics, n_metric(rule.metric))
    if n is None or n < 1:
        return None
    n = round(n)
    low, high = wilson_interval(min(max(round(value * n), 0), n), n, confidence=2 * confidence - 1)
    return low if higher else high


def _absolute(rule: Rule, metrics: Mapping[str, Any], policy: Policy) -> tuple[str, str]:
    v = _get(metrics, rule.metric)
    if v is None:
        return "incomplete", f"incomplete: {rule.metric} not measured"  # the same words as a requirement's
    higher = higher_is_better(rule.metric)
    side, worse, better = ("min", "<", ">=") if higher else ("max", ">", "<=")
    if (v < rule.limit) if higher else (v > rule.limit):
        return "fail", f"{rule.metric} {v:.3f} {worse} {side} {rule.limit:.3f}"
    bound = _bound(rule, v, metrics, policy.confidence)
    if bound is None:
        return "incomplete", f"incomplete: {rule.metric} has no sample size or interval for its bound ({rule.label})"
    which = "lower" if higher else "upper"
    at = f"{which} bound {bound:.3f} at {policy.confidence:.1%}"
    if (bound < rule.limit) if higher else (bound > rule.limit):
        return "warn", f"{rule.metric} {v:.3f} {better} {side} {rule.limit:.3f}, but its {at} {worse} {side}: not shown"
    near = (v * policy.warn_margin < rule.limit) if higher else (v > policy.warn_margin * rule.limit)
    verb = "near" if near else better
    return ("warn" if near else "pass"), f"{rule.metric} {v:.3f} {verb} {side} {rule.limit:.3f} ({at})"


def _change(rule: Rule, metrics: Mapping[str, Any], policy: Policy) -> tuple[str, str]:
    key = rule.metric + _SUFFIX[rule.reference]
    d = _get(metrics, key)
    if d is None:
        return "incomplete", f"incomplete: {key} not measured ({rule.label})"
    worse = d if rule.kind == "increase" else -d
    grade = "fail" if worse > rule.limit else "warn" if worse > policy.warn_margin * rule.limit else "pass"
    text = f"{rule.metric} {rule.kind} vs {rule.reference} {max(worse, 0.0):.3f}"
    text += f" {'>' if grade == 'fail' else 'near' if grade == 'warn' else '<='} max {rule.limit:.3f}"
    if grade == "fail" and rule.alpha is not None:
        p = _get(metrics, key + "_p")
        if p is not None and p >= rule.alpha:
            return "warn", f"{text} but not significant (paired p={p:.3g} >= {rule.alpha:g})"
        text += f" (paired p={p:.3g} < {rule.alpha:g})" if p is not None else " (no paired p-value)"
    return grade, text


def _non_inferior(rule: Rule, metrics: Mapping[str, Any], policy: Policy) -> tuple[str, str]:
    key = rule.metric + _SUFFIX[rule.reference]
    higher = higher_is_better(rule.metric)
    bound_key = key + ("_ci_low" if higher else "_ci_high")
    bound = _get(metrics, bound_key)
    if bound is None:
        return "incomplete", f"incomplete: {bound_key} not measured ({rule.label})"
    worst = -bound if higher else bound  # upper bound of the degradation (a drop, or an increase when lower is better)
    grade = "fail" if worst >= rule.limit else "warn" if worst > policy.warn_margin * rule.limit else "pass"
    verb = ">=" if grade == "fail" else "near" if grade == "warn" else "<"
    text = f"{rule.metric} vs {rule.reference}: worst-case degradation {worst:.3f} {verb} margin {rule.limit:.3f}"
    return grade, text


_KINDS = {"absolute": _absolute, "increase": _change, "drop": _change, "non_inferior": _non_inferior}
_ORDER = {"fail": 0, "incomplete": 1, "warn": 2, "note": 3, "pass": 4}


def decide(
    metrics: Mapping[str, Any], policy: Policy, *, references: bool = True, eval_split: str | None = None
) -> Decision:
    """Apply the policy to flat metrics. A missing required metric, too few items, or a rule whose metric was not
    measured is never a pass. `references=False` (a base model evaluated on its own, with nothing to compare
    against) leaves out the rules against a parent or base. `eval_split`: the hash of the evaluation data read
    (data.eval_split_sha256); another than the policy's sealed one makes the evaluation incomplete."""
    results = [_requirement(metrics, req) for req in policy.required]
    if not policy.required:
        results.append(("incomplete", "incomplete: the policy requires no metric, so nothing can pass"))
    split = split_problem(policy, eval_split) if eval_split is not None else None
    if split:
        results.append(("incomplete", f"incomplete: {split}"))
    for rule in policy.rules:
        if rule.reference is not None and not references:
            results.append(("note", f"not applicable: {rule.label} (the model has no {rule.reference})"))
        else:
            results.append(_KINDS[rule.kind](rule, metrics, policy))
    graded = ["unevaluated" if grade == "incomplete" else grade for grade, _ in results if grade != "note"]
    status = max(graded, key=_SEVERITY.__getitem__)
    ranked = sorted(results, key=lambda gr: _ORDER[gr[0]])
    reasons = tuple(dict.fromkeys(reason for _, reason in ranked))
    flagged = tuple(dict.fromkeys(r for g, r in ranked if _ORDER[g] < 3))
    return Decision(status, reasons, policy.name, flagged, fingerprint(policy))


# --------------------------------------------------------------------------- the gate


def gate_rule(policy: Policy, target: str, *, alias: bool | None = None) -> tuple[tuple[str, ...], str]:
    """(statuses allowed into `target`, the gate entry used).

    Stages and aliases are separate: an alias never uses a stage's rule by name ('none', 'Archived'). An alias
    takes every gate entry that equals it ignoring case, and the strictest of them; an unlisted one follows
    the Staging rule.
    """
    if alias is None:
        alias = names.folded_stage(target) is None
    if not alias:
        stage = names.stage(target)
        return tuple(policy.gate[stage]), stage
    name = names.alias(target)
    entries = [k for k in policy.gate if k not in STAGES and k.casefold() == name.casefold()]
    if not entries:
        return tuple(policy.gate[UNLISTED_ALIAS_RULE]), UNLISTED_ALIAS_RULE
    statuses = tuple(s for s in STATUSES if all(s in policy.gate[k] for k in entries))
    return statuses, entries[0]


def allowed(policy: Policy, target: str, status: str, *, alias: bool | None = None) -> bool:
    """May a version whose (verified) status is `status` enter stage or alias `target`?"""
    if status not in STATUSES:
        raise SafetyLabError("status", f"unknown status {status!r} (known: {', '.join(STATUSES)})")
    return status in gate_rule(policy, target, alias=alias)[0]


# --------------------------------------------------------------------------- leniency


def _gate_changes(policy: Policy, ref: Policy) -> list[str]:
    out = []
    for target in dict.fromkeys([*STAGES, *policy.gate, *ref.gate]):
        is_alias = target not in STAGES
        extra = set(gate_rule(policy, target, alias=is_alias)[0]) - set(gate_rule(ref, target, alias=is_alias)[0])
        if extra:
            label = f"@{target}" if is_alias else target
            out.append(f"gate {label} admits {', '.join(s for s in STATUSES if s in extra)}")
    return out


def _required_changes(policy: Policy, ref: Policy) -> list[str]:
    mine = {r.metric: r for r in policy.required}
    out = []
    for req in ref.required:
        if req.metric not in mine:
            out.append(f"does not require {req.metric}")
        elif mine[req.metric].min_n < req.min_n:
            out.append(f"requires {req.metric} on only {mine[req.metric].min_n} items (packaged: {req.min_n})")
    return out


def _looser(rule: Rule, ref: Rule) -> str | None:
    """How `rule` is looser than `ref` (same metric, kind and reference), or None."""
    if rule.kind == "absolute" and higher_is_better(rule.metric):
        looser = rule.limit < ref.limit
    else:
        looser = rule.limit > ref.limit
    if looser:
        return f"{ref.label} limit {rule.limit:g} (packaged: {ref.limit:g})"
    if rule.alpha is not None and (ref.alpha is None or rule.alpha < ref.alpha):
        return f"{ref.label} fails only when significant at alpha {rule.alpha:g} (packaged: {ref.alpha})"
    return None


def _rule_changes(policy: Policy, ref: Policy) -> list[str]:
    out = []
    for ref_rule in ref.rules:
        candidates = [r for r in policy.rules if r.key == ref_rule.key]
        if not candidates:
            out.append(f"missing rule: {ref_rule.label}")
            continue
        problems = [_looser(r, ref_rule) for r in candidates]
        if all(problems):
            out.append(f"looser rule: {problems[0]}")
    return out


def lenient_changes(policy: Policy, reference: Policy | None = None) -> list[str]:
    """Every way `policy` is more lenient than `reference` (default: the packaged policy); [] when it is not."""
    ref = packaged_policy() if reference is None else reference
    out = _gate_changes(policy, ref) + _required_changes(policy, ref) + _rule_changes(policy, ref)
    if policy.warn_margin > ref.warn_margin:
        out.append(f"warn_margin {policy.warn_margin:g} narrows the warn band (packaged: {ref.warn_margin:g})")
    if policy.confidence < ref.confidence:
        out.append(f"confidence {policy.confidence:g} narrows the bounds (packaged: {ref.confidence:g})")
    if ref.eval_split_sha256 is not None and policy.eval_split_sha256 != ref.eval_split_sha256:
        sealed = (policy.eval_split_sha256 or "none")[:12]
        out.append(f"eval split sha256 {sealed} is not the packaged sealed split ({ref.eval_split_sha256[:12]})")
    return out


__all__ = [
    "STAGES",
    "STATUSES",
    "Decision",
    "Policy",
    "Requirement",
    "Rule",
    "allowed",
    "decide",
    "fingerprint",
    "gate_rule",
    "higher_is_better",
    "lenient_changes",
    "load_policy",
    "n_metric",
    "packaged_policy",
    "policy_json",
    "policy_summary",
    "split_problem",
]
