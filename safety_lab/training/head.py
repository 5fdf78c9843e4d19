"""The LM head of a training step on a CPU: one dense log-softmax over the labelled positions, the frozen head weight
cast to the autocast precision once per training run instead of on every call.

TRL's fused head (`trl.kernels.ChunkedLogProbFunction`) tiles the vocabulary so a GPU never holds the
[positions, vocab] logits. Without Triton it folds each tile with a dozen torch passes, casts the 49152 x 576 weight
to bf16 in the forward and again in the backward, and back to fp32 for the input gradient. On a CPU, with the 128
labelled positions of a step (16 answer tokens x 8 rows), the logits are 25 MB: `log_probs` computes them at once,
with the same outputs and the same signature (`bench/step_changes.py --change head` times both;
tests/training/test_head.py compares them).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

_ROWS = 1024  # positions per block: bounds the fp32 logits to 1024 x vocab at a time where no gradient is kept

# id(head weight) -> (a weak reference to it, its version counter, dtype, the cast copy); an entry goes with its
# weight. A trained head (requires_grad) is never cached.
_CASTS: dict[int, tuple] = {}


def cast_once(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`, cast once while the weight is frozen and unchanged (its in-place version counter), the
    same values autocast would produce on every call."""
    if weight.dtype == dtype:
        return weight
    if weight.requires_grad:
        return weight.to(dtype)
    key = id(weight)
    held = _CASTS.get(key)
    mine = held is not None and held[0]() is weight
    if not mine:  # a new weight (or a dead one's id reused): its entry goes when it does
        weakref.finalize(weight, _CASTS.pop, key, None)
    if not mine or held[1:3] != (weight._version, dtype):
        held = (weakref.ref(weight), weight._version, dtype, weight.detach().to(dtype))
        _CASTS[key] = held
    return held[3]


def log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
):
    """`ChunkedLogProbFunction.apply`'s result for hidden [N, H], weight [V, H], targets [N]: per position the target's
    log-probability, and where named in `outputs` the entropy, log(sum p^2), the mean logit and whether the target is
    the (first) argmax; None for the others. The projection runs in the autocast precision, the softmax in fp32.
    `chunk_size` (the vocabulary tile of TRL's kernel) is not used: the vocabulary is never tiled here."""
    del chunk_size
    blocks = [
        _block(hidden[s : s + _ROWS], weight, bias, targets[s : s + _ROWS], temperature, final_logit_softcapping,
               logit_scale, outputs)
        for s in range(0, max(hidden.shape[0], 1), _ROWS)
    ]  # fmt: skip
    return tuple(None if parts[0] is None else torch.cat(parts) for parts in zip(*blocks))


def _block(hidden, weight, bias, targets, temperature, softcap, logit_scale, outputs):
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        z = F.linear(hidden.to(dtype), cast_once(weight, dtype), None if bias is None else bias.to(dtype)).float()
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if temperature != 1.0:
        z = z / temperature
    logp = torch.log_softmax(z, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():  # TRL marks these three non-differentiable
        sq = torch.logsumexp(2 * logp, dim=-1) if "log_sum_sq_probs" in outputs else None
        mean = z.mean(-1) if "mean_logits" in outputs else None
        top1 = z.argmax(-1) == targets if "is_top1" in outputs else None
    return picked, entropy, sq, mean, top1
