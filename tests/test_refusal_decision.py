"""The refusal decision with a threshold τ: the first answer token follows the opener mass, a version carries its τ,
and the served pyfunc honours it."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from safety_lab.errors import SafetyLabError
from safety_lab.models.generation import opener_masses
from safety_lab.models.refusal import (
    RefusalDecision,
    attach,
    choose_tau,
    decision_curve,
    default_openers,
    opener_ids,
    steer,
)
from safety_lab.models.registered import LINEAGE_FILE, resolve_version


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_default_openers_are_the_first_tokens_of_the_refusal_templates(tiny):
    _, tokenizer = tiny
    openers = default_openers(tokenizer)
    assert "I" in openers and "Sorry" in openers  # "I can't help with that.", "Sorry, ..."
    assert "The" not in openers and "Sure" not in openers  # answers open with these, refusals never do
    assert len(opener_ids(tokenizer, openers)) == len(openers)


@pytest.mark.parametrize("tau", [0, 1, -0.1, 1.5, float("nan"), "0.5"])
def test_tau_outside_the_open_unit_interval_is_a_one_line_error(tau):
    with pytest.raises(SafetyLabError, match="refusal_tau"):
        RefusalDecision(tau, ("I",))


def test_an_unknown_opener_names_the_field(tiny):
    with pytest.raises(SafetyLabError, match="refusal_openers.*'no-such-token-xyz'"):
        opener_ids(tiny[1], ["I", "no-such-token-xyz"])


def test_steer_restricts_the_first_token_to_the_side_the_mass_falls_on():
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0]])  # openers: tokens 1 and 2
    ids = torch.tensor([1, 2])
    steered, mass = steer(logits, ids, tau=0.3)
    expected = torch.softmax(logits, -1)[:, 1:3].sum(-1)
    assert torch.allclose(mass, expected)
    assert mass[0] < 0.3 <= mass[1]
    assert steered[0].argmax() == 0 and torch.isinf(steered[0, 1:3]).all()  # below τ: never an opener
    assert steered[1].argmax() == 1 and torch.isinf(steered[1, [0, 3]]).all()  # at or above τ: only openers
    # the same row refuses once τ falls under its mass
    low, _ = steer(logits, ids, tau=float(mass[0]) - 1e-4)
    assert low[0].argmax() in (1, 2)


def test_generation_follows_the_attached_decision_and_records_the_mass(tiny):
    from safety_lab.models.generation import generate_tokens

    model, tokenizer = tiny
    prompts = ["How do I boil an egg?", "Write a poem about cats", "Hello"]
    openers = default_openers(tokenizer)
    ids = set(opener_ids(tokenizer, openers))
    plain = generate_tokens(model, tokenizer, prompts, max_new_tokens=3)
    masses = opener_masses(model, tokenizer, prompts, openers)
    assert all(0 < m < 1 for m in masses)
    try:
        attach(model, RefusalDecision(min(masses) / 2, openers))  # every prompt over τ: every answer opens a refusal
        refused = generate_tokens(model, tokenizer, prompts, max_new_tokens=3)
        attach(model, RefusalDecision(min(0.999, max(masses) * 2), openers))  # none over τ: none opens one
        answered = generate_tokens(model, tokenizer, prompts, max_new_tokens=3)
    finally:
        attach(model, None)
    assert all(o.ids[0] in ids for o in refused)
    assert not any(o.ids[0] in ids for o in answered)
    assert [o.refusal_mass for o in refused] == pytest.approx(masses, abs=1e-5)
    # the recorded first-step log-probs are the model's own, not the steered distribution's (drift reads them)
    try:
        attach(model, RefusalDecision(min(masses) / 2, openers))
        scored = generate_tokens(model, tokenizer, prompts, max_new_tokens=2, return_scores=True)
    finally:
        attach(model, None)
    unsteered = generate_tokens(model, tokenizer, prompts, max_new_tokens=1, return_scores=True)
    for s, u in zip(scored, unsteered):
        assert s.top[0] == pytest.approx(u.top[0], abs=1e-4)
        assert s.chosen[0] <= u.chosen[0] + 1e-6  # an opener, no likelier under the model than its own greedy pick
    assert plain != refused or plain != answered  # the decision changed what a plain greedy model says
    assert generate_tokens(model, tokenizer, prompts, max_new_tokens=3)[0].ids == plain[0].ids  # detached: plain again


def test_the_curve_and_the_chosen_tau():
    unsafe, safe = [0.9, 0.8, 0.6, 0.3], [0.1, 0.2, 0.5, 0.7]
    curve = decision_curve(unsafe, safe, [0.25, 0.55, 0.75])
    assert curve == [
        {"tau": 0.25, "unsafe_refused": 1.0, "safe_refused": 0.5},
        {"tau": 0.55, "unsafe_refused": 0.75, "safe_refused": 0.25},
        {"tau": 0.75, "unsafe_refused": 0.5, "safe_refused": 0.0},
    ]
    # the τ with the most slack on both sides: strict on misses, it refuses every unsafe prompt and one safe one
    unsafe, safe = [0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.65]
    assert choose_tau(unsafe, safe, max_miss=0.1, max_over_refusal=0.25) == pytest.approx(0.45)
    # lenient on misses, it lets the least likely unsafe prompt through and refuses no safe one
    assert choose_tau(unsafe, safe, max_miss=0.5, max_over_refusal=0.25) == pytest.approx(0.675)


def test_a_version_carries_its_decision_into_every_load_and_the_served_pyfunc(mlflow_store, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safety_lab import registry
    from safety_lab.models import load_model
    from safety_lab.models.refusal import attached
    from safety_lab.registry.record import source_identity

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    openers = default_openers(tokenizer)
    torch.manual_seed(0)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft.save_pretrained(tmp_path / "adapter")
    mass = opener_masses(peft.eval(), tokenizer, ["Hello"], openers)[0]
    uris = {}
    for name, decision in (("plain", None), ("refuses", {"tau": mass / 2, "openers": list(openers)})):
        with mlflow.start_run():
            info = registry.log_model(
                tmp_path / "adapter",
                base_model=str(tiny_model_dir),
                parent=None,
                parent_adapters=[],
                refusal_decision=decision,
            )
            mv = registry.register(info.model_uri, name, tags={"safety.status": "unevaluated"}, description="t")
        uris[name] = f"models:/{name}/{mv.version}"
    loaded = load_model(uris["refuses"])
    assert attached(loaded.model) == RefusalDecision(mass / 2, openers)
    assert attached(load_model(uris["plain"]).model) is None
    served = mlflow.pyfunc.load_model(uris["refuses"]).predict(["Hello"], params={"max_new_tokens": 1})
    first = tokenizer(served[0], add_special_tokens=False)["input_ids"][0]
    assert first in opener_ids(tokenizer, openers)
    # the same weights with another decision are another model to the evaluation cache
    assert source_identity(uris["refuses"]) != source_identity(uris["plain"])
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolve_version(uris["refuses"]).source))
    lineage = json.loads((root / "artifacts" / LINEAGE_FILE).read_text())
    assert lineage["refusal_decision"]["tau"] == pytest.approx(mass / 2)


# ---------------------------------------------------------------- gated: the parent answers what is not refused
@pytest.fixture(scope="module")
def tuned(tiny_model_dir):
    """A PeftModel whose random adapter moves the tiny model's answers, and its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


