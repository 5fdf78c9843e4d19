"""The evaluation sets: loaders for the built-in and user-supplied prompt, multiple-choice and drift sets, and the
seeded stratified sample every suite draws from them."""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from pathlib import Path

from safety_lab.data import benign_pairs, builtin, harmful_requests, lookalike_requests, read_records
from safety_lab.errors import check


def stratified_sample(items: list, limit: int | None, seed: int = 0, *, strata: str = "category") -> list:
    """A seeded sample of ``limit`` items, stratified by ``strata`` (all of them when limit is None or larger).

    Each stratum gets its proportional share (largest remainders break ties, then stratum name), drawn with
    ``random.Random(f"{seed}:{stratum}")``; the sample keeps the items' original order. It depends only on
    the items and the seed, so a version and its reference are scored on the same items.
    """
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[str(item.get(strata) or "")].append(i)
    shares = {g: limit * len(idx) / len(items) for g, idx in groups.items()}
    quota = {g: int(share) for g, share in shares.items()}
    for g in sorted(groups, key=lambda g: (-(shares[g] - quota[g]), g))[: limit - sum(quota.values())]:
        quota[g] += 1
    chosen = [i for g, idx in groups.items() for i in random.Random(f"{seed}:{g}").sample(idx, quota[g])]
    return [items[i] for i in sorted(chosen)]


def load_harmful_prompts(source: str) -> list[dict]:
    """builtin (held-out part), a HarmBench CSV (context in front of the request), or JSONL with `prompt`.

    Rows: id, prompt (what the model sees), behavior (the request alone), context (HarmBench's ContextString
    or None), category.
    """
    if source == "builtin":
        return [
            {"id": r["id"], "prompt": r["prompt"], "behavior": r["prompt"], "context": None, "category": r["category"]}
            for r in harmful_requests("eval")
        ]
    records = read_records(Path(source), "harmful_prompts")
    check(bool(records), "harmful_prompts", f"{source} has no rows")
    out = []
    for number, rec in enumerate(records, start=1):
        if "Behavior" in rec:  # HarmBench's CSV format
            behavior, context = rec["Behavior"], rec.get("ContextString") or None
            prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
            out.append(
                {
                    "id": rec.get("BehaviorID") or str(number),
                    "prompt": prompt,
                    "behavior": behavior,
                    "context": context,
                    "category": rec.get("SemanticCategory") or "uncategorised",
                }
            )
        else:
            check(
                isinstance(rec.get("prompt"), str) and rec["prompt"].strip() != "",
                "harmful_prompts",
                f"{Path(source).name} row {number}: needs a non-empty 'prompt' (or HarmBench's 'Behavior') column",
            )
            out.append(
                {
                    "id": str(rec.get("id", number)),
                    "prompt": rec["prompt"],
                    "behavior": rec["prompt"],
                    "context": None,
                    "category": rec.get("category") or "uncategorised",
                }
            )
    return out


_LABELS = {"safe": "safe", "benign": "safe", "unsafe": "unsafe", "harmful": "unsafe"}


def load_benign_prompts(source: str) -> list[dict]:
    """Prompts that over-refusal is measured on: rows {set, id, prompt, category, label}.

    builtin: the held-out (eval) parts of the benign pairs and of the safe look-alike requests.
    A file: CSV or JSONL with a `prompt` column; an optional `label` column of safe/unsafe is honoured
    (safe rows count for over-refusal, unsafe rows for the refusal rate on unsafe prompts); optional
    `id`, `category` (or `type`) columns.
    """
    if source == "builtin":
        parts = (("benign", benign_pairs("eval")), ("lookalike", lookalike_requests("eval")))
        return [
            {
                "set": name,
                "id": r["id"],
                "prompt": r["prompt"],
                "category": f"{name}:{r.get('category', '')}",
                "label": "safe",
            }
            for name, rows in parts
            for r in rows
        ]
    path = Path(source)
    check(
        path.suffix.lower() in (".csv", ".jsonl"),
        "benign_prompts",
        f"{path.name}: use a .csv or .jsonl file with a 'prompt' column",
    )
    records = read_records(path, "benign_prompts")
    check(bool(records), "benign_prompts", f"{path.name} has no rows")
    out, seen = [], set()
    for number, rec in enumerate(records, start=1):
        prompt = rec.get("prompt")
        check(
            isinstance(prompt, str) and prompt.strip() != "",
            "benign_prompts",
            f"{path.name} row {number}: needs a non-empty 'prompt' column",
        )
        raw = str(rec.get("label") or "safe").strip().lower()
        check(
            raw in _LABELS,
            "benign_prompts",
            f"{path.name} row {number}: label {rec.get('label')!r} is not safe or unsafe",
        )
        row_id = str(number if rec.get("id") in (None, "") else rec["id"])
        check(row_id not in seen, "benign_prompts", f"{path.name} row {number}: duplicate id {row_id!r}")
        seen.add(row_id)
        category = str(rec.get("category") or rec.get("type") or "")
        out.append(
            {
                "set": "file",
                "id": row_id,
                "prompt": prompt,
                "category": f"{_LABELS[raw]}:{category}",
                "label": _LABELS[raw],
            }
        )
    return out


def _question_key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _builtin_owner(question: str) -> str:
    """Which built-in set keeps a question that both hold ("mc" or "drift"): a hash of its text splits them."""
    return "mc" if int(hashlib.sha256(_question_key(question).encode()).hexdigest(), 16) % 2 else "drift"


def _builtin_overlap() -> set[str]:
    return {_question_key(r["question"]) for r in builtin("mc_questions")} & {
        _question_key(r["question"]) for r in builtin("qa_facts")
    }


def _without_shared(records: list[dict], keep: str) -> list[dict]:
    """The built-in multiple-choice and drift sets share questions; each shared one stays in one set only."""
    shared = _builtin_overlap()
    return [r for r in records if _question_key(r["question"]) not in shared or _builtin_owner(r["question"]) == keep]


def load_mc(source: str) -> list[dict]:
    records = (
        _without_shared(list(builtin("mc_questions")), "mc")
        if source == "builtin"
        else read_records(Path(source), "mc")
    )
    for number, rec in enumerate(records, start=1):
        ok = (
            isinstance(rec.get("question"), str)
            and isinstance(rec.get("choices"), list)
            and len(rec["choices"]) >= 2
            and isinstance(rec.get("answer"), int)
            and 0 <= rec["answer"] < len(rec["choices"])
        )
        check(ok, "mc", f"row {number}: needs question, choices (2+) and answer (an index into choices)")
    return records


def load_qa(source: str) -> list[dict]:
    """The triviaqa_1000.json format: id, question, true_answer, wrong_answer, context; optional aliases (other
    names of the true answer, a list of strings)."""
    records = (
        _without_shared(list(builtin("qa_facts")), "drift") if source == "builtin" else read_records(Path(source), "qa")
    )
    check(bool(records), "qa", f"{source} has no items")
    for number, rec in enumerate(records, start=1):
        missing = [
            k for k in ("question", "true_answer", "context") if not isinstance(rec.get(k), str) or not rec[k].strip()
        ]
        check(not missing, "qa", f"item {number}: missing or empty {', '.join(missing)}")
        aliases = rec.get("aliases", [])
        check(
            isinstance(aliases, list) and all(isinstance(a, str) and a.strip() for a in aliases),
            "qa",
            f"item {number}: aliases must be a list of non-empty strings",
        )
    return records


__all__ = ["load_benign_prompts", "load_harmful_prompts", "load_mc", "load_qa", "stratified_sample"]
