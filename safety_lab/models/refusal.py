"""A refusal decision with a threshold τ, taken on the answer's first token (the refusal-token idea of arXiv
2412.06748, read off the tokens refusals already open with rather than a new marker).

The tuned model's refusals open with a few tokens ("I", "Sorry", "Unfortunately"...: the first tokens of the built-in
refusal templates it was trained on). The probability mass the model puts on those openers at the first answer
position, p, is its propensity to refuse. With a decision, greedy decoding takes its first token from the openers
when p >= τ and from every other token otherwise; later tokens are plain greedy. τ is then a knob on the trade-off
between refusing harmful requests and over-refusing safe ones that needs no retraining, and one forward pass per
prompt gives p (``models.generation.opener_masses``), so a whole curve of τ costs no generation
(``decision_curve``).

A model carries its decision as the attribute ``refusal_decision`` (see ``attach``): every greedy generation with it
(``models.generation``) honours it, so the evaluation, the tuning objectives and the served pyfunc see the same model.

Who answers (``answers``): with ``tuned`` the tuned weights write every answer. With ``parent`` the tuned adapter
only decides, and writes the refusals; a prompt it does not refuse is answered by the parent's weights (the base
model for a first tune: the adapter disabled), exactly as the parent would answer it, and multiple-choice options
are scored the same way (``models.scoring``). That is LoRA-Guard's dual path (arXiv 2407.02987): the safety
adapter shares the backbone but stays off the generative path, so what the model knows is the parent's wherever it
answers, and only the decision to refuse is learnt.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from safety_lab.errors import check

ATTRIBUTE = "refusal_decision"
ANSWERS = ("tuned", "parent")  # who answers a prompt the decision does not refuse (see the module docstring)
CURVE_TAUS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the τ grid curves are logged on: 0.05 ... 0.95


@dataclass(frozen=True)
class RefusalDecision:
    """Refuse (open with a refusal opener) when the first-token mass on ``openers`` is at least ``tau``."""

    tau: float
    openers: tuple[str, ...]  # the opener tokens, as text (stored with the version; ids depend on the tokenizer)
    answers: Literal["tuned", "parent"] = "tuned"

    def __post_init__(self):
        check(
            isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and 0.0 < self.tau < 1.0,
            "refusal_tau",
            f"must be a probability strictly between 0 and 1, got {self.tau!r}",
        )
        check(bool(self.openers), "refusal_openers", "must name at least one opener token")
        check(self.answers in ANSWERS, "refusal_answers", f"must be tuned or parent, got {self.answers!r}")

    @property
    def gated(self) -> bool:
        """True when the parent's weights answer what the decision does not refuse."""
        return self.answers == "parent"

    def as_dict(self) -> dict:
        return {"tau": float(self.tau), "openers": list(self.openers), "answers": self.answers}

    @classmethod
    def from_dict(cls, value: dict | None) -> RefusalDecision | None:
        if not value:
            return None
        check(isinstance(value, dict), "refusal_decision", f"must be an object, got {type(value).__name__}")
        return cls(
            tau=value.get("tau"),
            openers=tuple(str(t) for t in value.get("openers") or ()),
            answers=value.get("answers", "tuned"),  # versions registered before `answers` existed: tuned
        )


def default_openers(tokenizer) -> tuple[str, ...]:
    """The first token of every built-in refusal template, as text, sorted (the tokens the tuned model's refusals
    open with)."""
    from safety_lab.data import builtin

    ids = {tokenizer(r["text"], add_special_tokens=False)["input_ids"][0] for r in builtin("refusals")}
    return tuple(sorted(tokenizer.convert_ids_to_tokens(sorted(ids))))


def opener_ids(tokenizer, openers: Sequence[str]) -> list[int]:
    """Token ids of ``openers``; an opener the tokenizer does not have is a one-line error."""
    ids = tokenizer.convert_tokens_to_ids(list(openers))
    unknown = [t for t, i in zip(openers, ids) if i is None or i == tokenizer.unk_token_id]
    check(not unknown, "refusal_openers", f"not tokens of this tokenizer: {', '.join(map(repr, unknown))}")
    return [int(i) for i in ids]


