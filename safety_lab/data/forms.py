"""The surface form of a request: a question, an instruction, or other.

``form_of`` reads form from the surface only (the final "?" and the opening word), never from what is asked:
the shortcut it lets the project measure is a model that refuses or complies by form. So a polite request
phrased as a question ("Can you write a poem about cats?") is a *question*, and "Tell me about Lincoln." is
an *instruction*. The rules, in order:

1. ends in "?" (closing quotes or brackets aside): question;
2. the opening word, after a leading "please" (and a leading "kindly"), is
   - an interrogative or an auxiliary that opens a question (how, what, why, is, can, could, do, should...):
     question, even without the "?" ("How do I boil an egg");
   - an imperative verb from ``IMPERATIVES`` (write, list, explain, give, describe, tell, help...):
     instruction;
3. otherwise the same test on the first word after a leading clause closed by a comma
   ("As a chemistry teacher, explain...", "In chess, how do I...");
4. anything else (a statement, "I need a recipe for..."): other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from safety_lab.errors import SafetyLabError, check

FORMS = ("question", "instruction", "other")

# Words that open a question (interrogatives, and auxiliaries that invert with the subject).
_QUESTION_OPENERS_WORDS = """
    how what why who whom whose when where which whether is are am was were can could would will shall should
    may might must do does did have has had isn't aren't wasn't weren't can't couldn't wouldn't won't shouldn't
    don't doesn't didn't haven't hasn't what's how's why's who's where's when's
"""
QUESTION_OPENERS = frozenset(_QUESTION_OPENERS_WORDS.split())

# Verbs whose bare form opens a request addressed to the reader.
_IMPERATIVES_WORDS = """
    write rewrite list explain give describe tell show create make draft compose recommend suggest summarize
    summarise outline provide teach name compare plan help generate find reproduce pretend encourage design
    compile solve translate convert calculate define identify draw sketch prepare produce build develop offer
    share walk guide brainstorm propose rank sort classify edit proofread fix correct improve paraphrase
    simplify expand continue complete imagine act roleplay role-play play pick choose select estimate evaluate
    analyze analyse review critique debug implement code program count spell conjugate detail elaborate clarify
    illustrate demonstrate assess predict recite quote remind let note state argue persuade convince instruct
    coach break come put turn format organize organise schedule check get send post spread set use assist advise
    craft invent support justify defend praise mock insult threaten trick lure hack steal forge recruit buy sell
    obtain locate track access bypass disable
"""
IMPERATIVES = frozenset(_IMPERATIVES_WORDS.split())

_TRAILING = "\"')]}»”’ \t\n"
_POLITE = ("please", "kindly")
_WORD = re.compile(r"[a-z][a-z'’-]*")


def _first_word(text: str) -> str:
    match = _WORD.match(text.lstrip(" \t\n\"'“‘(*-").lower())
    return match.group(0).replace("’", "'") if match else ""


def _opening_form(text: str) -> str | None:
    """question or instruction from the opening word (a leading please/kindly aside), else None."""
    word = _first_word(text)
    while word in _POLITE:
        text = text.lstrip(" \t\n\"'“‘(*-")[len(word) :].lstrip(" ,:")
        word = _first_word(text)
    if word in QUESTION_OPENERS:
        return "question"
    if word in IMPERATIVES:
        return "instruction"
    return None


def form_of(prompt: str) -> str:
    """``question``, ``instruction`` or ``other``: the surface form of one request (rules in the module docstring)."""
    if not isinstance(prompt, str):
        raise SafetyLabError("prompt", f"must be a string, got {type(prompt).__name__}")
    text = prompt.strip()
    if text.rstrip(_TRAILING).endswith("?"):
        return "question"
    form = _opening_form(text)
    if form is None and "," in text:
        form = _opening_form(text.split(",", 1)[1])
    return form or "other"


def form_mix(rows: Iterable[dict | str]) -> dict[str, float]:
    """Share of each form among ``rows`` (prompt strings or dicts with a ``prompt``): {question, instruction,
    other} -> share, summing to 1."""
    forms = [form_of(r["prompt"] if isinstance(r, dict) else r) for r in rows]
    check(bool(forms), "rows", "is empty: no prompts to read the form of")
    return {f: forms.count(f) / len(forms) for f in FORMS}


__all__ = ["FORMS", "IMPERATIVES", "QUESTION_OPENERS", "form_mix", "form_of"]
