"""safety_lab.names: each naming rule gives one answer wherever a name enters (config, policy, registry, server)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from safety_lab import names
from safety_lab.config import RunConfig
from safety_lab.errors import SafetyLabError
from safety_lab.policy import Policy, gate_rule, load_policy
from safety_lab.registry import find_versions
from safety_lab.registry.lifecycle import promote
from safety_lab.registry.moves import check_move
from safety_lab.server.config import GateConfig

MODEL_NAMES = ["m", "Qwen2.5-0.5B_safety.lora", "modèle", "模型", "Ａ", "a b", "a/b", "x" * 255, "x" * 256]
ALIASES = [
    "champion",
    " @champion ",
    "Prod-2_b",
    "latest",
    "LATEST",
    "v3",
    "V12",
    "v3a",
    "bad alias",
    "a.b",
    "é",
    "x" * 256,
]
STAGES = ["Production", "production", " staging ", "ARCHIVED", "none", "Prod", "Moon", "Champion"]


def _answer(call):
    """The value a check returns, or ('rejected', field) for the SafetyLabError it raises."""
    try:
        return call()
    except SafetyLabError as exc:
        return ("rejected", exc.field)


def _rejected(answer) -> bool:
    return isinstance(answer, tuple) and answer[:1] == ("rejected",)


def _version() -> SimpleNamespace:
    """An unevaluated version: the gate's evidence check needs no MLflow call for it."""
    return SimpleNamespace(name="m", version="1", tags={}, current_stage="None", source="/nowhere")


def test_a_non_ascii_model_name_is_rejected_when_the_config_is_built():
    with pytest.raises(SafetyLabError, match=r"^model_name: may hold letters, digits") as info:
        RunConfig(model_name="modèle")
    assert info.value.field == "model_name"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_config_and_the_registry_accept_the_same_model_names(mlflow_store, name):
    rule = _answer(lambda: names.model_name(name))
    assert _answer(lambda: RunConfig(model_name=name).model_name) == rule
    assert _answer(lambda: find_versions(name, {})) == (rule if _rejected(rule) else [])  # accepted: no versions yet


@pytest.mark.parametrize("text", ALIASES)
def test_an_alias_means_the_same_to_promote_the_server_gate_and_the_policy(mlflow_store, text):
    rule = _answer(lambda: names.alias(text))
    policy = load_policy()
    move = _answer(lambda: check_move(_version(), None, alias=text, policy=policy).alias)
    assert move == rule
    # promote parses the request before it reads the registry: an accepted alias fails later, on the model
    assert _answer(lambda: promote("no-such-model", version="1", alias=text)) == (
        rule if _rejected(rule) else ("rejected", "model_name")
    )
    gate = _answer(lambda: gate_rule(policy, text, alias=True))
    assert gate == (rule if _rejected(rule) else gate_rule(policy, rule, alias=True))
    keyed = {**policy.gate, text: ["pass"]}
    try:
        listed = Policy.model_validate({**policy.model_dump(), "gate": keyed}).gate
    except ValueError:
        assert _rejected(rule)
    else:
        assert rule in listed


@pytest.mark.parametrize("text", STAGES)
def test_a_stage_means_the_same_to_promote_the_server_gate_the_policy_and_the_server_config(mlflow_store, text):
    rule = _answer(lambda: names.stage(text))
    policy = load_policy()
    assert _answer(lambda: check_move(_version(), None, stage=text, policy=policy).stage) == rule
    assert _answer(lambda: promote("no-such-model", version="1", stage=text)) == (
        rule if _rejected(rule) else ("rejected", "model_name")
    )
    assert _answer(lambda: gate_rule(policy, text, alias=False)[1]) == rule
    try:
        environment = GateConfig(environments={"prod-*": text}).environments["prod-*"]
    except ValueError:
        environment = ("rejected", "stage")
    assert environment == rule
    if not _rejected(rule):  # a stage's gate key folds to the stage itself
        assert Policy.model_validate({**policy.model_dump(), "gate": {**policy.gate, text: ["pass"]}}).gate[rule] == (
            "pass",
        )