def opener_mass(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row, the probability the first-token distribution (``logits``, batch x vocab) puts on the openers."""
    return torch.softmax(logits.float(), dim=-1)[:, ids].sum(dim=-1)


def steer(logits: torch.Tensor, ids: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First-step logits restricted to the openers where their mass reaches ``tau``, to the other tokens elsewhere;
    returns (steered logits, the mass)."""
    mass = opener_mass(logits, ids)
    is_opener = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    is_opener[ids] = True
    refuse = (mass >= tau)[:, None]
    allowed = torch.where(refuse, is_opener[None, :], ~is_opener[None, :])
    return logits.masked_fill(~allowed, float("-inf")), mass


def mass_from_logprobs(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row, the opener mass of a first-token distribution given as log-probabilities (batch x vocab)."""
    return logprobs[:, ids].float().exp().sum(dim=-1)


def parent_weights(model: torch.nn.Module):
    """A context in which ``model`` runs with its parent's weights: its (unmerged) PEFT adapter disabled. A model
    whose adapter was merged into its weights has no parent left in it: a one-line error."""
    disable = getattr(model, "disable_adapter", None)
    check(
        callable(disable) and hasattr(model, "peft_config"),
        "refusal_answers",
        "parent needs the model's adapter unmerged (a PeftModel), to answer with its parent's weights",
    )
    return disable()


def answering(model: torch.nn.Module, parent: bool):
    """The weights that answer: the parent's (``parent_weights``) or the model's own (a no-op context)."""
    return parent_weights(model) if parent else contextlib.nullcontext()


def attach(model: torch.nn.Module, decision: RefusalDecision | None) -> torch.nn.Module:
    """Give ``model`` its refusal decision (None removes it); generation with the model honours it."""
    object.__setattr__(model, ATTRIBUTE, decision)
    return model


def attached(model: torch.nn.Module) -> RefusalDecision | None:
    return getattr(model, ATTRIBUTE, None)


def decision_curve(p_unsafe: Sequence[float], p_safe: Sequence[float], taus: Sequence[float]) -> list[dict]:
    """One point per τ: the share of unsafe prompts whose opener mass reaches τ (they would be refused) and the
    share of safe prompts that would be (over-refusal)."""
    check(bool(p_unsafe) and bool(p_safe), "refusal_taus", "the curve needs both unsafe and safe prompts")
    return [
        {
            "tau": float(tau),
            "unsafe_refused": sum(p >= tau for p in p_unsafe) / len(p_unsafe),
            "safe_refused": sum(p >= tau for p in p_safe) / len(p_safe),
        }
        for tau in taus
    ]


def separation(p_unsafe: Sequence[float], p_safe: Sequence[float]) -> float:
    """The area under the decision curve (ROC AUC): the chance that an unsafe prompt's opener mass exceeds a safe
    one's (ties count half). 1 = some τ separates them perfectly, 0.5 = the mass knows nothing of harm."""
    check(bool(p_unsafe) and bool(p_safe), "refusal_taus", "the curve needs both unsafe and safe prompts")
    wins = sum((u > s) + 0.5 * (u == s) for u in p_unsafe for s in p_safe)
    return wins / (len(p_unsafe) * len(p_safe))


def choose_tau(
    p_unsafe: Sequence[float], p_safe: Sequence[float], *, max_miss: float, max_over_refusal: float
) -> float:
    """The τ with the most slack on both sides: it minimises the larger of the unsafe prompts let through as a share
    of ``max_miss`` and the safe prompts refused as a share of ``max_over_refusal`` (ties: the largest such τ, the
    most permissive). Candidates are the midpoints between observed masses."""
    check(max_miss > 0 and max_over_refusal > 0, "refusal_tau", "the limits it balances must be positive")
    values = sorted({*p_unsafe, *p_safe})
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:])] or [0.5]
    best = None
    for tau, point in zip(candidates, decision_curve(p_unsafe, p_safe, candidates)):
        worst = max((1 - point["unsafe_refused"]) / max_miss, point["safe_refused"] / max_over_refusal)
        key = (-worst, tau)
        best = key if best is None or key > best else best
    return min(max(best[1], 1e-6), 1 - 1e-6)
