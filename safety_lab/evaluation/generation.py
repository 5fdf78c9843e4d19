"""Batched greedy generation with the chat template: length-sorted batches, left padding, KV cache, early stop."""
from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm


def chat_inputs(tokenizer, prompts: list[str], *, system: str | None = None, max_prompt_tokens: int | None = None) -> list[list[int]]:
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
        print(f"[safety_lab] note: {truncated} prompt(s) longer than the model's context were truncated to "
              f"their last {max_prompt_tokens} tokens", file=sys.stderr, flush=True)
    return out


def _left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 32,
             system: str | None = None, return_scores: bool = False, progress: bool = False, desc: str = "generate"):
    """Greedy answers in input order. With return_scores, also per-step top-10 log-probs and chosen-token log-probs."""
    encoded = chat_inputs(tokenizer, prompts, system=system,
                          max_prompt_tokens=getattr(model.config, "max_position_embeddings", 4096) - max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch: less padding
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    texts: list[str] = [""] * len(prompts)
    scores: list[tuple[list[list[float]], list[float]]] = [([], [])] * len(prompts)
    device = next(model.parameters()).device
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        input_ids, mask = _left_pad([encoded[i] for i in batch], pad_id, device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad_id, eos_token_id=eos, output_scores=return_scores,
                             return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
        new = out.sequences[:, input_ids.shape[1]:]
        for row, i in enumerate(batch):
            tokens = new[row].tolist()
            length = tokens.index(eos) if eos in tokens else len(tokens)
            texts[i] = tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            if return_scores:
                top, chosen = [], []
                for step in range(length):
                    logp = torch.log_softmax(out.scores[step][row].float(), dim=-1)
                    top.append(logp.topk(10).values.tolist())
                    chosen.append(float(logp[tokens[step]]))
                scores[i] = (top, chosen)
    return (texts, scores) if return_scores else texts
