"""The form shortcut: how well a request's surface alone tells a harmful request from a safe one, *within* a form.

    python bench/form_shortcut.py [--quick]

A classifier that sees only the surface (the form `form_of` reads, the opening two words, the length in words) is
trained on the built-in train split (harmful requests against look-alikes, and against benign requests) and tested
on the tune split, within each form. Issue 20 asks that the refusal decision not be predictable from form: the
target is a balanced accuracy whose 95% interval (stratified bootstrap) includes 0.5, chance. A model trained on
data that fails it can learn to refuse by opening word ("Write ...") rather than by harm. --quick: 200 bootstrap
resamples instead of 2000.
"""

from __future__ import annotations

import argparse
import os
import random
import re

import _common as C

from safety_lab.data import benign_pairs, harmful_requests, lookalike_requests
from safety_lab.data.forms import form_of

FORMS = ("question", "instruction")
SAFE_SETS = {"lookalike": lookalike_requests, "benign": benign_pairs}  # each set against the harmful requests


def surface(prompt: str) -> dict[str, float]:
    """The features a form-only classifier sees: form, opening one and two words, length (capped at 40 words)."""
    words = re.findall(r"[a-z']+", prompt.lower())
    return {
        f"form={form_of(prompt)}": 1.0,
        f"open1={' '.join(words[:1])}": 1.0,
        f"open2={' '.join(words[:2])}": 1.0,
        "length": min(len(words), 40) / 40,
    }


def balanced_accuracy(labels: list[int], predicted: list[int]) -> float:
    """Mean of the recall on each class present (0.5 is chance for two classes)."""
    recalls = []
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        recalls.append(sum(predicted[i] == cls for i in idx) / len(idx))
    return sum(recalls) / len(recalls)


def bootstrap_interval(labels, predicted, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the balanced accuracy, resampling within each class."""
    rng = random.Random(seed)
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in set(labels)}
    values = []
    for _ in range(resamples):
        idx = [rng.choice(members) for members in by_class.values() for _ in members]
        values.append(balanced_accuracy([labels[i] for i in idx], [predicted[i] for i in idx]))
    values.sort()
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def shortcut(train: list[tuple[str, int]], test: list[tuple[str, int]], resamples: int) -> dict[str, tuple]:
    """Per form: (n, balanced accuracy, interval) of the surface classifier trained on `train` (prompt, harmful)."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = DictVectorizer()
    X = vec.fit_transform([surface(p) for p, _ in train])
    clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit(X, [y for _, y in train])
    out = {}
    for form in FORMS:
        rows = [(p, y) for p, y in test if form_of(p) == form]
        if len({y for _, y in rows}) < 2:
            continue
        labels = [y for _, y in rows]
        predicted = [int(v) for v in clf.predict(vec.transform([surface(p) for p, _ in rows]))]
        out[form] = (len(rows), balanced_accuracy(labels, predicted), bootstrap_interval(labels, predicted, resamples))
    return out


def labelled(safe_set: str, part: str) -> list[tuple[str, int]]:
    """(prompt, harmful) for the built-in harmful requests and one safe set (a key of SAFE_SETS), in one part."""
    return [(r["prompt"], 1) for r in harmful_requests(part)] + [(r["prompt"], 0) for r in SAFE_SETS[safe_set](part)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 bootstrap resamples")
    args = parser.parse_args()
    resamples = 200 if args.quick else 2000
    results = {}
    for name in SAFE_SETS:
        for form, (n, acc, (low, high)) in shortcut(labelled(name, "train"), labelled(name, "tune"), resamples).items():
            ok = low <= 0.5
            print(
                f"{C.verdict(ok)}  harmful vs {name:<9} {form:<11} n={n:<4} balanced accuracy {acc:.3f} "
                f"[{low:.3f}, {high:.3f}] (target: the interval includes 0.5)"
            )
            results[f"{name}.{form}"] = acc
    C.save("form_shortcut", args.quick, results)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
