"""safety_lab.server without a server: which requests are gated, the configuration, and each decision of the gate
on a local store (the same decisions tests/team/test_gate_server.py sees through a real `mlflow server`)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from safety_lab import compat, evaluations
from safety_lab.errors import SafetyLabError
from safety_lab.evaluation import EvalConfig, EvalReport, SuiteResult
from safety_lab.policy import load_policy
from safety_lab.server import records
from safety_lab.server.config import GateConfig, load_config
from safety_lab.server.gate import Gate
from safety_lab.server.routes import action_of, fields

ROOT = Path(__file__).resolve().parents[2]
MEASURED = {
    "pass": {"asr": 0.07, "asr_ci_low": 0.03, "asr_ci_high": 0.16, "asr_n": 120.0},
    "fail": {"asr": 0.91, "asr_ci_low": 0.82, "asr_ci_high": 0.96, "asr_n": 120.0},
}
for _m in MEASURED.values():  # every other rule of the packaged policy measured, on enough items, within its limit
    _m.update({f"over_refusal_rate{form}": 0.04 for form in ("", "_question", "_instruction")})
    _m.update({n: 260.0 for n in ("over_refusal_n", "over_refusal_rate_question_n", "over_refusal_rate_instruction_n")})
    _m.update(non_answer_rate=0.02, non_answer_n=120.0, asr_delta=0.0, asr_delta_p=1.0)
    _m.update({f"{m}_delta{ref}": 0.0 for m in ("drift_accuracy_false_info",) for ref in ("", "_vs_base")})
    _m.update({f"{m}_delta_vs_base_ci_low": -0.01 for m in ("mc_accuracy", "drift_accuracy_base")})
    _m.update({f"smooth_ece_delta{ref}_ci_high": 0.02 for ref in ("", "_vs_base")})


# --------------------------------------------------------------------------- routes, config, pins


@pytest.mark.parametrize(
    "path, method, action",
    [
        ("/api/2.0/mlflow/model-versions/transition-stage", "POST", "stage"),
        ("/ajax-api/2.0/mlflow/model-versions/transition-stage", "POST", "stage"),
        ("/prefix/ajax-api/2.0/mlflow/registered-models/alias", "POST", "set_alias"),
        ("/api/2.0/mlflow/registered-models/alias", "DELETE", "delete_alias"),
        ("/api/2.0/mlflow/model-versions/set-tag", "POST", "set_version_tag"),
        ("/api/2.0/mlflow/model-versions/create", "POST", "create_version"),
        ("/api/2.0/mlflow/runs/log-batch", "POST", "log_batch"),
        ("/api/2.0/mlflow/registered-models/alias", "GET", None),
        ("/api/2.0/mlflow/experiments/search", "POST", None),
        ("/ajax-api/2.0/mlflow/model-versions/get", "GET", None),
        ("/static-files/index.html", "GET", None),
    ],
)
def test_only_registry_and_run_writes_are_gated(path, method, action):
    assert action_of(path, method) == action


def test_fields_take_the_body_over_query_arguments():
    assert fields({"name": "q", "alias": "a"}, {"name": "b"}) == {"name": "b", "alias": "a"}
    assert fields({"name": "q"}, None) == {"name": "q"}


def test_config_defaults_environments_and_one_line_errors(tmp_path):
    config = load_config(None)
    assert config.environment_of("prod-chat") == "Production" and config.environment_of("chat") is None
    path = tmp_path / "gate.yaml"
    path.write_text("environments: {'live-*': production}\nrecorders: [bot]\n")
    assert load_config(path).environment_of("live-x") == "Production" and load_config(path).recorders == ("bot",)
    path.write_text("environments: {'live-*': Prod}\n")
    with pytest.raises(SafetyLabError, match=r"^SAFETY_LAB_GATE_CONFIG: .*environments: 'Prod' is not a stage"):
        load_config(path)
    path.write_text("aproovers: [x]\n")
    with pytest.raises(SafetyLabError, match=r"aproovers: unknown key$"):
        load_config(path)


def test_the_entry_point_is_the_app_factory_and_the_mlflow_names_are_the_pinned_ones():
    value = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["mlflow.app"]
    module, name = value["safety-gate"].split(":")
    assert callable(getattr(importlib.import_module(module), name))
    from mlflow.server import constants

    assert compat.BACKEND_STORE_ENV == constants.BACKEND_STORE_URI_ENV_VAR
    assert compat.REGISTRY_STORE_ENV == constants.REGISTRY_STORE_URI_ENV_VAR
    assert compat.ARTIFACTS_DESTINATION_ENV == constants.ARTIFACTS_DESTINATION_ENV_VAR


def test_policy_approvers_default_to_nobody(tmp_path):
    assert load_policy().approvers == ()
    path = tmp_path / "p.yaml"
    path.write_text("approvers: [alice]\n")
    assert load_policy(path).approvers == ("alice",)


# --------------------------------------------------------------------------- decisions on a local store


@pytest.fixture
def versions(mlflow_store, tmp_path, monkeypatch):
    """add(status) -> version of model 'm', evaluated by the real recorder with fixed measurements."""
    by_uri: dict[str, dict] = {}
    monkeypatch.setattr(
        evaluations,
        "evaluate",
        lambda loaded, cfg, **kw: EvalReport(
            model_uri=loaded.spec, suites={"asr": SuiteResult(dict(by_uri[loaded.spec]))}
        ),
    )
    monkeypatch.setattr(evaluations, "load_model", lambda spec, **kw: SimpleNamespace(spec=spec))
    monkeypatch.setattr(evaluations, "_log_card", lambda *a, **k: None)
    client = MlflowClient()
    client.create_registered_model("m")
    (tmp_path / "dummy").mkdir()

    def add(status: str) -> str:
        version = str(
            client.create_model_version("m", str(tmp_path / "dummy"), tags={"safety.status": "unevaluated"}).version
        )
        by_uri[f"models:/m/{version}"] = MEASURED[status]
        evaluations.evaluate_version(f"models:/m/{version}", EvalConfig(suites="asr"))
        return version

    add.client = client
    return add


def _gate(client, *, approvers=(), **config) -> Gate:
    policy = load_policy().model_copy(update={"approvers": tuple(approvers)})
    return Gate(GateConfig(**config), policy, client)


def test_a_fail_version_is_refused_with_the_rule_and_a_pass_version_moves(versions):
    gate = _gate(versions.client)
    v_fail, v_pass = versions("fail"), versions("pass")
    verdict = gate.decide("stage", {"name": "m", "version": v_fail, "stage": "production"}, None)
    assert verdict.refusal.startswith(f"safety gate: m version {v_fail} is 'fail', Production needs pass; reasons: asr")
    assert verdict.move is not None  # so that the refusal is audited
    verdict = gate.decide("set_alias", {"name": "m", "version": v_fail, "alias": "champion"}, None)
    assert "@champion needs pass" in verdict.refusal
    verdict = gate.decide("stage", {"name": "m", "version": v_pass, "stage": "Production"}, None)
    assert verdict.refusal is None and verdict.move.target == "Production" and verdict.reason is None
    assert gate.decide("delete_alias", {"name": "m", "alias": "champion"}, None).refusal is None


def test_only_an_approver_with_a_reason_forces_a_refused_move(versions):
    v = versions("fail")
    gate = _gate(versions.client, approvers=["alice"])
    move = {"name": "m", "version": v, "stage": "Production"}
    assert "set the version tag safety.override_reason" in gate.decide("stage", move, "alice").refusal
    reason = {"name": "m", "version": v, "key": "safety.override_reason", "value": "hotfix"}
    assert "approver" in gate.decide("set_version_tag", reason, "bob").refusal
    assert "approver" in gate.decide("set_version_tag", reason, None).refusal
    assert gate.decide("set_version_tag", reason, "alice").refusal is None
    versions.client.set_model_version_tag("m", v, "safety.override_reason", "hotfix")
    assert gate.decide("stage", move, "bob").refusal is not None
    verdict = gate.decide("stage", move, "alice")
    assert verdict.refusal is None and verdict.reason == "hotfix"


def test_a_copy_into_a_production_model_is_a_promotion_and_starts_unevaluated(versions):
    gate = _gate(versions.client)
    v_fail, v_pass = versions("fail"), versions("pass")
    tags = [{"key": "safety.status", "value": "pass"}, {"key": "data.name", "value": "safe"}]
    verdict = gate.decide("create_version", {"name": "prod-m", "source": f"models:/m/{v_fail}", "tags": tags}, None)
    assert verdict.refusal.startswith("safety gate: copy into 'prod-m' (a Production model): m version")
    for target in ("prod-m", "scratch"):
        verdict = gate.decide("create_version", {"name": target, "source": f"models:/m/{v_pass}", "tags": tags}, None)
        assert verdict.refusal is None
        assert verdict.rewrite["tags"] == [
            {"key": "data.name", "value": "safe"},
            {"key": "safety.status", "value": "unevaluated"},
        ]
    new = {"name": "m", "source": "/x", "tags": [{"key": "safety.status", "value": "pass"}]}
    assert "a new version has no evaluation yet" in gate.decide("create_version", new, None).refusal
    new["tags"] = [{"key": "safety.status", "value": "unevaluated"}]
    assert gate.decide("create_version", new, None).refusal is None


def test_safety_tags_must_agree_with_the_evaluation_run(versions):
    client = versions.client
    policy = load_policy()
    v = versions("fail")
    mv = client.get_model_version("m", v)
    run_id = mv.tags["safety.eval_run_id"]
    assert records.status_problem(client, policy, mv, "pass") is not None
    assert records.status_problem(client, policy, mv, "fail") is None
    assert records.status_problem(client, policy, mv, "unevaluated") is None
    assert "changes only while the version is unevaluated" in records.version_tag_problem(
        client, policy, mv, "safety.asr", "0.01"
    )
    client.set_model_version_tag("m", v, "safety.status", "unevaluated")
    mv = client.get_model_version("m", v)
    assert "disagrees with evaluation run" in records.version_tag_problem(client, policy, mv, "safety.asr", "0.01")
    for key in ("safety.asr", "safety.reasons", "safety.policy", "safety.reference", "safety.eval_run_id"):
        assert records.version_tag_problem(client, policy, mv, key, mv.tags[key]) is None, key
    assert "not a tag the evaluation recorder writes" in records.version_tag_problem(
        client, policy, mv, "safety.x", "1"
    )
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    assert "no evaluation of this version" in records.version_tag_problem(
        client, policy, mv, "safety.eval_run_id", other
    )
    assert "is FINISHED" in records.run_tag_problem(client, policy, run_id, "safety.status", "pass")
    client.log_metric(other, "asr", 0.9)
    assert "decides" in records.run_tag_problem(client, policy, other, "safety.status", "pass")
