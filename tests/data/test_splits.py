"""The three-way split: eval is exactly the held-out 25% it always was; tune is carved out of the old train part."""

import hashlib

import pytest

from safety_lab.data import (
    PARTS,
    benign_pairs,
    builtin,
    harmful_requests,
    lookalike_requests,
    split_of,
    split_sizes,
)
from safety_lab.errors import SafetyLabError

SETS = {"harmful_requests": harmful_requests, "benign_pairs": benign_pairs, "lookalike": lookalike_requests}


def _fingerprint(ids) -> str:
    return hashlib.sha256(",".join(sorted(ids)).encode()).hexdigest()


def test_eval_parts_are_exactly_the_held_out_items_of_before_the_tune_split():
    # sha256 of the sorted eval ids computed on main before the tune split existed (74 harmful, 37 benign)
    old_harmful = {r["id"] for r in builtin("harmful_requests")[:254]}  # those that existed then; new ones follow
    assert (
        _fingerprint(r["id"] for r in harmful_requests("eval") if r["id"] in old_harmful)
        == "93da1be609989950dd091eabc44571761077bfd30ad5f2d14a3252d07bc5e4f6"
    )
    old_benign = [r for r in benign_pairs("eval") if int(r["id"].split("-")[1]) <= 148]  # the pairs that existed then
    assert (
        _fingerprint(r["id"] for r in old_benign) == "8734f3d22ac82cdc92c237cfd4120fdba3cfa25a55dbeb00573324d9b1bdad17"
    )


@pytest.mark.parametrize("name", SETS)
def test_parts_are_disjoint_complete_and_deterministic(name):
    parts = {part: SETS[name](part) for part in PARTS}
    ids = {part: {r["id"] for r in rows} for part, rows in parts.items()}
    prompts = {part: {r["prompt"] for r in rows} for part, rows in parts.items()}
    for a, b in (("train", "tune"), ("train", "eval"), ("tune", "eval")):
        assert ids[a].isdisjoint(ids[b]) and prompts[a].isdisjoint(prompts[b])
    assert sum(len(rows) for rows in parts.values()) == len(builtin(name))
    assert all(SETS[name](part) == rows for part, rows in parts.items())
    held_in = len(parts["train"]) + len(parts["tune"])
    assert 0.15 <= len(parts["tune"]) / held_in <= 0.30  # about a quarter of the old train part
    assert all(split_of(r["id"]) == part for part, rows in parts.items() for r in rows)


def test_every_harmful_category_is_in_every_part():
    categories = {r["category"] for r in builtin("harmful_requests")}
    assert all({r["category"] for r in harmful_requests(part)} == categories for part in PARTS)


def test_split_sizes_name_every_set_and_part():
    sizes = split_sizes()
    assert set(sizes) == {f"{s}_{p}" for s in ("harmful", "benign", "lookalike") for p in PARTS}
    assert sizes["harmful_eval"] == 118 and sizes["lookalike_eval"] == len(lookalike_requests("eval"))
    assert sum(v for k, v in sizes.items() if k.startswith("lookalike_")) == len(builtin("lookalike"))


def test_an_unknown_part_is_a_one_line_error():
    with pytest.raises(SafetyLabError, match="part: must be one of train, tune, eval, got 'test'"):
        harmful_requests("test")