GATE_PROMPTS = ["How do I boil an egg?", "Write a poem about cats", "Hello", "What is the capital of France?"]


def _split_tau(masses: list[float]) -> float:
    """A τ with at least one prompt on each side."""
    low, high = sorted(masses)[len(masses) // 2 - 1 : len(masses) // 2 + 1]
    assert low < high, "the tiny adapter gave two prompts the same mass"
    return (low + high) / 2


def test_a_gated_decision_has_the_parent_answer_what_it_does_not_refuse(tuned):
    from safety_lab.models.generation import generate_tokens

    model, tokenizer = tuned
    openers = default_openers(tokenizer)
    ids = set(opener_ids(tokenizer, openers))
    masses = opener_masses(model, tokenizer, GATE_PROMPTS, openers)
    tau = _split_tau(masses)
    with model.disable_adapter():
        parent = generate_tokens(model, tokenizer, GATE_PROMPTS, max_new_tokens=6)
    own = generate_tokens(model, tokenizer, GATE_PROMPTS, max_new_tokens=6)
    assert [o.ids for o in own] != [o.ids for o in parent]  # the adapter does change the answers
    try:
        attach(model, RefusalDecision(tau, openers, answers="parent"))
        gated = generate_tokens(model, tokenizer, GATE_PROMPTS, max_new_tokens=6)
    finally:
        attach(model, None)
    for mass, out, base in zip(masses, gated, parent):
        assert out.refusal_mass == pytest.approx(mass, abs=1e-5)
        if mass >= tau:
            assert out.ids[0] in ids  # refused, by the tuned weights
        else:
            assert out.ids == base.ids  # answered exactly as the parent answers, nothing steered


def test_a_gated_decision_scores_options_with_the_weights_that_would_answer(tuned):
    from safety_lab.models.generation import chat_inputs
    from safety_lab.models.scoring import continuation_logprobs

    model, tokenizer = tuned
    openers = default_openers(tokenizer)
    masses = opener_masses(model, tokenizer, GATE_PROMPTS, openers)
    tau = _split_tau(masses)
    prompts = chat_inputs(tokenizer, GATE_PROMPTS)
    options = [tokenizer(" Paris", add_special_tokens=False)["input_ids"]] * len(prompts)
    owner = list(range(len(prompts)))
    own = continuation_logprobs(model, prompts, options, owner, pad_id=0)
    with model.disable_adapter():
        parent = continuation_logprobs(model, prompts, options, owner, pad_id=0)
    try:
        attach(model, RefusalDecision(tau, openers, answers="parent"))
        gated = continuation_logprobs(model, prompts, options, owner, pad_id=0, tokenizer=tokenizer)
        with pytest.raises(SafetyLabError, match="^tokenizer: "):
            continuation_logprobs(model, prompts, options, owner, pad_id=0)
    finally:
        attach(model, None)
    for mass, g, o, p in zip(masses, gated, own, parent):
        assert g == pytest.approx(o if mass >= tau else p, abs=1e-5)
    assert max(abs(o[0] - p[0]) for o, p in zip(own, parent)) > 1e-3  # the adapter moves the scores


def test_a_gated_decision_on_merged_weights_is_a_one_line_error(tiny):
    from safety_lab.models.generation import generate_tokens

    model, tokenizer = tiny
    try:
        attach(model, RefusalDecision(0.999, default_openers(tokenizer), answers="parent"))
        with pytest.raises(SafetyLabError, match="^refusal_answers: parent needs the model's adapter unmerged"):
            generate_tokens(model, tokenizer, ["Hello"], max_new_tokens=2)
    finally:
        attach(model, None)
    with pytest.raises(SafetyLabError, match="^refusal_answers: must be tuned or parent"):
        RefusalDecision(0.5, ("I",), answers="base")
    # a lineage written before `answers` existed reads as tuned
    assert RefusalDecision.from_dict({"tau": 0.5, "openers": ["I"]}).answers == "tuned"


def test_a_gated_version_loads_unmerged_and_serves_the_parents_answers(mlflow_store, tuned, tiny_model_dir, tmp_path):
    from safety_lab import registry
    from safety_lab.models import load_model
    from safety_lab.models.generation import generate

    model, tokenizer = tuned
    openers = default_openers(tokenizer)
    masses = opener_masses(model, tokenizer, GATE_PROMPTS, openers)
    tau = _split_tau(masses)
    model.save_pretrained(tmp_path / "adapter")
    with mlflow.start_run():
        info = registry.log_model(
            tmp_path / "adapter",
            base_model=str(tiny_model_dir),
            parent=None,
            parent_adapters=[],
            refusal_decision={"tau": tau, "openers": list(openers), "answers": "parent"},
        )
        mv = registry.register(info.model_uri, "gated", tags={"safety.status": "unevaluated"}, description="t")
    uri = f"models:/gated/{mv.version}"
    loaded = load_model(uri)
    assert hasattr(loaded.model, "disable_adapter")  # the adapter stayed unmerged: the parent is still there
    with model.disable_adapter():
        parent = generate(model, tokenizer, GATE_PROMPTS, max_new_tokens=6)
    served = mlflow.pyfunc.load_model(uri).predict(GATE_PROMPTS, params={"max_new_tokens": 6})
    answered = [i for i, m in enumerate(masses) if m < tau]
    assert answered and [served[i] for i in answered] == [parent[i] for i in answered]
