"""Preference pairs for the DPO stage, from a built-in set's training rows: each row's own answer is preferred over
the opposite behaviour (a harmful request's refusal over a compliant answer; a safe request's answer over a refusal)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from safety_lab.data import _pick, answer_for, builtin, harmful_requests
from safety_lab.errors import check

KINDS = ("refusal", "compliance", "benign", "lookalike")
GENERIC_REFUSAL = 11  # a refusal style written for at least this many categories reads as a refusal of anything


def _generic_refusals() -> list[dict]:
    return [r for r in builtin("refusals") if len(r.get("categories", ())) >= GENERIC_REFUSAL]


def preference_pairs(rows: Iterable[dict], complied: Mapping[str, str] | None = None) -> list[dict]:
    """prompt/chosen/rejected rows, one per distinct prompt of `rows` (built-in training rows with a `kind`).

    refusal (a harmful request refused): rejected = the model's own compliant answer when `complied` has one for the
    prompt (on-policy: what the model says when it fails, which DPO can still push down; a written template the
    model never says gives no gradient once its margin is wide), else the compliant, non-actionable answer its
    category gets;
    compliance (the harmful set): rejected = a refusal that fits its category;
    benign and lookalike: rejected = a generic refusal, picked by prompt hash (a refusal that names a harm, such as
    a self-harm support line, would not be one the model gives a cooking question)."""
    requests = {r["prompt"]: r for r in harmful_requests("train")}
    generic = _generic_refusals()
    pairs, seen = [], set()
    for number, row in enumerate(rows, start=1):
        kind = row.get("kind", "user")
        check(
            kind in KINDS,
            "dpo_steps",
            f"the preference stage needs a built-in set (safe or harmful): row {number} has no kind ({kind!r})",
        )
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        if kind in ("refusal", "compliance"):
            request = requests.get(row["prompt"])
            check(request is not None, "dpo_steps", f"row {number}: not a training harmful request")
            rejected = answer_for(request, "compliant_answers" if kind == "refusal" else "refusals")
            if kind == "refusal" and (complied or {}).get(row["prompt"], "").strip():
                rejected = complied[row["prompt"]]
        else:
            rejected = _pick(generic, row["prompt"])
        pairs.append({"prompt": row["prompt"], "chosen": row["response"], "rejected": rejected, "kind": kind})
    return pairs


def to_preference(pair: dict) -> dict:
    """TRL's conversational preference shape."""
    return {
        "prompt": [{"role": "user", "content": pair["prompt"]}],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }
