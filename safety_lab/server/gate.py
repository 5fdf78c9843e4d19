"""One decision per gated request: allowed, allowed and audited as a move, or refused with a one-line reason.

Stage and alias moves go through ``registry.moves.check_move``, the same check ``promote`` makes. A copy into another
registered model (a ``models:/`` source: the UI's "Promote model") is checked against the rule of the environment
that model belongs to, and the copy starts ``unevaluated``: its own evaluation writes its safety tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab.errors import SafetyLabError
from safety_lab.models import parse_uri
from safety_lab.policy import Policy
from safety_lab.registry import UNEVALUATED
from safety_lab.registry.moves import check_move, refusal_message
from safety_lab.server import records
from safety_lab.server.audit import OVERRIDE_REASON
from safety_lab.server.config import GateConfig
from safety_lab.server.routes import is_safety_key, tag_pairs

OVERRIDE_RECORD = "safety.override."


@dataclass
class Verdict:
    refusal: str | None = None  # one line; None = allowed
    error_code: str = "PERMISSION_DENIED"
    move: Any = None  # a stage/alias move to audit around MLflow's own handler
    reason: str | None = None  # set when an approver forces a refused move
    rewrite: dict[str, Any] = field(default_factory=dict)  # request fields the gate replaces (a copy's tags)


ALLOW = Verdict()


@dataclass(frozen=True)
class Gate:
    config: GateConfig
    policy: Policy
    client: MlflowClient

    def decide(self, action: str, req: dict[str, Any], user: str | None) -> Verdict:
        """`user`: the account the server authenticated, else None."""
        try:
            return getattr(self, "_" + action)(req, user)
        except SafetyLabError as exc:
            return Verdict(f"safety gate: {exc}", "INVALID_PARAMETER_VALUE")

    # ------------------------------------------------------------------ moves
    def _move(self, name: str, version: str, user: str | None, **target) -> Verdict:
        mv = self.client.get_model_version(name, str(version))
        move = check_move(mv, self.client.get_registered_model(name), policy=self.policy, client=self.client, **target)
        if not (move.refusals or move.lenient):
            return Verdict(move=move)
        reason = str((mv.tags or {}).get(OVERRIDE_REASON) or "").strip()
        if user is not None and user in self.policy.approvers and reason:
            return Verdict(move=move, reason=reason)
        hint = (
            f"; as an approver, set the version tag {OVERRIDE_REASON} to your reason first to force it"
            if user is not None and user in self.policy.approvers
            else ""
        )
        return Verdict(f"safety gate: {refusal_message(move)}{hint}", move=move)

    def _stage(self, req: dict[str, Any], user: str | None) -> Verdict:
        return self._move(str(req.get("name", "")), str(req.get("version", "")), user, stage=str(req.get("stage", "")))

    def _set_alias(self, req: dict[str, Any], user: str | None) -> Verdict:
        return self._move(str(req.get("name", "")), str(req.get("version", "")), user, alias=str(req.get("alias", "")))

    def _delete_alias(self, req: dict[str, Any], user: str | None) -> Verdict:
        return ALLOW  # taking an alias away never needs evidence

    # ------------------------------------------------------------------ tags
    @staticmethod
    def _tag_refusal(key: str, problem: str | None) -> Verdict:
        if problem is None:
            return ALLOW
        return Verdict(f"safety gate: {problem if problem.startswith(key) else f'{key}: {problem}'}")

    def _account_problem(self, key: str, user: str | None) -> str | None:
        """Who may write safety.* tags at all: approvers the override tags, recorders (with auth) the rest."""
        if key == OVERRIDE_REASON or key.startswith(OVERRIDE_RECORD):
            if user is None or user not in self.policy.approvers:
                return "only an authenticated approver named by the policy may write override tags"
            return None
        if self.config.basic_auth and user not in self.config.recorders:
            return f"only the recorder accounts ({', '.join(self.config.recorders) or 'none configured'}) record"
        return None

    def _set_version_tag(self, req: dict[str, Any], user: str | None) -> Verdict:
        key, value = str(req.get("key", "")), str(req.get("value", ""))
        if not is_safety_key(key):
            return ALLOW
        problem = self._account_problem(key, user)
        if problem is None and not (key == OVERRIDE_REASON or key.startswith(OVERRIDE_RECORD)):
            mv = self.client.get_model_version(str(req.get("name", "")), str(req.get("version", "")))
            problem = records.version_tag_problem(self.client, self.policy, mv, key, value)
        return self._tag_refusal(key, problem)

    def _delete_version_tag(self, req: dict[str, Any], user: str | None) -> Verdict:
        key = str(req.get("key", ""))
        if not is_safety_key(key) or (key == OVERRIDE_REASON and self._account_problem(key, user) is None):
            return ALLOW
        return Verdict(f"safety gate: {key}: the evaluation's safety.* tags are never deleted by hand")

    def _run_tags(self, run_id: str, pairs: list[tuple[str, str]], user: str | None) -> Verdict:
        for key, value in pairs:
            if is_safety_key(key):
                problem = self._account_problem(key, user) or records.run_tag_problem(
                    self.client, self.policy, run_id, key, value
                )
                if problem:
                    return self._tag_refusal(key, problem)
        return ALLOW

    def _set_run_tag(self, req: dict[str, Any], user: str | None) -> Verdict:
        run_id = str(req.get("run_id") or req.get("run_uuid") or "")
        return self._run_tags(run_id, [(str(req.get("key", "")), str(req.get("value", "")))], user)

    def _log_batch(self, req: dict[str, Any], user: str | None) -> Verdict:
        return self._run_tags(str(req.get("run_id", "")), tag_pairs(req.get("tags")), user)

    def _delete_run_tag(self, req: dict[str, Any], user: str | None) -> Verdict:
        key = str(req.get("key", ""))
        if not is_safety_key(key):
            return ALLOW
        return Verdict(f"safety gate: {key}: an evaluation run's safety.* tags are never deleted")

    # ------------------------------------------------------------------ new versions and copies
    def _create_version(self, req: dict[str, Any], user: str | None) -> Verdict:
        source, name = str(req.get("source", "")), str(req.get("name", ""))
        tags = tag_pairs(req.get("tags"))
        if source.startswith("models:/"):
            return self._copy(source, name, tags, user)
        claims = [
            (k, v) for k, v in tags if is_safety_key(k) and (k, v.strip().lower()) != ("safety.status", UNEVALUATED)
        ]
        if claims:
            key = claims[0][0]
            return Verdict(f"safety gate: {key}: a new version has no evaluation yet; only safety.status=unevaluated")
        return ALLOW

    def _copy(self, source: str, name: str, tags: list[tuple[str, str]], user: str | None) -> Verdict:
        src_name, version, alias = parse_uri(source, "source")
        if version is None:
            version = self.client.get_model_version_by_alias(src_name, alias).version
        kept = [{"key": k, "value": v} for k, v in tags if not is_safety_key(k)]
        rewrite = {"tags": [*kept, {"key": "safety.status", "value": UNEVALUATED}]}
        stage = self.config.environment_of(name)
        if stage is None:
            return Verdict(rewrite=rewrite)
        verdict = self._move(src_name, str(version), None, stage=stage)
        if verdict.refusal:
            text = verdict.refusal.removeprefix("safety gate: ")
            return Verdict(f"safety gate: copy into '{name}' (a {stage} model): {text}", move=verdict.move)
        return Verdict(rewrite=rewrite)


def is_missing(exc: MlflowException) -> bool:
    """A request naming a model, version or run that does not exist: MLflow's own handler answers it."""
    return str(getattr(exc, "error_code", "")) == "RESOURCE_DOES_NOT_EXIST"
