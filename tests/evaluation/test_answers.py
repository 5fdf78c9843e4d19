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
