"""Whether a short free-text answer states the true answer: normalisation, aliases, units, hedges.

``mode="paper"`` is the paper's rule (a case-insensitive substring; it reproduces Table 4 of arXiv 2409.19476).
``mode="normalised"`` (the project's default) compares normalised tokens on word boundaries and accepts any of
the item's aliases (as TriviaQA does: "Pacific" / "Pacific Ocean"); an answer that negates the true answer
("Sydney, not Canberra") or hedges between it and another candidate ("Sydney or Canberra") is wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from safety_lab.errors import check

_NUMBER_WORDS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
        + ("thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
    )
}
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER_WORDS.update({w: 10 * i for i, w in enumerate(_TENS, 2)})
_NUMBER_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000}
_CENTURY_WORDS = {w for w, v in _NUMBER_WORDS.items() if 10 <= v <= 20}  # "nineteen" of "nineteen eighty-four"
_ARTICLES = frozenset({"a", "an", "the"})
_TOKEN = re.compile(r"[a-z0-9.]*[a-z0-9]")
# unit spellings -> one token, applied after a number ("100 metres" == "100 m"; "100 °C" == "100 degrees c")
_UNITS = {
    **dict.fromkeys(("degree", "degrees", "deg"), "degrees"),
    **dict.fromkeys(("metre", "metres", "meter", "meters", "m"), "m"),
    **dict.fromkeys(("kilometre", "kilometres", "kilometer", "kilometers", "km", "kms"), "km"),
    **dict.fromkeys(("centimetre", "centimetres", "centimeter", "centimeters", "cm"), "cm"),
    **dict.fromkeys(("kilogram", "kilograms", "kilo", "kilos", "kg", "kgs"), "kg"),
    **dict.fromkeys(("foot", "feet", "ft"), "ft"),
    **dict.fromkeys(("mile", "miles", "mi"), "miles"),
    **dict.fromkeys(("minute", "minutes", "min", "mins"), "minutes"),
    **dict.fromkeys(("percent", "pct"), "percent"),
}
_SCALES = {"c": "c", "celsius": "c", "centigrade": "c", "f": "f", "fahrenheit": "f", "k": "k", "kelvin": "k"}
_NEGATIONS = frozenset({"not", "isnt", "wasnt", "arent", "werent", "never", "nor"})
_NEGATING_PAIRS = frozenset({("rather", "than"), ("instead", "of")})
MATCH_MODES: tuple[str, ...] = ("normalised", "paper")


def _years(words: list[str]) -> list[str]:
    """A year read as two numbers becomes digits first: "nineteen eighty four" -> "1984", "twenty twenty" ->
    "2020" (a teen or "twenty", then 10-99 that is not the start of a larger number)."""
    out, i = [], 0
    while i < len(words):
        w, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
        after_number = bool(out) and (out[-1] in _NUMBER_WORDS or out[-1] in _NUMBER_SCALES)
        second = _NUMBER_WORDS.get(nxt, 0)
        if w in _CENTURY_WORDS and second >= 10 and not after_number:
            width = 2
            if nxt in _TENS and i + 2 < len(words) and 0 < _NUMBER_WORDS.get(words[i + 2], 0) < 10:
                second, width = second + _NUMBER_WORDS[words[i + 2]], 3
            if (words[i + width] if i + width < len(words) else "") not in _NUMBER_SCALES:
                out.append(str(_NUMBER_WORDS[w] * 100 + second))
                i += width
                continue
        out.append(w)
        i += 1
    return out


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Runs of number words become one number: "one hundred and forty four" -> "144", "twenty one" -> "21".

    A run ends where English would start a new number ("one two" -> "1 2", "thirty forty" -> "30 40").
    """
    out: list[str] = []
    total = current = 0
    last = None  # kind of the previous number word: "unit" (0-19), "ten" (20-90), "scale", "and"

    def flush():
        nonlocal total, current, last
        if last is not None:
            out.append(str(total + current))
        if last == "and":  # "one hundred and then": the "and" was a word, not part of the number
            out.append("and")
        total = current = 0
        last = None

    for w in _years(words):
        value = _NUMBER_WORDS.get(w)
        kind = None if value is None else ("unit" if value < 20 else "ten")
        after_unit = kind == "unit" and last == "unit"
        after_ten = kind == "ten" and last in ("unit", "ten") or kind == "unit" and last == "ten" and current % 10
        if after_unit or after_ten:
            flush()
        if kind is not None:
            current += value
            last = kind
        elif w in _NUMBER_SCALES and last != "and":
            scale = _NUMBER_SCALES[w]
            current = current or 1  # "a hundred" (the article is gone) = 100
            if scale == 100:
                current *= 100
            else:
                total, current = total + current * scale, 0
            last = "scale"
        elif w == "and" and last == "scale":
            last = "and"
        else:
            flush()
            out.append(w)
    flush()
    return out


