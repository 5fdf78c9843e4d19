"""Multiple-choice scoring: the log-probability of each option as the assistant's answer (``models.scoring``)."""

from __future__ import annotations

from safety_lab.models.generation import chat_inputs
from safety_lab.models.scoring import continuation_logprobs


def batch_option_logprobs(model, tokenizer, questions: list[str], choices: list[list[str]]) -> list[list[float]]:
    """Sum of log p(option tokens | prompt) for every option of every item; each question goes through the chat
    template, each option is scored as the assistant's answer (see ``continuation_logprobs``)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    owner = [i for i, opts in enumerate(choices) for _ in opts]
    options = [
        tokenizer(c, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        for opts in choices
        for c in opts
    ]
    per_token = continuation_logprobs(
        model, chat_inputs(tokenizer, questions), options, owner, pad_id=pad_id, tokenizer=tokenizer
    )
    scores: list[list[float]] = [[] for _ in choices]
    for n, lps in enumerate(per_token):
        scores[owner[n]].append(lps[0] + sum(lps[1:]))
    return scores


def option_logprobs(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """One item's option scores (see batch_option_logprobs)."""
    return batch_option_logprobs(model, tokenizer, [question], [choices])[0]


__all__ = ["batch_option_logprobs", "continuation_logprobs", "option_logprobs"]
