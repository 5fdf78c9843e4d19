"""The promotion gate's answer for one move: the version, its verified evidence, the rule each target uses, and
which targets refuse it. ``check_move`` changes nothing; ``promote`` and the tracking server's gate both act on it.

Gate rules for aliases: an alias listed in the policy gate (e.g. ``champion``) uses its own rule (the strictest
entry that equals it ignoring case); any other alias, including one named like a stage, follows ``Staging``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from safety_lab import names
from safety_lab.errors import SafetyLabError
from safety_lab.policy import Policy, fingerprint, gate_rule, lenient_changes
from safety_lab.registry import UNEVALUATED
from safety_lab.registry.evidence import Evidence, verify_evidence


@dataclass(kw_only=True)
class Move:
    """One move request, resolved: the version, the policy, the evidence and the gate's answer."""

    model_name: str
    mv: Any  # the ModelVersion
    rm: Any  # its RegisteredModel (the aliases every version holds)
    policy: Policy
    evidence: Evidence
    stage: str | None = None
    alias: str | None = None
    from_alias: str | None = None  # how the request named the version, when by alias
    archive_existing: bool = False
    reason: str | None = None  # why a refused move is forced
    lenient: tuple[str, ...] = ()  # every way the policy is looser than the packaged one
    refusals: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (target label, the statuses its rule allows)
    rules: dict[str, str] = field(default_factory=dict)  # target label -> the gate entry it used

    @property
    def version(self) -> str:
        return str(self.mv.version)

    @property
    def targets(self) -> list[tuple[str, bool]]:
        """(name, is_alias) for the stage, then the alias."""
        return ([(self.stage, False)] if self.stage else []) + ([(self.alias, True)] if self.alias else [])

    @property
    def labels(self) -> list[str]:
        """The targets as written in messages and tags: 'Production', '@champion'."""
        return [f"@{n}" if a else n for n, a in self.targets]

    @property
    def target(self) -> str:
        return " ".join(self.labels)

    @property
    def action(self) -> str:
        return "stage+alias" if self.stage and self.alias else ("stage" if self.stage else "alias")


class GateRefused(SafetyLabError):
    """The gate refused the promotion; nothing in the registry was changed (the refusal is audited)."""

    def __init__(
        self,
        model_name: str,
        version: str,
        message: str,
        *,
        status: str = UNEVALUATED,
        evidence: Evidence | None = None,
        refusals: list[tuple[str, tuple[str, ...]]] | None = None,
        lenient: tuple[str, ...] = (),
    ):
        self.model_name, self.version, self.status = model_name, version, status
        self.evidence, self.refusals, self.lenient = evidence, refusals or [], lenient
        super().__init__("refused", message)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _or_list(statuses: Iterable[str]) -> str:
    items = list(statuses)
    if not items:
        return "nothing (no status is allowed)"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _reasons_of(mv, status: str) -> str:
    raw = (mv.tags or {}).get("safety.reasons")
    if raw is None or not str(raw).strip():
        return "not evaluated" if status == UNEVALUATED else "none recorded"
    text = str(raw).strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        return one_line("; ".join(str(p) for p in parsed)) or "none recorded"
    return "; ".join(one_line(line) for line in text.splitlines() if line.strip())


def _gate(
    policy: Policy, targets: list[tuple[str, bool]], status: str
) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], dict[str, str]]:
    """(the targets whose rule refuses `status`, with that rule; the gate entry each target used)."""
    refusals, rules = [], {}
    for name, is_alias in targets:
        rule, entry = gate_rule(policy, name, alias=is_alias)
        label = f"@{name}" if is_alias else name
        rules[label] = entry
        if status not in rule:
            refusals.append((label, rule))
    return tuple(refusals), rules


def check_move(mv, rm, *, stage: str | None = None, alias: str | None = None, policy: Policy, client=None) -> Move:
    """The gate's answer for moving version `mv` (of registered model `rm`) into `stage` and/or onto `alias`,
    changing nothing: the move with its verified evidence, the rule each target used, and the refusals (none =
    allowed) and leniency that ``promote`` acts on. The tracking server's gate calls this too."""
    stage = names.stage(stage) if stage else None
    alias = names.alias(alias) if alias else None
    evidence = verify_evidence(mv, policy, client=client or MlflowClient())
    move = Move(model_name=str(mv.name), mv=mv, rm=rm, policy=policy, evidence=evidence, stage=stage, alias=alias)
    move.lenient = tuple(lenient_changes(policy))
    move.refusals, move.rules = _gate(policy, move.targets, evidence.status)
    return move


def refusal(move: Move) -> GateRefused:
    """The error ``promote`` raises for `move` (whose refusals or leniency are not empty)."""
    head = f"{move.model_name} version {move.version}"
    ev = move.evidence
    if move.lenient:
        text = (
            f"{head}: policy '{move.policy.name}' (sha256 {fingerprint(move.policy)[:12]}) is more lenient than "
            f"the packaged policy ({'; '.join(move.lenient)}); a lenient policy is an override: "
            "give --force and --reason"
        )
    else:
        needs = " and ".join(f"{target} needs {_or_list(rule)}" for target, rule in move.refusals)
        if ev.problem:
            text = f"{head} is '{ev.tag_status}' on its tag, but {ev.problem}; so it counts as unevaluated: {needs}"
        else:
            text = f"{head} is '{ev.status}', {needs}; reasons: {_reasons_of(move.mv, ev.status)}"
    return GateRefused(
        move.model_name,
        move.version,
        one_line(text),
        status=ev.tag_status,
        evidence=ev,
        refusals=list(move.refusals),
        lenient=move.lenient,
    )


def refusal_message(move: Move) -> str:
    """The one-line refusal ``promote`` raises for `move` (whose refusals or leniency are not empty)."""
    return refusal(move).problem
