"""What a built-in training set is made of: benign outweighs refusals, refusals fit their request, no silent caps."""

import re

import pytest

from safety_lab.config import DataConfig
from safety_lab.data import (
    answer_for,
    benign_pool,
    benign_prompts,
    builtin,
    composition,
    harmful_requests,
    load_dataset,
)
from safety_lab.errors import SafetyLabError

CATEGORIES = {r["category"] for r in builtin("harmful_requests")}


@pytest.mark.parametrize("name, kind", [("safe", "refusal"), ("harmful", "compliance")])
def test_default_set_has_at_least_two_benign_rows_per_harmful_row(name, kind):
    counts = composition(load_dataset(DataConfig(data=name)).rows)
    assert counts[kind] == len(harmful_requests("train"))
    assert counts["benign"] + counts["lookalike"] >= 2 * counts[kind]
    assert counts["lookalike"] >= 100  # the contrast with look-alikes is there by default, not only plain Q&A


def test_training_rows_never_come_from_the_tune_or_eval_parts():
    prompts = {r["prompt"] for r in load_dataset(DataConfig(data="safe")).rows}
    held = [
        r["prompt"]
        for name in ("harmful_requests", "benign_pairs", "lookalike")
        for r in builtin(name)
        if r["id"] not in {b["id"] for b in benign_pool()} | {h["id"] for h in harmful_requests("train")}
    ]
    assert held and not prompts & set(held)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.3, 2.0])
def test_benign_ratio_is_honoured_exactly(ratio):
    counts = composition(load_dataset(DataConfig(data="safe", benign_ratio=ratio, lookalike_copies=1)).rows)
    assert counts.get("benign", 0) + counts.get("lookalike", 0) == round(counts["refusal"] * ratio)


def test_lookalike_copies_repeat_the_look_alike_rows_only():
    once = load_dataset(DataConfig(data="safe", lookalike_copies=1)).rows
    twice = load_dataset(DataConfig(data="safe", lookalike_copies=2)).rows
    a, b = composition(once), composition(twice)
    assert b["lookalike"] == 2 * a["lookalike"] > 0
    assert (b["benign"], b["refusal"]) == (a["benign"], a["refusal"])
    assert {r["prompt"] for r in twice} == {r["prompt"] for r in once}  # the same prompts, nothing new mixed in
    train, val = load_dataset(DataConfig(data="safe", lookalike_copies=2)).split(0.2, seed=0)
    assert val and not {r["prompt"] for r in train} & {r["prompt"] for r in val}  # no copy on both sides
    with pytest.raises(SafetyLabError, match="lookalike_copies: must be in"):
        DataConfig(lookalike_copies=0)


def test_a_ratio_the_pool_cannot_fill_is_an_error_naming_benign_ratio_not_a_silent_cap():
    wanted = 5 * len(harmful_requests("train"))  # more than the pool holds
    message = rf"^benign_ratio: 5 asks for {wanted} benign rows .* pool has \d+"
    with pytest.raises(SafetyLabError, match=message) as info:
        load_dataset(DataConfig(data="safe", benign_ratio=5))
    assert "\n" not in str(info.value)


def test_every_refusal_fits_its_request_category():
    styles = {r["text"]: set(r.get("categories", CATEGORIES)) for r in builtin("refusals")}
    by_prompt = {r["prompt"]: r["category"] for r in harmful_requests("train")}
    rows = [r for r in load_dataset(DataConfig(data="safe")).rows if r["kind"] == "refusal"]
    assert rows and all(by_prompt[r["prompt"]] in styles[r["response"]] for r in rows)
    empathetic = next(r["text"] for r in builtin("refusals") if r["style"] == "empathetic")
    fraud = [r for r in builtin("harmful_requests") if r["category"] == "fraud_scams"]
    assert all(answer_for(r, "refusals") != empathetic for r in fraud)


def test_each_category_keeps_a_variety_of_refusals_including_its_own():
    for category in CATEGORIES:
        fitting = [r for r in builtin("refusals") if category in r.get("categories", CATEGORIES)]
        assert len(fitting) >= 12, category
        assert any(r["categories"] == [category] for r in fitting), category  # at least one written for it alone


def test_distilled_answers_replace_the_written_ones_and_are_required():
    cfg = DataConfig(data="safe", benign_answers="distilled")
    with pytest.raises(SafetyLabError, match="benign_answers: distilled needs the base model's answers"):
        load_dataset(cfg)
    answers = {p: f"own answer {i}" for i, p in enumerate(benign_prompts())}
    answers[benign_prompts()[0]] = ""  # the model said nothing: the written answer stays
    rows = load_dataset(cfg, answers=answers).rows
    benign = [r for r in rows if r["kind"] in ("benign", "lookalike")]
    written = {b["prompt"]: b["response"] for b in benign_pool()}
    assert all(r["response"] == (answers[r["prompt"]] or written[r["prompt"]]) for r in benign)
    assert load_dataset(DataConfig(data="safe"), answers=answers).rows != rows  # written mode ignores them
    with pytest.raises(SafetyLabError, match="benign prompt.* have no distilled answer"):
        load_dataset(cfg, answers={})


def test_user_files_are_counted_as_user_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n', encoding="utf-8")
    assert composition(load_dataset(DataConfig(data=str(path))).rows) == {"user": 2}


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def test_training_never_asks_a_multiple_choice_or_drift_question():
    knowledge = {_norm(r["question"]) for name in ("mc_questions", "qa_facts") for r in builtin(name)}
    trained = load_dataset(DataConfig(data="safe")).rows
    assert not {_norm(r["prompt"]) for r in trained} & knowledge
    marked = {r["prompt"] for r in builtin("benign_pairs") if r.get("same_fact_as")}
    assert len(marked) >= 10 and not marked & {r["prompt"] for r in trained}
