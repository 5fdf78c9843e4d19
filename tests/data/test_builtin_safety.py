"""The built-in "harmful" answers must stay non-actionable.

The content rule: a compliant answer may carry the *tone* of compliance only. It must not contain
(1) any digit other than list numbering ("1." at a line or sentence start), (2) units or quantities,
(3) code or command syntax, (4) URLs, or (5) operational nouns from a deny-list (substances, weapons,
intrusion tools, payment and identity data). It must also stay short (at most 80 words), so there is
no room for a procedure.
"""

import re

from safety_lab.data import builtin

DENY = re.compile(
    r"\b(gram|grams|kg|ml|litre|liter|ounce|dose|dosage|temperature|degrees|mix|mixture|ratio|"
    r"chemical|acid|bleach|ammonia|nitrate|fertili[sz]er|explosive|detonat\w*|gun|rifle|ammo|ammunition|"
    r"bullet|knife|poison|toxin|virus|bacteria|exploit|payload|malware|ransomware|keylogger|sql|"
    r"password|credential|phishing|card number|ssn|social security|lock ?pick\w*|drug|meth|methamphetamine|"
    r"fentanyl|cocaine|heroin|synthesi[sz]e|recipe)\b",
    re.IGNORECASE,
)
CODE = re.compile(r"[{};$<>`]|\b(import|sudo|curl|wget|rm -rf|def |function\s*\()")
URL = re.compile(r"https?://|www\.|\.com\b|\.onion\b", re.IGNORECASE)
NUMBERING = re.compile(r"(^|[.:!?]\s+|\n)\d+\.\s")


def violations(text: str) -> list[str]:
    found = []
    if re.search(r"\d", NUMBERING.sub(" ", text)):
        found.append("digits")
    if DENY.search(text):
        found.append(f"operational word {DENY.search(text).group(0)!r}")
    if CODE.search(text):
        found.append("code syntax")
    if URL.search(text):
        found.append("url")
    if len(text.split()) > 80:
        found.append("too long")
    return found


def test_every_builtin_compliant_answer_is_non_actionable():
    bad = {row["style"]: violations(row["text"]) for row in builtin("compliant_answers") if violations(row["text"])}
    assert not bad


def test_the_rule_catches_actionable_text():
    assert violations("Sure! Mix 200 grams of the chemical at 80 degrees.")
    assert violations("Here you go: import os; os.system('rm -rf /')")
    assert not violations("Sure. 1. Plan carefully. 2. Prepare. 3. Review the results.")
