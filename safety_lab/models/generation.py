"""Batched greedy generation with the chat template: length-sorted batches, a pre-allocated KV cache written in
place, finished rows dropped from the batch, and the opening every prompt shares (the template's system turn)
computed once per call instead of once per prompt."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from safety_lab import flops
from safety_lab.compat import in_place_layer
from safety_lab.models.refusal import answering, attached, opener_ids, steer

DROP_SHARE = 8  # drop finished rows once they are >= 1/8 of the batch (each drop copies the cache once)
MIN_SHARED = 8  # a shared opening shorter than this is prefilled with each prompt (not worth a separate pass)


@dataclass
class Generated:
    """One prompt's greedy continuation: new token ids (EOS left out) and, when asked, per-step log-probs."""

    ids: list[int] = field(default_factory=list)
    stopped: bool = False  # ended with EOS (not at the token budget)
    top: list[list[float]] = field(default_factory=list)  # per step: the 10 best log-probs
    chosen: list[float] = field(default_factory=list)  # per step: log-prob of the chosen token
    refusal_mass: float = float("nan")  # with a refusal decision: the first-token mass on its openers


def chat_inputs(
    tokenizer, prompts: list[str], *, system: str | None = None, max_prompt_tokens: int | None = None
) -> list[list[int]]:
    """Token ids of each prompt rendered with the chat template (ready for the assistant's turn)."""
    out, truncated = [], 0
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
        if max_prompt_tokens and len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]  # keep the end: the question and the assistant header
            truncated += 1
        out.append(ids)
    if truncated:
        print(
            f"[safety_lab] note: {truncated} prompt(s) longer than the model's context were truncated to "
            f"their last {max_prompt_tokens} tokens",
            file=sys.stderr,
            flush=True,
        )
    return out


def left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        mask[i, width - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


def last_position(input_ids: torch.Tensor) -> torch.Tensor:
    """`logits_to_keep` for the last position only, as an index rather than the int 1: indexing copies the last
    hidden states into a contiguous tensor, where the int's slice leaves them strided across the batch. On a
    strided input with a weight that needs no gradient (an adapter's frozen base, a model cast for evaluation),
    torch's matmul cannot fold the batch and runs the LM head as a batched product over a copy of its weight per
    row (49152 x 576 values each on SmolLM2): that copy took 40% of a bf16 evaluation's generation time."""
    return torch.tensor([input_ids.shape[-1] - 1], device=input_ids.device)


def _step(model, cache: Cache, input_ids, mask, position_ids, keep_one: bool) -> torch.Tensor:
    extra = {"logits_to_keep": last_position(input_ids)} if keep_one else {}
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True, **extra
    )
    return out.logits[:, -1].float()


def end_tokens(model, tokenizer) -> torch.Tensor:
    """Every token that ends an answer: the generation config's `eos_token_id` (a list on Llama-3, Qwen2.5 and Gemma:
    end of turn and end of text) and the tokenizer's own."""
    config = getattr(model, "generation_config", None)
    listed = getattr(config, "eos_token_id", None)
    ids = {*(listed if isinstance(listed, (list, tuple)) else [listed]), tokenizer.eos_token_id} - {None}
    return torch.tensor(sorted(ids), device=next(model.parameters()).device)


def _record(
    outs: list[Generated], rows: list[int], logits: torch.Tensor, chosen: torch.Tensor, eos: torch.Tensor, scores: bool
) -> list[bool]:
    """Append this step's token (and log-probs) to each live row; return which rows just ended."""
    ended = torch.isin(chosen, eos).tolist()
    if scores:
        logp = torch.log_softmax(logits, dim=-1)
        top, picked = logp.topk(10).values.tolist(), logp.gather(1, chosen[:, None])[:, 0].tolist()
    for j, (i, token) in enumerate(zip(rows, chosen.tolist())):
        if i < 0:  # finished earlier, not dropped yet
            continue
        if ended[j]:
            outs[i].stopped = True
            continue
        outs[i].ids.append(token)
        if scores:
            outs[i].top.append(top[j])
            outs[i].chosen.append(picked[j])
    return ended


def _cache(model, length: int) -> Cache:
    """An in-place K/V cache of `length` positions for every layer of `model`."""
    layers = model.config.get_text_config().num_hidden_layers
    return Cache(layers=[in_place_layer(length) for _ in range(layers)])