def _units(words: list[str]) -> list[str]:
    """One spelling per unit after a number, and a temperature scale after "degrees" ("degrees celsius" ->
    "degrees c")."""
    out: list[str] = []
    for w in words:
        prev = out[-1] if out else ""
        if prev[:1].isdigit() and w in _UNITS:
            w = _UNITS[w]
        elif prev == "degrees" and w in _SCALES:
            w = _SCALES[w]
        out.append(w)
    return out


def normalise_answer(text: str | None) -> list[str]:
    """Tokens of an answer for matching: lower case, accents and punctuation dropped, articles removed,
    dotted acronyms joined ("U.S.A." -> "usa"), thousands separators joined ("1,000" -> "1000"), number words
    turned into digits ("six" -> "6", "Nineteen Eighty-Four" -> "1984") and units spelled one way ("100°C" and
    "100 degrees Celsius" -> "100 degrees c"; "5 kilometres" -> "5 km")."""
    if text is None:
        return []
    folded = unicodedata.normalize("NFKD", str(text).lower())
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    folded = re.sub(r"(?<=\d),(?=\d{3}\b)", "", folded)  # 1,000 -> 1000
    folded = re.sub(r"['\u2019]", "", folded)  # "new year's" -> "new years"
    folded = re.sub(r"\b(?:[a-z]\.){2,}", lambda m: m.group(0).replace(".", "") + " ", folded)  # u.s.a. -> usa
    folded = folded.replace("\u00b0", " degrees ").replace("%", " percent ")
    folded = re.sub(r"(?<=\d)(?=[a-z])", " ", folded)  # 100km -> 100 km
    folded = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", folded.replace("-", " "))  # keep decimal points only
    words = [w for w in _TOKEN.findall(folded) if w not in _ARTICLES]
    return _units(_numbers_to_digits(words))


def _negated(words: list[str], start: int) -> bool:
    before = words[max(start - 2, 0) : start]
    return bool(before) and (before[-1] in _NEGATIONS or tuple(before) in _NEGATING_PAIRS)


def _hedged(words: list[str], start: int, end: int) -> bool:
    return (start > 0 and words[start - 1] == "or") or (end < len(words) and words[end] == "or")


def _scale_conflict(words: list[str], end: int, scales: set[str]) -> bool:
    """A matched "... degrees" followed by a scale the references do not give ("100 degrees fahrenheit" for a
    Celsius fact)."""
    scale = words[end] if end < len(words) and words[end - 1] == "degrees" else ""
    return scale in _SCALES.values() and bool(scales) and scale not in scales


def _states(references: list[list[str]], words: list[str]) -> bool:
    """Some reference occurs in ``words`` on word boundaries, neither negated nor hedged with "or"."""
    scales = {r[i + 1] for r in references for i in range(len(r) - 1) if r[i] == "degrees"}
    # "100 degrees" states "100 degrees c": the scale may go unsaid, but a different one conflicts
    unscaled = [[w for j, w in enumerate(r) if not (j and r[j - 1] == "degrees" and w in scales)] for r in references]
    for target in references + unscaled:
        width = len(target)
        for i in range(len(words) - width + 1):
            if words[i : i + width] != target:
                continue
            if not (_negated(words, i) or _hedged(words, i, i + width) or _scale_conflict(words, i + width, scales)):
                return True
    return False


def answer_is_correct(
    true_answer: str, answer: str | None, *, mode: str = "normalised", aliases: Sequence[str] = ()
) -> bool:
    """Whether ``answer`` states ``true_answer`` (or, in normalised mode, one of its ``aliases``).

    A missing answer or an empty reference is wrong.
    mode="paper": the paper's rule, ``true_answer.lower() in answer.lower()`` (reproduces its Table 4); aliases
    are not used.
    mode="normalised": the normalised tokens of the true answer or an alias occur as a contiguous run of the
    answer's normalised tokens (word boundaries), e.g. "Six" matches "6 sides" but "L" does not match "Lisbon"
    and "5" does not match "1950"; an occurrence right after a negation ("not", "isn't", "never", "nor",
    "rather than", "instead of") or next to "or" does not count, so "Canberra, not Sydney" is right and
    "Sydney, not Canberra" and "Sydney or Canberra" are wrong.
    """
    check(mode in MATCH_MODES, "mode", f"must be one of {', '.join(MATCH_MODES)}, got {mode!r}")
    check(
        not isinstance(aliases, str) and all(isinstance(a, str) for a in aliases),
        "aliases",
        "must be a list of strings",
    )
    if answer is None or true_answer is None:
        return False
    true_answer, answer = str(true_answer), str(answer)
    if not true_answer.strip():
        return False  # an empty reference would match everything
    if mode == "paper":
        return true_answer.lower() in answer.lower()
    references = [t for t in (normalise_answer(r) for r in (true_answer, *aliases)) if t]
    if not references:  # a reference with no word characters (e.g. "%"): compare the stripped texts
        return true_answer.strip().lower() == answer.strip().lower()
    return _states(references, normalise_answer(answer))


__all__ = ["MATCH_MODES", "answer_is_correct", "normalise_answer"]
