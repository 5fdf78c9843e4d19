"""The log-likelihood kernel: the log-probability a model gives each token of a continuation after a prompt.

Used by the evaluation's multiple-choice scoring and by the tuning probe's knowledge objective."""

from __future__ import annotations

import torch

from safety_lab.errors import check
from safety_lab.models.generation import last_position, left_pad
from safety_lab.models.refusal import answering, attached, mass_from_logprobs, opener_ids


@torch.inference_mode()
def continuation_logprobs(
    model, prompts: list[list[int]], continuations: list[list[int]], owner: list[int], *, pad_id: int, tokenizer=None
) -> list[list[float]]:
    """log p(token | prompt, the continuation's earlier tokens) for every token of every continuation.

    Continuation n (token ids, at least one) follows prompt ``owner[n]``. The prompts run once, as one
    left-padded batch; their KV cache is then gathered per continuation, so continuations of one prompt share
    its computation and only their own tokens are run again.

    With a gated refusal decision attached (``models.refusal``, ``answers="parent"``; needs ``tokenizer``), a
    prompt's continuations are scored by the weights that would answer it: the tuned ones where its opener mass
    reaches τ (it is refused), the parent's elsewhere.
    """
    rule = attached(model)
    tuned, first = _logprobs(model, prompts, continuations, owner, pad_id=pad_id)
    if rule is None or not rule.gated:
        return tuned
    check(tokenizer is not None, "tokenizer", "is needed to score with a gated refusal decision (its opener ids)")
    ids = torch.tensor(opener_ids(tokenizer, rule.openers), device=first.device)
    refused = (mass_from_logprobs(first, ids) >= rule.tau).tolist()
    with answering(model, parent=True):
        parent, _ = _logprobs(model, prompts, continuations, owner, pad_id=pad_id)
    return [tuned[n] if refused[owner[n]] else parent[n] for n in range(len(continuations))]


def _logprobs(
    model, prompts: list[list[int]], continuations: list[list[int]], owner: list[int], *, pad_id: int
) -> tuple[list[list[float]], torch.Tensor]:
    """`continuation_logprobs` with the model's own weights, and each prompt's first-token log-probabilities."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=last_position(prompt_ids),
    )
    last = torch.log_softmax(out.logits[:, -1].float(), -1)
    width = max(len(c) for c in continuations)
    ids = torch.full((len(continuations), width), pad_id, dtype=torch.long)
    own_mask = torch.zeros((len(continuations), width), dtype=torch.long)
    for n, c in enumerate(continuations):
        ids[n, : len(c)] = torch.tensor(c)
        own_mask[n, : len(c)] = 1
    index = torch.tensor(owner, device=device)
    cache = out.cache
    cache.batch_select_indices(index)  # each continuation gets (a view of) its prompt's keys and values
    mask = torch.cat([prompt_mask[index], own_mask.to(device)], dim=1)
    positions = prompt_mask.sum(-1)[index, None] + torch.arange(width, device=device)
    logits = torch.log_softmax(
        model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions, cache=cache).logits.float(), -1
    )
    scored = [
        [float(last[owner[n], c[0]])] + [float(logits[n, j - 1, c[j]]) for j in range(1, len(c))]
        for n, c in enumerate(continuations)
    ]
    return scored, last


__all__ = ["continuation_logprobs"]