def shared_prefix(model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the K/V of a token sequence that opens every prompt of a call, computed once (batch of one)."""
    cache = _cache(model, len(ids))
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    positions = torch.arange(len(ids), device=device)[None]
    _step(model, cache, input_ids, torch.ones_like(input_ids), positions, keep_one=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _decode(
    model,
    input_ids,
    mask,
    *,
    max_new_tokens: int,
    eos: torch.Tensor,
    scores: bool,
    prefix: list | None = None,
    decision: tuple[torch.Tensor, float] | None = None,
) -> list[Generated]:
    """Greedy decoding of one left-padded batch; rows that reach an end token (`eos`, see `end_tokens`) leave the
    batch (in groups: see DROP_SHARE).

    With `prefix` (from `shared_prefix`), every row continues that shared opening: the batch is laid out as
    [opening | padding | row's own tokens], the padding masked, positions counted without it. With `decision`
    (opener ids, τ), the first token follows the refusal decision (``models.refusal.steer``)."""
    n, width = input_ids.shape
    shared = prefix[0][0].shape[-2] if prefix else 0
    outs = [Generated() for _ in range(n)]
    cache = _cache(model, shared + width + max_new_tokens)
    for layer, (keys, values) in zip(cache.layers, prefix or ()):
        layer.update(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1))
    full_mask = torch.cat([mask.new_ones(n, shared), mask, mask.new_ones(n, max_new_tokens)], dim=1)
    positions = shared + mask.long().cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)  # as transformers' generate() does for left padding
    rows = list(range(n))  # batch row -> prompt index (-1: finished, still in the batch)
    logits = _step(model, cache, input_ids, full_mask[:, : shared + width], positions, keep_one=True)
    raw = logits  # the model's own first-step distribution: the recorded log-probs are its, not the steered ones
    if decision is not None:
        logits, mass = steer(logits, *decision)
        for out, value in zip(outs, mass.tolist()):
            out.refusal_mass = value
    next_pos = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        chosen = logits.argmax(dim=-1)
        for j, ended in enumerate(_record(outs, rows, raw if step == 0 else logits, chosen, eos, scores)):
            rows[j] = -1 if ended else rows[j]
        finished = sum(i < 0 for i in rows)
        if finished == len(rows) or step == max_new_tokens - 1:
            break
        if finished and finished * DROP_SHARE >= len(rows):
            keep = torch.tensor([i >= 0 for i in rows], device=chosen.device)
            for layer in cache.layers:
                layer.keep_rows(keep)
            rows = [i for i in rows if i >= 0]
            chosen, full_mask, next_pos = chosen[keep], full_mask[keep], next_pos[keep]
        filled = shared + width + step + 1
        logits = _step(model, cache, chosen[:, None], full_mask[:, :filled], next_pos, keep_one=False)
        next_pos = next_pos + 1
    return outs


@torch.inference_mode()
def decode_ids(
    model,
    tokenizer,
    encoded: list[list[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    return_scores: bool = False,
    progress: bool = False,
    desc: str = "generate",
) -> list[Generated]:
    """Greedy continuations of token-id prompts, in input order; batches hold prompts of similar length (sorted),
    so padding is small, and an opening every prompt shares is computed once (see `shared_prefix`). A refusal
    decision attached to `model` (``models.refusal.attach``) steers each answer's first token; a gated one
    (``answers="parent"``) has the parent's weights answer the prompts it does not refuse (see `_gated`)."""
    rule = attached(model)
    options = dict(batch_size=batch_size, return_scores=return_scores, progress=progress, desc=desc)
    if rule is None:
        return _decode_all(model, tokenizer, encoded, None, max_new_tokens=max_new_tokens, **options)
    ids = torch.tensor(opener_ids(tokenizer, rule.openers), device=next(model.parameters()).device)
    if not rule.gated:
        return _decode_all(model, tokenizer, encoded, (ids, rule.tau), max_new_tokens=max_new_tokens, **options)
    return _gated(model, tokenizer, encoded, ids, rule.tau, max_new_tokens=max_new_tokens, **options)


def _gated(model, tokenizer, encoded, ids, tau: float, *, max_new_tokens: int, **options) -> list[Generated]:
    """The gated decision: one first-token pass with the tuned weights gives each prompt's opener mass; the prompts
    at or over τ are refused by the tuned weights (their first token an opener), the others are answered by the
    parent's weights as the parent would answer them (plain greedy, nothing steered)."""
    first = _decode_all(model, tokenizer, encoded, (ids, tau), max_new_tokens=1, batch_size=options["batch_size"])
    masses = [o.refusal_mass for o in first]
    refused = [i for i, m in enumerate(masses) if m >= tau]
    answered = [i for i, m in enumerate(masses) if m < tau]
    results: list[Generated] = [Generated() for _ in encoded]
    for rows, parent in ((refused, False), (answered, True)):
        if not rows:
            continue
        with answering(model, parent):
            decision = None if parent else (ids, 0.0)  # τ 0: every row takes an opener
            outs = _decode_all(
                model, tokenizer, [encoded[i] for i in rows], decision, max_new_tokens=max_new_tokens, **options
            )
        for i, out in zip(rows, outs):
            out.refusal_mass = masses[i]
            results[i] = out
    return results


def _decode_all(
    model,
    tokenizer,
    encoded: list[list[int]],
    decision: tuple[torch.Tensor, float] | None,
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    return_scores: bool = False,
    progress: bool = False,
    desc: str = "generate",
) -> list[Generated]:
    """`decode_ids` with the decision (opener ids, τ) given rather than read off the model."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # every prompt keeps at least its last token, whose logits start the answer
    shared = min(len(os.path.commonprefix(encoded)), min((len(e) for e in encoded), default=0) - 1)
    prefix = shared_prefix(model, encoded[0][:shared]) if shared >= MIN_SHARED else None
    own = [e[shared:] for e in encoded] if prefix else encoded
    results: list[Generated] = [Generated() for _ in encoded]
    eos = end_tokens(model, tokenizer)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        input_ids, mask = left_pad([own[i] for i in batch], pad_id, device)
        outs = _decode(
            model,
            input_ids,
            mask,
            max_new_tokens=max_new_tokens,
            eos=eos,
            scores=return_scores,
            prefix=prefix,
            decision=decision,
        )
        for i, out in zip(batch, outs):
            results[i] = out
    prompts = [len(e) for e in own]
    work = flops.generation_flops(model.config, prompts, [len(r.ids) for r in results])
    work += flops.forward_flops(model.config, [shared], head_tokens=0) if prefix else 0
    flops.record(work, flops.precision_of(model))
    return results


def generate_tokens(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, system: str | None = None, **options
) -> list[Generated]:
    """Greedy continuations of `prompts` rendered with the chat template (``options`` as for ``decode_ids``)."""
    encoded = _chat_encoded(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system)
    return decode_ids(model, tokenizer, encoded, max_new_tokens=max_new_tokens, **options)


def _chat_encoded(model, tokenizer, prompts: list[str], *, max_new_tokens: int, system: str | None = None):
    return chat_inputs(
        tokenizer,
        prompts,
        system=system,
        max_prompt_tokens=getattr(model.config, "max_position_embeddings", 4096) - max_new_tokens,
    )


@torch.inference_mode()
def opener_masses(model, tokenizer, prompts: list[str], openers, *, batch_size: int = 32) -> list[float]:
    """Each prompt's first-token probability mass on the refusal ``openers`` (``models.refusal``) under the model's
    own weights: one forward pass per prompt, as a one-token greedy generation."""
    ids = torch.tensor(opener_ids(tokenizer, list(openers)), device=next(model.parameters()).device)
    encoded = _chat_encoded(model, tokenizer, list(prompts), max_new_tokens=1)
    outs = _decode_all(model, tokenizer, encoded, (ids, 0.5), max_new_tokens=1, batch_size=batch_size)
    return [o.refusal_mass for o in outs]


def generate(model, tokenizer, prompts: list[str], *, return_scores: bool = False, **options):
    """Greedy answers in input order (``options`` as for ``generate_tokens``). With return_scores, also per-step
    top-10 log-probs and chosen-token log-probs."""
    outs = generate_tokens(model, tokenizer, prompts, return_scores=return_scores, **options)
    texts = [tokenizer.decode(o.ids, skip_special_tokens=True).strip() for o in outs]
    return (texts, [(o.top, o.chosen) for o in outs]) if return_scores else texts
