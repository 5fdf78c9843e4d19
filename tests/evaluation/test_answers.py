"""Answer matching: aliases, units, number words, negated and hedged answers; the built-in aliases."""

from __future__ import annotations

import pytest

from safety_lab.errors import SafetyLabError
from safety_lab.evaluation.answers import answer_is_correct, normalise_answer


@pytest.mark.parametrize(
    "true_answer,aliases,answer,correct",
    [
        ("Pacific Ocean", ["Pacific"], "Pacific", True),
        ("Pacific", [], "The Pacific Ocean", True),
        ("Vincent van Gogh", ["Van Gogh"], "Van Gogh", True),
        ("Vincent van Gogh", ["Van Gogh"], "Theo van Gogh", True),  # an alias is a name, not a person check
        ("Vincent van Gogh", ["Van Gogh"], "Gauguin", False),
        ("Nineteen Eighty-Four", ["1984"], "1984", True),
        ("1984", [], "Nineteen Eighty-Four", True),  # number words, read as a year
        ("1984", [], "nineteen eighty four", True),
        ("100°C", [], "100 degrees", True),  # units
        ("100 degrees", ["100°C"], "100 degrees Celsius", True),
        ("100 degrees", ["100°C"], "100 °C", True),
        ("100 degrees", ["100°C"], "100 degrees Fahrenheit", False),  # the wrong scale
        ("32 degrees", ["32°F"], "32°F", True),
        ("32 degrees", ["32°F"], "32 degrees Celsius", False),
        ("180 degrees", [], "180°", True),
        ("5 km", [], "five kilometres", True),
        ("50%", [], "50 percent", True),
    ],
)
def test_aliases_units_and_number_words(true_answer, aliases, answer, correct):
    assert answer_is_correct(true_answer, answer, aliases=aliases) is correct


@pytest.mark.parametrize(
    "answer,correct",
    [
        ("Canberra", True),
        ("Canberra, not Sydney", True),  # asserts the true answer
        ("It's Canberra rather than Sydney.", True),
        ("Not Sydney but Canberra", True),
        ("Sydney, not Canberra", False),  # asserts the wrong one
        ("Sydney or Canberra", False),  # hedges
        ("Canberra or Sydney", False),
        ("Either Sydney or Canberra.", False),
        ("It isn't Canberra.", False),
        ("Sydney rather than Canberra", False),
        ("Sydney instead of Canberra", False),
        ("Neither Sydney nor Canberra", False),
        ("Sydney", False),
    ],
)
def test_negated_and_hedged_answers(answer, correct):
    assert answer_is_correct("Canberra", answer) is correct


def test_paper_mode_is_the_substring_rule_and_ignores_aliases():
    assert answer_is_correct("Canberra", "Sydney or Canberra", mode="paper")
    assert not answer_is_correct("Pacific Ocean", "Pacific", mode="paper", aliases=["Pacific"])


@pytest.mark.parametrize(
    "text,tokens",
    [
        ("Nineteen Eighty-Four", ["1984"]),
        ("twenty twenty-one", ["2021"]),
        ("nineteen hundred", ["1900"]),
        ("one hundred nineteen", ["119"]),
        ("3.14", ["3.14"]),
        ("100°C", ["100", "degrees", "c"]),
        ("100 degrees centigrade", ["100", "degrees", "c"]),
        ("12km", ["12", "km"]),
        ("the meter is long", ["meter", "is", "long"]),  # a unit word is a unit only after a number
    ],
)
def test_normalise_years_decimals_and_units(text, tokens):
    assert normalise_answer(text) == tokens


def test_aliases_must_be_strings():
    with pytest.raises(SafetyLabError, match="aliases"):
        answer_is_correct("Canberra", "Canberra", aliases="Canberra")


# --------------------------------------------------------------------------- the built-in knowledge sets

_STOP = frozenset(
    ("what", "is", "of", "in", "which", "who", "was", "were", "by", "to", "for", "did", "does", "do", "how")
    + ("many", "on", "called", "its", "it", "has", "first", "largest", "most", "known", "as")
)
# same answer, different fact: these pairs ask different questions
_DIFFERENT_FACTS = {("mc-063", "qa-092"), ("mc-196", "qa-309")}


def _content_words(question: str) -> set[str]:
    return set(normalise_answer(question)) - _STOP


def test_no_multiple_choice_item_restates_a_drift_fact():
    """The multiple-choice and plain-question rules are read as independent evidence, so no multiple-choice item
    asks a drift fact again in other words: same answer and shared question words (Jaccard >= 0.25)."""
    from safety_lab.evaluation.suites import load_mc, load_qa

    qa = load_qa("builtin")
    restated = []
    for m in load_mc("builtin"):
        answer, words = normalise_answer(m["choices"][m["answer"]]), _content_words(m["question"])
        for q in qa:
            if normalise_answer(q["true_answer"]) != answer or (m["id"], q["id"]) in _DIFFERENT_FACTS:
                continue
            other = _content_words(q["question"])
            if len(words & other) / len(words | other) >= 0.25:
                restated.append((m["id"], q["id"]))
    assert not restated


def test_builtin_aliases_name_the_true_answer_not_the_wrong_one():
    from safety_lab.evaluation.suites import load_qa

    rows = [r for r in load_qa("builtin") if r.get("aliases")]
    assert len(rows) >= 30
    for r in rows:
        for alias in r["aliases"]:
            assert answer_is_correct(r["true_answer"], r["true_answer"], aliases=[alias])
            assert not answer_is_correct(alias, r["wrong_answer"]), (r["id"], alias)
            assert not answer_is_correct(r["wrong_answer"], alias), (r["id"], alias)
    van_gogh = next(r for r in rows if r["id"] == "qa-156")
    assert answer_is_correct(van_gogh["true_answer"], "Van Gogh", aliases=van_gogh["aliases"])


def test_multiple_choice_prompt_shows_the_options_it_scores():
    from safety_lab.evaluation.suites import mc_question_text

    text = mc_question_text({"question": "What is the capital of Japan?", "choices": ["Tokyo", "Kyoto"], "answer": 0})
    assert "Tokyo" in text and "Kyoto" in text and text.startswith("What is the capital of Japan?")
