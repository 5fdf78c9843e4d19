"""bench/form_shortcut.py: the surface classifier finds an opening-word shortcut and reports chance without one."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
form_shortcut = pytest.importorskip("form_shortcut")

TOPICS = ["a cake", "a fence", "a poem", "a bridge", "a garden", "a boat", "a lamp", "a song", "a shelf", "a kite"]


def _rows(harmful_opening: str, safe_opening: str) -> list[tuple[str, int]]:
    return [(f"{harmful_opening} {t} for me", 1) for t in TOPICS] + [(f"{safe_opening} {t} for me", 0) for t in TOPICS]


def test_balanced_accuracy_is_the_mean_recall():
    assert form_shortcut.balanced_accuracy([1, 1, 1, 0], [1, 1, 1, 1]) == 0.5  # all one class: chance
    assert form_shortcut.balanced_accuracy([1, 1, 0, 0], [1, 0, 0, 0]) == 0.75


def test_an_opening_word_that_gives_the_label_away_is_found_within_the_form():
    found = form_shortcut.shortcut(_rows("Write", "Describe"), _rows("Write", "Describe"), resamples=200)
    n, accuracy, (low, _) = found["instruction"]
    assert n == 20 and accuracy == 1.0 and low > 0.5


def test_the_same_openings_for_both_labels_leave_chance():
    train = [(f"Write {t} now", y) for t in TOPICS for y in (0, 1)]
    n, accuracy, (low, high) = form_shortcut.shortcut(train, train, resamples=200)["instruction"]
    assert accuracy == 0.5 and low <= 0.5 <= high


@pytest.mark.parametrize("safe_set", sorted(form_shortcut.SAFE_SETS))
def test_the_builtin_train_split_gives_no_form_shortcut(safe_set):
    """Issue 20: trained on the built-in train split, the surface classifier is at chance on the tune split within
    each form (the interval of its balanced accuracy includes 0.5), against look-alikes and against benign rows."""
    found = form_shortcut.shortcut(
        form_shortcut.labelled(safe_set, "train"), form_shortcut.labelled(safe_set, "tune"), resamples=200
    )
    assert set(found) == set(form_shortcut.FORMS)
    shown = {form: f"{acc:.3f} [{low:.3f}, {high:.3f}]" for form, (_, acc, (low, high)) in found.items()}
    assert all(low <= 0.5 for _, _, (low, _) in found.values()), f"harmful vs {safe_set}: {shown}"
